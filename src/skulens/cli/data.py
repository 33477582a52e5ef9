"""`skulens data check`: look at a dataset before training on it."""

from __future__ import annotations

import sys

from skulens.cli.options import EXIT_OK, EXIT_PARTIAL, add_csv_columns, add_json, add_seed, load_dataset, print_json


def add_parsers(sub) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="counts, unreadable files, duplicates, leakage, imbalance")
    check.add_argument("dataset", help="folder, CSV manifest or Grocery Store root")
    add_json(check, "print the report as JSON")
    add_csv_columns(check)
    add_seed(check)
    check.set_defaults(handler=cmd_data_check)


def cmd_data_check(args) -> int:
    from skulens.data.check import check_dataset, has_problems, render_report

    report = check_dataset(load_dataset(args), progress=not args.json and sys.stderr.isatty())
    if args.json:
        print_json(report)
    else:
        render_report(report)
    return EXIT_PARTIAL if has_problems(report) else EXIT_OK
