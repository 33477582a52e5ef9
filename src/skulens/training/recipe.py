"""Recipe files: a training run's settings in TOML, read, checked, merged with flags, written back.

    model = "efficientnet_lite2"        # top-level keys: TrainConfig field names
    epochs = 12
    eval_sizes = [256, 288]
    [augment]                           # optional: AugmentConfig field names
    hue_jitter = 0.0
    [data]                              # optional: the CSV manifest's columns
    label = "article_type"
    tree_columns = ["master_category", "sub_category"]

Precedence: the dataclass defaults, then the recipe file, then the overrides (command-line flags or
the Python API's keyword arguments). A bad recipe is refused in one line that names the problem
(an unknown key names the nearest valid one). :func:`Recipe.to_toml` writes every field, so reading
the file back gives the same :class:`TrainConfig`; TOML has no null, so a ``None`` is left out and
means the field's default, which is ``None`` for every field that may be ``None``.

`skulens train`'s options are built here from the same fields (:func:`add_arguments`), so each
default and help text is written once, in ``TrainConfig`` (and ``AugmentConfig``, whose help texts
are below). Heavy modules (torch, via the dataclasses) are imported only when a function needs them.
"""

from __future__ import annotations

import argparse
import difflib
import tomllib
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from skulens.errors import SkulensError

TABLES = ("augment", "data")
# `--no-augment`: the whole photo every time, nothing flipped, jittered or sheared.
NO_AUGMENT = {"scale_min": 1.0, "hflip": 0.0, "color_jitter": 0.0, "affine_prob": 0.0}
# CLI flags whose name is not the field's (bools named --no-X turn a default-true field off).
FLAG_NAMES = {
    "num_threads": "--threads",
    "in_chans": "--grayscale",
    "pretrained": "--no-pretrained",
    "sync_bn": "--no-sync-bn",
    "progress": "--no-progress",
}
AUGMENT_HELP = {
    "scale_min": ("random-resized-crop's smallest area share", None),
    "hflip": ("probability of a horizontal flip", None),
    "color_jitter": ("brightness/contrast/saturation jitter (0: off)", None),
    "hue_jitter": (
        "hue shift, a share of the colour wheel (0 where colour tells classes apart)",
        "min(0.05, color_jitter/6)",
    ),
    "shear_degrees": ("largest shear of the random affine, in degrees", None),
    "zoom": ("largest zoom in or out of the random affine (0.2: 80-120%)", None),
    "affine_prob": ("probability of the random shear/zoom", None),
}
KIND_NAMES = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list[int]": "a list of integers",
    "list[str]": "a list of strings",
}


@dataclass(frozen=True)
class Setting:
    """One recipe key: its table ("" for the top level), type, default and help."""

    name: str
    kind: str  # int, float, bool, str, list[int] or list[str]
    default: Any
    help: str
    table: str = ""
    optional: bool = False  # None allowed (from Python; TOML has no null)
    none: str | None = None  # what None (or an empty list) stands for
    choices: tuple[str, ...] | None = None
    flag_help: str | None = None

    @property
    def key(self) -> str:
        return f"{self.table}.{self.name}" if self.table else self.name

    @property
    def flag(self) -> str:
        if not self.table and self.name in FLAG_NAMES:
            return FLAG_NAMES[self.name]
        return "--" + self.name.replace("_", "-")

    def default_text(self) -> str:
        value = self.default
        if value is None or value == []:
            return self.none or "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return ",".join(map(str, value))
        return str(value)


# The CSV manifest's columns ([data]); CsvColumns (data/datasets.py) holds the same defaults.
DATA_SETTINGS = (
    Setting("image_column", "str", "image", "column with the image path", "data"),
    Setting("label", "str", "label", "column with the class label", "data"),
    Setting("split_column", "str", "split", "column with train/val/test (absent: a seeded stratified split)", "data"),
    Setting(
        "tree_columns",
        "list[str]",
        None,
        "columns from the top of the category tree down, e.g. master_category,sub_category (the label is the leaf)",
        "data",
        optional=True,
        none="no tree",
    ),
    Setting(
        "attribute_columns",
        "list[str]",
        None,
        "columns with one value per image, e.g. colour,usage,gender: "
        "a head each, trained with the category (empty cells are unknown)",
        "data",
        optional=True,
        none="none",
    ),
    Setting(
        "tag_columns",
        "list[str]",
        None,
        "columns of '|'-separated tags that can co-occur (a sigmoid per tag; '-' = none of them, empty = unknown)",
        "data",
        optional=True,
        none="none",
    ),
)
# [data] key -> CsvColumns field
CSV_FIELDS = {
    "image_column": "image",
    "label": "label",
    "split_column": "split",
    "tree_columns": "tree",
    "attribute_columns": "attributes",
    "tag_columns": "tags",
}


