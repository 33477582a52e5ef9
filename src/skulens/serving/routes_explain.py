"""POST /v1/explain: the photo with the model's Grad-CAM heat map blended over it, as a PNG.

Grad-CAM needs gradients, so it runs the PyTorch weights of the served run: the recognizer's own
model, or for an ONNX recognizer the same run's weights, loaded once on first use. It holds the
recognition batcher's lock, because with PyTorch it is the very model object the batcher calls.
With ``?objects=true`` each product the detector finds is explained on its own crop, all in one picture.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from skulens.serving.api_errors import ApiError, within_timeout
from skulens.serving.deps import require_read, services
from skulens.serving.routes_recognize import object_options, require_detector
from skulens.serving.schemas import ErrorResponse
from skulens.serving.uploads import BINARY, decode, decode_off_loop, multipart_doc, read_images

router = APIRouter(prefix="/v1", tags=["recognition"], dependencies=[Depends(require_read)])


def explainable(recognizer) -> bool:
    from torch import nn

    engine = getattr(recognizer, "engine", None)
    return isinstance(getattr(engine, "model", None), nn.Module) or isinstance(getattr(engine, "path", None), Path)


class Explainer:
    def __init__(self, recognizer, lock: threading.Lock):
        self.recognizer = recognizer
        self.lock = lock
        self._source = None

    def _loaded(self):
        """The PyTorch (model, config), loaded on first use; call with the lock held."""
        from skulens.explain.gradcam import load_explainable

        if self._source is None:
            self._source = load_explainable(self.recognizer, "cpu")
        return self._source

    def png(self, image, label: str | None) -> bytes:
        from skulens.explain.gradcam import gradcam_overlay

        with self.lock:
            overlay = gradcam_overlay(self._loaded(), image, label)
        return _png(overlay)

    def objects_png(self, image, label: str | None, find: dict) -> tuple[bytes, list[dict]]:
        """Each product's heat map over its own box, in one picture, and each object's record."""
        from skulens.explain.objects import objects_overlay

        with self.lock:  # the detector's boxes and every crop's Grad-CAM: one request's model time
            picture, records = objects_overlay(self.recognizer, image, label, source=self._loaded(), **find)
        return _png(picture), records


def _png(picture) -> bytes:
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return buf.getvalue()


@router.post(
    "/explain",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the photo with the heat map"},
        **{code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 501, 504)},
    },
    openapi_extra=multipart_doc(["image"], {"image": BINARY}),
    summary="Where the model looked: a Grad-CAM heat map over the photo (PNG)",
    description="Multipart upload in the field `image`; `label` picks the class to explain (default: "
    "the model's top answer). The photo is not stored. `?objects=true` (on a server started with "
    "--detector; `single=true` and `detector_threshold` as for /v1/recognize): each product found "
    "is explained on its own crop and drawn over its outlined box in the one picture; the header "
    "`X-Objects` lists them as JSON (box in the photo's pixels, detector score, explained and "
    "predicted label with their probabilities). A server without a detector answers 422 `no_detector`.",
)
async def explain(request: Request, label: str | None = Query(None, max_length=200)) -> Response:
    svc = services(request)
    if svc.explainer is None:
        raise ApiError(501, "explain_unavailable", "this model cannot draw heat maps (it has no PyTorch weights)")
    find = object_options(request)  # checked before the upload is read: a bad option costs nothing
    if find is not None:
        require_detector(svc)
    return await within_timeout(_explain(svc, request, label, find), svc.config.request_timeout_s)


async def _explain(svc, request: Request, label: str | None, find: dict | None) -> Response:
    from skulens.explain.gradcam import DISPLAY_SIDE

    cfg = svc.config
    started = time.perf_counter()
    upload = (
        await read_images(
            request, "image", max_files=1, max_file_bytes=cfg.max_upload_bytes, max_total_bytes=cfg.max_upload_bytes
        )
    )[0]
    headers = {"Cache-Control": "no-store"}
    loop = asyncio.get_running_loop()
    if find is None:
        # Decoded for the picture people look at, which is larger than the model's input.
        image = await decode_off_loop(svc, upload.data, draft_size=max(DISPLAY_SIDE, svc.draft_size or 0))
        png = await loop.run_in_executor(None, svc.explainer.png, image, label)
    else:  # at full size, as /v1/recognize?objects=true: X-Objects' boxes are in the photo's own pixels
        limits = {"max_pixels": cfg.max_pixels, "max_bytes": cfg.max_upload_bytes, "draft_size": None}
        image = await loop.run_in_executor(svc.decode_pool, lambda: decode(upload.data, **limits))
        png, records = await loop.run_in_executor(None, svc.explainer.objects_png, image, label, find)
        headers["X-Objects"] = json.dumps(records, separators=(",", ":"))  # ASCII: labels are \u-escaped
    headers["X-Elapsed-Ms"] = f"{1000 * (time.perf_counter() - started):.1f}"
    return Response(png, media_type="image/png", headers=headers)
