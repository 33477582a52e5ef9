"""`skulens report`: a merchandiser's page about a catalog and what shoppers photograph.

:func:`build_report` reads plain records, writes one CSV per table, one PNG per chart and an
``index.html`` that shows them with plain sentences. The CSV files hold every number the charts
show, so nothing has to be read off a bar.
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from statistics import median

from jinja2 import Environment
from tqdm import tqdm

from skulens.analytics import charts
from skulens.analytics.colours import NAMED_COLOURS, cluster_colours, dominant_colours
from skulens.analytics.records import NOT_GIVEN, UNKNOWN, ProductRecord, Recognition
from skulens.analytics.template import PAGE
from skulens.errors import SkulensError

FEW_IMAGES = 10  # a class with fewer photos than this is hard to learn and to judge
TIMELINE_CATEGORIES = 8  # more stacked colours than this cannot be told apart
PALETTE_SIZE = 8
PREVIEW_ROWS = 12


@dataclass
class Table:
    file: str
    columns: list[str]
    rows: list[list]
    swatch_column: int | None = None

    @property
    def preview(self) -> list[list]:
        return self.rows[:PREVIEW_ROWS]


@dataclass
class Chart:
    file: str
    alt: str


@dataclass
class Block:
    """Sentences, then a chart, then the table with its numbers: read together, so shown together."""

    text: list[str] = field(default_factory=list)
    chart: Chart | None = None
    table: Table | None = None


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Block] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _pct(n: int, total: int) -> float:
    return round(100 * n / total, 2) if total else 0.0


class _Writer:
    """Writes a report's files into one folder, never the same file name twice."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.used: set[str] = set()

    def name(self, stem: str, suffix: str) -> str:
        base = _slug(stem)
        candidate, n = f"{base}{suffix}", 2
        while candidate in self.used:
            candidate, n = f"{base}-{n}{suffix}", n + 1
        self.used.add(candidate)
        return candidate

    def table(self, stem: str, columns: list[str], rows: list[list], swatch_column: int | None = None) -> Table:
        file = self.name(stem, ".csv")
        with (self.out_dir / file).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            writer.writerows(rows)
        return Table(file, columns, rows, swatch_column)

    def chart(self, stem: str) -> tuple[str, Path]:
        file = self.name(stem, ".png")
        return file, self.out_dir / file


def _count_rows(counter: Counter, total: int) -> list[tuple[str, int, float]]:
    return [(key, n, _pct(n, total)) for key, n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]


# --- catalog sections ---------------------------------------------------------------------------