def _kind(hint) -> tuple[str, bool]:
    optional = False
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if typing.get_origin(hint) is list:
        return f"list[{typing.get_args(hint)[0].__name__}]", optional
    return hint.__name__, optional


def _settings_of(cls, table: str, help_texts: dict | None = None) -> list[Setting]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if f.name == "augment":
            continue
        kind, optional = _kind(hints[f.name])
        default = f.default if f.default is not MISSING else f.default_factory()
        meta = dict(f.metadata)
        if help_texts is not None:
            meta["help"], meta["none"] = help_texts[f.name]
        out.append(
            Setting(
                f.name,
                kind,
                default,
                meta["help"],
                table,
                optional,
                meta.get("none"),
                meta.get("choices"),
                meta.get("flag_help"),
            )
        )
    return out


def train_settings() -> list[Setting]:
    from skulens.training.config import TrainConfig

    return _settings_of(TrainConfig, "")


def augment_settings() -> list[Setting]:
    from skulens.data.transforms import AugmentConfig

    return _settings_of(AugmentConfig, "augment", AUGMENT_HELP)


def all_settings() -> dict[str, dict[str, Setting]]:
    """{table: {name: Setting}} with "" for the top level."""
    return {
        "": {s.name: s for s in train_settings()},
        "augment": {s.name: s for s in augment_settings()},
        "data": {s.name: s for s in DATA_SETTINGS},
    }


# --- checking ------------------------------------------------------------------------------------


def _type_name(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _scalar(kind: str, value):
    """The value as ``kind`` wants it, or raises ValueError."""
    if kind == "bool" and isinstance(value, bool):
        return value
    if isinstance(value, bool):
        raise ValueError
    if kind == "int" and isinstance(value, int):
        return value
    if kind == "float" and isinstance(value, (int, float)):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    raise ValueError


def check_value(setting: Setting, value, where: str = ""):
    """``value`` converted for ``setting`` (ints become floats for a float field), or one-line error."""
    if value is None and setting.optional:
        return None
    wanted = KIND_NAMES[setting.kind] + (" (or left out)" if setting.optional else "")
    try:
        if setting.kind.startswith("list["):
            if not isinstance(value, (list, tuple)):
                raise ValueError
            converted = [_scalar(setting.kind[5:-1], v) for v in value]
        else:
            converted = _scalar(setting.kind, value)
    except ValueError:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise SkulensError(f"{where}{setting.key} must be {wanted}, not {_type_name(value)} ({shown})") from None
    if setting.choices and converted not in setting.choices:
        raise SkulensError(f"{where}{setting.key} must be one of {', '.join(setting.choices)}, not {converted!r}")
    return converted


def _unknown(key: str, table: str, known: dict[str, dict[str, Setting]], where: str) -> SkulensError:
    name = f"{table}.{key}" if table else key
    elsewhere = [t for t in known if t != table and key in known[t]]
    if elsewhere:
        place = f"the [{elsewhere[0]}] table" if elsewhere[0] else "the top level (outside any table)"
        return SkulensError(f"{where}unknown key {name!r}: it belongs in {place}")
    candidates = list(known[table]) + ([t for t in TABLES] if not table else [])
    nearest = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0)
    hint = f" (did you mean {(f'{table}.' if table else '') + nearest[0]!r}?)" if nearest else ""
    return SkulensError(f"{where}unknown key {name!r}{hint}")


def check_recipe(raw: dict, where: str = "") -> dict:
    """A recipe as nested dicts ({key: value, "augment": {...}, "data": {...}}), checked and converted."""
    known = all_settings()
    out: dict = {}
    for key, value in raw.items():
        if key in TABLES:
            if isinstance(value, dict):
                out[key] = {k: _checked(known, key, k, v, where) for k, v in value.items()}
            elif key == "augment" and hasattr(value, "__dataclass_fields__"):  # an AugmentConfig, from Python
                out[key] = {k: _checked(known, key, k, v, where) for k, v in asdict(value).items()}
            else:
                raise SkulensError(f"{where}{key} must be a table ([{key}]), not {_type_name(value)}")
        else:
            out[key] = _checked(known, "", key, value, where)
    if out.get("epochs", 1) < 1:
        raise SkulensError(f"{where}epochs must be at least 1 (got {out['epochs']})")
    return out


def _checked(known, table: str, key: str, value, where: str):
    setting = known[table].get(key)
    if setting is None:
        raise _unknown(key, table, known, where)
    return check_value(setting, value, where)


