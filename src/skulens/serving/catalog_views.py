"""Catalog objects (skulens.catalog's SearchHit and category tree) as API responses.

Duck-typed on purpose: the recognize route only needs ``catalog.search(image, top_k=k)`` returning
hits with sku/title/score/category_path/attributes/image, so the service does not import the catalog.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from skulens.serving.schemas import CategoryNode, CategoryTreeResponse, ProductDetail, ProductHit, ProductSummary


def _get(obj: Any, name: str, default=None):
    return obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)


def product_image_url(sku: str) -> str:
    # Catalog images are files on the server: the client gets a URL, never a server path.
    return f"/v1/products/{quote(sku, safe='')}/image"


def product_hit(hit: Any) -> ProductHit:
    sku = str(_get(hit, "sku"))
    image_url = _get(hit, "image_url")
    if image_url is None and _get(hit, "image"):
        image_url = product_image_url(sku)
    return ProductHit(
        sku=sku,
        title=str(_get(hit, "title", "") or sku),
        score=float(_get(hit, "score", 0.0)),
        image_url=image_url,
        category_path=list(_get(hit, "category_path", None) or []),
        attributes=_attributes(_get(hit, "attributes")),
    )


def _attributes(raw: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (raw or {}).items()}


def product_summary(hit: Any) -> ProductSummary:
    sku = str(_get(hit, "sku"))
    return ProductSummary(
        sku=sku,
        title=str(_get(hit, "title", "") or sku),
        image_url=product_image_url(sku) if _get(hit, "image") else None,
        category_path=list(_get(hit, "category_path", None) or []),
        attributes=_attributes(_get(hit, "attributes")),
    )


def product_detail(product: Any) -> ProductDetail:
    """``Catalog.get(sku)``'s Product; its image paths stay on the server."""
    return ProductDetail(
        sku=product.sku,
        title=product.title or product.sku,
        image_url=product_image_url(product.sku) if product.images else None,
        category_path=list(product.category_path),
        attributes=_attributes(product.attributes),
        description=product.description or "",
        image_count=len(product.images),
        gallery_image_count=len(product.gallery_images),
    )


def category_tree(tree: dict) -> CategoryTreeResponse:
    """``Catalog.category_tree()`` (a root ``{"name": "", "count", "children"}``) as the API's tree."""

    def node(raw: dict, parent: list[str]) -> CategoryNode:
        path = [*parent, raw["name"]]
        return CategoryNode(
            name=raw["name"],
            path=path,
            product_count=int(raw.get("count", 0)),
            children=[node(child, path) for child in raw.get("children", [])],
        )

    return CategoryTreeResponse(roots=[node(child, []) for child in tree.get("children", [])])