def _category_sections(records: list[ProductRecord], level_names: list[str], w: _Writer, unit: str) -> list[Section]:
    section = Section("Categories", "categories")
    total = len(records)
    for level, level_name in enumerate(level_names):
        counts = Counter(r.path[: level + 1] for r in records if len(r.path) > level)
        if not counts:
            continue
        names = Counter(p[-1] for p in counts)
        # The plain name reads best; its parent is added only where two parents share the name.
        label = {p: p[-1] if names[p[-1]] == 1 or level == 0 else f"{p[-1]} ({p[-2]})" for p in counts}
        rows = [
            [p[-1], " > ".join(p[:-1]), n, _pct(n, total)]
            for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        table = w.table(f"categories-{level + 1}-{level_name}", ["category", "parent", unit, "percent"], rows)
        file, png = w.chart(f"categories-{level + 1}-{level_name}")
        keys = list(counts)
        charts.bar_chart(
            [label[k] for k in keys], [counts[k] for k in keys], png, f"{unit.capitalize()} per {level_name}", unit=unit
        )
        biggest, n = rows[0][0], rows[0][2]
        section.blocks.append(
            Block(
                [
                    f"{level_name}: {len(counts)} categories; the largest is {biggest} with {n:,} {unit} "
                    f"({_pct(n, total):.1f}%)."
                ],
                Chart(file, f"{unit} per {level_name}"),
                table,
            )
        )
    return [section] if section.blocks else []


def _imbalance_section(records: list[ProductRecord], w: _Writer) -> tuple[list[Section], dict]:
    counts = Counter(r.path for r in records if r.path)
    if not counts:
        return [], {}
    total = sum(counts.values())
    rows = [
        [" > ".join(p), n, _pct(n, total), "yes" if n < FEW_IMAGES else ""]
        for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    table = w.table("images-per-class", ["class", "images", "percent", f"under {FEW_IMAGES} images"], rows)
    file, png = w.chart("images-per-class")
    charts.imbalance_chart(list(counts.values()), png, "Images per class", FEW_IMAGES)
    few = [r for r in rows if r[1] < FEW_IMAGES]
    largest, smallest = rows[0], rows[-1]
    ratio = largest[1] / smallest[1]
    text = [
        f"{len(rows)} classes, {total:,} images; median {median(counts.values()):g} images per class.",
        f"Largest: {largest[0]} ({largest[1]:,}); smallest: {smallest[0]} ({smallest[1]:,}); "
        f"the largest has {ratio:.1f}x as many images as the smallest.",
        (
            f"{len(few)} classes have fewer than {FEW_IMAGES} images: photograph more of them before relying on "
            f"the recognizer there."
            if few
            else f"Every class has at least {FEW_IMAGES} images."
        ),
    ]
    numbers = {
        "classes": len(rows),
        "images": total,
        "largest": largest[1],
        "smallest": smallest[1],
        "ratio": round(ratio, 2),
        "classes_under_few": len(few),
    }
    return [Section("Images per class", "imbalance", [Block(text, Chart(file, "images per class"), table)])], numbers


def _attribute_section(
    records: list[ProductRecord], attribute_names: list[str], w: _Writer, unit: str
) -> list[Section]:
    if not attribute_names:
        return []
    section = Section("Attributes", "attributes")
    total = len(records)
    for name in attribute_names:
        counts = Counter((r.attributes.get(name) or "").strip() or NOT_GIVEN for r in records)
        rows = [list(row) for row in _count_rows(counts, total)]
        table = w.table(f"attribute-{name}", [name, unit, "percent"], rows)
        file, png = w.chart(f"attribute-{name}")
        charts.bar_chart([r[0] for r in rows], [r[1] for r in rows], png, f"{unit.capitalize()} by {name}", unit=unit)
        missing = counts.get(NOT_GIVEN, 0)
        text = f"{name}: {len(counts)} values; most common {rows[0][0]} ({rows[0][2]:.1f}%)" + (
            f"; not given for {missing:,} {unit} ({_pct(missing, total):.1f}%)." if missing else "."
        )
        section.blocks.append(Block([text], Chart(file, f"{unit} by {name}"), table))
    return [section]


def _colour_section(
    records: list[ProductRecord], w: _Writer, sample: int, seed: int, progress: bool, unit: str
) -> tuple[list[Section], dict]:
    with_images = [r for r in records if r.image is not None]
    n_with_images = len(with_images)
    if not with_images or sample <= 0:
        return [], {}
    with_images = _sample_records(with_images, sample, seed)
    per_product, failures = _measure_colours(with_images, seed, progress)
    if not per_product:
        message = f"None of the {len(with_images)} sampled images could be read."
        return [Section("Colours", "colours", [Block([message])])], {}
    n = len(per_product)
    product_table = _product_colour_table(per_product, w)
    named_rows, named_block = _main_colour_block(product_table.rows, n, w, unit)
    palette_file, palette_table = _palette_chart(per_product, w, seed)
    sampled = f"{n:,} {unit}" + (f" sampled from {n_with_images:,}" if len(with_images) < n_with_images else "")
    text = [
        f"Colours measured on the photos of {sampled} (backdrop left out); the most common main colour is "
        f"{named_rows[0][0]} ({named_rows[0][2]:.1f}% of {unit})."
    ]
    if failures:
        text.append(f"{failures} image(s) could not be read and were left out.")
    section = Section(
        "Colours",
        "colours",
        [
            Block(text, Chart(palette_file, "colour palette"), palette_table),
            named_block,
            Block(["The main colour of each product photo:"], None, product_table),
        ],
    )
    return [section], {"products_measured": n, "unreadable": failures}


def _sample_records(records: list[ProductRecord], sample: int, seed: int) -> list[ProductRecord]:
    """At most ``sample`` records, drawn with ``seed`` and kept in their order, so reports repeat."""
    if len(records) <= sample:
        return records
    chosen = sorted(random.Random(seed).sample(range(len(records)), sample))
    return [records[i] for i in chosen]


def _measure_colours(
    records: list[ProductRecord], seed: int, progress: bool
) -> tuple[list[tuple[ProductRecord, list]], int]:
    """Each record's dominant colours (records without any left out), and how many images could not be read."""
    per_product, failures = [], 0
    for record in tqdm(records, desc="colours", unit="image", disable=not progress, leave=False):
        try:
            swatches = dominant_colours(record.image, seed=seed)
        except SkulensError:
            # One unreadable photo should not sink the page; the count is reported instead.
            failures += 1
            continue
        if swatches:
            per_product.append((record, swatches))
    return per_product, failures


def _product_colour_table(per_product: list[tuple[ProductRecord, list]], w: _Writer) -> Table:
    """One row per measured product: its photo, category and main colour."""
    product_rows = [
        [str(r.image), " > ".join(r.path), s[0].name, s[0].hex, round(100 * s[0].share, 1)] for r, s in per_product
    ]
    return w.table(
        "product-colours",
        ["image", "category", "main colour", "hex", "percent of the product"],
        product_rows,
        swatch_column=3,
    )


def _main_colour_block(product_rows: list[list], n: int, w: _Writer, unit: str) -> tuple[list[list], Block]:
    """Products per named main colour: the count rows, and the chart with its table."""
    named = Counter(row[2] for row in product_rows)
    named_rows = [list(row) for row in _count_rows(named, n)]
    named_table = w.table("main-colours", ["main colour", unit, "percent"], named_rows)
    named_file, named_png = w.chart("main-colours")
    charts.bar_chart(
        [r[0] for r in named_rows],
        [r[1] for r in named_rows],
        named_png,
        f"{unit.capitalize()} by main colour",
        unit=unit,
        colours=["#{:02x}{:02x}{:02x}".format(*NAMED_COLOURS[r[0]]) for r in named_rows],
    )
    return named_rows, Block([], Chart(named_file, f"{unit} by main colour"), named_table)


def _palette_chart(per_product: list[tuple[ProductRecord, list]], w: _Writer, seed: int) -> tuple[str, Table]:
    """The catalog's palette, clustered from every product's swatches: the chart's file and its table."""
    # Every product weighs the same in the palette, whatever its pixel count.
    labs = [s.lab for _, swatches in per_product for s in swatches]
    weights = [s.share for _, swatches in per_product for s in swatches]
    palette = cluster_colours(labs, PALETTE_SIZE, weights=weights, seed=seed, n_init=4)
    palette_rows = [[s.hex, s.name, round(100 * s.share, 2), *(round(v, 1) for v in s.lab)] for s in palette]
    palette_table = w.table("colour-palette", ["hex", "name", "percent", "L", "a", "b"], palette_rows, swatch_column=0)
    palette_file, palette_png = w.chart("colour-palette")
    charts.swatch_chart(
        [s.hex for s in palette],
        [s.share for s in palette],
        [s.name for s in palette],
        palette_png,
        "The catalog's colour palette (share of product area)",
    )
    return palette_file, palette_table


# --- recognitions -------------------------------------------------------------------------------


def _period_start(day: date, period: str) -> date:
    return day - timedelta(days=day.weekday()) if period == "week" else day


def _recognition_sections(log: list[Recognition], w: _Writer, period: str) -> tuple[list[Section], dict]:
    days = [r.time.date() for r in log]
    first, last = min(days), max(days)
    period = _report_period(period, first, last)
    unknown = sum(r.top_category == UNKNOWN for r in log)
    by_category = Counter(r.top_category for r in log)
    most = _photographed_section(log, w, _recognition_overview(log, first, last, unknown), by_category)
    trend = _over_time_section(log, w, period, first, last, by_category)
    numbers = {
        "photos": len(log),
        "first": first.isoformat(),
        "last": last.isoformat(),
        "period": period,
        "unknown": unknown,
    }
    return [most, trend], numbers


def _report_period(period: str, first: date, last: date) -> str:
    if period == "auto":
        period = "day" if (last - first).days <= 45 else "week"
    if period not in ("day", "week"):
        raise SkulensError(f"--period must be auto, day or week, not {period!r}")
    return period


def _recognition_overview(log: list[Recognition], first: date, last: date, unknown: int) -> list[str]:
    total = len(log)
    confidences = [r.confidence for r in log if r.confidence is not None]
    overview = [f"{total:,} photos recognised from {first.isoformat()} to {last.isoformat()}."]
    if unknown:
        overview.append(
            f"{unknown:,} ({_pct(unknown, total):.1f}%) got no catalog answer (unknown): "
            f"shoppers look for things the catalog may not have."
        )
    if confidences:
        overview.append(f"Median confidence {100 * median(confidences):.0f}%.")
    return overview


def _photographed_section(log: list[Recognition], w: _Writer, overview: list[str], by_category: Counter) -> Section:
    """What shoppers photograph: photos per top category and per product, as charts and tables."""
    total = len(log)
    cat_rows = [list(row) for row in _count_rows(by_category, total)]
    cat_table = w.table("recognitions-by-category", ["top category", "photos", "percent"], cat_rows)
    cat_file, cat_png = w.chart("recognitions-by-category")
    charts.bar_chart(
        [r[0] for r in cat_rows],
        [r[1] for r in cat_rows],
        cat_png,
        "What shoppers photograph: top categories",
        unit="photos",
    )
    by_label = Counter((UNKNOWN,) if r.top_category == UNKNOWN else (r.path or (r.label,)) for r in log)
    label_rows = [
        [p[-1], " > ".join(p), n, _pct(n, total)] for p, n in sorted(by_label.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
    label_table = w.table("recognitions-by-product", ["product", "category path", "photos", "percent"], label_rows)
    label_file, label_png = w.chart("recognitions-by-product")
    charts.bar_chart(
        [" > ".join(p) for p in by_label],
        list(by_label.values()),
        label_png,
        "What shoppers photograph: products",
        unit="photos",
    )
    return Section(
        "What shoppers photograph",
        "photographed",
        [
            Block(overview, Chart(cat_file, "photos per top category"), cat_table),
            Block([], Chart(label_file, "photos per product"), label_table),
        ],
    )


def _period_counts(
    log: list[Recognition], period: str, first: date, last: date
) -> tuple[list[date], dict[date, Counter]]:
    """Every period's first day from first to last (quiet ones too), and photos per top category in each."""
    step = 7 if period == "week" else 1
    starts, cursor = [], _period_start(first, period)
    while cursor <= last:
        starts.append(cursor)
        cursor += timedelta(days=step)
    per_period: dict[date, Counter] = defaultdict(Counter)
    for r in log:
        per_period[_period_start(r.time.date(), period)][r.top_category] += 1
    return starts, per_period


def _period_rows(starts: list[date], per_period: dict[date, Counter], by_category: Counter) -> list[list]:
    time_rows = []
    for start in starts:
        in_period = sum(per_period[start].values())
        # Zeros included, so a spreadsheet pivot of this file shows quiet periods too.
        for cat in sorted(by_category, key=lambda c: (-per_period[start][c], -by_category[c], c)):
            n = per_period[start][cat]
            time_rows.append([start.isoformat(), cat, n, _pct(n, in_period)])
    return time_rows


def _over_time_section(
    log: list[Recognition], w: _Writer, period: str, first: date, last: date, by_category: Counter
) -> Section:
    """Photos per day or week by top category: the table, the timeline of the top few, the busiest period."""
    starts, per_period = _period_counts(log, period, first, last)
    time_rows = _period_rows(starts, per_period, by_category)
    period_column = "day" if period == "day" else "week starting"
    time_table = w.table(
        f"recognitions-per-{period}", [period_column, "top category", "photos", f"percent of the {period}"], time_rows
    )
    top = [c for c, _ in by_category.most_common(TIMELINE_CATEGORIES)]
    series = {c: [per_period[s][c] for s in starts] for c in top}
    rest = [sum(per_period[s].values()) - sum(per_period[s][c] for c in top) for s in starts]
    if any(rest):
        series["other"] = rest
    time_file, time_png = w.chart(f"recognitions-per-{period}")
    charts.timeline_chart(
        [s.isoformat() for s in starts], series, time_png, f"Photos per {period}, by top category", period_column
    )
    busiest = max(starts, key=lambda s: sum(per_period[s].values()))
    return Section(
        f"Photos per {period}",
        "over-time",
        [
            Block(
                [
                    f"The busiest {period} was the one starting {busiest.isoformat()} with "
                    f"{sum(per_period[busiest].values()):,} photos."
                ],
                Chart(time_file, f"photos per {period}"),
                time_table,
            )
        ],
    )


# --- the page -----------------------------------------------------------------------------------


def build_report(
    out_dir: str | Path,
    *,
    products: Iterable[ProductRecord | dict] | None = None,
    recognitions: Iterable[Recognition | dict] | None = None,
    level_names: list[str] | None = None,
    attribute_names: list[str] | None = None,
    title: str | None = None,
    source: str = "records",
    colour_sample: int = 500,
    period: str = "auto",
    seed: int = 0,
    progress: bool = True,
    notes: Iterable[str] = (),
    unit: str = "products",
) -> dict:
    """Write ``index.html`` with PNG charts and CSV tables into ``out_dir``; returns a summary.

    ``products``: records or dicts ``{"path": [...], "attributes": {...}, "image": ...}``;
    ``recognitions``: records or dicts ``{"time": ISO-8601, "label", "path", "confidence"}``.
    ``colour_sample`` caps the photos read for colours (0: no colour section). ``unit`` names what a
    record is in the page: "products" for a catalog, "images" for a training dataset.
    """
    products, log = _coerce_records(products, recognitions)
    out = _report_folder(out_dir)
    w = _Writer(out)
    sections: list[Section] = []
    numbers: dict = {}
    if products:
        catalog, catalog_numbers = _catalog_sections(
            products, w, level_names, attribute_names, notes, colour_sample, seed, progress, unit
        )
        sections += catalog
        numbers.update(catalog_numbers)
    elif notes:
        sections.append(Section("Notes", "notes", [Block(list(notes))]))
    if log:
        recog, numbers["recognitions"] = _recognition_sections(log, w, period)
        sections += recog
    title = title or ("Catalog report" if products else "What shoppers photograph")
    (out / "index.html").write_text(_render_page(title, source, sections), encoding="utf-8")
    files = sorted(w.used)
    return {
        "out_dir": str(out),
        "index": str(out / "index.html"),
        "files": files,
        "sections": [s.title for s in sections],
        "numbers": numbers,
    }


def _coerce_records(
    products: Iterable[ProductRecord | dict] | None, recognitions: Iterable[Recognition | dict] | None
) -> tuple[list[ProductRecord], list[Recognition]]:
    """Both inputs as records; a report needs at least one of them."""
    product_records = [ProductRecord.coerce(p) for p in products or []]
    try:
        log = [Recognition.coerce(r) for r in recognitions or []]
    except (ValueError, TypeError) as exc:
        raise SkulensError(f"bad recognition record ({exc})") from None
    if not product_records and not log:
        raise SkulensError("nothing to report: no products and no recognitions")
    return product_records, log


def _report_folder(out_dir: str | Path) -> Path:
    """``out_dir``, created if needed; a file of that name is an error, not something to overwrite."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SkulensError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _level_names(level_names: list[str] | None, depth: int) -> list[str]:
    """One name per category level: the given ones (cut to ``depth``), then "level N" for the rest."""
    given = list(level_names or [])
    return given[:depth] + [f"level {i + 1}" for i in range(len(given), depth)]


def _catalog_sections(
    products: list[ProductRecord],
    w: _Writer,
    level_names: list[str] | None,
    attribute_names: list[str] | None,
    notes: Iterable[str],
    colour_sample: int,
    seed: int,
    progress: bool,
    unit: str,
) -> tuple[list[Section], dict]:
    """The catalog's part of the page (overview, categories, images per class, attributes, colours)."""
    depth = max(len(p.path) for p in products)
    names = _level_names(level_names, depth)
    if attribute_names is None:
        attribute_names = list(dict.fromkeys(k for p in products for k in p.attributes))
    overview = Block(
        [f"{len(products):,} {unit} in {depth} level(s) of categories ({' > '.join(names)})."] + list(notes)
    )
    sections = [Section("Catalog", "catalog", [overview])]
    sections += _category_sections(products, names, w, unit)
    numbers: dict = {}
    imbalance, numbers["classes"] = _imbalance_section(products, w)
    sections += imbalance
    sections += _attribute_section(products, attribute_names, w, unit)
    colour, numbers["colours"] = _colour_section(products, w, colour_sample, seed, progress, unit)
    sections += colour
    numbers["products"] = len(products)
    return sections, numbers


def _render_page(title: str, source: str, sections: list[Section]) -> str:
    """The ``index.html`` text; autoescape, since titles and category names come from user data."""
    return (
        Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
        .from_string(PAGE)
        .render(title=title, source=source, sections=sections, created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
    )
