"""`skulens`: the parser (one module per command group adds its commands) and the error policy.

Exit codes: 0 success; 1 some inputs failed (the others were processed) or `data check` found
problems; 2 the command could not run (one line on stderr, no traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from skulens import __version__
from skulens.cli import catalog, data, demo, detector, evaluate, privacy, report, serve, train
from skulens.cli.options import EXIT_ERROR, LazyParser, error
from skulens.errors import SkulensError

COMMAND_GROUPS = (data, train, evaluate, report, demo, catalog, serve, privacy, detector)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skulens", description="Product image recognition: train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=f"skulens {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=LazyParser)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own progress messages only; libraries (faiss, onnxruntime) stay at warnings.
    logging.basicConfig(level=logging.WARNING, format="skulens: %(message)s")
    logging.getLogger("skulens").setLevel(logging.INFO)
    try:
        return args.handler(args)
    except SkulensError as exc:
        error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("skulens: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback only on request
        if args.debug or os.environ.get("SKULENS_DEBUG"):
            raise
        error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)")
        return EXIT_ERROR
