"""Creating, changing and removing products through the API, and bulk imports as a background job.

The order of work keeps the catalog from ever pointing at a missing file: photos are decoded and
re-encoded first (no lock held), then, under the catalog lock, written to the media folder and
upserted; a rejected product's new files are deleted again, and a product's old files go only after
the database has let go of them. Everything here blocks: routes call it from worker threads.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from skulens.errors import ImageError, SkulensError
from skulens.serving.api_errors import ApiError
from skulens.serving.media import EncodedImage
from skulens.serving.schemas import ImportProduct, ImportRejection, ImportRequest, ImportResult, ProductFields
from skulens.serving.uploads import decode

if TYPE_CHECKING:
    from skulens.catalog.products import Product

# Products per transaction in an import: the catalog lock is released between chunks, so searches
# and single-product writes get in while a big import runs.
IMPORT_CHUNK = 16
MAX_PRODUCT_IMAGES = 16


def check_sku(sku: str) -> str:
    # Imported on use: a server without a catalog never loads the catalog's database and index code.
    from skulens.catalog.store import check_sku as catalog_check_sku

    return catalog_check_sku(sku)


def new_product(**fields) -> Product:
    from skulens.catalog.products import Product

    return Product(**fields)


def valid_sku(sku: str) -> str:
    try:
        return check_sku(sku)
    except SkulensError as exc:
        raise ApiError(422, "invalid_sku", str(exc)) from None


def unknown_product(sku: str) -> ApiError:
    return ApiError(404, "product_not_found", f"no product with SKU {sku[:80]!r} in the catalog")


def base64_image(text: str) -> bytes:
    """An image file sent as base64, optionally as a data: URL."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise ImageError("a data: URL image must be base64-encoded")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("not valid base64") from None


