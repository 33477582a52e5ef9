"""``Catalog``: products in a database, their image vectors in a FAISS index, kept in agreement.

catalog = Catalog.open("shop.db", embedder=load_embedder("runs/search"))
catalog.upsert([Product(sku="A1", title="Granny Smith", category_path=["Fruit", "Apple"], images=["a1.jpg"])])
catalog.search("photo.jpg", top_k=10)
catalog.similar("A1")
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, selectinload

from skulens.catalog import media
from skulens.catalog.backends import SearchIndex, open_backend
from skulens.catalog.db import (
    ImageRow,
    IndexLog,
    ProductRow,
    database_url,
    get_meta,
    last_log_seq,
    open_engine,
    redacted_url,
    schema_problem,
    set_meta,
)
from skulens.catalog.embedder import Embedder
from skulens.catalog.index import choose_kind
from skulens.catalog.products import Product, SearchHit, UpsertResult
from skulens.catalog.text_projection import TextProjection
from skulens.catalog.text_search import TextSearch, check_query, document, fuse, named_families, other_words
from skulens.catalog.threads import one_blas_thread
from skulens.data.colour_families import COLOUR_ATTRIBUTES, family_of, load_families, members
from skulens.data.images import ImageSource
from skulens.errors import SkulensError

log = logging.getLogger("skulens.catalog")
SKU_MAX = 128
# Words through photos with category heads: candidates taken by the cosine before the heads re-order them.
# On fashion-small test (2,200 photos) the 500 nearest by the cosine held all of the top 10 by the full score
# (benchmarks/experiments/text_to_image.py, pool_holds_of_full_top10).
CATEGORY_POOL = 500


def check_sku(sku: str) -> str:
    sku = str(sku).strip()
    if not sku:
        raise SkulensError("empty SKU")
    if len(sku) > SKU_MAX or any(ord(c) < 32 for c in sku) or "/" in sku or "\\" in sku or sku in (".", ".."):
        raise SkulensError(f"invalid SKU {sku[:40]!r}: at most {SKU_MAX} printable characters, no slashes")
    return sku


def category_key(path: Iterable[str]) -> str:
    return "/" + "".join(f"{p}/" for p in path)


def _content_hash(p: Product, image_hashes: list[str], gallery_hashes: list[str]) -> str:
    payload = json.dumps(
        {
            "title": p.title,
            "path": list(p.category_path),
            "attributes": p.attributes,
            "description": p.description,
            "images": image_hashes,
            "gallery": gallery_hashes,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _colour_families(row) -> set[str]:
    """A product's colour family: its colour attribute's, else the families its words name."""
    for name, value in (row.attributes or {}).items():
        if str(name).lower() in COLOUR_ATTRIBUTES:
            return {family_of(str(value))}
    return named_families(" ".join([row.title, row.description, *row.category_path]))


def _document(p: Product) -> str:
    return document(p.title, p.description, p.category_path, p.attributes)


def _hit(product: ProductRow, score: float) -> SearchHit:
    first = next((img.uri for img in product.images if img.role == "catalog"), None)
    return SearchHit(
        product.sku, product.title, float(score), list(product.category_path), dict(product.attributes), first
    )


def parse_attribute_filter(pairs: Iterable[str]) -> dict[str, str]:
    """``["colour=Navy Blue", "size=L"]`` -> ``{"colour": "Navy Blue", "size": "L"}`` (what the CLI and the
    API take as search filters); a pair without a name or a value is an error."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SkulensError(f"attribute filters are NAME=VALUE (e.g. colour=Blue), not {pair[:80]!r}")
        out[name.strip()] = value.strip()
    return out


