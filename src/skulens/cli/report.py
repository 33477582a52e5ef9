"""`skulens report`: catalog analytics as an HTML page with charts and CSV tables."""

from __future__ import annotations

import sys

from skulens.cli.options import EXIT_OK, add_csv_columns, add_json, add_no_progress, add_seed, print_json


def add_parsers(sub) -> None:
    rp = sub.add_parser("report", help="catalog analytics: categories, attributes, colours, what shoppers photograph")
    rp.add_argument("dataset", metavar="INPUT", help="dataset folder, products CSV, or recognitions log (.jsonl)")
    rp.add_argument("--out", required=True, help="folder for index.html, the PNG charts and the CSV tables")
    rp.add_argument("--predictions", metavar="LOG", default=None, help="also report this recognitions log (.jsonl)")
    rp.add_argument(
        "--attribute-columns",
        default=None,
        help="CSV: comma-separated attribute columns (default: other columns with few distinct values)",
    )
    rp.add_argument("--colour-sample", type=int, default=500, help="photos read for colours (default 500; 0: none)")
    rp.add_argument(
        "--period",
        default="auto",
        choices=["auto", "day", "week"],
        help="recognitions over time per day or week (auto: by the log's span)",
    )
    rp.add_argument("--title", default=None)
    add_json(rp, "print a summary as JSON")
    add_no_progress(rp)
    add_csv_columns(rp)
    add_seed(rp)
    rp.set_defaults(handler=cmd_report)


def cmd_report(args) -> int:
    from skulens.api import report

    summary = report(
        args.dataset,
        args.out,
        predictions=args.predictions,
        label=args.label,
        image_column=args.image_column,
        split_column=args.split_column,
        tree_columns=args.tree_columns,
        attribute_columns=args.attribute_columns,
        title=args.title,
        colour_sample=args.colour_sample,
        period=args.period,
        seed=args.seed,
        progress=not args.no_progress and not args.json and sys.stderr.isatty(),
    )
    if args.json:
        print_json(summary)
    else:
        print(
            f"report: {summary['index']} ({sum(f.endswith('.png') for f in summary['files'])} charts, "
            f"{sum(f.endswith('.csv') for f in summary['files'])} CSV tables)"
        )
    return EXIT_OK
