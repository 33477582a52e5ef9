"""`skulens demo`: train, evaluate and predict on the small sample shipped with skulens."""

from __future__ import annotations

from skulens.api import DEMO_RECIPE
from skulens.cli.options import EXIT_OK


def add_parsers(sub) -> None:
    demo = sub.add_parser(
        "demo", help="train, evaluate and predict on the small Grocery Store sample shipped with skulens"
    )
    demo.add_argument(
        "--out", default="runs/demo", help="run folder (replaced if it holds an earlier demo; default: runs/demo)"
    )
    demo.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs to train (default: {DEMO_RECIPE['epochs']}, recipes/demo.toml's)",
    )
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args) -> int:
    from skulens.api import Run

    Run.demo(out=args.out, epochs=args.epochs)
    return EXIT_OK
