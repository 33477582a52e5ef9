"""POST /v1/recognize (one photo, micro-batched) and POST /v1/recognize/bulk (many photos, as a job)."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Depends, Request

from skulens.errors import ImageError, SkulensError
from skulens.serving.api_errors import ApiError, within_timeout
from skulens.serving.deps import Services, job_owner, require_read, services
from skulens.serving.predictions import to_response
from skulens.serving.schemas import BulkItem, ErrorResponse, JobSubmitted, ObjectAnswer, RecognizeResponse
from skulens.serving.uploads import BINARY, decode, decode_off_loop, multipart_doc, read_images

log = logging.getLogger("skulens.serving")
router = APIRouter(prefix="/v1", tags=["recognition"], dependencies=[Depends(require_read)])

# 400: a malformed multipart body (found by scripts/fuzz_api.py: it was answered but not documented).
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 503, 504)}


def _multipart_doc(field: str, many: bool) -> dict:
    return multipart_doc([field], {field: {"type": "array", "items": BINARY} if many else BINARY})


@router.post(
    "/recognize",
    response_model=RecognizeResponse,
    responses=ERRORS,
    openapi_extra=_multipart_doc("image", many=False),
    summary="Recognize one product photo",
    description="Multipart upload in the field `image`. Answers the category path with a confidence "
    "per level, the top-k classes, attributes when the model has them and the matching "
    "catalog products (empty without a catalog). The photo is not stored unless the operator "
    "turned storage on, and then without its metadata (PRIVACY.md). `?objects=true` (on a server "
    "started with --detector): each product of a photo of several, in `objects`, with its box, the "
    "detector's score, its answer and products; `single=true` keeps the largest, most central one; "
    "`detector_threshold` overrides the detector's score threshold.",
)
async def recognize(request: Request) -> RecognizeResponse:
    svc = services(request)
    cfg = svc.config
    started = time.perf_counter()
    return await within_timeout(_recognize(svc, request, started), cfg.request_timeout_s)


async def _recognize(svc: Services, request: Request, started: float) -> RecognizeResponse:
    cfg = svc.config
    upload = (
        await read_images(
            request, "image", max_files=1, max_file_bytes=cfg.max_upload_bytes, max_total_bytes=cfg.max_upload_bytes
        )
    )[0]
    find = object_options(request)
    if find is None:
        image = await decode_off_loop(svc, upload.data)
    else:  # at full size: the boxes are in the photo's own pixels (a JPEG draft would shrink them)
        limits = {"max_pixels": cfg.max_pixels, "max_bytes": cfg.max_upload_bytes, "draft_size": None}
        image = await asyncio.get_running_loop().run_in_executor(svc.decode_pool, lambda: decode(upload.data, **limits))
    if cfg.upload_store is not None:  # opt-in (PRIVACY.md); stored before answering: answered means on disk
        await asyncio.get_running_loop().run_in_executor(svc.decode_pool, cfg.upload_store.save, image)
    if find is not None:
        return await _recognize_objects(svc, image, find, started)
    if svc.catalog is None:
        prediction, products = await svc.batcher.submit(image), []
    else:  # both models at once: the answer waits for the slower, not for the sum
        prediction, products = await asyncio.gather(svc.batcher.submit(image), _products(svc, image, cfg.products_k))
    return to_response(
        prediction,
        top_k=svc.config.top_k,
        products=products,
        engine=svc.engine_name,
        elapsed_ms=1000 * (time.perf_counter() - started),
    )


def object_options(request: Request) -> dict | None:
    """``?objects=true`` (with ``single=true``, ``detector_threshold=0.4``): the detector's options, else None."""
    query = request.query_params
    if not _flag(query, "objects"):
        return None
    try:
        threshold = query.get("detector_threshold")
        threshold = None if threshold is None else float(threshold)
    except ValueError:
        raise ApiError(422, "invalid_request", "detector_threshold must be a number between 0 and 1") from None
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ApiError(422, "invalid_request", "detector_threshold must be a number between 0 and 1")
    return {"single": _flag(query, "single"), "score_threshold": threshold}


def _flag(query, name: str) -> bool:
    return query.get(name, "false").lower() in ("true", "1", "yes")


