"""The command line end to end, and its bad-input behaviour: one clear line, non-zero exit, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import coloured_photo, jpeg_bytes, write_class_folders
from tests.helpers import run_cli as skulens


def assert_clean_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert fragment in proc.stderr, proc.stderr


@pytest.mark.slow
def test_train_evaluate_predict_end_to_end(tmp_path):
    data = write_class_folders(tmp_path / "shop", per_class=10)
    run = tmp_path / "run"
    proc = skulens(
        "train",
        str(data),
        "--model",
        "seedcnn",
        "--epochs",
        "2",
        "--img-size",
        "32",
        "--batch-size",
        "8",
        "--out",
        str(run),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert "best validation top-1" in proc.stdout
    proc = skulens("evaluate", str(run), str(data), "--split", "test", "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["n_images"] == 9 and 0 <= metrics["top1"] <= 1 and metrics["top5"] == 1.0
    report = Path(metrics["out_dir"])
    assert (report / "report.md").is_file() and (report / "confusion_matrix.png").is_file()
    assert "macro F1" in (report / "report.md").read_text()
    proc = skulens("predict", str(run), str(data / "test" / "red"), "--json", "--top-k", "2")
    assert proc.returncode == 0, proc.stderr
    preds = json.loads(proc.stdout)
    assert len(preds) == 3 and all(len(p["top_k"]) == 2 for p in preds)
    # The command answers what the Python API answers for the same photos, probabilities included.
    from skulens import Recognizer

    recognizer = Recognizer.load(run, device="cpu")
    for p in preds:
        expected = recognizer.predict(p["source"], top_k=2)
        assert p["label"] == expected.label
        assert [(c["label"], c["confidence"]) for c in p["top_k"]] == [
            (c.label, pytest.approx(c.confidence, abs=1e-6)) for c in expected.top_k
        ]


@pytest.fixture
def bad_images(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    coloured_photo((200, 0, 0), 1).save(folder / "a_good.jpg")
    (folder / "b_text.jpg").write_text("hello, not a photo")
    data = jpeg_bytes(coloured_photo((0, 200, 0), 2, 200))
    (folder / "c_truncated.jpg").write_bytes(data[: len(data) // 2])
    coloured_photo((0, 0, 200), 3).convert("CMYK").save(folder / "d_cmyk.jpg")
    coloured_photo((0, 0, 200), 3).convert("RGBA").save(folder / "e_rgba.png")
    coloured_photo((0, 0, 200), 3).convert("P").save(folder / "f_palette.png")
    from PIL import Image

    Image.new("1", (12_000, 12_000)).save(folder / "g_bomb.png")
    return folder


@pytest.mark.slow
def test_predict_processes_the_good_files_and_reports_the_bad(trained_run, bad_images):
    run, _ = trained_run
    proc = skulens("predict", str(run), str(bad_images), str(bad_images / "missing.jpg"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    printed = proc.stdout.splitlines()
    assert sorted(Path(line.split("\t")[0]).name for line in printed) == [
        "a_good.jpg",
        "d_cmyk.jpg",
        "e_rgba.png",
        "f_palette.png",
    ]
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 4
    assert any("b_text.jpg: not an image" in e for e in errors)
    assert any("c_truncated.jpg: image data is truncated" in e for e in errors)
    assert any("g_bomb.png: image is 12000x12000 pixels" in e for e in errors)
    assert any("missing.jpg: file not found" in e for e in errors)


@pytest.mark.slow
def test_missing_things_get_one_line(tmp_path, trained_run):
    run, data = trained_run
    assert_clean_error(skulens("train", str(tmp_path / "nope"), "--out", str(tmp_path / "r")), "dataset not found")
    (tmp_path / "empty").mkdir()
    assert_clean_error(skulens("train", str(tmp_path / "empty"), "--out", str(tmp_path / "r")), "no class folders")
    assert_clean_error(skulens("predict", str(tmp_path / "norun"), "x.jpg"), "run folder not found")
    assert_clean_error(skulens("evaluate", str(run), str(data), "--split", "holdout"), "no images in split 'holdout'")
    assert_clean_error(skulens("train", str(data), "--model", "nonet", "--out", str(tmp_path / "r2")), "unknown model")
    assert_clean_error(skulens("train", str(data), "--out", str(tmp_path / "r3"), "--resume"), "nothing to resume")


def test_data_check_finds_leakage_and_broken_files(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=6)
    leaked = next((data / "test" / "red").iterdir())
    shutil.copy(leaked, data / "train" / "red" / "copy_of_test.jpg")
    (data / "train" / "blue" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    coloured_photo((1, 1, 1), 0, size=20).save(data / "train" / "green" / "tiny.jpg")
    proc = skulens("data", "check", str(data), "--json")
    assert proc.returncode == 1  # problems found
    report = json.loads(proc.stdout)
    assert report["counts"]["train"]["red"] == 7
    assert [Path(u["path"]).name for u in report["unreadable"]] == ["broken.jpg"]
    assert len(report["cross_split_duplicates"]) == 1
    assert {d["split"] for d in report["cross_split_duplicates"][0]} == {"train", "test"}
    assert [Path(s["path"]).name for s in report["small_images"]] == ["tiny.jpg"]
    table = skulens("data", "check", str(data))
    assert "duplicates across splits" in table.stdout and "Traceback" not in table.stderr


def test_data_check_clean_dataset_exits_zero(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=4)
    proc = skulens("data", "check", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["imbalance_ratio"] == 1.0
