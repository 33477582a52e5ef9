"""Where a catalog's vectors are searched: one interface, two backends, chosen by a config value.

- ``faiss`` (default): every process keeps its own FAISS index file beside it, a cache that
  replays the database's ``index_log``.
- ``milvus``: one Milvus collection shared by every server (``milvus_uri``: a Milvus server or
  cluster, ``http://host:19530``, or a local milvus-lite path ending in ``.db`` for one process).

Both follow the database, which stays the source of truth: a product change commits its rows and
its ``index_log`` entries together, and the index catches up from the log. A Milvus collection is
shared, so the log is applied to it once, by whichever process searches first, under a database
row lock (two servers applying the same entries out of order could resurrect a deleted vector).
Applying is idempotent (upsert and delete by image id), so a crash halfway is repaired next time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from skulens.catalog.db import ImageRow, IndexLog, Meta, catalog_identity, last_log_seq, set_meta
from skulens.catalog.index import IVF_THRESHOLD, IndexState, VectorIndex, build_kind, default_nlist, default_nprobe
from skulens.errors import SkulensError

log = logging.getLogger("skulens.catalog")
BACKENDS = ("faiss", "milvus")
CHUNK = 2000  # ids per SQL IN (...) list and rows per Milvus write
MILVUS_MAX_K = 16384  # Milvus's limit on results per query


class SearchIndex(Protocol):
    """What searching needs: the state (kind, size, dimension) and ``search`` by image id."""

    state: IndexState

    def search(self, queries: np.ndarray, k: int, allowed_ids=None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each (n, k), best first, inner product on unit vectors; missing
        neighbours have id -1. ``allowed_ids`` restricts the search to those image ids."""


class IndexSource(Protocol):
    """All a backend sees of its catalog: the database the vectors live in, the model that made them
    (``{"id", "dim", ...}``, None before the first import; it changes on a reindex), where a local
    index file may go and which index kind was asked for ("auto", "flat", "ivf")."""

    engine: object  # a SQLAlchemy Engine
    model_info: dict | None
    index_dir: Path
    index_kind: str


class IndexBackend(Protocol):
    name: str

    def index(self) -> SearchIndex:
        """The index, caught up with every change committed to the database (by any process)."""

    def rebuild(self, kind: str, nprobe: int | None) -> SearchIndex:
        """A fresh index from the vectors stored in the database (no image is re-read)."""

    def flush(self) -> None:
        """Persist what is only in memory (the FAISS file); on close and after bulk writes."""

    def close(self) -> None: ...