def read_recipe(path: str | Path) -> dict:
    """A recipe file, checked: one-line SkulensError for a missing, unparsable or wrong file."""
    path = Path(path)
    where = f"{path}: "
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SkulensError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise SkulensError(f"{path}: a recipe is a .toml file, not a folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SkulensError(f"{path}: cannot read the recipe ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SkulensError(f"{path}: not valid TOML ({str(exc).splitlines()[0]})") from None
    return check_recipe(raw, where)


def merge(*layers: dict | None) -> dict:
    """Later layers win, key by key, tables merged key by key too."""
    out: dict = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key in TABLES:
                out[key] = {**out.get(key, {}), **value}
            else:
                out[key] = value
    return out


# --- the resolved recipe -------------------------------------------------------------------------


@dataclass
class Recipe:
    """A resolved recipe: the TrainConfig, and the [data] columns that were set (for a CSV manifest)."""

    train: Any  # TrainConfig
    data: dict = field(default_factory=dict)

    def csv_columns(self):
        """The CsvColumns to read a CSV manifest with: the [data] keys, the defaults for the rest."""
        from skulens.data.datasets import CsvColumns

        return CsvColumns(**{CSV_FIELDS[k]: v for k, v in self.data.items() if v is not None})

    def to_dict(self) -> dict:
        """Every field (None left out), [augment] in full, [data] as set."""
        cfg = self.train.to_dict()
        augment = cfg.pop("augment")
        doc = {k: v for k, v in cfg.items() if v is not None}
        doc["augment"] = {k: v for k, v in augment.items() if v is not None}
        data = {k: v for k, v in self.data.items() if v is not None}
        if data:
            doc["data"] = data
        return doc

    def to_toml(self, header: str = "") -> str:
        import tomli_w

        comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
        return comments + ("\n" if comments else "") + tomli_w.dumps(self.to_dict())

    def write(self, path: str | Path, header: str = "") -> Path:
        """Write atomically (a temp file, then a rename)."""
        import os
        import tempfile

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(self.to_toml(header))
        os.replace(tmp, path)
        return path


def resolve(recipe: str | Path | dict | None = None, overrides: dict | None = None) -> Recipe:
    """Defaults < the recipe (a TOML path, or a dict shaped like one) < ``overrides`` (same shape:
    TrainConfig field names, "augment" and "data" tables)."""
    from skulens.data.transforms import AugmentConfig
    from skulens.training.config import TrainConfig

    if recipe is None:
        base = {}
    elif isinstance(recipe, dict):
        base = check_recipe(recipe)
    else:
        base = read_recipe(recipe)
    settings = merge(base, check_recipe(overrides or {}))
    augment = settings.pop("augment", {})
    data = settings.pop("data", {})
    config = TrainConfig(**settings, augment=AugmentConfig(**augment))
    return Recipe(config, data)


# --- `skulens train`'s options -------------------------------------------------------------------


def _comma_list(kind: str):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if kind == "int":
            try:
                return [int(t) for t in items]
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 256,288: {text!r}") from None
        return items

    parse.__name__ = f"comma-separated {kind}"
    return parse


def _help(setting: Setting) -> str:
    """The help text with the default; with the recipe key where the flag does not spell it."""
    text = setting.flag_help or setting.help
    key = f"recipe: {setting.key}; " if setting.table or setting.name in FLAG_NAMES else ""
    return f"{text} ({key}default: {setting.default_text()})".replace("%", "%%")


def add_setting(group, setting: Setting, dest: str | None = None) -> None:
    """One option for ``setting``, default SUPPRESS: the namespace holds only the flags given."""
    kwargs: dict = {"dest": dest or setting.key, "default": argparse.SUPPRESS, "help": _help(setting)}
    if setting.name == "in_chans":
        kwargs.update(
            action="store_const",
            const=1,
            help=f"train on 1-channel images (recipe: in_chans = 1; default: {setting.default})",
        )
    elif setting.kind == "bool":
        kwargs.update(action="store_const", const=not setting.default)
    elif setting.kind.startswith("list["):
        kwargs.update(type=_comma_list(setting.kind[5:-1]), metavar="A,B")
    else:
        kwargs.update(
            type={"int": int, "float": float, "str": str}[setting.kind],
            choices=setting.choices,
            metavar=None
            if setting.choices
            else ("N" if setting.kind == "int" else "X" if setting.kind == "float" else "TEXT"),
        )
    group.add_argument(setting.flag, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`skulens train`'s options from the TrainConfig and AugmentConfig fields ([data]: the CLI's
    CSV column options, which other commands share)."""
    g = parser.add_argument_group("training settings (recipe keys; a flag overrides the --config file)")
    for setting in train_settings():
        add_setting(g, setting)
    a = parser.add_argument_group("augmentation (the recipe's [augment] table)")
    a.add_argument(
        "--no-augment",
        action="store_true",
        help="turn augmentation off: the whole photo, no flip, jitter or shear (wins over the [augment] settings)",
    )
    for setting in augment_settings():
        add_setting(a, setting)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The settings given on the command line (from :func:`add_arguments`), shaped like a recipe."""
    given = vars(args)
    out: dict = {s.name: given[s.key] for s in train_settings() if s.key in given}
    augment = {s.name: given[s.key] for s in augment_settings() if s.key in given}
    if given.get("no_augment"):
        augment.update(NO_AUGMENT)
    if augment:
        out["augment"] = augment
    return out
