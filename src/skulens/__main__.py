"""`python -m skulens` (and `torchrun -m skulens`) run the CLI."""

from skulens.cli import main

raise SystemExit(main())
