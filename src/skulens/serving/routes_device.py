"""On the shopper's device (issue 19): what the web page needs to recognise a photo in the browser,
and a search by the vector computed there, so the photo itself never leaves the device.

- ``GET /v1/device/manifest``: the run's INT8 model (URL, checksum, size), its recorded
  preprocessing, the image limits, the classes and their category paths, the runtime's URL and the
  identity of the catalog's search model; or ``available: false`` and why.
- ``GET /v1/device/model/{sha256}.onnx``: the model file; its URL names its checksum, so browsers
  and the page's service worker keep it until the model changes.
- ``POST /v1/search/vector``: products nearest to an embedding the page computed.

The page runs the same INT8 file the server runs, so the device's answer is the server's answer up
to the two JPEG decoders (tests/test_device_mode.py measures it).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from skulens.data.images import ALLOWED_FORMATS, MAX_ASPECT_RATIO
from skulens.files import sha256_file
from skulens.runs import ONNX_INT8
from skulens.serving import web_runtime
from skulens.serving.api_errors import ApiError
from skulens.serving.deps import Services, require_read, services
from skulens.serving.routes_catalog import catalog_of
from skulens.serving.schemas import (
    DeviceLimits,
    DeviceManifest,
    DeviceModel,
    DeviceSearch,
    ErrorResponse,
    SearchResponse,
    VectorSearchRequest,
)

router = APIRouter(prefix="/v1", tags=["on-device"], dependencies=[Depends(require_read)])
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 422)}
MODEL_URL = "/v1/device/model/{sha256}.onnx"
VECTOR_URL = "/v1/search/vector"


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def file_digest(path: Path) -> str:
    """SHA-256 of a model file, computed once per version of the file (size and time in the key)."""
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


def device_model_path(svc: Services) -> tuple[Path | None, str | None]:
    """The INT8 file the server recognises with, or why the page cannot run this model itself."""
    engine = getattr(svc.recognizer, "engine", None)
    path = getattr(engine, "path", None)
    if path is None or Path(path).name != ONNX_INT8:
        return None, (
            f"the server runs the {svc.engine_name} engine; recognising on the device needs the run's INT8 "
            "export (skulens export RUN --int8), which the server then runs too"
        )
    if not web_runtime.installed():
        return None, (
            "onnxruntime-web is not installed on this server (make install, or python -m skulens.serving.web_runtime)"
        )
    return Path(path), None


def device_search(svc: Services, model_path: Path) -> tuple[DeviceSearch | None, str | None]:
    """Search by the device's vector works when the catalog's vectors come from the same INT8 file."""
    if svc.catalog is None:
        return None, "this server has no product catalog"
    embedder = svc.embedder
    engine_path = getattr(getattr(embedder, "engine", None), "path", None)
    if engine_path is None or Path(engine_path).resolve() != model_path.resolve():
        return None, "the catalog's vectors were made by another model than the one the page runs"
    return DeviceSearch(url=VECTOR_URL, model=embedder.unprojected_id, dim=embedder.model_dim, flip=embedder.flip), None


@router.get(
    "/device/manifest",
    response_model=DeviceManifest,
    responses=ERRORS,
    summary="What the web page needs to recognise photos on the shopper's device",
)
def manifest(request: Request) -> DeviceManifest:
    svc = services(request)
    path, reason = device_model_path(svc)
    if path is None:
        return DeviceManifest(available=False, reason=reason)
    config = svc.recognizer.config
    digest = file_digest(path)
    search, search_reason = device_search(svc, path)
    engine = svc.recognizer.engine
    return DeviceManifest(
        available=True,
        runtime=web_runtime.MODULE_URL,
        model=DeviceModel(
            url=MODEL_URL.format(sha256=digest),
            sha256=digest,
            bytes=path.stat().st_size,
            name=config.model.name,
            input=engine.input_name,
            outputs=[o.name for o in engine.session.get_outputs()],
        ),
        preprocessing=config.preprocessing.to_dict(),
        limits=DeviceLimits(
            max_bytes=svc.config.max_upload_bytes,
            max_pixels=svc.config.max_pixels,
            max_aspect_ratio=MAX_ASPECT_RATIO,
            formats=sorted(ALLOWED_FORMATS - {"MPO"}),
        ),
        classes=list(svc.recognizer.classes),
        paths=[svc.recognizer.category_path(i) for i in range(len(svc.recognizer.classes))],
        top_k=svc.config.top_k,
        search=search,
        search_reason=search_reason,
    )


@router.get(
    "/device/model/{sha256}.onnx",
    responses=ERRORS,
    summary="The INT8 model the page runs (named by its SHA-256)",
    response_class=FileResponse,
)
def model_file(request: Request, sha256: str) -> FileResponse:
    svc = services(request)
    path, reason = device_model_path(svc)
    if path is None:
        raise ApiError(404, "no_device_model", reason)
    if sha256 != file_digest(path):
        raise ApiError(404, "unknown_model", "no such model here: the server's model changed; reload the page")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


def checked_vector(body: VectorSearchRequest, search: DeviceSearch) -> np.ndarray:
    """The device's vector, refused with one clear line when it cannot be this catalog's kind."""
    if body.model != search.model:
        raise ApiError(
            422,
            "model_mismatch",
            f"the vector comes from model {body.model}, but this catalog is searched with model {search.model}: "
            "reload the page to get the current model",
        )
    if len(body.vector) != search.dim:
        raise ApiError(
            422, "invalid_vector", f"the vector has {len(body.vector)} values; this model's have {search.dim}"
        )
    if not all(math.isfinite(v) for v in body.vector):
        raise ApiError(422, "invalid_vector", "the vector holds a value that is not a finite number")
    vector = np.asarray(body.vector, dtype=np.float32)
    if not np.any(vector):
        raise ApiError(422, "invalid_vector", "the vector is all zeros")
    return vector


@router.post(
    "/search/vector",
    response_model=SearchResponse,
    responses=ERRORS,
    summary="Products nearest to an embedding computed on the shopper's device",
    description="JSON: `vector` (the INT8 model's `embedding` output, as GET /v1/device/manifest describes), "
    "`model` (the manifest's `search.model`), optional `top_k`, `category` (path from the top) and "
    "`attributes` ({name: value}). The photo stays on the device: only the vector is sent.",
)
async def search_vector(request: Request, body: VectorSearchRequest) -> SearchResponse:
    svc = services(request)
    catalog_of(svc)
    started = time.perf_counter()
    path, reason = device_model_path(svc)
    search, search_reason = device_search(svc, path) if path is not None else (None, reason)
    if search is None:
        raise ApiError(422, "no_vector_search", f"search by a device's vector is not available: {search_reason}")
    query = svc.embedder.search_vectors_of(checked_vector(body, search))
    k = body.top_k or svc.config.products_k
    category = [c.strip() for c in body.category if c.strip()]
    products = await asyncio.get_running_loop().run_in_executor(
        svc.decode_pool, lambda: svc.search_vector(query, k, category, body.attributes)
    )
    return SearchResponse(products=products, elapsed_ms=round(1000 * (time.perf_counter() - started), 2))
