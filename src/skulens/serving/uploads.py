"""Reading uploads: size-capped, kept in memory only (never spooled to disk), decoded by the same
``load_image`` as the rest of skulens (formats, pixel limit, bombs, truncation). Only photos of new
products are ever stored, and then only re-encoded (media.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request
from PIL import Image
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from skulens.data.images import load_image
from skulens.serving.api_errors import ApiError

# Room for the multipart boundaries and part headers around the photo itself.
MULTIPART_OVERHEAD = 64 * 1024
GENERIC_TYPES = ("", "application/octet-stream")


@dataclass
class Upload:
    filename: str | None
    data: bytes


async def read_capped_body(
    request: Request,
    limit: int,
    media_type: str = "multipart/form-data",
    hint: str = "send the photo as multipart/form-data in the field 'image'",
) -> bytes:
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith(media_type):
        raise ApiError(415, "unsupported_media_type", hint)
    cap = limit + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ApiError(413, "upload_too_large", f"upload is over the limit of {limit:,} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError(413, "upload_too_large", f"upload is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_form(
    request: Request,
    *,
    max_files: int,
    max_total_bytes: int,
    max_fields: int = 16,
    hint: str = "send the photo as multipart/form-data in the field 'image'",
) -> FormData:
    """The whole multipart form, in memory (the caller closes it)."""
    body = await read_capped_body(request, max_total_bytes, hint=hint)

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_files, max_fields=max_fields)
    parser.spool_max_size = len(body) + 1  # never roll over to a temporary file on disk
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_multipart", f"cannot read the multipart form: {exc}") from None
    except (KeyError, ValueError):  # e.g. no boundary in the Content-Type header
        raise ApiError(400, "bad_multipart", "cannot read the multipart form (is the boundary missing?)") from None


async def form_images(form: FormData, field: str, *, max_file_bytes: int, required: bool = True) -> list[Upload]:
    """The files sent in ``field``, each checked for size and declared content type."""
    parts = [v for v in form.getlist(field) if isinstance(v, UploadFile)]
    if not parts and required:
        raise ApiError(422, "missing_image", f"no file in the form field '{field}'")
    uploads = []
    for part in parts:
        declared = (part.content_type or "").split(";")[0].strip().lower()
        if declared not in GENERIC_TYPES and not declared.startswith("image/"):
            raise ApiError(415, "unsupported_media_type", f"{field}: content type {declared} is not an image")
        data = await part.read()
        if len(data) > max_file_bytes:
            raise ApiError(413, "upload_too_large", f"{field}: file is over the limit of {max_file_bytes:,} bytes")
        uploads.append(Upload(part.filename, data))
    return uploads


def form_text(form: FormData, field: str) -> str | None:
    value = form.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_request", f"{field}: expected a text field, got a file")
    return value


async def read_images(
    request: Request, field: str, *, max_files: int, max_file_bytes: int, max_total_bytes: int
) -> list[Upload]:
    """The files sent in ``field`` (at least one)."""
    form = await read_form(request, max_files=max_files, max_total_bytes=max_total_bytes)
    try:
        return await form_images(form, field, max_file_bytes=max_file_bytes)
    finally:
        await form.close()


def multipart_doc(required: list[str], properties: dict) -> dict:
    """OpenAPI for a multipart body read by hand (so /docs shows the fields and a file picker)."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": required, "properties": properties}}
            },
        }
    }


BINARY = {"type": "string", "format": "binary"}


def decode(data: bytes, *, max_pixels: int, max_bytes: int, draft_size: int | None) -> Image.Image:
    return load_image(data, max_pixels=max_pixels, max_bytes=max_bytes, draft_size=draft_size)


async def decode_off_loop(services, data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decoded at the smallest JPEG scale that still serves every model the photo goes to."""
    cfg = services.config
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        services.decode_pool,
        lambda: decode(
            data,
            max_pixels=cfg.max_pixels,
            max_bytes=cfg.max_upload_bytes,
            draft_size=draft_size or services.draft_size,
        ),
    )
