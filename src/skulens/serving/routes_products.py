"""Catalog writes, each behind an API key: POST /v1/products (create), PUT /v1/products/{sku} (change),
DELETE /v1/products/{sku} and POST /v1/products/import (many products as a background job).

Photos arrive as multipart files (create, update) or base64 in JSON (import); either way they are
decoded under the upload limits and re-encoded before anything is stored (see media.py).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from skulens.serving.api_errors import ApiError, within_timeout
from skulens.serving.catalog_views import product_detail
from skulens.serving.catalog_writes import MAX_PRODUCT_IMAGES, ProductWriter, valid_sku
from skulens.serving.deps import Services, job_owner, require_write, services
from skulens.serving.routes_catalog import catalog_of
from skulens.serving.schemas import (
    DeletedResponse,
    ErrorResponse,
    ImportRequest,
    JobSubmitted,
    ProductCreate,
    ProductDetail,
    ProductFields,
    inline_schema,
)
from skulens.serving.uploads import BINARY, form_images, form_text, multipart_doc, read_capped_body, read_form

router = APIRouter(prefix="/v1/products", tags=["catalog writes"], dependencies=[Depends(require_write)])
ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 415, 422)}
PRODUCT_FIELD_DOC = 'JSON: {"sku", "title", "category_path": ["Fruit", "Apple"], "attributes": {...}, "description"}'
FORM_HINT = "send multipart/form-data: the field 'product' (JSON) and the photos in the field 'images'"


def _invalid(exc: ValidationError, where: str) -> ApiError:
    first = exc.errors()[0]
    place = ".".join(str(p) for p in first.get("loc", ()))
    return ApiError(422, "invalid_product", f"{where}{'.' + place if place else ''}: {first['msg']}")


def parse_fields(text: str | None, model):
    if text is None:
        raise ApiError(422, "invalid_product", f"no field 'product' ({PRODUCT_FIELD_DOC})")
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise _invalid(exc, "product") from None


async def _product_form(svc: Services, request: Request, model, images_required: bool):
    cfg = svc.config
    form = await read_form(request, max_files=MAX_PRODUCT_IMAGES, max_total_bytes=cfg.max_bulk_bytes, hint=FORM_HINT)
    try:
        text = form_text(form, "product")
        fields = parse_fields(text, model) if text is not None or images_required else None
        uploads = await form_images(form, "images", max_file_bytes=cfg.max_upload_bytes, required=images_required)
    finally:
        await form.close()
    return fields, [u.data for u in uploads]


async def _in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@router.post(
    "",
    status_code=201,
    response_model=ProductDetail,
    responses={**ERRORS, 400: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    openapi_extra=multipart_doc(
        ["product", "images"],
        {
            "product": {"type": "string", "description": PRODUCT_FIELD_DOC},
            "images": {
                "type": "array",
                "items": BINARY,
                "description": "one or more photos; the first is the catalog photo",
            },
        },
    ),
    summary="Add a product (searchable at once)",
)
async def create_product(request: Request) -> ProductDetail:
    svc = services(request)
    catalog_of(svc)
    return await within_timeout(_create(svc, request), svc.config.request_timeout_s)


async def _create(svc: Services, request: Request) -> ProductDetail:
    fields, files = await _product_form(svc, request, ProductCreate, images_required=True)
    writer = ProductWriter(svc)
    sku = valid_sku(fields.sku)
    encoded = await _in_thread(writer.encode, sku, files)
    return product_detail(await _in_thread(writer.create, fields, encoded))


@router.put(
    "/{sku}",
    response_model=ProductDetail,
    responses={**ERRORS, 400: {"model": ErrorResponse}},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": inline_schema(ProductFields)},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "product": {"type": "string", "description": "JSON of the fields to change"},
                            "images": {
                                "type": "array",
                                "items": BINARY,
                                "description": "new photos, replacing all current ones",
                            },
                        },
                    }
                },
            }
        }
    },
    summary="Change a product: metadata (fields left out keep their value) and optionally its photos",
)
async def update_product(sku: str, request: Request) -> ProductDetail:
    svc = services(request)
    catalog_of(svc)
    valid_sku(sku)
    return await within_timeout(_update(svc, request, sku), svc.config.request_timeout_s)


async def _update(svc: Services, request: Request, sku: str) -> ProductDetail:
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        body = await read_capped_body(request, 1024 * 1024, "application/json")
        fields, files = parse_fields(body.decode("utf-8", errors="replace"), ProductFields), []
    else:
        fields, files = await _product_form(svc, request, ProductFields, images_required=False)
    writer = ProductWriter(svc)
    encoded = await _in_thread(writer.encode, sku, files) if files else None
    return product_detail(await _in_thread(writer.update, sku, fields, encoded))


@router.delete("/{sku}", response_model=DeletedResponse, responses=ERRORS, summary="Remove a product")
async def delete_product(sku: str, request: Request) -> DeletedResponse:
    svc = services(request)
    catalog_of(svc)
    await _in_thread(ProductWriter(svc).delete, sku)
    return DeletedResponse(sku=sku)


@router.post(
    "/import",
    status_code=202,
    response_model=JobSubmitted,
    responses={**ERRORS, 429: {"model": ErrorResponse}},
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(ImportRequest)}}}
    },
    summary="Add or change many products as a background job",
    description='JSON `{"products": [{"sku", "title", "category_path", "attributes", '
    '"description", "images": [base64, ...]}], "on_conflict": "error"|"update"|"skip"}` '
    "up to the bulk size limit. Answers a job id at once; poll GET /v1/jobs/{job_id}. A bad "
    "item (SKU, image) is reported in the result and the others still go in. For catalogs "
    "of image files on the server, use `skulens catalog import` instead.",
)
async def import_products(request: Request) -> JobSubmitted:
    svc = services(request)
    catalog_of(svc)
    body = await read_capped_body(
        request, svc.config.max_bulk_bytes, "application/json", 'send JSON: {"products": [...], "on_conflict": "error"}'
    )
    try:
        count = len(ImportRequest.model_validate_json(body).products)  # a bad body is a 422 now, not a failed job
    except ValidationError as exc:  # malformed JSON included
        raise _invalid(exc, "body") from None
    # The job's input is the request as sent: any server can run it, or take it over, from the database.
    job_id = svc.jobs.submit("import_products", [("import.json", body)], owner=job_owner(request), total=count)
    return JobSubmitted(job_id=job_id, status="queued", status_url=f"/v1/jobs/{job_id}")
