"""Decoding overlapped with inference (skulens.data.pipeline): order kept, a bad item reported in
its place, and the thread split that keeps the two pools off each other's cores."""

from __future__ import annotations

import threading
import time

import pytest

from skulens.data.pipeline import ordered_map, threads_beside
from skulens.errors import ImageError


def _slow_square(n: int) -> int:
    if n == 3:
        raise ImageError("photo 3 is broken")
    time.sleep(0.02 if n % 2 else 0.001)  # out-of-order finishing: results must still come in order
    return n * n


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_input_order_and_a_bad_item_in_its_place(workers):
    out = list(ordered_map(_slow_square, range(8), workers, ahead=4))
    assert [item for item, _, _ in out] == list(range(8))
    assert [value for _, value, _ in out] == [0, 1, 4, None, 16, 25, 36, 49]
    assert [error for _, _, error in out] == [None, None, None, "photo 3 is broken", None, None, None, None]


def test_work_runs_in_other_threads_and_no_more_than_ahead_are_in_flight():
    started, names = [], set()

    def record(n):
        started.append(n)
        names.add(threading.current_thread().name)
        return n

    consumed = []
    for item, _, _ in ordered_map(record, range(20), workers=2, ahead=3):
        consumed.append(item)
        assert len(started) <= len(consumed) + 3  # bounded look-ahead: memory stays flat on a big folder
    assert consumed == list(range(20)) and all(name.startswith("skulens-decode") for name in names)


def test_an_unexpected_error_is_not_swallowed():
    def boom(n):
        raise ValueError("a bug, not a bad photo")

    with pytest.raises(ValueError, match="a bug"):
        list(ordered_map(boom, range(3), workers=1))


def test_the_model_gets_the_cores_the_decoders_leave(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert threads_beside(2) == 6 and threads_beside(8) == 1 and threads_beside(0) == 8


def test_predict_files_keeps_order_and_reports_a_bad_file_with_decode_threads(trained_run, tmp_path):
    from skulens.recognition.recognizer import Recognizer

    run, data = trained_run
    photos = sorted((data / "test").rglob("*.jpg"))[:5] if (data / "test").is_dir() else sorted(data.rglob("*.jpg"))[:5]
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_text("notes, not a photo")
    paths = photos[:2] + [bad] + photos[2:]
    recognizer = Recognizer.load(run, engine="torch", device="cpu")
    serial = list(recognizer.predict_files(paths, batch_size=2, workers=0))
    threaded = list(recognizer.predict_files(paths, batch_size=2, workers=2))
    assert [p for p, _, _ in threaded] == paths
    assert threaded[2][1] is None and threaded[2][2] and serial[2][2] == threaded[2][2]
    for (_, a, _), (_, b, _) in zip(serial, threaded):
        if a is not None:
            assert a.label == b.label and a.confidence == pytest.approx(b.confidence, abs=1e-6)


def test_predict_threads_and_workers_flags_change_speed_not_answers(trained_run, capsys):
    from skulens.cli.main import main

    run, data = trained_run
    folder = data / "test" if (data / "test").is_dir() else data
    outputs = []
    for flags in (["--workers", "0", "--threads", "1"], ["--workers", "2"]):
        assert main(["predict", str(run), str(folder), "--engine", "torch", *flags]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] and outputs[0].count("\n") >= 4
