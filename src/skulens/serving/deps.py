"""What routes share: the services of the running app, and the API-key checks as FastAPI dependencies.

Routers declare ``dependencies=[Depends(require_write)]`` (or ``require_read``) and get
``services(request)`` for the recognizer, batchers, jobs, metrics, catalog and media store (a 503 while
they load; the probes, /metrics and the key checks read ``app_services(request)``).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from skulens.serving.api_errors import ApiError
from skulens.serving.batching import MicroBatcher
from skulens.serving.catalog_views import product_hit
from skulens.serving.config import ServeConfig
from skulens.serving.jobs import JobManager
from skulens.serving.media import MediaStore
from skulens.serving.metrics import Metrics
from skulens.serving.schemas import ProductHit
from skulens.serving.security import hash_key, key_matches, presented_key


@dataclass
class Services:
    config: ServeConfig
    recognizer: Any  # None until loaded (see model_state)
    batcher: MicroBatcher | None
    metrics: Metrics
    engine_name: str
    # /readyz's "model" check: "ok" once loaded; "loading" while ServeConfig.load_in_background's
    # thread loads the models; "failed: <why>" when that failed (the process stays up to say so).
    model_state: str = "ok"
    catalog: Any = None
    # Held for every catalog call that writes or touches the in-memory vector index (search,
    # similar, upsert, remove): one Catalog instance is not safe for concurrent writes.
    catalog_lock: threading.Lock = field(default_factory=threading.Lock)
    # Search embeddings, micro-batched like recognition (a second model: the catalog's embedder).
    embed_batcher: MicroBatcher | None = None
    media: MediaStore | None = None
    explainer: Any = None  # routes_explain.Explainer, when the model can draw Grad-CAM heat maps
    # Made when the server starts (app.py's lifespan), so a restarted app gets fresh threads.
    jobs: JobManager | None = None
    decode_pool: ThreadPoolExecutor | None = None

    @property
    def img_size(self) -> int | None:
        pre = getattr(getattr(self.recognizer, "config", None), "preprocessing", None)
        return getattr(pre, "img_size", None)

    @property
    def embedder(self):
        return getattr(self.catalog, "embedder", None)

    @property
    def draft_size(self) -> int | None:
        """A photo is decoded once for both models, so at the larger of their input sizes."""
        sizes = [self.img_size, getattr(getattr(self.embedder, "preprocessing", None), "img_size", None)]
        sizes = [s for s in sizes if s]
        return max(sizes) if sizes else None

    def search_vector(
        self, vector, k: int, category: list[str] | None = None, attributes: dict[str, str] | None = None
    ) -> list[ProductHit]:
        """Products nearest to one embedding; blocking, so it runs in a worker thread."""
        with self.catalog_lock:
            hits = self.catalog.search_vectors(
                vector, top_k=k, category=category or None, attributes=attributes or None
            )
        return [product_hit(h) for h in hits]

    async def search_image(
        self,
        image,
        k: int,
        category: list[str] | None = None,
        attributes: dict[str, str] | None = None,
        text: str | None = None,
        mode: str = "hybrid",
    ) -> list[ProductHit]:
        """Products that look like the photo (re-ranked to ``text`` when given): embedded in a
        micro-batch, then one index query."""
        loop = asyncio.get_running_loop()
        tensor = await loop.run_in_executor(self.decode_pool, self.embedder.input_tensor, image)
        vector = await self.embed_batcher.submit(tensor)
        if text is None:
            return await loop.run_in_executor(None, self.search_vector, vector, k, category, attributes)
        return await loop.run_in_executor(None, self._refine, vector, text, k, category, attributes, mode)

    def _refine(self, vector, text: str, k: int, category, attributes, mode: str) -> list[ProductHit]:
        with self.catalog_lock:
            hits = self.catalog.refine(vector, text, k, category or None, attributes or None, mode)
        return [product_hit(h) for h in hits]

    async def search_text(
        self, text: str, k: int, category: list[str] | None, attributes: dict[str, str] | None, mode: str
    ) -> list[ProductHit]:
        """Products the words describe (through the photos too when the catalog has a text projection,
        hence the catalog lock: the vector index is shared with photo search)."""

        def run() -> list[ProductHit]:
            with self.catalog_lock:
                hits = self.catalog.search(
                    text=text, top_k=k, category=category or None, attributes=attributes or None, mode=mode
                )
            return [product_hit(h) for h in hits]

        return await asyncio.get_running_loop().run_in_executor(None, run)

    def embed_now(self, images: list) -> list:
        """Embeddings of several photos from a job thread, sharing the batcher's lock."""
        tensors = [self.embedder.input_tensor(img) for img in images]
        with self.embed_batcher.lock:
            return list(self.embed_batcher.run_batch(tensors))


def app_services(request: Request) -> Services:
    """The services whether or not the model is loaded: for liveness, readiness, metrics and key checks."""
    return request.app.state.services


def services(request: Request) -> Services:
    """The services of a loaded server. The one gate for every route that needs the model or the catalog:
    while they load (or after they failed to), a 503 JSON error, never a 500 on a missing model."""
    svc = app_services(request)
    if svc.model_state == "loading":
        raise ApiError(503, "not_ready", "the model is still loading; retry shortly", {"Retry-After": "5"})
    if svc.model_state != "ok":
        # No Retry-After: retrying will not help until an operator fixes what /readyz names.
        raise ApiError(503, "not_ready", "the model could not be loaded; see /readyz and the server log")
    return svc


def job_owner(request: Request) -> str:
    """Who a job belongs to: the hash of the API key the request presented ("" without one)."""
    key = presented_key(request.headers)
    return hash_key(key) if key else ""


def _check_key(request: Request) -> None:
    hashes = app_services(request).config.api_key_hashes
    key = presented_key(request.headers)
    challenge = {"WWW-Authenticate": 'Bearer realm="skulens"'}
    if key is None:
        raise ApiError(
            401,
            "missing_api_key",
            "this endpoint needs an API key (header X-API-Key or Authorization: Bearer)",
            challenge,
        )
    if not key_matches(key, hashes):
        raise ApiError(401, "invalid_api_key", "the API key is not valid", challenge)


# Declared so /docs shows the key and its "Authorize" button; the check itself reads the headers
# (X-API-Key or Authorization: Bearer) in _check_key.
api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="a key from `skulens keys new` (or send Authorization: Bearer KEY)"
)


async def require_read(request: Request, _key: str | None = Security(api_key_header)) -> None:
    if app_services(request).config.protect_reads:
        _check_key(request)


async def require_write(request: Request, _key: str | None = Security(api_key_header)) -> None:
    if not app_services(request).config.api_key_hashes:
        raise ApiError(403, "writes_disabled", "write endpoints are off: start the server with --api-keys-file")
    _check_key(request)
