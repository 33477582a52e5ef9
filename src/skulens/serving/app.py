"""``create_app(ServeConfig)``: the FastAPI app with its services, routers, middleware and error handlers.

Each area is a router module: routes_system, routes_recognize, routes_jobs, routes_catalog (search,
products, categories), routes_explain and routes_web; they read ``services(request)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from skulens import __version__
from skulens.errors import SkulensError
from skulens.serving import (
    routes_catalog,
    routes_device,
    routes_explain,
    routes_jobs,
    routes_products,
    routes_recognize,
    routes_system,
    routes_web,
)
from skulens.serving.api_errors import install_error_handlers
from skulens.serving.batching import MicroBatcher
from skulens.serving.catalog_writes import ProductWriter
from skulens.serving.config import ServeConfig
from skulens.serving.deps import Services
from skulens.serving.jobs import JobManager, MemoryJobs
from skulens.serving.media import DatabaseMedia, FolderMedia
from skulens.serving.metrics import Metrics
from skulens.serving.observe import ObserveMiddleware
from skulens.serving.rate_limit import RateLimitMiddleware

log = logging.getLogger("skulens.serving")

DESCRIPTION = """Product image recognition. Upload a photo to `POST /v1/recognize`; bulk work runs as a job
(`POST /v1/recognize/bulk`, then poll `GET /v1/jobs/{job_id}`). With a catalog: visual search
(`POST /v1/search`), products (`/v1/products`, writes need a key) and the category tree. Errors are JSON:
`{"error": {"code": ..., "message": ...}}`. Write endpoints need an API key (`X-API-Key` header or
`Authorization: Bearer`); read endpoints too when the server runs with `--protect-reads`."""


def load_recognizer(config: ServeConfig):
    if config.recognizer is not None:
        return config.recognizer
    from skulens.recognition.recognizer import Recognizer

    return Recognizer.load(config.run_dir, engine=config.engine, device=config.device, detector=config.detector_dir)


def decode_workers() -> int:
    """Threads for decoding uploads. Few on purpose: the model's own threads need the cores, and
    oversubscribed inference threads slow down far more than decoding speeds up."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def load_catalog(config: ServeConfig):
    if config.catalog_db is None:
        return config.catalog
    from skulens.serving.catalog_setup import open_catalog

    return open_catalog(config.catalog_db, config.catalog_run or config.run_dir, config.device, config.engine)


def warm_up(what: str, step) -> None:
    try:
        step()
    except Exception as exc:  # noqa: BLE001 - a failed warm-up must not stop the server; requests will report
        log.warning("warm-up of the %s failed: %s", what, exc)


def embedding_batcher(catalog, config: ServeConfig, metrics: Metrics) -> MicroBatcher:
    import torch

    embedder = catalog.embedder
    if embedder is None:
        raise SkulensError("the catalog has no embedding model to search with: open it with one")

    def on_batch(size: int, seconds: float) -> None:
        metrics.embed_batch_size.observe(size)
        metrics.embed_inference.observe(seconds)

    # Its own lock: the embedder is a second model, so it need not wait for recognition (and vice versa).
    return MicroBatcher(
        lambda tensors: list(embedder.embed_tensors(torch.stack(list(tensors)))),
        max_batch_size=config.max_batch_size,
        max_wait_ms=config.max_wait_ms,
        max_queue=config.max_queue,
        lock=threading.Lock(),
        on_batch=on_batch,
    )


def warm_up_all(svc: Services) -> None:
    """One prediction per model, and the vector index loaded, so the first request pays for none of it."""
    from PIL import Image

    grey = Image.new("RGB", (svc.img_size or 224, svc.img_size or 224), (128, 128, 128))

    def run(batcher: MicroBatcher, item) -> None:
        with batcher.lock:
            batcher.run_batch([item])

    warm_up("model", lambda: run(svc.batcher, grey))
    if svc.embed_batcher is not None:
        warm_up("search embedding", lambda: run(svc.embed_batcher, svc.embedder.input_tensor(grey)))
    if hasattr(svc.catalog, "index"):

        def load_index() -> None:
            with svc.catalog_lock:
                svc.catalog.index()

        warm_up("vector index", load_index)
    text = getattr(svc.catalog, "text", None)
    if text is not None:
        # the sentence model only for a catalog already searched by meaning (else its first such search)
        warm_up("text index", lambda: text.index(semantic=text.searched_by_meaning()))


ROUTERS = (
    routes_system,
    routes_recognize,
    routes_jobs,
    routes_catalog,
    routes_device,
    routes_products,
    routes_explain,
    routes_web,
)


def recognition_batcher(recognizer, config: ServeConfig, metrics: Metrics) -> MicroBatcher:
    n_classes = len(recognizer.classes)

    def on_batch(size: int, seconds: float) -> None:
        metrics.batch_size.observe(size)
        metrics.inference.observe(seconds)

    # Every class is scored so the API can give each level of the category path its own confidence.
    return MicroBatcher(
        lambda images: recognizer.predict_batch(images, top_k=n_classes),
        max_batch_size=config.max_batch_size,
        max_wait_ms=config.max_wait_ms,
        max_queue=config.max_queue,
        lock=threading.Lock(),
        on_batch=on_batch,
        on_queue=metrics.queue_depth.set,
    )


