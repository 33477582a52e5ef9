"""POST /v1/explain: the photo with the model's Grad-CAM heat map blended over it, as a PNG.

Grad-CAM needs gradients, so it runs the PyTorch weights of the served run: the recognizer's own
model, or for an ONNX recognizer the same run's weights, loaded once on first use. It holds the
recognition batcher's lock, because with PyTorch it is the very model object the batcher calls.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from skulens.serving.api_errors import ApiError, within_timeout
from skulens.serving.deps import require_read, services
from skulens.serving.schemas import ErrorResponse
from skulens.serving.uploads import BINARY, decode_off_loop, multipart_doc, read_images

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

    def png(self, image, label: str | None) -> bytes:
        from skulens.explain.gradcam import gradcam_overlay, load_explainable

        with self.lock:
            if self._source is None:
                self._source = load_explainable(self.recognizer, "cpu")
            overlay = gradcam_overlay(self._source, image, label)
        buf = io.BytesIO()
        overlay.save(buf, "PNG")
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
    "the model's top answer). The photo is not stored.",
)
async def explain(request: Request, label: str | None = Query(None, max_length=200)) -> Response:
    svc = services(request)
    if svc.explainer is None:
        raise ApiError(501, "explain_unavailable", "this model cannot draw heat maps (it has no PyTorch weights)")
    return await within_timeout(_explain(svc, request, label), svc.config.request_timeout_s)


async def _explain(svc, request: Request, label: str | None) -> Response:
    from skulens.explain.gradcam import DISPLAY_SIDE

    cfg = svc.config
    started = time.perf_counter()
    upload = (
        await read_images(
            request, "image", max_files=1, max_file_bytes=cfg.max_upload_bytes, max_total_bytes=cfg.max_upload_bytes
        )
    )[0]
    # Decoded for the picture people look at, which is larger than the model's input.
    image = await decode_off_loop(svc, upload.data, draft_size=max(DISPLAY_SIDE, svc.draft_size or 0))
    png = await asyncio.get_running_loop().run_in_executor(None, svc.explainer.png, image, label)
    return Response(
        png,
        media_type="image/png",
        headers={"Cache-Control": "no-store", "X-Elapsed-Ms": f"{1000 * (time.perf_counter() - started):.1f}"},
    )
