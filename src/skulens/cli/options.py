"""Options shared by several commands, declared once: --device, --engine, --json, --no-progress,
--seed and the CSV manifest's columns; and the lazily built sub-command parser.

Nothing here imports torch: `skulens --help` builds every parser."""

from __future__ import annotations

import argparse
import sys

from skulens.training.recipe import DATA_SETTINGS

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2
ENGINES = ("auto", "torch", "onnx")
ENGINE_HELP = "auto: ONNX Runtime on a CPU when the run has an up-to-date export, else PyTorch"
# The [data] keys' flags; --attribute-columns and --tag-columns keep dest names of their own, so they
# never mix with `skulens report`'s --attribute-columns.
COLUMN_DESTS = {
    "image_column": "image_column",
    "label": "label",
    "split_column": "split_column",
    "tree_columns": "tree_columns",
    "attribute_columns": "head_attributes",
    "tag_columns": "head_tags",
}
HEADS = ("attribute_columns", "tag_columns")


class LazyParser(argparse.ArgumentParser):
    """A parser whose arguments are added when it is used (parsed, or asked for help): `populate`
    runs once then. `skulens train`'s options come from TrainConfig, which imports torch."""

    def __init__(self, *args, populate=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _ready(self) -> None:
        if self._populate is not None:
            populate, self._populate = self._populate, None
            populate(self)

    def parse_known_args(self, args=None, namespace=None):
        self._ready()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._ready()
        return super().format_help()

    def format_usage(self) -> str:
        self._ready()
        return super().format_usage()


def comma_list(text: str) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; empty text -> None."""
    return [c.strip() for c in text.split(",") if c.strip()] or None


def comma_ints(text: str) -> list[int]:
    try:
        return [int(c) for c in comma_list(text) or []]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 256,288: {text!r}") from None


def add_device(p, default: str = "auto") -> None:
    p.add_argument("--device", default=default, help=f"auto, cpu or cuda (default: {default})")


def add_engine(p, default: str = "auto", help: str = ENGINE_HELP) -> None:
    p.add_argument("--engine", default=default, choices=ENGINES, help=f"{help} (default: {default})")


def count_at_least(low: int):
    """An argparse type: a whole number >= ``low`` (argparse answers anything else in one line, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse


def float_between(low: float, high: float):
    """An argparse type: a number in [low, high], refused before any work starts (one line, exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, not {value:g}")
        return value

    return parse


def add_threads(p) -> None:
    """The two thread pools of a bulk run: decoding photos and running the model, on the same cores."""
    p.add_argument(
        "--threads",
        type=count_at_least(1),
        default=None,
        help="ONNX Runtime threads for the model (default: the cores the decoding threads leave)",
    )
    p.add_argument(
        "--workers",
        type=count_at_least(0),
        default=None,
        help="threads decoding the next photos while the model runs (0: none; default: one per two cores)",
    )


def add_json(p, help: str = "print the result as JSON") -> None:
    p.add_argument("--json", action="store_true", help=help)


def add_no_progress(p) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_seed(p, default: int | None = 0) -> None:
    shown = "the run's seed" if default is None else default
    p.add_argument("--seed", type=int, default=default, help=f"seed for a seeded split (default: {shown})")


def add_csv_columns(p, *, heads: bool = False, defaults: str = "values") -> None:
    """The CSV manifest's columns. ``defaults``: "values" (the usual column names), "run" (None: the
    columns the run was trained with, for commands on a run), or "recipe" (None: the recipe's [data],
    for `skulens train`)."""
    g = p.add_argument_group("CSV manifest columns (when DATASET is a .csv)")
    for setting in DATA_SETTINGS:
        if setting.name in HEADS and not heads:
            continue
        default = setting.default if defaults == "values" else None
        shown = f"default: {setting.default_text()}"
        if defaults == "run":
            shown = f"default: the run's own, else {setting.default_text()}"
        elif defaults == "recipe":
            shown = f"recipe: {setting.key}; {shown}"
        kind = {"type": comma_list, "metavar": "A,B"} if setting.kind == "list[str]" else {"metavar": "NAME"}
        g.add_argument(
            "--" + setting.name.replace("_", "-"),
            dest=COLUMN_DESTS[setting.name],
            default=default,
            help=f"{setting.help} ({shown})",
            **kind,
        )


def columns_given(args) -> dict:
    """The CSV column options given, as [data] keys (for Run.dataset and recipes)."""
    given = {key: getattr(args, dest, None) for key, dest in COLUMN_DESTS.items()}
    return {key: value for key, value in given.items() if value is not None}


def load_dataset(args, path=None):
    """The dataset ``path`` (default: args.dataset) with the CSV column options as given."""
    from skulens.data.datasets import CsvColumns
    from skulens.data.datasets import load_dataset as load
    from skulens.training.recipe import CSV_FIELDS

    columns = CsvColumns(**{CSV_FIELDS[k]: v for k, v in columns_given(args).items()})
    return load(path or args.dataset, csv_columns=columns, seed=args.seed)


def run_dataset(run, args, path, *, required: bool = True):
    """``Run.dataset`` with the CSV column and --seed options as given."""
    return run.dataset(path, **columns_given(args), seed=args.seed, required=required)


def error(message: str) -> None:
    print(f"skulens: error: {message}", file=sys.stderr)


def print_json(data, indent: int = 2) -> None:
    import json

    print(json.dumps(data, indent=indent))