def load_models(svc: Services) -> None:
    """Load the recognizer and the catalog into ``svc``, with their batchers, media store and explainer."""
    config, metrics = svc.config, svc.metrics
    recognizer = load_recognizer(config)
    batcher = recognition_batcher(recognizer, config, metrics)
    catalog = load_catalog(config)
    if routes_explain.explainable(recognizer):
        svc.explainer = routes_explain.Explainer(recognizer, batcher.lock)
    if catalog is not None:
        svc.embed_batcher = embedding_batcher(catalog, config, metrics)
        svc.media = (
            FolderMedia(config.media_dir, max_side=config.media_max_side)
            if config.media_dir
            else DatabaseMedia(catalog, max_side=config.media_max_side)
        )
    svc.recognizer, svc.batcher, svc.catalog = recognizer, batcher, catalog
    svc.engine_name = str(getattr(getattr(recognizer, "engine", None), "name", "model"))


def build_services(config: ServeConfig) -> Services:
    """The models, batchers and stores the routes share (through ``app.state.services``); with
    ``load_in_background``, only the config and metrics: ``load_in_thread`` adds the rest once serving."""
    svc = Services(config=config, recognizer=None, batcher=None, metrics=Metrics(), engine_name="loading")
    if config.load_in_background:
        svc.model_state = "loading"
    else:
        load_models(svc)
    return svc


def load_in_thread(svc: Services, loop: asyncio.AbstractEventLoop) -> threading.Thread:
    """Load on a daemon thread while the server already answers its probes; the batchers and thread pools
    start back on ``loop`` (they are asyncio tasks), then warm-up, then /readyz turns 200."""

    def load() -> None:
        try:
            load_models(svc)
            asyncio.run_coroutine_threadsafe(start_services(svc), loop).result()
        except Exception as exc:  # noqa: BLE001 - /readyz reports it; the process stays up so an operator sees why
            lines = str(exc).strip().splitlines()
            svc.model_state = f"failed: {lines[0] if lines else type(exc).__name__}"
            log.error("could not load the model: %s", svc.model_state, exc_info=not isinstance(exc, SkulensError))
            return
        svc.model_state = "ok"
        log.info("model loaded: ready")

    thread = threading.Thread(target=load, name="skulens-load", daemon=True)
    thread.start()
    return thread


def job_manager(svc: Services) -> JobManager:
    """Jobs in the catalog's database when there is one (every server runs and answers for every job),
    else in this process."""
    config, metrics = svc.config, svc.metrics
    engine = getattr(svc.catalog, "engine", None)
    if engine is not None:
        from skulens.catalog.jobs import JobQueue

        store = JobQueue(engine)
    else:
        store = MemoryJobs()
    handlers = {"recognize_bulk": lambda ctx: routes_recognize.run_bulk_job(svc, ctx)}
    if svc.catalog is not None and svc.media is not None:
        handlers["import_products"] = lambda ctx: ProductWriter(svc).run_import_job(ctx)
    return JobManager(
        store,
        handlers,
        max_active=config.max_active_jobs,
        workers=config.job_workers,
        ttl_s=config.job_ttl_s,
        lease_s=config.job_lease_s,
        on_finish=lambda kind, status: metrics.jobs.labels(kind=kind, status=status).inc(),
    )


async def start_services(svc: Services) -> None:
    config = svc.config
    # Thread pools live with the server, so a second start (tests, reloads) gets fresh ones.
    svc.decode_pool = ThreadPoolExecutor(max_workers=decode_workers(), thread_name_prefix="skulens-decode")
    await svc.batcher.start()
    if svc.embed_batcher is not None:
        await svc.embed_batcher.start()
    if config.warmup:
        await asyncio.get_running_loop().run_in_executor(None, warm_up_all, svc)
    # Last: its workers may at once resume a job left by a server that died, and that needs the models.
    svc.jobs = job_manager(svc)


async def stop_services(svc: Services) -> None:
    # Any part may be missing when the server stops before a background load finished (or after it failed).
    for batcher in (svc.batcher, svc.embed_batcher):
        if batcher is not None:
            await batcher.stop()
    if svc.jobs is not None:
        svc.jobs.shutdown()
    if svc.decode_pool is not None:
        svc.decode_pool.shutdown(wait=False, cancel_futures=True)
    if svc.catalog is not None and hasattr(svc.catalog, "flush"):
        with svc.catalog_lock:
            # Saves the vector index, so the next start need not replay this run's changes.
            svc.catalog.flush()


def services_lifespan(svc: Services):
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if svc.model_state != "ok":  # load_in_background (again, on a restart after a failure)
            svc.model_state = "loading"
            # Not awaited: uvicorn binds its socket only once start-up returns.
            load_in_thread(svc, asyncio.get_running_loop())
        else:
            await start_services(svc)
        try:
            yield
        finally:
            await stop_services(svc)

    return lifespan


def include_routers(app: FastAPI) -> None:
    for module in ROUTERS:
        app.include_router(module.router)
    routes_web.mount_static(app)


def install_middleware(app: FastAPI, config: ServeConfig, metrics: Metrics) -> None:
    if config.rate_limit:  # innermost: CORS headers and the request log cover its 429s too
        app.add_middleware(
            RateLimitMiddleware,
            rate=config.rate_limit,
            storage_uri=config.rate_limit_storage,
            key_hashes=config.api_key_hashes,
        )
    # Added last, so outermost: it sees (and times) every request, CORS preflights included.
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            max_age=600,
        )
    app.add_middleware(ObserveMiddleware, metrics=metrics, log_client_ips=config.log_client_ips)


def create_app(config: ServeConfig) -> FastAPI:
    svc = build_services(config)
    # /docs is served by routes_web from local files (FastAPI's default pulls Swagger UI from a CDN).
    app = FastAPI(
        title="skulens",
        version=__version__,
        description=DESCRIPTION,
        lifespan=services_lifespan(svc),
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = svc
    install_error_handlers(app)
    include_routers(app)
    install_middleware(app, config, svc.metrics)
    return app
