"""Probabilities of the demo model for 50 Grocery Store test photos through the CLI, the Python API
and the HTTP service: saved before a refactor, compared after it (issue 17: "behaviour kept").

    python scripts/behaviour_snapshot.py save benchmarks/results/behaviour_before.npz
    python scripts/behaviour_snapshot.py compare benchmarks/results/behaviour_before.npz

The 50 photos are every 50th line of test.txt; every fifth one is upscaled to 1,600 px on its longer
side (JPEG quality 95, made afresh each time: Pillow's resize and encoder are deterministic), so the
JPEG draft-size path of large photos is covered too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "grocery-store" / "dataset"
RUN = ROOT / "src" / "skulens" / "demo_assets" / "model"


def photos(folder: Path) -> list[Path]:
    lines = [ln.split(",")[0].strip() for ln in (DATA / "test.txt").read_text().splitlines() if ln.strip()]
    out = []
    for i, rel in enumerate(lines[::50][:50]):
        src = DATA / rel
        if i % 5 == 0:
            img = Image.open(src).convert("RGB")
            scale = 1600 / max(img.size)
            big = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
            dst = folder / f"{i:02d}_big_{src.name}"
            big.save(dst, quality=95)
            out.append(dst)
        else:
            out.append(src)
    return out


def full_vector(classes: list[str], top: list[dict]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    vec = np.full(len(classes), np.nan)
    for s in top:
        vec[index[s["label"]]] = s["confidence"]
    return vec


def through_cli(paths: list[Path], classes: list[str]) -> np.ndarray:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "skulens",
            "predict",
            str(RUN),
            *map(str, paths),
            "--json",
            "--top-k",
            str(len(classes)),
            "--engine",
            "torch",
            "--device",
            "cpu",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return np.stack([full_vector(classes, r["top_k"]) for r in json.loads(out)])


def through_python(paths: list[Path], classes: list[str]) -> np.ndarray:
    from skulens.recognition.recognizer import Recognizer

    rec = Recognizer.load(RUN, engine="torch", device="cpu")
    return np.stack(
        [full_vector(classes, [s.__dict__ for s in rec.predict(p, top_k=len(classes)).top_k]) for p in paths]
    )


def through_http(paths: list[Path], classes: list[str]) -> np.ndarray:
    from fastapi.testclient import TestClient

    from skulens.recognition.recognizer import Recognizer
    from skulens.serving import ServeConfig, create_app

    rec = Recognizer.load(RUN, engine="torch", device="cpu")
    rows = []
    with TestClient(create_app(ServeConfig(recognizer=rec, top_k=len(classes)))) as client:
        for p in paths:
            r = client.post("/v1/recognize", files={"image": (p.name, p.read_bytes(), "image/jpeg")})
            r.raise_for_status()
            rows.append(full_vector(classes, r.json()["top_k"]))
    return np.stack(rows)


def snapshot() -> dict[str, np.ndarray]:
    classes = json.loads((RUN / "config.json").read_text())["classes"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = photos(Path(tmp))
        return {
            "cli": through_cli(paths, classes),
            "python": through_python(paths, classes),
            "http": through_http(paths, classes),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save", "compare"])
    parser.add_argument("file")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"behaviour_snapshot: {DATA} is not here", file=sys.stderr)
        return 2
    now = snapshot()
    if args.action == "save":
        np.savez_compressed(args.file, **now)
        print(f"saved {args.file}: " + ", ".join(f"{k} {v.shape}" for k, v in now.items()))
        return 0
    before = np.load(args.file)
    worst = 0.0
    for key in ("cli", "python", "http"):
        diff = float(np.nanmax(np.abs(now[key] - before[key])))
        print(f"{key}: max |difference| {diff:.3g} over {now[key].shape[0]} photos")
        worst = max(worst, diff)
    print("same" if worst <= 1e-6 else "DIFFERENT")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
