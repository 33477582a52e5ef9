"""What a catalog holds and answers, as plain data: a product, a search hit, the result of an upsert."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Product:
    """A product as the user describes it; ``images`` are file paths (the first is the catalog photo)."""

    sku: str
    title: str = ""
    category_path: list[str] = field(default_factory=list)
    attributes: dict = field(default_factory=dict)
    description: str = ""
    images: list[str] = field(default_factory=list)
    # images that are extra search examples (labelled shopper photos), not the product's own photo
    gallery_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchHit:
    sku: str
    title: str
    score: float
    category_path: list[str]
    attributes: dict
    image: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class UpsertResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    # (position in the input, sku, reason)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)
