"""`skulens report`: numbers that match a hand count, dominant colours, and the recognitions log."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.analytics.colours import dominant_colours, lab_to_srgb, srgb_to_lab
from skulens.analytics.records import records_from_csv, records_from_dataset
from skulens.analytics.report import build_report
from skulens.data.datasets import load_dataset
from skulens.errors import SkulensError
from tests.conftest import FASHION, requires, write_class_folders
from tests.helpers import run_cli as skulens

RED, BLUE, GREEN = (215, 25, 30), (30, 60, 200), (40, 150, 60)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def product_photo(colour, backdrop=(255, 255, 255), size=(40, 48)) -> Image.Image:
    """A product in the middle of a studio backdrop, like a catalog shot."""
    img = Image.new("RGB", size, backdrop)
    img.paste(colour, (8, 8, size[0] - 8, size[1] - 8))
    return img


# --- colours ------------------------------------------------------------------------------------


def test_lab_conversion_matches_reference_values():
    assert srgb_to_lab(np.array([255, 0, 0])) == pytest.approx([53.24, 80.09, 67.20], abs=0.02)
    assert srgb_to_lab(np.array([255, 255, 255])) == pytest.approx([100, 0, 0], abs=0.01)
    rgb = np.array([[12, 200, 77], [90, 10, 160], [0, 0, 0]])
    assert (lab_to_srgb(srgb_to_lab(rgb)) == rgb).all()


def test_a_solid_red_photo_is_red():
    swatches = dominant_colours(Image.new("RGB", (32, 32), (220, 20, 30)))
    assert len(swatches) == 1 and swatches[0].name == "red" and swatches[0].share == 1.0
    assert swatches[0].rgb == pytest.approx((220, 20, 30), abs=1)


@pytest.mark.parametrize("backdrop", [(255, 255, 255), (205, 203, 198)])  # white, and a catalog's grey sweep
def test_the_backdrop_is_left_out(backdrop):
    main = dominant_colours(product_photo(BLUE, backdrop))[0]
    assert main.name == "blue" and main.share > 0.95


def test_a_white_product_on_white_is_white():
    assert dominant_colours(product_photo((250, 250, 250)))[0].name == "white"


# --- a small catalog, counted by hand -----------------------------------------------------------

CATALOG = [  # sku, department, kind, colour attribute, usage, photo colour
    ("s1", "Fruit", "Apple", "Red", "Snack", RED),
    ("s2", "Fruit", "Apple", "Red", "Baking", RED),
    ("s3", "Fruit", "Apple", "Green", "Snack", GREEN),
    ("s4", "Fruit", "Lime", "Green", "", GREEN),
    ("s5", "Fruit", "Lime", "Green", "Snack", GREEN),
    ("s6", "Veg", "Cabbage", "Red", "Snack", RED),
    ("s7", "Veg", "Cabbage", "Green", "Cooking", GREEN),
    ("s8", "Veg", "Beetroot", "Red", "Cooking", BLUE),
]


@pytest.fixture
def catalog_csv(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    with (tmp_path / "products.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "image", "title", "department", "kind", "colour", "usage", "split"])
        for sku, dept, kind, colour, usage, photo in CATALOG:
            product_photo(photo).save(tmp_path / "img" / f"{sku}.png")
            writer.writerow([sku, f"img/{sku}.png", f"{kind} number {sku}", dept, kind, colour, usage, "train"])
    return tmp_path / "products.csv"


@pytest.mark.slow
def test_catalog_report_numbers_match_a_hand_count(catalog_csv, tmp_path):
    out = tmp_path / "report"
    proc = skulens(
        "report", str(catalog_csv), "--label", "kind", "--tree-columns", "department", "--out", str(out), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (out / "index.html").is_file()
    assert all((out / f).is_file() and (out / f).stat().st_size > 0 for f in summary["files"])
    html = (out / "index.html").read_text()
    assert all(f'src="{f}"' in html for f in summary["files"] if f.endswith(".png"))

    departments = {
        r["category"]: (int(r["products"]), float(r["percent"])) for r in read_csv(out / "categories-1-department.csv")
    }
    assert departments == {"Fruit": (5, 62.5), "Veg": (3, 37.5)}
    kinds = read_csv(out / "categories-2-kind.csv")
    assert [(r["category"], r["parent"], int(r["products"])) for r in kinds] == [
        ("Apple", "Fruit", 3),
        ("Lime", "Fruit", 2),
        ("Cabbage", "Veg", 2),
        ("Beetroot", "Veg", 1),
    ]
    # Attribute columns are found on their own: sku and title are unique per row, split is skipped.
    assert sorted(f for f in summary["files"] if f.startswith("attribute-")) == [
        "attribute-colour.csv",
        "attribute-colour.png",
        "attribute-usage.csv",
        "attribute-usage.png",
    ]
    usage = {r["usage"]: int(r["products"]) for r in read_csv(out / "attribute-usage.csv")}
    assert usage == {"Snack": 4, "Cooking": 2, "Baking": 1, "(not given)": 1}
    per_class = read_csv(out / "images-per-class.csv")
    assert per_class[0]["class"] == "Fruit > Apple" and per_class[0]["images"] == "3"
    assert all(r["under 10 images"] == "yes" for r in per_class)
    # Colours measured on the photos, not read from the colour column (s8 is labelled Red, photographed blue).
    main = {r["main colour"]: int(r["products"]) for r in read_csv(out / "main-colours.csv")}
    assert main == {"green": 4, "red": 3, "blue": 1}
    assert summary["numbers"]["colours"]["products_measured"] == 8


def test_tree_columns_may_run_down_to_the_leaf(catalog_csv):
    catalog = records_from_csv(catalog_csv, tree_columns=["department", "kind"])  # no 'label' column
    assert catalog.level_names == ["department", "kind"] and catalog.records[0].path == ("Fruit", "Apple")
    assert catalog.records[0].attributes == {"colour": "Red", "usage": "Snack"}
    assert catalog.records[0].image == catalog_csv.parent / "img" / "s1.png"


def test_catalog_records_from_plain_dicts_and_html_escaping(tmp_path):
    products = [
        {"path": ["Sweets", "<script>alert(1)</script>"], "attributes": {"brand": "Acme"}},
        {"path": "Sweets > Toffee", "attributes": {"brand": "Acme"}},
        {"path": ["Drinks", "Cola"], "attributes": {"brand": "Fizz"}},
    ]
    summary = build_report(
        tmp_path, products=products, level_names=["aisle", "product"], colour_sample=0, progress=False
    )
    assert "colour-palette.csv" not in summary["files"]  # no images, no colour section
    html = (tmp_path / "index.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert {r["brand"]: r["products"] for r in read_csv(tmp_path / "attribute-brand.csv")} == {"Acme": "2", "Fizz": "1"}
    with pytest.raises(SkulensError, match="nothing to report"):
        build_report(tmp_path / "empty", products=[], recognitions=[])


def test_a_dataset_folder_gives_one_record_per_image(tmp_path):
    catalog = records_from_dataset(load_dataset(write_class_folders(tmp_path / "shop", per_class=6)))
    summary = build_report(
        tmp_path / "out",
        products=catalog.records,
        level_names=catalog.level_names,
        colour_sample=5,
        progress=False,
        unit="images",
    )
    counts = {r["category"]: int(r["images"]) for r in read_csv(tmp_path / "out" / "categories-1-class.csv")}
    assert counts == {"red": 12, "green": 12, "blue": 12}  # 6 train + 3 val + 3 test each
    assert summary["numbers"]["colours"]["products_measured"] == 5  # capped by colour_sample


# --- what shoppers photograph -------------------------------------------------------------------


def test_recognitions_log_report(tmp_path):
    lines = [
        {"time": "2024-05-06T09:00:00", "label": "Granny", "path": ["Fruit", "Apple", "Granny"], "confidence": 0.9},
        {
            "time": "2024-05-06T18:30:00+02:00",
            "label": "Banana",
            "path": ["Fruit", "Banana", "Banana"],
            "confidence": 0.8,
        },
        {"time": "2024-05-06T20:00:00", "label": "Carrot", "path": ["Veg", "Carrot", "Carrot"], "confidence": 0.7},
        {"time": "2024-05-08T10:00:00Z", "label": "Granny", "path": ["Fruit", "Apple", "Granny"], "confidence": 0.6},
        {"time": "2024-05-08T11:00:00", "label": "unknown", "path": [], "confidence": 0.2, "unknown": True},
    ]
    log = tmp_path / "recognitions.jsonl"
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json at all\n" + json.dumps({"label": "x"}) + "\n")
    out = tmp_path / "report"
    proc = skulens("report", str(log), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "2 line(s) left out" in proc.stderr and "index.html" in proc.stdout
    per_day = [(r["day"], r["top category"], int(r["photos"])) for r in read_csv(out / "recognitions-per-day.csv")]
    # The quiet day in between is listed too; each photo counts on the local date it was taken.
    assert per_day == [
        ("2024-05-06", "Fruit", 2),
        ("2024-05-06", "Veg", 1),
        ("2024-05-06", "unknown", 0),
        ("2024-05-07", "Fruit", 0),
        ("2024-05-07", "Veg", 0),
        ("2024-05-07", "unknown", 0),
        ("2024-05-08", "Fruit", 1),
        ("2024-05-08", "unknown", 1),
        ("2024-05-08", "Veg", 0),
    ]
    assert (out / "recognitions-per-day.png").is_file()
    top = {
        r["top category"]: (int(r["photos"]), float(r["percent"]))
        for r in read_csv(out / "recognitions-by-category.csv")
    }
    assert top == {"Fruit": (3, 60.0), "Veg": (1, 20.0), "unknown": (1, 20.0)}
    products = read_csv(out / "recognitions-by-product.csv")
    assert (products[0]["product"], products[0]["photos"]) == ("Granny", "2")
    assert "1 (20.0%) got no catalog answer" in (out / "index.html").read_text()

    weekly = build_report(tmp_path / "weekly", recognitions=lines, period="week", progress=False)
    rows = read_csv(tmp_path / "weekly" / "recognitions-per-week.csv")
    assert weekly["numbers"]["recognitions"]["period"] == "week"
    assert {(r["week starting"], r["top category"]): int(r["photos"]) for r in rows} == {
        ("2024-05-06", "Fruit"): 3,
        ("2024-05-06", "Veg"): 1,
        ("2024-05-06", "unknown"): 1,
    }


def test_bad_input_gets_one_line(tmp_path, catalog_csv):
    proc = skulens("report", str(catalog_csv), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "label not found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{}\n")
    proc = skulens("report", str(empty), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "no usable recognitions" in proc.stderr


@pytest.mark.slow
@requires(FASHION)
def test_fashion_catalog_report(tmp_path):
    catalog = records_from_csv(
        FASHION / "products.csv", label="article_type", tree_columns=["master_category", "sub_category"]
    )
    assert catalog.attribute_names == ["colour", "usage", "gender"]
    summary = build_report(
        tmp_path,
        products=catalog.records,
        level_names=catalog.level_names,
        attribute_names=catalog.attribute_names,
        colour_sample=20,
        progress=False,
    )
    top = read_csv(tmp_path / "categories-1-master-category.csv")
    assert sum(int(r["products"]) for r in top) == len(catalog.records) == summary["numbers"]["products"]
    assert summary["numbers"]["colours"]["products_measured"] == 20