async def _recognize_objects(svc: Services, image, find: dict, started: float) -> RecognizeResponse:
    """Each product of the photo: found by the detector, recognised, and matched to catalog products by
    its crop. The top-level fields answer the first (best) object, so a client that ignores
    ``objects`` still gets an answer; nothing found: the whole photo is the one object."""
    require_detector(svc)
    recognizer = svc.recognizer
    loop = asyncio.get_running_loop()
    n = len(recognizer.classes)  # every class: the path's confidences sum over all of them
    found = await loop.run_in_executor(svc.decode_pool, lambda: recognizer.predict_objects(image, n, **find))
    # every product's catalog search at once: the answer waits for the slowest, not for the sum
    if svc.catalog is None:
        matches = [[] for _ in found]
    else:
        crops = object_crops(image, found)
        matches = await asyncio.gather(*(_products(svc, crop, svc.config.products_k) for crop in crops))
    return objects_response(svc, found, matches, 1000 * (time.perf_counter() - started))


def object_crops(image, found: list) -> list:
    return [image.crop(tuple(round(v) for v in obj.box)) for obj in found]


def objects_response(svc: Services, found: list, matches: list[list], elapsed_ms: float) -> RecognizeResponse:
    """The objects=true answer (single photo and bulk job alike): one ObjectAnswer per product found,
    and top-level fields that answer the first (best) object, so a client ignoring ``objects`` still
    gets an answer."""
    cfg = svc.config
    answers = []
    for obj, products in zip(found, matches):
        answer = to_response(obj.prediction, top_k=cfg.top_k, products=products, engine=svc.engine_name, elapsed_ms=0)
        answers.append(
            ObjectAnswer(box=obj.box, score=obj.score, **answer.model_dump(include=set(ObjectAnswer.model_fields)))
        )
    top = to_response(
        found[0].prediction,
        top_k=cfg.top_k,
        products=answers[0].products,
        engine=svc.engine_name,
        elapsed_ms=elapsed_ms,
    )
    top.objects = answers
    return top


async def _products(svc: Services, image, k: int) -> list:
    try:
        return await svc.search_image(image, k)
    except SkulensError as exc:  # e.g. an empty catalog: the recognition still answers
        log.warning("product search failed: %s", exc)
        return []


def _products_now(svc: Services, vector, k: int) -> list:
    try:
        return svc.search_vector(vector, k)
    except SkulensError as exc:
        log.warning("product search failed: %s", exc)
        return []


@router.post(
    "/recognize/bulk",
    response_model=JobSubmitted,
    status_code=202,
    responses={**ERRORS, 429: {"model": ErrorResponse}},
    openapi_extra=_multipart_doc("images", many=True),
    summary="Recognize many photos as a background job",
    description="Multipart upload of up to max_bulk_images files in the field `images`. Answers a job "
    "id at once; poll GET /v1/jobs/{job_id} for progress and, when done, one result per "
    "photo (a bad photo gets an error entry, the others still run). `?objects=true` (`single`, "
    "`detector_threshold`) as for POST /v1/recognize: each photo's answer carries its `objects`.",
)
async def recognize_bulk(request: Request) -> JobSubmitted:
    svc = services(request)
    cfg = svc.config
    find = object_options(request)  # checked before the upload is read: a bad option costs nothing
    if find is not None:
        require_detector(svc)
    uploads = await read_images(
        request,
        "images",
        max_files=cfg.max_bulk_images,
        max_file_bytes=cfg.max_upload_bytes,
        max_total_bytes=cfg.max_bulk_bytes,
    )
    job_id = svc.jobs.submit(
        "recognize_bulk",
        [(upload.filename or "", upload.data) for upload in uploads],
        owner=job_owner(request),
        options=None if find is None else {"objects": find},  # JSON: a database job queue stores it
        total=len(uploads),
    )
    return JobSubmitted(job_id=job_id, status="queued", status_url=f"/v1/jobs/{job_id}")


NO_DETECTOR = "this server has no product detector (start it with --detector DIR)"


def require_detector(svc: Services) -> None:
    """``objects=true`` on a server without a product detector: a 422 JSON answer."""
    if getattr(svc.recognizer, "detector", None) is None:
        raise ApiError(422, "no_detector", NO_DETECTOR)