class Catalog:
    """Products + vectors. Every public method leaves the database and the index in agreement."""

    def __init__(
        self,
        db: str | Path,
        embedder: Embedder | None = None,
        *,
        index_dir: str | Path | None = None,
        index_kind: str = "auto",
        index_backend: str | None = None,
        milvus_uri: str | None = None,
    ):
        self.url = database_url(db)
        self.engine = open_engine(db)
        self.embedder = embedder
        self.index_kind = choose_kind(index_kind, 0) if index_kind != "auto" else "auto"
        self.index_dir = Path(index_dir) if index_dir else self._default_index_dir()
        with Session(self.engine) as session, session.begin():
            stored = get_meta(session, "embedding_model")
            if embedder is not None:
                if stored is None:
                    set_meta(session, "embedding_model", embedder.record())
                elif stored["id"] != embedder.model_id:
                    raise SkulensError(
                        f"this catalog was indexed with {stored['description']} (model {stored['id']}); "
                        f"{embedder.description} (model {embedder.model_id}) cannot search it: use the same "
                        f"model, or re-embed with `skulens catalog reindex`"
                    )
        self.model_info = stored or (
            {"id": embedder.model_id, "dim": embedder.dim, "description": embedder.description} if embedder else None
        )
        # FAISS beside this process or a Milvus shared by every server (default: $SKULENS_INDEX_BACKEND,
        # else faiss), so `skulens serve` and every command switch by configuration; see backends.py.
        # The backend sees the catalog as an IndexSource: its database, model, index folder and kind.
        self.backend = open_backend(index_backend, self, milvus_uri)
        self.text = TextSearch(self.engine)

    @classmethod
    def open(
        cls,
        db: str | Path,
        run: str | Path | Embedder | None = None,
        *,
        embedder: Embedder | None = None,
        device: str = "auto",
        engine: str = "auto",
        flip: bool = False,
        projection: str | Path | None = None,
        **kwargs,
    ) -> Catalog:
        """Open (or create) the catalog ``db``, a SQLite file or a SQLAlchemy URL. ``run``: a trained run
        folder whose embedding indexes it (as :meth:`open_with_model`), or an Embedder; None: no model,
        for reading, listing and removing (:meth:`open_with_model` with no run searches with the model
        the catalog recorded). ``kwargs``: index_dir, index_kind, index_backend, milvus_uri."""
        if run is not None and not isinstance(run, (str, Path)):
            embedder, run = run, None
        if run is not None:
            return cls.open_with_model(db, run, device, engine, flip, projection, **kwargs)
        return cls(db, embedder, **kwargs)

    @classmethod
    def open_with_model(
        cls,
        db: str | Path,
        run: str | Path | None = None,
        device: str = "auto",
        engine: str = "auto",
        flip: bool = False,
        projection: str | Path | None = None,
        **kwargs,
    ) -> Catalog:
        """Open with ``run``'s embedder, or with the model the catalog recorded (pretrained Lite0 for a
        new catalog without a run). A catalog keeps the engine (PyTorch / ONNX) and the flip averaging
        (``flip``: vectors averaged with the mirror image's) and projection (``projection``: a file from
        ``skulens catalog fit-projection``) it was built with."""
        from skulens.catalog.embedder import embedder_from_source, load_embedder

        with Session(open_engine(db)) as session:
            stored = get_meta(session, "embedding_model")
        source = (stored or {}).get("source") or {}
        same_run = run is not None and source.get("run") == str(Path(run).resolve())
        if stored and source and (run is None or same_run):
            return cls(db, embedder_from_source(source, device), **kwargs)
        return cls(db, load_embedder(run, device, engine, flip, projection), **kwargs)

    def import_(
        self,
        source: str | Path,
        *,
        mapping=None,
        split: str | None = None,
        gallery_split: str | None = None,
        on_conflict: str = "error",
        chunk_size: int = 64,
        progress: bool = True,
    ):
        """Import a products CSV (``mapping``: a CsvMapping of its columns; ``split``: only the rows whose
        'split' column says so) or a dataset (its catalog images; ``gallery_split``: that split's photos
        as extra search examples), in this process. Idempotent; bad rows are listed in the ImportReport."""
        from skulens.catalog.importers import import_source

        return import_source(
            self,
            source,
            mapping=mapping,
            split=split,
            gallery_split=gallery_split,
            on_conflict=on_conflict,
            chunk_size=chunk_size,
            progress=progress,
        )

    @classmethod
    def import_job(cls, db: str | Path, source: str | Path, *, run: str | Path | None = None, **options):
        """:meth:`import_` as one command: opens ``db`` with ``run``'s embedder (None: the catalog's own,
        or pretrained Lite0) and imports ``source``; under ``torchrun --nproc_per_node=N`` each process
        embeds its share. ``options``: those of :meth:`import_` and :meth:`open_with_model`."""
        from skulens.catalog.importers import import_job

        return import_job(cls.open_with_model, db, source, run=run, **options)

    @staticmethod
    def upgrade(db: str | Path) -> tuple[str | None, str]:
        """Bring the catalog ``db`` to the schema this skulens writes (Alembic revisions), keeping every
        product, image, vector and index log entry: ``(revision before, revision after)``; a catalog made
        by a newer skulens is refused (SchemaError)."""
        from sqlalchemy import create_engine

        from skulens.catalog.schema import upgrade

        url = database_url(db)
        engine = create_engine(url, future=True)
        try:
            return upgrade(engine, url)
        finally:
            engine.dispose()

    # -- text -> photos -----------------------------------------------------------------------------
    def fit_text_projection(self, out: str | Path, **options) -> TextProjection:
        """Learn, from this catalog's products (their words, their photos' vectors, their categories), a map
        from sentence vectors to this catalog's image space, and save it to ``out`` (text_projection.fit's
        options)."""
        from skulens.catalog import text_projection

        encoder = self._require_text_encoder()
        texts, photos, categories, skipped = text_projection.catalog_pairs(self, encoder)
        model = self.model_info["id"]  # the vectors' model: the space the map lands in
        fitted = text_projection.fit(
            texts, photos, text_model=encoder.model_id, image_model=model, categories=categories, **options
        )
        fitted.info["skipped"] = skipped
        fitted.save(out)
        return fitted

    def use_text_projection(self, path: str | Path | None) -> None:
        """Search by words through the photos too (``path``: a file from :meth:`fit_text_projection` for this
        catalog's image model; None: stop). Recorded in the catalog, so every server uses it."""
        record = None
        if path is not None:
            projection = TextProjection.load(path)
            if self.model_info is None or projection.image_model != self.model_info["id"]:
                raise SkulensError(
                    f"{path} maps words into the space of image model {projection.image_model}; this catalog's "
                    f"vectors are {self.model_info['id'] if self.model_info else 'not made yet'}"
                )
            record = {"path": projection.path, "digest": projection.digest, "image_model": projection.image_model}
        with Session(self.engine) as session, session.begin():
            set_meta(session, "text_projection", record or {})
        self._text_projection = None

    def _projected_ranking(self, text: str, top_k: int, category, attributes) -> tuple[list[list[int]], np.ndarray]:
        """Products whose photos the words describe, through the catalog's text projection (none: []), and
        the words' sentence vector (None without a projection), which the text search then reuses."""
        query = check_query(text)  # a bad query is answered as such, before the projection is read
        projection = self._loaded_text_projection()
        if projection is None:
            return [], None
        words = self._require_text_encoder().encode([query])
        wanted = max(50, 2 * top_k)
        # With category heads, a wider pool by the cosine, re-ordered by the full score (cosine + mix x log agreement)
        pool = wanted if projection.heads is None else max(CATEGORY_POOL, 10 * top_k)
        nearest = self._nearest_products(projection.apply(words)[0], pool, category, attributes=attributes)
        ranked = [pid for pid, _ in nearest]
        if projection.heads is not None and ranked:
            ranked = self._by_projection_score(projection, words, ranked)
        return [ranked[:wanted]], words[0]

    def _by_projection_score(self, projection: TextProjection, words: np.ndarray, product_ids: list[int]) -> list[int]:
        """``product_ids`` re-ordered by the projection's full score, each product by its best photo."""
        with Session(self.engine) as session:
            rows = session.execute(
                select(ImageRow.product_id, ImageRow.vector).where(
                    ImageRow.product_id.in_(product_ids), ImageRow.vector.is_not(None)
                )
            ).all()
        if not rows:
            return product_ids
        with one_blas_thread():  # threads.py says why
            scores = projection.scores(words, np.stack([np.frombuffer(v, np.float32) for _, v in rows]))[0]
        best: dict[int, float] = {}
        for (pid, _), score in zip(rows, scores):
            best[pid] = max(best.get(pid, -np.inf), float(score))
        return sorted(product_ids, key=lambda pid: -best.get(pid, -np.inf))

    def _loaded_text_projection(self) -> TextProjection | None:
        with Session(self.engine) as session:
            record = get_meta(session, "text_projection") or {}
        if not record.get("path"):
            return None
        # (recorded digest, projection): the file is hashed when it is loaded, not at every search
        cached = getattr(self, "_text_projection", None)
        if cached is None or cached[0] != record["digest"]:
            loaded = TextProjection.load(record["path"])
            if loaded.digest != record["digest"]:
                raise SkulensError(f"{record['path']} changed since the catalog recorded it: use_text_projection again")
            cached = self._text_projection = (record["digest"], loaded)
        return cached[1]

    def _require_text_encoder(self):
        return self.text.require_encoder("words through photos")

    @staticmethod
    def check_schema(db: str | Path) -> None:
        """Raise SchemaError (naming `skulens catalog upgrade`) unless ``db`` has the schema this skulens
        writes; a database that holds no catalog yet gets it."""
        open_engine(db).dispose()

    def readiness(self) -> dict[str, str]:
        """What a load balancer asks before sending traffic: ``{check: "ok" or why not}`` for the
        database (reachable), its schema (the revision this skulens writes) and the index (caught up
        with every change in the database; an empty catalog has nothing to catch up)."""
        checks = {"database": "ok", "schema": "ok", "index": "ok"}
        try:
            with Session(self.engine) as session:
                problem, seq = schema_problem(session, self.url), last_log_seq(session)
        except Exception as exc:  # noqa: BLE001 - any driver error means "not reachable"
            return {
                "database": f"unreachable: {str(exc).splitlines()[0][:200]}",
                "schema": "unknown",
                "index": "unknown",
            }
        if problem:
            checks["schema"] = problem
        if self.model_info is not None:
            try:
                applied = self.index().state.log_seq
                if applied < seq:
                    checks["index"] = f"behind the database (change {applied} of {seq})"
            except SkulensError as exc:
                checks["index"] = str(exc)
        return checks

    def info(self) -> dict:
        with Session(self.engine) as session:
            n_images = int(session.scalar(select(func.count(ImageRow.id))))
            seq = last_log_seq(session)
        state = self.index().state if self.model_info else None
        return {
            "database": redacted_url(self.url),
            "products": len(self),
            "images": n_images,
            "log_seq": seq,
            "embedding_model": self.model_info,
            "index_backend": self.backend.name,
            "index_dir": str(self.backend.folder) if self.backend.name == "faiss" else None,
            "index": {
                "kind": state.kind,
                "vectors": state.ntotal,
                "dim": state.dim,
                "nlist": state.nlist,
                "nprobe": state.nprobe,
            }
            if state
            else None,
        }

    def reindex(self, embedder: Embedder, batch_size: int = 32, progress: bool = True) -> int:
        """Re-embed every image with another model (e.g. a newly trained run), then rebuild the index."""
        from tqdm import tqdm

        with Session(self.engine) as session:
            images = session.execute(select(ImageRow.id, ImageRow.uri)).all()
        updated = 0
        for start in tqdm(range(0, len(images), batch_size), desc="re-embedding", disable=not progress):
            chunk = images[start : start + batch_size]
            vectors, errors = embedder.embed_many([self.image_source(uri) for _, uri in chunk])
            with Session(self.engine) as session, session.begin():
                for (image_id, _), vec, err in zip(chunk, vectors, errors):
                    row = session.get(ImageRow, image_id)
                    row.vector = None if err else vec.astype(np.float32).tobytes()
                    updated += err is None
        with Session(self.engine) as session, session.begin():
            set_meta(session, "embedding_model", embedder.record())
        self.embedder = embedder
        self.model_info = embedder.record()
        self.rebuild_index()
        return updated

    # -- product photos ---------------------------------------------------------------------------
    def store_photo(self, name: str, data: bytes) -> tuple[str, bool]:
        """Keep a photo in the database, where every server finds it: (its image URI, whether this
        call stored it). ``name``: unique to the photo and its product (a content hash)."""
        return media.put(self.engine, name, data)

    def discard_photos(self, uris: Iterable[str]) -> None:
        """Delete the stored photos among ``uris`` (files are never touched here)."""
        media.remove(self.engine, uris)

    def image_source(self, uri: str) -> bytes | Path:
        """What a product image URI decodes from: its stored bytes, or its file."""
        return media.source(self.engine, uri)

    def _default_index_dir(self) -> Path:
        if self.url.startswith("sqlite:///"):
            return Path(self.url[len("sqlite:///") :] + ".index")
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:12]
        return Path.home() / ".cache" / "skulens" / f"index-{digest}"

    def close(self) -> None:
        self.flush()
        self.backend.close()
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the index: a cache of the database ----------------------------------------------------
    def _require_embedder(self) -> Embedder:
        if self.embedder is None:
            raise SkulensError(
                "this operation embeds images: open the catalog with a model (--run, or the pretrained default)"
            )
        return self.embedder

    def rebuild_index(self, kind: str | None = None, nprobe: int | None = None) -> SearchIndex:
        """Build the index from the vectors stored in the database (no image is re-read)."""
        if self.model_info is None:
            raise SkulensError("the catalog has no embeddings yet")
        return self.backend.rebuild(kind or self.index_kind, nprobe)

    def index(self) -> SearchIndex:
        """The index, caught up with every change committed to the database (by anyone)."""
        if self.model_info is None:
            raise SkulensError("the catalog is empty: import products first")
        return self.backend.index()

    def sync_index(self) -> None:
        """Bring the index up to date with the database and save it (after bulk writes)."""
        if self.model_info is not None:
            self.index()
            self.flush()

    def flush(self) -> None:
        """Save the index file if it is behind; also called on close."""
        self.backend.flush()

    # -- writes ---------------------------------------------------------------------------------
    def upsert(self, products: list[Product], *, on_conflict: str = "update") -> UpsertResult:
        """Add or change products in one transaction. ``on_conflict``: what to do when a SKU already
        exists with other data: ``update`` it, ``skip`` it, or ``error`` (reject the item).
        An unreadable image rejects its product; the others still go in."""
        if on_conflict not in ("update", "skip", "error"):
            raise SkulensError(f"on_conflict must be update, skip or error, not {on_conflict!r}")
        result = UpsertResult()
        prepared = self._hash_products(products, result)
        todo = self._resolve_conflicts(prepared, on_conflict, result)
        # Embed outside the transaction: slow work must not hold database locks.
        todo, vectors = self._embed_products(todo, result)
        if todo:
            texts = self.text.vectors_for([_document(item[2]) for item in todo])
            self._write_products(todo, vectors, dict(zip([item[0] for item in todo], texts)), result)
        return result

    def _hash_products(self, products: list[Product], result: UpsertResult) -> list[tuple]:
        """(pos, sku, product, image hashes, gallery hashes, content hash) of each product whose SKU
        is valid and whose images exist; the others go to ``result.rejected``."""
        prepared = []
        for pos, product in enumerate(products):
            try:
                sku = check_sku(product.sku)
                missing = [p for p in product.images + product.gallery_images if not media.exists(self.engine, p)]
                if missing:
                    raise SkulensError(f"image not found: {missing[0]}")
                hashes = [media.sha256(self.engine, p) for p in product.images]
                gallery = [media.sha256(self.engine, p) for p in product.gallery_images]
                prepared.append((pos, sku, product, hashes, gallery, _content_hash(product, hashes, gallery)))
            except (SkulensError, OSError) as exc:
                result.rejected.append((pos, str(product.sku), str(exc)))
        return prepared

    def _resolve_conflicts(self, prepared: list[tuple], on_conflict: str, result: UpsertResult) -> list[tuple]:
        """The items to write: new SKUs, and changed ones when ``on_conflict`` allows."""
        with Session(self.engine) as session:
            skus = [item[1] for item in prepared]
            existing = (
                {
                    row.sku: row.content_hash
                    for row in session.execute(
                        select(ProductRow.sku, ProductRow.content_hash).where(ProductRow.sku.in_(skus))
                    )
                }
                if skus
                else {}
            )
        todo = []
        for item in prepared:
            pos, sku, product, hashes, gallery, digest = item
            if sku not in existing:
                todo.append(item)
            elif existing[sku] == digest:
                result.unchanged.append(sku)
            elif on_conflict == "update":
                todo.append(item)
            elif on_conflict == "skip":
                result.unchanged.append(sku)
            else:
                result.rejected.append((pos, sku, "SKU already in the catalog with different data"))
        return todo

    def _embed_products(
        self, todo: list[tuple], result: UpsertResult
    ) -> tuple[list[tuple], dict[int, list[np.ndarray]]]:
        """The items whose images all embedded, and their vectors by position; a product with an
        image that failed goes to ``result.rejected``."""
        vectors: dict[int, list[np.ndarray]] = {}
        if not todo:
            return todo, vectors
        embedder = self._require_embedder()
        paths = [self.image_source(p) for item in todo for p in item[2].images + item[2].gallery_images]
        vecs, errors = embedder.embed_many(paths) if paths else (np.zeros((0, 1), np.float32), [])
        cursor = 0
        kept = []
        for item in todo:
            n = len(item[2].images) + len(item[2].gallery_images)
            errs = [e for e in errors[cursor : cursor + n] if e]
            if errs:
                result.rejected.append((item[0], item[1], errs[0]))
            else:
                vectors[item[0]] = list(vecs[cursor : cursor + n])
                kept.append(item)
            cursor += n
        return kept, vectors

    def _write_products(
        self, todo: list[tuple], vectors: dict[int, list[np.ndarray]], texts: dict[int, bytes | None], result
    ) -> None:
        """One transaction: the product rows (with their text vector), their images, and the index log
        entries that bring the vector indexes (image and text) up to date."""
        with Session(self.engine) as session, session.begin():
            rows = {
                row.sku: row
                for row in session.scalars(
                    select(ProductRow)
                    .options(selectinload(ProductRow.images))
                    .where(ProductRow.sku.in_([item[1] for item in todo]))
                )
            }
            new_images: list[ImageRow] = []
            for pos, sku, product, hashes, gallery, digest in todo:
                row = rows.get(sku)
                if row is None:
                    row = ProductRow(sku=sku)
                    session.add(row)
                    result.added.append(sku)
                else:
                    for old in row.images:
                        session.add(IndexLog(image_id=old.id, op="remove"))
                    row.images.clear()
                    result.updated.append(sku)
                new_images += self._fill_product_row(row, product, hashes, gallery, digest, vectors[pos])
                row.text_vector = texts[pos]
            session.flush()  # assigns image ids
            for image in new_images:
                session.add(IndexLog(image_id=image.id, op="add"))

    @staticmethod
    def _fill_product_row(
        row: ProductRow, product: Product, hashes: list[str], gallery: list[str], digest: str, vectors: list[np.ndarray]
    ) -> list[ImageRow]:
        """Set a product row's fields and images (catalog photos first, then gallery); the new image rows."""
        row.title, row.description = product.title, product.description
        row.category_path, row.category_key = list(product.category_path), category_key(product.category_path)
        row.attributes, row.content_hash = dict(product.attributes), digest
        uris = [(p, h, "catalog") for p, h in zip(product.images, hashes)]
        uris += [(p, h, "gallery") for p, h in zip(product.gallery_images, gallery)]
        new_images = []
        for position, ((uri, sha, role), vec) in enumerate(zip(uris, vectors)):
            image = ImageRow(
                position=position,
                uri=uri if media.is_stored(uri) else str(Path(uri).resolve()),
                sha256=sha,
                role=role,
                vector=np.asarray(vec, np.float32).tobytes(),
            )
            row.images.append(image)
            new_images.append(image)
        return new_images

    def remove(self, skus: Iterable[str]) -> list[str]:
        """Delete products (and their vectors); returns the SKUs that existed."""
        skus = [str(s) for s in skus]
        with Session(self.engine) as session, session.begin():
            found = session.execute(select(ProductRow.id, ProductRow.sku).where(ProductRow.sku.in_(skus))).all()
            if not found:
                return []
            ids = [r[0] for r in found]
            for image_id in session.scalars(select(ImageRow.id).where(ImageRow.product_id.in_(ids))):
                session.add(IndexLog(image_id=image_id, op="remove"))
            session.execute(delete(ImageRow).where(ImageRow.product_id.in_(ids)))
            session.execute(delete(ProductRow).where(ProductRow.id.in_(ids)))
        return [r[1] for r in found]

    # -- reads ----------------------------------------------------------------------------------
    def get(self, sku: str) -> Product | None:
        with Session(self.engine) as session:
            row = session.scalar(
                select(ProductRow).options(selectinload(ProductRow.images)).where(ProductRow.sku == sku)
            )
            if row is None:
                return None
            return Product(
                row.sku,
                row.title,
                list(row.category_path),
                dict(row.attributes),
                row.description,
                [i.uri for i in row.images if i.role == "catalog"],
                [i.uri for i in row.images if i.role == "gallery"],
            )

    def __len__(self) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count(ProductRow.id))))

    def products(self, offset: int = 0, limit: int = 100, category: Iterable[str] | None = None) -> list[SearchHit]:
        with Session(self.engine) as session:
            query = select(ProductRow).options(selectinload(ProductRow.images)).order_by(ProductRow.sku)
            if category:
                query = query.where(ProductRow.category_key.startswith(category_key(category), autoescape=True))
            return [_hit(row, 1.0) for row in session.scalars(query.offset(offset).limit(limit))]

    def category_tree(self) -> dict:
        """``{"name": "", "count": N, "children": [...]}`` with product counts at every node."""
        root: dict = {"name": "", "count": 0, "children": {}}
        with Session(self.engine) as session:
            for (path,) in session.execute(select(ProductRow.category_path)):
                node = root
                node["count"] += 1
                for part in path or []:
                    node = node["children"].setdefault(part, {"name": part, "count": 0, "children": {}})
                    node["count"] += 1

        def finish(node):
            kids = sorted(node["children"].values(), key=lambda n: (-n["count"], n["name"]))
            return {"name": node["name"], "count": node["count"], "children": [finish(k) for k in kids]}

        return finish(root)

    def stored_vectors(self, sku: str) -> np.ndarray:
        with Session(self.engine) as session:
            blobs = session.scalars(
                select(ImageRow.vector)
                .join(ProductRow)
                .where(ProductRow.sku == sku, ImageRow.vector.is_not(None))
                .order_by(ImageRow.position)
            ).all()
        if not blobs:
            raise SkulensError(f"unknown SKU {sku!r}")
        return np.stack([np.frombuffer(b, np.float32) for b in blobs])

    @staticmethod
    def _filtered(query, category: Iterable[str] | None, attributes: Mapping[str, str] | None):
        """``query`` (over products) restricted to ``category`` and ``attributes``: values match exactly,
        or by colour family for a colour attribute (data/colour_families.toml), in the database (JSON
        lookups in SQLite and PostgreSQL alike), so a filter costs one indexed query."""
        if category:
            query = query.where(ProductRow.category_key.startswith(category_key(category), autoescape=True))
        for name, value in (attributes or {}).items():
            stored = ProductRow.attributes[str(name)].as_string()
            family = members(str(value)) if str(name).lower() in COLOUR_ATTRIBUTES else None
            # a colour family ("Blue") matches each of its values (Navy Blue, Teal...); a value, itself
            query = query.where(stored.in_([str(value), *family]) if family else stored == str(value))
        return query

    def _check_colour_filter(self, attributes: Mapping[str, str] | None) -> None:
        """A colour filter must name a family, a value the mapping lists, or a value some product has:
        anything else is a typo to report, not an empty answer."""
        for name, value in (attributes or {}).items():
            value = str(value)
            if str(name).lower() not in COLOUR_ATTRIBUTES or members(value) is not None:
                continue
            families, values = load_families()
            if value in values:
                continue
            with Session(self.engine) as session:
                stored = ProductRow.attributes[str(name)].as_string()
                if session.scalar(select(ProductRow.id).where(stored == value).limit(1)) is None:
                    raise SkulensError(
                        f"unknown colour {value[:40]!r}: no product has it and it is not a colour family "
                        f"({', '.join(sorted(families))})"
                    )

    def _allowed_ids(
        self, category: Iterable[str] | None, attributes: Mapping[str, str] | None = None
    ) -> list[int] | None:
        """Image ids the filters let through (None: no filter)."""
        if not category and not attributes:
            return None
        self._check_colour_filter(attributes)
        with Session(self.engine) as session:
            return list(session.scalars(self._filtered(select(ImageRow.id).join(ProductRow), category, attributes)))

    def _allowed_products(
        self, category: Iterable[str] | None, attributes: Mapping[str, str] | None = None
    ) -> set[int] | None:
        """Product ids the filters let through (None: no filter)."""
        if not category and not attributes:
            return None
        self._check_colour_filter(attributes)
        with Session(self.engine) as session:
            return set(session.scalars(self._filtered(select(ProductRow.id), category, attributes)))

    def _rows_of(self, hits: list[SearchHit], *columns) -> list:
        """``columns`` of the products behind ``hits`` (hits name products by SKU)."""
        with Session(self.engine) as session:
            return session.execute(select(*columns).where(ProductRow.sku.in_([h.sku for h in hits]))).all()

    def _product_hits(self, scored: list[tuple[int, float]]) -> list[SearchHit]:
        """(product id, score) pairs, best first -> hits."""
        with Session(self.engine) as session:
            rows = {
                r.id: r
                for r in session.scalars(
                    select(ProductRow)
                    .options(selectinload(ProductRow.images))
                    .where(ProductRow.id.in_([pid for pid, _ in scored]))
                )
            }
        return [_hit(rows[pid], score) for pid, score in scored if pid in rows]

    def _best_products(
        self, scores: np.ndarray, ids: np.ndarray, top_k: int, exclude: set[int] = frozenset()
    ) -> list[tuple[int, float]]:
        """Image hits -> (product id, the score of its best image), best first."""
        best: dict[int, float] = {}
        image_ids = [int(i) for i in ids if i >= 0]
        if not image_ids:
            return []
        with Session(self.engine) as session:
            owner = dict(
                session.execute(select(ImageRow.id, ImageRow.product_id).where(ImageRow.id.in_(image_ids))).all()
            )
            for score, image_id in zip(scores, ids):
                pid = owner.get(int(image_id))
                if pid is None or pid in exclude:
                    continue
                if score > best.get(pid, -np.inf):
                    best[pid] = float(score)
        return sorted(best.items(), key=lambda kv: -kv[1])[:top_k]

    def search_vectors(
        self,
        queries: np.ndarray,
        top_k: int = 10,
        category: Iterable[str] | None = None,
        exclude: set[int] = frozenset(),
        fetch: int | None = None,
        attributes: Mapping[str, str] | None = None,
    ) -> list[SearchHit]:
        """Products nearest to one or more query vectors (several vectors: best score over them),
        optionally only those under ``category`` and with every ``attributes`` value (e.g. colour=Blue)."""
        return self._product_hits(self._nearest_products(queries, top_k, category, exclude, fetch, attributes))

    def _nearest_products(
        self, queries, top_k: int, category=None, exclude: set[int] = frozenset(), fetch=None, attributes=None
    ) -> list[tuple[int, float]]:
        """``search_vectors`` as (product id, score) pairs, before any product row is read."""
        index = self.index()
        allowed = self._allowed_ids(category, attributes)
        # Fetch more images than products wanted: a product may hold several images.
        k = fetch or max(4 * top_k, top_k + 20)
        scores, ids = index.search(np.atleast_2d(queries), k, allowed)
        return self._best_products(scores.ravel(), ids.ravel(), top_k, exclude)

    def search(
        self,
        image: ImageSource | None = None,
        top_k: int = 10,
        category: Iterable[str] | None = None,
        attributes: Mapping[str, str] | None = None,
        *,
        text: str | None = None,
        mode: str = "hybrid",
    ) -> list[SearchHit]:
        """Products that look like ``image`` (a path, bytes, file object or PIL image), or that ``text``
        describes (``mode``: hybrid, lexical or semantic), or both: products that look like the photo,
        re-ranked to the words ("this, but in blue"). ``category`` and ``attributes`` filter as in
        :meth:`search_vectors`."""
        if image is None and text is None:
            raise SkulensError("search needs a photo, words, or both")
        if image is None:
            through_photos, words = (
                self._projected_ranking(text, top_k, category, attributes) if mode != "lexical" else ([], None)
            )
            allowed = self._allowed_products(category, attributes)
            return self._product_hits(self.text.search(text, top_k, mode, allowed, through_photos, words))
        vector = self._require_embedder().embed([image])
        if text is None:
            return self.search_vectors(vector, top_k, category, attributes=attributes)
        return self.refine(vector, text, top_k, category, attributes, mode)

    def refine(
        self, vector, text: str, top_k: int, category=None, attributes=None, mode: str = "hybrid"
    ) -> list[SearchHit]:
        """Photo + words: the photo's nearest products (a pool of 200). A colour family the words name
        ("in blue") ranks the pool's products of that family first, each group in the photo's order;
        other words fuse the photo's order with the words' order over the pool."""
        pool = self.search_vectors(vector, max(200, top_k), category, attributes=attributes)
        rows = self._rows_of(
            pool,
            ProductRow.sku,
            ProductRow.id,
            ProductRow.attributes,
            ProductRow.title,
            ProductRow.description,
            ProductRow.category_path,
        )
        found = {r.sku: r for r in rows}
        by_photo = [found[h.sku].id for h in pool if h.sku in found]
        families = named_families(check_query(text))
        if families and not other_words(text, families):  # only a colour: the photo keeps its order
            fused = [(pid, 1.0 / (61 + rank)) for rank, pid in enumerate(by_photo)]
        else:
            fused = fuse([by_photo, self.text.rerank(text, by_photo, mode)])
        if families:
            wanted = {r.id for r in rows if _colour_families(r) & families}
            fused = sorted(fused, key=lambda item: item[0] not in wanted)  # stable: keeps the fused order
        return self._product_hits(fused[:top_k])

    def similar(
        self,
        sku: str,
        top_k: int = 10,
        same_category: bool = False,
        duplicate_threshold: float = 0.995,
        tree: bool = True,
    ) -> list[SearchHit]:
        """Products like ``sku``, without the product itself and without near-identical copies
        (cosine >= ``duplicate_threshold`` to the product or to a product already listed). ``tree``: the
        category tree first: the products of its own category (siblings) by look, then those one
        level up, and so on, then the rest, so a Granny Smith's neighbours are apples before they are
        yoghurts of the same green. ``same_category``: siblings only."""
        vectors = self.stored_vectors(sku)
        with Session(self.engine) as session:
            row = session.scalar(select(ProductRow).where(ProductRow.sku == sku))
            pid, path = row.id, list(row.category_path)
        if same_category:
            scopes = [path]
        elif tree and path:
            scopes = [path[:depth] for depth in range(len(path), 0, -1)] + [None]
        else:
            scopes = [None]
        kept: list[SearchHit] = []
        kept_vectors: list[np.ndarray] = [vectors]
        for scope in scopes:
            for hit in self.search_vectors(vectors, top_k=top_k * 3 + 10, category=scope, exclude={pid}):
                if len(kept) == top_k:
                    return kept
                if any(h.sku == hit.sku for h in kept):
                    continue
                vec = self.stored_vectors(hit.sku)
                if any(float((vec @ other.T).max()) >= duplicate_threshold for other in kept_vectors):
                    continue
                kept.append(hit)
                kept_vectors.append(vec)
        return kept
