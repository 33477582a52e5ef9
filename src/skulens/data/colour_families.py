"""Colour families (``colour_families.toml``): which colour values a family a shopper names covers
(Blue: Blue, Navy Blue, Teal, Turquoise Blue), so filters and queries can say "Blue" and mean all
of them. The file is data, meant to be edited; ``nearest_family`` proposes a family for a new value
from its colour, by CIELAB distance."""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path

import numpy as np

from skulens.data.colour_space import srgb_to_lab
from skulens.errors import SkulensError

DEFAULT_FILE = Path(__file__).with_name("colour_families.toml")
# attribute names that hold a colour (what a family filter applies to)
COLOUR_ATTRIBUTES = frozenset({"colour", "color", "base_colour", "basecolour", "basecolor"})


@lru_cache(maxsize=4)
def load_families(path: str | Path = DEFAULT_FILE) -> tuple[dict[str, tuple[int, int, int]], dict[str, str]]:
    """``(family -> typical sRGB, value -> family)`` from a families file; one line when malformed."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        families = {str(k): tuple(int(c) for c in v) for k, v in data["families"].items()}
        values = {str(k): str(v) for k, v in data["values"].items()}
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SkulensError(f"{path}: not a colour families file ({exc})") from None
    unknown = sorted({f for f in values.values() if f not in families})
    if unknown:
        raise SkulensError(f"{path}: values point to families it does not define: {', '.join(unknown)}")
    return families, values


@lru_cache(maxsize=4)
def _by_lower_case(path: str | Path) -> dict[str, str]:
    families, values = load_families(path)
    return {**{f.lower(): f for f in families}, **{v.lower(): f for v, f in values.items()}}


def family_of(value: str, path: str | Path = DEFAULT_FILE) -> str:
    """The family of a colour value, whatever its case ("navy blue" -> Blue; a value the file does not
    list is its own family)."""
    return load_families(path)[1].get(value) or _by_lower_case(path).get(value.strip().lower(), value)


def members(family: str, path: str | Path = DEFAULT_FILE) -> list[str] | None:
    """Every value of ``family`` (case-insensitive name), or None when it is not a family."""
    families, values = load_families(path)
    name = next((f for f in families if f.lower() == family.strip().lower()), None)
    if name is None:
        return None
    return sorted(v for v, f in values.items() if f == name)


def nearest_family(rgb: tuple[int, int, int], path: str | Path = DEFAULT_FILE) -> tuple[str, float]:
    """The family whose typical colour is nearest to ``rgb`` in CIELAB, and that distance (Delta E 1976):
    a proposal for a new value, to check by eye before writing it into the file."""
    families, _ = load_families(path)
    names = list(families)
    centres = srgb_to_lab(np.array([families[n] for n in names]))
    distances = np.linalg.norm(centres - srgb_to_lab(np.array(rgb))[None, :], axis=1)
    best = int(np.argmin(distances))
    return names[best], float(distances[best])
