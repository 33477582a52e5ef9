"""Catalog reads: POST /v1/search, GET /v1/products (+ /{sku}, /{sku}/image, /{sku}/similar) and
GET /v1/categories. The writes (create, update, delete, import) are in routes_products.py.

Plain database reads (get, list, tree) run without the catalog lock: every call opens its own
session and SQLite runs in WAL mode, so readers never see half a write. Anything that touches the
in-memory vector index (search, similar) takes the lock.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError

from skulens.catalog.store import parse_attribute_filter
from skulens.catalog.text_search import check_query
from skulens.errors import SkulensError
from skulens.serving.api_errors import ApiError, within_timeout
from skulens.serving.catalog_views import category_tree, product_detail, product_hit, product_summary
from skulens.serving.catalog_writes import unknown_product, valid_sku
from skulens.serving.deps import Services, require_read, services
from skulens.serving.media import image_response
from skulens.serving.schemas import (
    CategoryTreeResponse,
    ErrorResponse,
    ProductDetail,
    ProductPage,
    SearchResponse,
    SimilarResponse,
)
from skulens.serving.uploads import BINARY, decode_off_loop, form_images, form_text, multipart_doc, read_form

router = APIRouter(prefix="/v1", tags=["catalog"], dependencies=[Depends(require_read)])
ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 422)}
MAX_K = 100
CATEGORY_DOC = 'category path, one level per parameter from the top: "?category=Fruit&category=Apple"'


def catalog_of(svc: Services):
    if svc.catalog is None:
        raise ApiError(404, "no_catalog", "this server has no product catalog (start it with --catalog DB)")
    return svc.catalog


class SearchOptions(BaseModel):
    top_k: int = Field(ge=1, le=MAX_K)
    category: list[str] = Field(default_factory=list, max_length=12)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=12)
    q: str | None = None
    mode: Literal["hybrid", "lexical", "semantic"] = "hybrid"


def _checked_query(q: str | None) -> str | None:
    if q is None:
        return None
    try:
        return check_query(q)
    except SkulensError as exc:
        raise ApiError(422, "invalid_query", str(exc)) from None


def _form_list(form, name: str) -> list[str]:
    return [v for v in form.getlist(name) if isinstance(v, str)] if form is not None else []


def search_options(svc: Services, request: Request, form) -> SearchOptions:
    """From the query string or, as curl -F sends them, from form fields of the upload (``form``: None
    for a GET)."""
    top_k = (form_text(form, "top_k") if form is not None else None) or request.query_params.get("top_k")
    top_k = top_k or svc.config.products_k
    category = _form_list(form, "category") or request.query_params.getlist("category")
    pairs = _form_list(form, "attribute") or request.query_params.getlist("attribute")
    try:
        attributes = parse_attribute_filter(pairs)
    except SkulensError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    q = form_text(form, "q") if form is not None else None
    q = q if q is not None else request.query_params.get("q")
    mode = (form_text(form, "mode") if form is not None else None) or request.query_params.get("mode") or "hybrid"
    try:
        return SearchOptions(
            top_k=top_k,
            category=[c.strip() for c in category if c.strip()],
            attributes=attributes,
            q=_checked_query(q),
            mode=mode,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ApiError(422, "invalid_request", f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None


# 400: a malformed multipart body (scripts/fuzz_api.py found it answered but undocumented)
@router.post(
    "/search",
    response_model=SearchResponse,
    responses={**ERRORS, 400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}},
    openapi_extra=multipart_doc(
        ["image"],
        {
            "image": BINARY,
            "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
            "category": {"type": "array", "items": {"type": "string"}, "description": CATEGORY_DOC},
            "attribute": {
                "type": "array",
                "items": {"type": "string"},
                "description": "NAME=VALUE, e.g. colour=Blue; repeat for several (all must match)",
            },
            "q": {"type": "string", "description": 'words that refine the photo, e.g. "in blue"'},
        },
    ),
    summary="Products that look like a photo (optionally refined by words)",
    description="Multipart upload in the field `image`; `top_k` (default: the server's products-k), "
    "`category` (repeat per level), `attribute` (NAME=VALUE, repeatable) and `q` (words: products "
    "that look like the photo, re-ranked to them; a colour family named, e.g. 'in blue', comes first) "
    "as form fields or query parameters. The photo is not stored.",
)
async def search(request: Request) -> SearchResponse:
    svc = services(request)
    catalog_of(svc)
    return await within_timeout(_search(svc, request, time.perf_counter()), svc.config.request_timeout_s)


async def _search(svc: Services, request: Request, started: float) -> SearchResponse:
    cfg = svc.config
    form = await read_form(request, max_files=1, max_total_bytes=cfg.max_upload_bytes)
    try:
        options = search_options(svc, request, form)
        upload = (await form_images(form, "image", max_file_bytes=cfg.max_upload_bytes))[0]
    finally:
        await form.close()
    image = await decode_off_loop(svc, upload.data)
    products = await _searching(
        svc.search_image(image, options.top_k, options.category, options.attributes, options.q, options.mode)
    )
    return SearchResponse(products=products, elapsed_ms=round(1000 * (time.perf_counter() - started), 2))


async def _searching(call):
    """A search whose words or filter cannot be used is the client's error (422), not the server's."""
    try:
        return await call
    except SkulensError as exc:
        raise ApiError(422, "invalid_query", str(exc)) from None


@router.get(
    "/search",
    response_model=SearchResponse,
    responses=ERRORS,
    summary="Products that words describe",
    description="`q`: the words (at most 500 characters), matched against titles, descriptions, category "
    "paths and attributes (colour families too: 'blue' finds Navy Blue). `mode`: hybrid (default: BM25 "
    "and sentence vectors, fused by reciprocal rank), lexical or semantic. `top_k`, `category` and "
    "`attribute` as for POST /v1/search.",
)
async def search_text(request: Request, q: str = Query(..., max_length=2000)) -> SearchResponse:
    svc = services(request)
    catalog_of(svc)
    started = time.perf_counter()
    options = search_options(svc, request, None)
    call = svc.search_text(options.q, options.top_k, options.category, options.attributes, options.mode)
    products = await within_timeout(_searching(call), svc.config.request_timeout_s)
    return SearchResponse(products=products, elapsed_ms=round(1000 * (time.perf_counter() - started), 2))


@router.get(
    "/products",
    response_model=ProductPage,
    responses=ERRORS,
    summary="List products (by SKU), optionally under a category",
)
def list_products(
    request: Request,
    offset: int = Query(0, ge=0, le=10**9),
    limit: int = Query(50, ge=1, le=500),
    category: list[str] = Query(default=[], max_length=12, description=CATEGORY_DOC),
) -> ProductPage:
    catalog = catalog_of(services(request))
    # One more than asked: whether a next page exists, without counting the whole category.
    hits = catalog.products(offset=offset, limit=limit + 1, category=[c for c in category if c] or None)
    return ProductPage(
        products=[product_summary(h) for h in hits[:limit]],
        offset=offset,
        limit=limit,
        next_offset=offset + limit if len(hits) > limit else None,
    )


def _product(request: Request, sku: str):
    catalog = catalog_of(services(request))
    product = catalog.get(valid_sku(sku))
    if product is None:
        raise unknown_product(sku)
    return product


@router.get("/products/{sku}", response_model=ProductDetail, responses=ERRORS, summary="One product")
def get_product(sku: str, request: Request) -> ProductDetail:
    return product_detail(_product(request, sku))


@router.get(
    "/products/{sku}/image",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "the product's photo"}},
    summary="The product's catalog photo (JPEG or PNG)",
)
def product_image(sku: str, request: Request) -> Response:
    product = _product(request, sku)
    # Only an image the catalog itself stored is ever opened; nothing in the request names a file.
    if not product.images:
        raise ApiError(404, "no_image", f"product {product.sku[:80]!r} has no photo")
    try:
        return image_response(services(request).catalog.image_source(product.images[0]))
    except OSError:
        raise ApiError(404, "no_image", f"the photo of product {product.sku[:80]!r} is missing on the server") from None


@router.get(
    "/products/{sku}/similar",
    response_model=SimilarResponse,
    responses=ERRORS,
    summary="Products that look like this one (itself and near-duplicates left out)",
)
async def similar(
    sku: str,
    request: Request,
    top_k: int | None = Query(None, ge=1, le=MAX_K),
    same_category: bool = Query(False, description="only products in the same category"),
    tree: bool = Query(
        True, description="the product's own category first, then one level up, then the rest (false: by look alone)"
    ),
) -> SimilarResponse:
    svc = services(request)
    catalog = catalog_of(svc)
    product = await asyncio.get_running_loop().run_in_executor(None, _product, request, sku)

    def find():
        with svc.catalog_lock:
            try:
                k = top_k or svc.config.products_k
                return catalog.similar(product.sku, top_k=k, same_category=same_category, tree=tree)
            except SkulensError:  # a product without photos (or removed meanwhile) has no neighbours
                return []

    hits = await asyncio.get_running_loop().run_in_executor(None, find)
    return SimilarResponse(sku=product.sku, products=[product_hit(h) for h in hits])


@router.get(
    "/categories",
    response_model=CategoryTreeResponse,
    responses=ERRORS,
    summary="The category tree with product counts at every level",
)
def categories(request: Request) -> CategoryTreeResponse:
    return category_tree(catalog_of(services(request)).category_tree())
