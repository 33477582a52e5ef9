"""The FAISS index files beside a catalog: processes on one host that save into the same folder never
write into one file, the state always names a whole index, and older layouts still load."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from skulens.catalog import index as index_module
from skulens.catalog.index import VectorIndex


def _vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _index(n: int, seed: int) -> VectorIndex:
    ids = np.arange(n, dtype=np.int64)
    return VectorIndex.build(ids, _vectors(n, seed), dim=16, model_id="m", kind="flat", log_seq=n)


def test_concurrent_saves_leave_a_whole_index_that_matches_its_state(tmp_path):
    writers = {n: _index(n, seed=n) for n in (50, 80)}
    errors = []

    def save_many(index):
        try:
            for _ in range(25):
                index.save(tmp_path)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save_many, args=(ix,)) for ix in writers.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    loaded = VectorIndex.load(tmp_path)
    assert loaded is not None and loaded.state.ntotal in writers
    assert loaded.state.log_seq == loaded.state.ntotal  # the state belongs to the file it names
    assert not list(tmp_path.glob(".vectors.*.tmp"))  # no temporary left behind
    n = loaded.state.ntotal
    query = _vectors(n, seed=n)[3:4]
    scores, ids = loaded.search(query, 1)
    assert ids[0][0] == 3 and scores[0][0] > 0.999


def test_old_generations_go_once_no_reader_can_need_them(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "GENERATION_GRACE_SECONDS", 0.0)
    for n in (10, 20, 30):
        _index(n, seed=n).save(tmp_path)
    files = list(tmp_path.glob("vectors*.faiss"))
    assert [f.name for f in files] == [json.loads((tmp_path / "state.json").read_text())["file"]]
    assert VectorIndex.load(tmp_path).state.ntotal == 30


def test_a_folder_saved_by_an_older_skulens_still_loads(tmp_path):
    import faiss

    index = _index(12, seed=1)
    faiss.write_index(index.index, str(tmp_path / "vectors.faiss"))
    state = {**index.state.__dict__, "file_size": (tmp_path / "vectors.faiss").stat().st_size}
    (tmp_path / "state.json").write_text(json.dumps(state))
    assert VectorIndex.load(tmp_path).state.ntotal == 12


SAVER = """
import sys
import numpy as np
from pathlib import Path
from skulens.catalog.index import VectorIndex
n, folder = int(sys.argv[1]), Path(sys.argv[2])
vectors = np.random.default_rng(n).normal(size=(n, 16)).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
index = VectorIndex.build(np.arange(n, dtype=np.int64), vectors, dim=16, model_id="m", kind="flat", log_seq=n)
for _ in range(40):
    index.save(folder)
"""


@pytest.mark.slow  # two Python processes importing faiss and numpy
def test_two_processes_saving_at_once_many_times_leave_an_index_that_always_loads(tmp_path):
    """Two server processes on one host, one catalog: each saves its index 40 times while this process
    keeps loading it. Every load gets a whole index whose state is its own."""
    import subprocess
    import sys

    _index(50, seed=50).save(tmp_path)
    savers = [subprocess.Popen([sys.executable, "-c", SAVER, str(n), str(tmp_path)]) for n in (64, 96)]
    loads = 0
    while any(p.poll() is None for p in savers) or loads == 0:
        loaded = VectorIndex.load(tmp_path)
        assert loaded is not None and loaded.state.ntotal in (50, 64, 96)
        assert loaded.index.ntotal == loaded.state.ntotal == loaded.state.log_seq
        loads += 1
    assert [p.wait() for p in savers] == [0, 0]
    final = VectorIndex.load(tmp_path)
    assert final.state.ntotal in (64, 96) and loads > 1
    assert not list(tmp_path.glob(".vectors.*.tmp"))
