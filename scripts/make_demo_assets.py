"""Rebuild the embedded default that `skulens serve` runs with no arguments (src/skulens/demo_assets):

- ``model/``: a trained run (config.json + weights stored as float16 to halve the file; they are
  widened back to float32 on load) and its checked INT8 export, which `skulens serve` runs on a CPU and
  the web page runs on the shopper's device (issue 19). By default the best Grocery Store model that
  fits the page's budget (BENCHMARKS.md, "On the shopper's device": `benchmarks/demo_model_candidates.py`);
- ``catalog/``: the 81 Grocery Store products (iconic image shrunk to 256 px, description, category
  path) as products.csv + images/, imported into a local catalog database on first start;
- ``detector/``: the product detector (issue 18) as its checked INT8 ONNX export only (detector.json,
  export.json, detector.int8.onnx), so that `skulens serve` with no arguments finds each product of a
  photo of several (`skulens detector export` must have passed the INT8 check);
- ``ATTRIBUTION.md``: the dataset's MIT licence and citation.

    python scripts/make_demo_assets.py --run runs/grocery-lite2 --detector runs/det-grocery \
        --data ../shared/datasets/grocery-store
    python scripts/make_demo_assets.py --only detector --detector runs/det-grocery   # that part alone

Budgets: the INT8 model, which the page downloads once, at most 10 MB (MODEL_LIMIT_BYTES); the whole
folder at most 24 MiB (the float16 weights stay for Grad-CAM and the PyTorch engine; the detector
is about 4 MB).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from PIL import Image
from safetensors.torch import load_file

from skulens.data.datasets import load_dataset
from skulens.runs import save_tensors_atomic

OUT = Path(__file__).resolve().parents[1] / "src" / "skulens" / "demo_assets"
SIDE = 256
LIMIT_BYTES = 24 * 2**20
MODEL_LIMIT_BYTES = 10_000_000


def write_model(run: Path, out: Path) -> None:
    out.mkdir(parents=True)
    config = json.loads((run / "config.json").read_text())
    # Paths of the machine that trained it mean nothing elsewhere; keep the recipe, drop the paths.
    for key in ("dataset", "weights"):
        if key in config.get("train_args", {}):
            config["train_args"][key] = Path(str(config["train_args"][key])).name if config["train_args"][key] else None
    config["train_args"]["stored_as"] = "float16 (scripts/make_demo_assets.py)"
    (out / "config.json").write_text(json.dumps(config, indent=1))
    state = load_file(str(run / "model.safetensors"))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_tensors_atomic(out / "model.safetensors", half)  # also records its sha256 in checksums.json


def write_int8(out: Path, data: Path) -> None:
    """The INT8 export of the float16 weights as shipped (its record ties it to them), checked on val."""
    from skulens.engines.onnx_export import export_onnx
    from skulens.runs import EXPORT_FILE, ONNX_INT8, RunFolder

    dataset = load_dataset(data)
    # INT8 weights, FP32 arithmetic: the page (WebAssembly) and the server (x86) then give the same
    # probabilities; static INT8 rounded activations differently on each (BENCHMARKS.md, issue 19).
    export_onnx(out, int8=True, int8_only=True, int8_weights_only=True, dataset=dataset, max_top1_drop_int8=2.0)
    folder = RunFolder(out)
    record = folder.read_json(EXPORT_FILE)
    folder.write_json(EXPORT_FILE, {**record, "run_dir": "skulens/demo_assets/model"})  # not this machine's path
    size = (out / ONNX_INT8).stat().st_size
    if size > MODEL_LIMIT_BYTES:
        limit = MODEL_LIMIT_BYTES / 1e6
        raise SystemExit(f"the INT8 model is {size / 1e6:.1f} MB, over the page's {limit:.0f} MB budget")


def write_detector(detector: Path, out: Path) -> None:
    """The detector's record and its INT8 model, with an export record that lists only that file."""
    from skulens.engines.detector import DETECTOR_CONFIG, DETECTOR_EXPORT, DETECTOR_INT8, current_detector_export

    export = current_detector_export(detector)
    if export is None or not export.get("int8", {}).get("passed"):
        raise SystemExit(f"{detector}: no current INT8 export that passed its check; run `skulens detector export`")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy(detector / DETECTOR_INT8, out / DETECTOR_INT8)
    record = json.loads((detector / DETECTOR_CONFIG).read_text())
    training = record.get("training", {})
    training["dataset"] = Path(str(training.get("dataset", ""))).name or None  # not this machine's path
    (out / DETECTOR_CONFIG).write_text(json.dumps(record, indent=1))
    shipped = {**export, "files": {DETECTOR_INT8: export["files"][DETECTOR_INT8]}}
    (out / DETECTOR_EXPORT).write_text(json.dumps(shipped, indent=1))


def write_catalog(data: Path, out: Path) -> None:
    dataset = load_dataset(data)
    images = out / "images"
    images.mkdir(parents=True)
    rows = []
    for label, name in enumerate(dataset.classes):
        iconic = dataset.catalog_images[label]
        img = Image.open(iconic).convert("RGB")
        img.thumbnail((SIDE, SIDE), Image.LANCZOS)
        img.save(images / f"{name}.jpg", quality=82, optimize=True)  # re-encoded: no metadata kept
        text = iconic.with_name(iconic.name.replace("_Iconic.jpg", "_Description.txt"))
        description = text.read_text(encoding="utf-8", errors="replace").strip() if text.is_file() else ""
        department, coarse, fine = dataset.tree.paths[label]
        rows.append(
            {
                "sku": name,
                "image": f"images/{name}.jpg",
                "title": name.replace("-", " "),
                "department": department,
                "coarse": coarse,
                "fine": fine,
                "description": description,
            }
        )
    with (out / "products.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/grocery-lite2")
    p.add_argument("--detector", default="runs/det-grocery")
    p.add_argument("--only", choices=("all", "detector"), default="all", help="rebuild only the detector folder")
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "grocery-store"))
    args = p.parse_args()
    if args.only == "all":
        write_everything_but_the_detector(args)
    write_detector(Path(args.detector), OUT / "detector")
    for f in OUT.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)  # temp-file writes are 0600; package data must be readable
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT}: {total / 2**20:.2f} MiB")
    if total > LIMIT_BYTES:
        raise SystemExit(f"demo assets are {total / 2**20:.1f} MiB, over the {LIMIT_BYTES / 2**20:.0f} MiB budget")


def write_everything_but_the_detector(args) -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    write_model(Path(args.run), OUT / "model")
    write_int8(OUT / "model", Path(args.data))
    write_catalog(Path(args.data), OUT / "catalog")
    licence = (Path(args.data) / "LICENSE").read_text()
    (OUT / "ATTRIBUTION.md").write_text(
        "# Demo assets\n\nThe catalog images and descriptions, and the photos the demo model was trained on, come from "
        'the Grocery Store dataset by Marcus Klasson, Cheng Zhang and Hedvig Kjellström, "A Hierarchical '
        'Grocery Store Image Dataset with Visual and Semantic Labels", WACV 2019 '
        "(https://github.com/marcusklasson/GroceryStoreDataset), under the MIT licence:\n\n```\n"
        + licence.strip()
        + "\n```\n"
    )


if __name__ == "__main__":
    main()
