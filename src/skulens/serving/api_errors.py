"""Every error leaves as ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status, never a traceback."""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from skulens.errors import ImageError, SkulensError
from skulens.serving.batching import Overloaded
from skulens.serving.jobs import JobsFull

log = logging.getLogger("skulens.serving")

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
    504: "timeout",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


async def within_timeout(coro, seconds: float):
    """The request's whole work, upload included, so a client trickling bytes cannot hold a slot forever."""
    try:
        return await asyncio.wait_for(coro, seconds)
    except TimeoutError:
        raise ApiError(504, "timeout", f"the request took longer than {seconds:g} s") from None


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _count(request: Request, code: str) -> None:
    services = getattr(request.app.state, "services", None)
    if services is not None:
        services.metrics.errors.labels(code=code).inc()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        _count(request, exc.code)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, exc: ImageError):
        _count(request, "bad_image")
        return error_response(422, "bad_image", str(exc))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        _count(request, "overloaded")
        return error_response(503, "overloaded", str(exc), {"Retry-After": "1"})

    @app.exception_handler(JobsFull)
    async def _jobs_full(request: Request, exc: JobsFull):
        _count(request, "too_many_jobs")
        return error_response(429, "too_many_jobs", str(exc), {"Retry-After": "5"})

    @app.exception_handler(SkulensError)
    async def _skulens_error(request: Request, exc: SkulensError):
        _count(request, "bad_request")
        return error_response(400, "bad_request", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        _count(request, "invalid_request")
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid request")
        return error_response(422, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = HTTP_CODES.get(exc.status_code, "error")
        _count(request, code)
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # The client gets a generic line (no internals, no request data); the server logs the traceback.
        log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
        _count(request, "internal_error")
        return error_response(500, "internal_error", "internal error; see the server log")
