"""The vector index (FAISS, inner product on unit vectors = cosine similarity).

``flat`` is exact search, right for small catalogs; ``ivf`` (an inverted file over k-means cells)
is approximate and used automatically above ``IVF_THRESHOLD`` vectors, where scanning every vector
stops being cheap. Both take additions and removals by id without a rebuild.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from skulens.errors import SkulensError
from skulens.files import write_json_atomic

IVF_THRESHOLD = 50_000
KINDS = ("auto", "flat", "ivf")


@dataclass
class IndexState:
    """What the index file reflects; saved beside it as JSON."""

    kind: str
    dim: int
    model_id: str
    log_seq: int  # the last catalog index_log entry applied
    ntotal: int
    nlist: int = 0
    nprobe: int = 0


GENERATION_GRACE_SECONDS = 120.0  # a reader that has just read state.json still finds the file it names


def _remove_old_generations(folder: Path, keep: str) -> None:
    """Index files no state.json names any more, once no reader can still be about to open them;
    and temporaries of saves that died (kill -9) long ago."""
    cutoff = time.time() - GENERATION_GRACE_SECONDS
    for path in [*folder.glob("vectors*.faiss"), *folder.glob(".vectors.*.tmp")]:
        try:
            if path.name != keep and path.stat().st_mtime < cutoff:
                path.unlink()
        except OSError:
            pass  # another process removed it first


def _faiss():
    import faiss

    return faiss


def choose_kind(kind: str, n: int) -> str:
    if kind not in KINDS:
        raise SkulensError(f"index kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind != "auto":
        return kind
    return "ivf" if n >= IVF_THRESHOLD else "flat"


# FAISS's k-means warns below ~39 training points per cell
MIN_POINTS_PER_CELL = 39


def build_kind(kind: str, n: int) -> str:
    """The index an index backend builds for ``n`` vectors: ``choose_kind``'s, except that IVF needs
    enough vectors to learn its cells from."""
    kind = choose_kind(kind, n)
    return "flat" if kind == "ivf" and n < MIN_POINTS_PER_CELL else kind


def default_nlist(n: int) -> int:
    # ~2 sqrt(n) cells (2,000 for a million vectors), each with enough training points.
    return int(max(1, min(2 * math.sqrt(max(n, 1)), n // MIN_POINTS_PER_CELL)))


def default_nprobe(nlist: int) -> int:
    # 16 of 2,000 cells gives recall@10 0.987 at 1.7 ms on a million vectors (search_scale.py)
    return max(1, min(nlist, max(8, round(nlist / 128))))


class VectorIndex:
    def __init__(self, index, state: IndexState):
        self.index = index
        self.state = state

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        dim: int,
        model_id: str,
        kind: str = "auto",
        nlist: int | None = None,
        nprobe: int | None = None,
        log_seq: int = 0,
        seed: int = 0,
    ) -> VectorIndex:
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        kind = build_kind(kind, len(ids))
        if kind == "flat":
            index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
            state = IndexState("flat", dim, model_id, log_seq, 0)
        else:
            nlist = nlist or default_nlist(len(ids))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            # 64 points per cell train k-means well; more only costs time (minutes at a million vectors).
            sample = vectors[rng.choice(len(vectors), min(len(vectors), 64 * nlist), replace=False)]
            index.cp.seed = seed
            index.train(sample)
            nprobe = nprobe or default_nprobe(nlist)
            state = IndexState("ivf", dim, model_id, log_seq, 0, nlist=nlist, nprobe=nprobe)
        built = cls(index, state)
        built.add(ids, vectors)
        return built

    # -- updates -----------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(
                np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.state.dim),
                np.ascontiguousarray(ids, dtype=np.int64),
            )
        self.state.ntotal = int(self.index.ntotal)

    def remove(self, ids) -> None:
        ids = np.ascontiguousarray(list(ids), dtype=np.int64)
        if len(ids):
            self.index.remove_ids(ids)
        self.state.ntotal = int(self.index.ntotal)

    # -- queries -----------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, allowed_ids=None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of shape (n, k); missing neighbours have id -1. ``allowed_ids`` restricts
        the search to those ids (e.g. one category) inside FAISS, so the top k are all allowed."""
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.state.dim)
        k = max(1, min(k, max(1, self.state.ntotal)))
        selector = None
        if allowed_ids is not None:
            allowed = np.ascontiguousarray(list(allowed_ids), dtype=np.int64)
            if len(allowed) == 0:
                return np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64)
            selector = faiss.IDSelectorBatch(allowed)
        if self.state.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=nprobe or self.state.nprobe)
            if selector is not None:
                params.sel = selector
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        scores, ids = self.index.search(queries, k, params=params)
        return scores, ids

    # -- files -------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Write a new generation: the index under a name of its own, then ``state.json`` (atomically)
        naming it. Every process on a host sharing the folder writes its own temporary and index file,
        so two saves never write into one file; the last ``state.json`` wins and names a whole file."""
        faiss = _faiss()
        folder.mkdir(parents=True, exist_ok=True)
        name = f"vectors-{uuid.uuid4().hex[:16]}.faiss"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".vectors.", suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self.index, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, folder / name)
        finally:
            Path(tmp).unlink(missing_ok=True)
        state = {**asdict(self.state), "file": name, "file_size": (folder / name).stat().st_size}
        write_json_atomic(folder / "state.json", state)
        _remove_old_generations(folder, keep=name)

    @classmethod
    def load(cls, folder: Path) -> VectorIndex | None:
        """The saved index, or None when it is missing, torn or unreadable (the caller rebuilds)."""
        faiss = _faiss()
        try:
            data = json.loads((folder / "state.json").read_text())
            path = folder / Path(data.pop("file", "vectors.faiss")).name  # older folders: one fixed name
            if path.stat().st_size != data.pop("file_size"):
                return None
            index = faiss.read_index(str(path))
            state = IndexState(**{k: data[k] for k in IndexState.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):
            return None
        if index.ntotal != state.ntotal or index.d != state.dim:
            return None
        return cls(index, state)