class ProductWriter:
    def __init__(self, svc):
        self.catalog = svc.catalog
        self.lock = svc.catalog_lock
        self.media = svc.media
        self.config = svc.config

    def encode(self, sku: str, files: list[bytes]) -> list[EncodedImage]:
        """Decode (size, pixel and format limits, bombs, truncation) and re-encode; raises ImageError."""
        cfg = self.config
        # A JPEG decodes straight at the smallest scale that still fills the stored size.
        return [
            self.media.encode(
                sku,
                decode(data, max_pixels=cfg.max_pixels, max_bytes=cfg.max_upload_bytes, draft_size=self.media.max_side),
            )
            for data in files
        ]

    def _store(self, encoded: list[EncodedImage]) -> tuple[list[str], list[str]]:
        """Write the files: (every path, the paths this call created)."""
        paths, created = [], []
        for item in encoded:
            path, new = self.media.write(item)
            paths.append(str(path))
            if new:
                created.append(str(path))
        return paths, created

    def _upsert_one(self, product: Product, created: list[str], on_conflict: str) -> None:
        try:
            result = self.catalog.upsert([product], on_conflict=on_conflict)
        except BaseException:
            self.media.discard(created)
            raise
        if result.rejected:
            self.media.discard(created)
            raise ApiError(422, "product_rejected", result.rejected[0][2])

    def create(self, fields, encoded: list[EncodedImage]) -> Product:
        sku = valid_sku(fields.sku)
        with self.lock:
            if self.catalog.get(sku) is not None:
                raise ApiError(
                    409,
                    "product_exists",
                    f"a product with SKU {sku[:80]!r} exists: change it with PUT /v1/products/{{sku}}",
                )
            paths, created = self._store(encoded)
            self._upsert_one(
                new_product(
                    sku=sku,
                    title=fields.title or "",
                    category_path=list(fields.category_path or []),
                    attributes=dict(fields.attributes or {}),
                    description=fields.description or "",
                    images=paths,
                ),
                created,
                "error",
            )
            return self.catalog.get(sku)

    def update(self, sku: str, fields: ProductFields | None, encoded: list[EncodedImage] | None) -> Product:
        sku = valid_sku(sku)
        fields = fields or ProductFields()
        with self.lock:
            old = self.catalog.get(sku)
            if old is None:
                raise unknown_product(sku)
            paths, created = self._store(encoded) if encoded else (list(old.images), [])
            self._upsert_one(
                new_product(
                    sku=sku,
                    title=old.title if fields.title is None else fields.title,
                    category_path=list(old.category_path if fields.category_path is None else fields.category_path),
                    attributes=dict(old.attributes if fields.attributes is None else fields.attributes),
                    description=old.description if fields.description is None else fields.description,
                    images=paths,
                    gallery_images=list(old.gallery_images),
                ),
                created,
                "update",
            )
            self.media.discard(set(old.images) - set(paths))
            return self.catalog.get(sku)

    def delete(self, sku: str) -> None:
        sku = valid_sku(sku)
        with self.lock:
            old = self.catalog.get(sku)
            if old is None or not self.catalog.remove([sku]):
                raise unknown_product(sku)
            self.media.discard([*old.images, *old.gallery_images])

    # -- bulk import ------------------------------------------------------------------------------
    def run_import_job(self, ctx) -> dict:
        """The import_products job, on whichever server runs it: per item, a bad SKU or image rejects
        that item only; chunks commit one by one, each followed by a checkpoint. A server that takes
        the job over resumes after the last checkpoint; a chunk committed after it (the server died in
        between) is written again, and its products, being the same, count as unchanged."""
        request = ImportRequest.model_validate_json(ctx.inputs()[0][1])
        items = request.products
        state = ctx.state or {}
        result = ImportResult.model_validate(state.get("result") or {})
        first_at: dict[str, int] = dict(state.get("first_at") or {})
        for start in range(ctx.done, len(items), IMPORT_CHUNK):
            ctx.check()
            stop = min(start + IMPORT_CHUNK, len(items))
            chunk = self._prepare_chunk(items, range(start, stop), first_at, result)
            if chunk:
                self._import_chunk(chunk, request.on_conflict, result)
            ctx.save(stop, {"result": result.model_dump(), "first_at": first_at})
        with self.lock:
            self.catalog.sync_index()
        result.rejected.sort(key=lambda r: r.index)
        return result.model_dump()

    def _prepare_chunk(self, items: list[ImportProduct], positions, first_at: dict[str, int], result: ImportResult):
        """(index, sku, item, re-encoded photos) of the chunk's valid items; the others are rejected."""
        chunk = []
        for index in positions:
            item = items[index]
            try:
                sku = check_sku(item.sku)
                if sku in first_at:
                    raise SkulensError(f"SKU repeated in this import (first at index {first_at[sku]})")
                first_at[sku] = index
                encoded = self.encode(sku, [base64_image(text) for text in item.images])
            except SkulensError as exc:
                result.rejected.append(ImportRejection(index=index, sku=item.sku, reason=str(exc)))
                continue
            finally:
                item.images = []  # the upload's bytes go as soon as they are re-encoded
            chunk.append((index, sku, item, encoded))
        return chunk

    def _import_chunk(
        self, chunk: list[tuple[int, str, ImportProduct, list[EncodedImage]]], on_conflict: str, result: ImportResult
    ) -> None:
        with self.lock:
            old = {sku: self.catalog.get(sku) for _, sku, _, _ in chunk}
            products, paths_of, created_of = [], {}, {}
            for _, sku, item, encoded in chunk:
                paths_of[sku], created_of[sku] = self._store(encoded)
                products.append(
                    new_product(
                        sku=sku,
                        title=item.title or "",
                        category_path=list(item.category_path or []),
                        attributes=dict(item.attributes or {}),
                        description=item.description or "",
                        images=paths_of[sku],
                    )
                )
            try:
                upserted = self.catalog.upsert(products, on_conflict=on_conflict)
            except BaseException:
                self.media.discard(p for created in created_of.values() for p in created)
                raise
            for pos, sku, reason in upserted.rejected:
                result.rejected.append(ImportRejection(index=chunk[pos][0], sku=sku, reason=reason))
                self.media.discard(created_of.get(sku, []))
            for sku in upserted.unchanged:  # skipped: files new to this call belong to nothing
                self.media.discard(created_of[sku])
            for sku in upserted.updated:
                self.media.discard(set(old[sku].images) - set(paths_of[sku]))
            result.added += len(upserted.added)
            result.updated += len(upserted.updated)
            result.unchanged += len(upserted.unchanged)