def stored_vectors(session: Session, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image ids, vectors)`` of every embedded image in the database."""
    rows = session.execute(select(ImageRow.id, ImageRow.vector).where(ImageRow.vector.is_not(None))).all()
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    return (np.array([r[0] for r in rows], np.int64), np.stack([np.frombuffer(r[1], np.float32) for r in rows]))


def open_backend(name: str | None, catalog: IndexSource, milvus_uri: str | None = None) -> IndexBackend:
    """``name`` None: ``$SKULENS_INDEX_BACKEND``, else faiss; ``milvus_uri`` None: ``$SKULENS_MILVUS_URI``."""
    name = name or os.environ.get("SKULENS_INDEX_BACKEND") or "faiss"
    if name == "faiss":
        return FaissBackend(catalog)
    if name == "milvus":
        uri = milvus_uri or os.environ.get("SKULENS_MILVUS_URI")
        if not uri:
            raise SkulensError(
                "the milvus index backend needs a Milvus URI: --milvus-uri http://host:19530 "
                "(or a local milvus-lite file ending in .db), or $SKULENS_MILVUS_URI"
            )
        return MilvusBackend(catalog, uri)
    raise SkulensError(f"index backend must be one of {', '.join(BACKENDS)}, not {name!r}")


class FaissBackend:
    """A FAISS index beside this process: a cache of the database, saved to ``index_dir`` now and then
    and caught up by replaying the database's ``index_log`` (so other processes' writes show up)."""

    name = "faiss"
    SAVE_SECONDS = 30.0  # an index behind its file by more than this is saved on the next change

    def __init__(self, source: IndexSource):
        self.source = source
        self._index: VectorIndex | None = None
        self._dirty_since: float | None = None
        self._folder: Path | None = None

    @property
    def folder(self) -> Path:
        """``index_dir/<catalog id>``: a database made anew at the same place gets a folder of its own."""
        if self._folder is None:
            self._folder = Path(self.source.index_dir) / catalog_identity(self.source.engine)
        return self._folder

    def rebuild(self, kind: str, nprobe: int | None) -> VectorIndex:
        info = self.source.model_info
        with Session(self.source.engine) as session:
            seq = last_log_seq(session)
            ids, vectors = stored_vectors(session, info["dim"])
        self._index = VectorIndex.build(
            ids,
            vectors,
            dim=info["dim"],
            model_id=info["id"],
            kind=kind or self.source.index_kind,
            nprobe=nprobe,
            log_seq=seq,
        )
        self._index.save(self.folder)
        self._dirty_since = None
        return self._index

    def index(self) -> VectorIndex:
        if self._index is None:
            loaded = VectorIndex.load(self.folder)
            if loaded is None or loaded.state.model_id != self.source.model_info["id"]:
                log.info("building the vector index from the database")
                return self.rebuild(self.source.index_kind, None)
            self._index = loaded
        with Session(self.source.engine) as session:
            seq = last_log_seq(session)
            if seq < self._index.state.log_seq:  # the database was reset under us
                return self.rebuild(self.source.index_kind, None)
            if seq != self._index.state.log_seq:
                self._apply_log(session, self._index.state.log_seq, seq)
        if (
            self.source.index_kind == "auto"
            and self._index.state.kind == "flat"
            and self._index.state.ntotal >= IVF_THRESHOLD
        ):
            log.info("the catalog outgrew exact search: building an IVF index")
            return self.rebuild(self.source.index_kind, None)
        return self._index

    def _apply_log(self, session: Session, after: int, upto: int) -> None:
        """Replay ``index_log`` entries (after, upto]: idempotent, so a torn save is harmless."""
        touched = set(session.scalars(select(IndexLog.image_id).where(IndexLog.seq > after, IndexLog.seq <= upto)))
        rows = (
            session.execute(
                select(ImageRow.id, ImageRow.vector).where(ImageRow.id.in_(touched), ImageRow.vector.is_not(None))
            ).all()
            if touched
            else []
        )
        self._index.remove(touched)
        if rows:
            self._index.add(
                np.array([r[0] for r in rows], np.int64), np.stack([np.frombuffer(r[1], np.float32) for r in rows])
            )
        self._index.state.log_seq = upto
        now = time.monotonic()
        if self._dirty_since is None:
            self._dirty_since = now
        elif now - self._dirty_since > self.SAVE_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._index is not None and self._dirty_since is not None:
            self._index.save(self.folder)
            self._dirty_since = None

    def close(self) -> None:
        self.flush()


# -- Milvus ------------------------------------------------------------------------------------------
def _milvus():
    try:
        import pymilvus
    except ImportError:
        raise SkulensError("the milvus index backend needs pymilvus: pip install 'skulens[scale]'") from None
    return pymilvus


def _short(exc: Exception) -> str:
    text = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _chunks(items: list, size: int = CHUNK) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MilvusIndex:
    """One Milvus collection: ``id`` (the database's image id) -> ``vector``, inner product."""

    def __init__(self, client, name: str, state: IndexState):
        self.client = client
        self.name = name
        self.state = state

    def search(
        self, queries: np.ndarray, k: int, allowed_ids=None, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.state.dim)
        k = max(1, min(k, max(1, self.state.ntotal), MILVUS_MAX_K))
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        expr = ""
        if allowed_ids is not None:
            allowed = sorted({int(i) for i in allowed_ids})
            if not allowed:
                return scores, ids
            expr = f"id in [{','.join(map(str, allowed))}]"
        params = {"metric_type": "IP"}
        if self.state.kind == "ivf":
            params["params"] = {"nprobe": nprobe or self.state.nprobe}
        try:
            results = self.client.search(
                self.name, data=queries.tolist(), limit=k, filter=expr, output_fields=["id"], search_params=params
            )
        except Exception as exc:  # noqa: BLE001 - pymilvus raises several kinds
            raise SkulensError(f"Milvus search in {self.name} failed: {_short(exc)}") from None
        for row, hits in enumerate(results):
            for col, hit in enumerate(list(hits)[:k]):
                ids[row, col] = int(hit["id"])
                scores[row, col] = float(hit["distance"])
        return scores, ids


class MilvusBackend:
    name = "milvus"

    def __init__(self, source: IndexSource, uri: str):
        pymilvus = _milvus()
        self.source = source
        self.uri = uri
        if "://" not in uri:  # milvus-lite, in this process: a local path ending in .db
            if not uri.endswith(".db"):
                raise SkulensError(
                    f"Milvus URI {uri!r}: use http://host:19530 for a server, or a local milvus-lite path ending in .db"
                )
            parent = os.path.dirname(os.path.abspath(uri))
            if not os.path.isdir(parent):
                raise SkulensError(f"{parent}: folder for the milvus-lite data does not exist")
        try:
            # The token (user:password or an API key) comes from the environment, never a command line.
            self.client = pymilvus.MilvusClient(uri=uri, token=os.environ.get("SKULENS_MILVUS_TOKEN", ""), timeout=30)
        except Exception as exc:  # noqa: BLE001
            raise SkulensError(f"cannot connect to Milvus at {uri}: {_short(exc)}") from None
        self._index: MilvusIndex | None = None
        self._catalog_id_cache: str | None = None

    # -- names and bookkeeping --------------------------------------------------------------
    def _catalog_id(self) -> str:
        """A random id stored in the database: names this catalog's collections whatever the URL
        it is reached by."""
        if self._catalog_id_cache is None:
            self._catalog_id_cache = self._load_catalog_id()
        return self._catalog_id_cache

    def _load_catalog_id(self) -> str:
        return catalog_identity(self.source.engine)

    def collection_name(self) -> str:
        model = re.sub(r"[^0-9A-Za-z_]", "_", str(self.source.model_info["id"]))[:32]
        return f"skulens_{self._catalog_id()}_{model}"

    @contextmanager
    def _applied(self, name: str):
        """A transaction holding the lock on this collection's bookkeeping row: ``(session, holder)``,
        ``holder["record"]`` being ``{"log_seq", "kind", "nlist", "nprobe"}`` (None before the first
        build) and saved on exit. The first statement writes the row, which takes PostgreSQL's row
        lock and SQLite's write lock, so appliers queue and each sees the last one's record."""
        key = f"milvus:{name}"[:64]
        try:
            with Session(self.source.engine) as session, session.begin():
                if session.get(Meta, key) is None:
                    session.add(Meta(key=key, value="null"))
        except IntegrityError:
            pass  # another process added it first
        with Session(self.source.engine) as session, session.begin():
            session.execute(update(Meta).where(Meta.key == key).values(value=Meta.value))
            holder = {"record": json.loads(session.get(Meta, key).value)}
            yield session, holder
            set_meta(session, key, holder["record"])

    def _exists(self, name: str) -> bool:
        try:
            return bool(self.client.has_collection(name))
        except Exception as exc:  # noqa: BLE001
            raise SkulensError(f"cannot reach Milvus at {self.uri}: {_short(exc)}") from None

    def _count(self, name: str) -> int:
        rows = self.client.query(name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    # -- the interface ----------------------------------------------------------------------
    def index(self) -> MilvusIndex:
        if self.source.model_info is None:
            raise SkulensError("the catalog is empty: import products first")
        name = self.collection_name()
        with Session(self.source.engine) as session:
            seq = last_log_seq(session)
        if self._index is not None and self._index.name == name and self._index.state.log_seq == seq:
            return self._index
        self._index = self._sync(name, rebuild_kind=None, nprobe=None)
        return self._index

    def rebuild(self, kind: str, nprobe: int | None) -> MilvusIndex:
        if self.source.model_info is None:
            raise SkulensError("the catalog has no embeddings yet")
        self._index = self._sync(self.collection_name(), rebuild_kind=kind, nprobe=nprobe)
        return self._index

    def flush(self) -> None:
        pass  # every write is in Milvus already (and sealed after a bulk change)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection is not worth an error
            pass

    # -- work under the lock ----------------------------------------------------------------
    def _sync(self, name: str, rebuild_kind: str | None, nprobe: int | None) -> MilvusIndex:
        info = self.source.model_info
        try:
            with self._applied(name) as (session, holder):
                record = holder["record"]
                upto = last_log_seq(session)
                fresh = (
                    rebuild_kind is not None or record is None or not self._exists(name) or record["log_seq"] > upto
                )  # the database was reset under the collection
                if fresh:
                    record = self._build(session, name, rebuild_kind or self.source.index_kind, nprobe, upto)
                elif record["log_seq"] < upto:
                    self._apply_log(session, name, record["log_seq"], upto)
                    record["log_seq"] = upto
                holder["record"] = record
                state = IndexState(
                    record["kind"],
                    int(info["dim"]),
                    str(info["id"]),
                    upto,
                    self._count(name),
                    record["nlist"],
                    record["nprobe"],
                )
        except SkulensError:
            raise
        except Exception as exc:  # noqa: BLE001 - Milvus or database errors, one line for the user
            raise SkulensError(
                f"cannot bring Milvus collection {name} up to date ({self.uri}): {_short(exc)}"
            ) from None
        return MilvusIndex(self.client, name, state)

    def _build(self, session: Session, name: str, kind: str, nprobe: int | None, upto: int) -> dict:
        pymilvus = _milvus()
        dim = int(self.source.model_info["dim"])
        n = int(session.scalar(select(func.count(ImageRow.id)).where(ImageRow.vector.is_not(None))))
        # the kind, cells and cells-per-query the FAISS backend chooses, so the two approximate
        # indexes trade recall for speed alike
        kind = build_kind(kind, n)
        nlist = default_nlist(n) if kind == "ivf" else 0
        nprobe = (nprobe or default_nprobe(nlist)) if kind == "ivf" else 0
        log.info("building Milvus collection %s (%s, %d vectors)", name, kind, n)
        prefix = name[: name.index("_", len("skulens_")) + 1]
        for old in self.client.list_collections():
            if old == name or old.startswith(prefix):  # this one, and this catalog's older models'
                self.client.drop_collection(old)
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=dim)
        params = self.client.prepare_index_params()
        params.add_index(
            field_name="vector",
            index_type="IVF_FLAT" if kind == "ivf" else "FLAT",
            metric_type="IP",
            params={"nlist": nlist} if kind == "ivf" else {},
        )
        self.client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
        rows = session.execute(
            select(ImageRow.id, ImageRow.vector).where(ImageRow.vector.is_not(None)).execution_options(yield_per=CHUNK)
        )
        batch: list[dict] = []
        for image_id, blob in rows:
            batch.append({"id": int(image_id), "vector": np.frombuffer(blob, np.float32).tolist()})
            if len(batch) == CHUNK:
                self.client.insert(name, batch)
                batch = []
        if batch:
            self.client.insert(name, batch)
        self.client.flush(name)  # seal the bulk load: searching unsealed rows is ~20x slower in milvus-lite
        return {"log_seq": upto, "kind": kind, "nlist": nlist, "nprobe": nprobe}

    def _apply_log(self, session: Session, name: str, after: int, upto: int) -> None:
        touched = sorted(
            set(session.scalars(select(IndexLog.image_id).where(IndexLog.seq > after, IndexLog.seq <= upto)))
        )
        present: dict[int, bytes] = {}
        for chunk in _chunks(touched):
            present.update(
                session.execute(
                    select(ImageRow.id, ImageRow.vector).where(ImageRow.id.in_(chunk), ImageRow.vector.is_not(None))
                ).all()
            )
        gone = [i for i in touched if i not in present]
        for chunk in _chunks(gone):
            self.client.delete(name, ids=chunk)
        rows = [{"id": int(i), "vector": np.frombuffer(v, np.float32).tolist()} for i, v in present.items()]
        for chunk in _chunks(rows):
            self.client.upsert(name, chunk)
        if len(rows) + len(gone) >= CHUNK:
            self.client.flush(name)  # a bulk change (an import): seal it, as after a build
        log.info("Milvus %s: applied log %d..%d (%d upserted, %d deleted)", name, after + 1, upto, len(rows), len(gone))
