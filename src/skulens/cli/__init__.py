"""The `skulens` command line: one module per command group, each command a thin wrapper over the
Python API (skulens.api). The entry point is :func:`main`; `python -m skulens` runs it too."""

from skulens.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
