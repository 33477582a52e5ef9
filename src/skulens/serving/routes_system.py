"""GET /healthz (liveness), GET /readyz (readiness), GET /metrics (Prometheus text) and GET /v1/info
(what the web page needs to know)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from skulens import __version__
from skulens.data.images import ALLOWED_FORMATS
from skulens.serving.deps import app_services, require_read, services
from skulens.serving.schemas import AuthInfo, HealthResponse, InfoResponse, LimitsInfo, ModelInfo, ReadyResponse

router = APIRouter(tags=["system"])


@router.get(
    "/healthz",
    response_model=HealthResponse,
    summary="Liveness: the server answers (the model may still be loading: see /readyz)",
)
async def healthz(request: Request) -> HealthResponse:
    svc = app_services(request)  # liveness: answers while the model loads, and after it failed to
    return HealthResponse(engine=svc.engine_name, catalog=svc.catalog is not None)


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Not ready: `reason` says why"}},
    summary="Readiness: the model is loaded, the catalog database answers, its schema is current and the "
    "index has caught up with it (503 with a JSON reason otherwise)",
)
async def readyz(request: Request):
    svc = app_services(request)
    checks = {"model": svc.model_state}
    if svc.model_state != "ok":
        if svc.config.catalog is not None or svc.config.catalog_db is not None:
            checks["catalog"] = "loading" if svc.model_state == "loading" else "not loaded"
    elif svc.catalog is not None:

        def catalog_checks() -> dict[str, str]:
            with svc.catalog_lock:  # the index is shared with search: one user at a time
                return svc.catalog.readiness()

        checks.update(await asyncio.get_running_loop().run_in_executor(None, catalog_checks))
    problems = [f"{name}: {state}" for name, state in checks.items() if state != "ok"]
    if problems:
        body = ReadyResponse(status="not ready", reason="; ".join(problems), checks=checks)
        return JSONResponse(body.model_dump(), status_code=503)
    return ReadyResponse(checks=checks)


@router.get(
    "/metrics",
    dependencies=[Depends(require_read)],
    response_class=Response,
    summary="Prometheus metrics: requests, latencies, batch sizes, errors",
)
async def metrics(request: Request) -> Response:
    m = app_services(request).metrics
    return Response(m.render(), media_type=m.content_type)


@router.get("/v1/info", response_model=InfoResponse, summary="Model, limits and which features are on")
async def info(request: Request) -> InfoResponse:
    svc = services(request)
    cfg = svc.config
    rec = svc.recognizer
    run_config = getattr(rec, "config", None)
    spec = getattr(run_config, "model", None)
    return InfoResponse(
        version=__version__,
        model=ModelInfo(
            name=str(getattr(spec, "name", None) or getattr(spec, "arch", None) or "model"),
            engine=svc.engine_name,
            classes=len(rec.classes),
            img_size=svc.img_size,
            has_tree=getattr(run_config, "tree", None) is not None,
        ),
        catalog=svc.catalog is not None,
        explain=svc.explainer is not None,
        objects=getattr(rec, "detector", None) is not None,
        auth=AuthInfo(reads=cfg.protect_reads, writes=bool(cfg.api_key_hashes)),
        limits=LimitsInfo(
            max_upload_bytes=cfg.max_upload_bytes,
            max_pixels=cfg.max_pixels,
            formats=sorted(ALLOWED_FORMATS - {"MPO"}),
            max_bulk_images=cfg.max_bulk_images,
            request_timeout_s=cfg.request_timeout_s,
        ),
        max_batch_size=cfg.max_batch_size,
        max_wait_ms=cfg.max_wait_ms,
    )