def run_bulk_job(svc: Services, ctx) -> dict:
    """The recognize_bulk job, on whichever server runs it, in chunks of max_batch_size (the shared
    lock lets interactive requests in between chunks, so a big job never starves the single-photo
    endpoint). Each chunk's answers are a checkpoint: a server that takes the job over goes on from
    there."""
    photos = ctx.inputs()
    find = (ctx.options or {}).get("objects")
    if find is not None and getattr(svc.recognizer, "detector", None) is None:
        # a fleet server started without --detector took a job another server accepted
        raise SkulensError(NO_DETECTOR)
    items: list[dict] = list((ctx.state or {}).get("items", []))
    step = svc.config.max_batch_size
    for start in range(ctx.done, len(photos), step):
        ctx.check()
        chunk = [(index, *photos[index]) for index in range(start, min(start + step, len(photos)))]
        answers = _bulk_chunk(svc, chunk) if find is None else _bulk_objects_chunk(svc, chunk, find)
        items += [item.model_dump() for item in answers]
        ctx.save(chunk[-1][0] + 1, {"items": items})
    items.sort(key=lambda item: item["index"])
    return {"items": items}


def _bulk_objects_chunk(svc: Services, chunk: list[tuple[int, str, bytes]], find: dict) -> list[BulkItem]:
    """``objects=true``: each photo on its own (its crops are the batch), holding the shared lock per
    photo so interactive requests get in between."""
    cfg = svc.config
    recognizer = svc.recognizer
    items: list[BulkItem] = []
    for index, filename, data in chunk:
        began = time.perf_counter()
        try:  # at full size: the boxes are in the photo's own pixels (a JPEG draft would shrink them)
            image = decode(data, max_pixels=cfg.max_pixels, max_bytes=cfg.max_upload_bytes, draft_size=None)
            if cfg.upload_store is not None:
                cfg.upload_store.save(image)
            with svc.batcher.lock:
                found = recognizer.predict_objects(image, len(recognizer.classes), **find)
        except ImageError as exc:
            error = {"code": "bad_image", "message": str(exc)}
            items.append(BulkItem(index=index, filename=filename or None, error=error))
            continue
        answer = _objects_answer(svc, image, found, 1000 * (time.perf_counter() - began))
        items.append(BulkItem(index=index, filename=filename or None, prediction=answer))
    return items


def _objects_answer(svc: Services, image, found: list, elapsed_ms: float) -> RecognizeResponse:
    """objects_response from a job thread: every crop's products from one embedding batch."""
    if svc.catalog is None:
        return objects_response(svc, found, [[] for _ in found], elapsed_ms)
    vectors = svc.embed_now(object_crops(image, found))
    return objects_response(svc, found, [_products_now(svc, v, svc.config.products_k) for v in vectors], elapsed_ms)


def _bulk_chunk(svc: Services, chunk: list[tuple[int, str, bytes]]) -> list[BulkItem]:
    cfg = svc.config
    items: list[BulkItem] = []
    images, ok = [], []
    for index, filename, data in chunk:
        began = time.perf_counter()
        try:
            images.append(
                decode(data, max_pixels=cfg.max_pixels, max_bytes=cfg.max_upload_bytes, draft_size=svc.draft_size)
            )
            ok.append((index, filename or None, began))
            if cfg.upload_store is not None:
                cfg.upload_store.save(images[-1])
        except ImageError as exc:
            items.append(
                BulkItem(index=index, filename=filename or None, error={"code": "bad_image", "message": str(exc)})
            )
    if not images:
        return items
    with svc.batcher.lock:
        predictions = svc.batcher.run_batch(images)
    svc.metrics.batch_size.observe(len(images))
    vectors = svc.embed_now(images) if svc.catalog is not None else [None] * len(images)
    for (index, filename, began), prediction, vector in zip(ok, predictions, vectors):
        products = _products_now(svc, vector, cfg.products_k) if vector is not None else []
        answer = to_response(
            prediction,
            top_k=cfg.top_k,
            products=products,
            engine=svc.engine_name,
            elapsed_ms=1000 * (time.perf_counter() - began),
        )
        items.append(BulkItem(index=index, filename=filename, prediction=answer))
    return items
