"""Request/response models of the HTTP API; they are also the OpenAPI schema at /docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


def inline_schema(model: type[BaseModel]) -> dict:
    """A model's JSON schema with its ``$defs`` written in place, for a request body documented by hand
    (``openapi_extra``), where a ``#/$defs/...`` reference would point into nothing."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    return resolve(schema)


class ErrorBody(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. bad_image, upload_too_large, missing_api_key")
    message: str = Field(description="one line for people")


class ErrorResponse(BaseModel):
    error: ErrorBody


class CategoryLevel(BaseModel):
    name: str
    confidence: float = Field(description="probability mass of every class under this node")


class ScoredClass(BaseModel):
    label: str
    confidence: float
    path: list[str]


class Attribute(BaseModel):
    name: str
    value: str
    confidence: float | None = None


class ProductHit(BaseModel):
    """A catalog product matching a photo (filled by the catalog; empty list without one)."""

    sku: str
    title: str
    score: float = Field(description="similarity, higher is closer")
    image_url: str | None = None
    category_path: list[str] = Field(default_factory=list)
    attributes: dict[str, str] = Field(default_factory=dict)


class ObjectAnswer(BaseModel):
    """One product of a photo of several (``objects=true``)."""

    box: list[float] = Field(description="x1, y1, x2, y2 in pixels of the photo as sent, EXIF orientation applied")
    score: float | None = Field(description="the detector's score; null: nothing was found, the whole photo")
    label: str
    confidence: float
    path: list[CategoryLevel]
    top_k: list[ScoredClass]
    attributes: list[Attribute] = Field(default_factory=list)
    products: list[ProductHit] = Field(default_factory=list)


class RecognizeResponse(BaseModel):
    label: str
    confidence: float
    path: list[CategoryLevel] = Field(
        description="category path from the top of the tree, each level with its confidence"
    )
    answer_path: list[CategoryLevel] | None = Field(
        default=None, description="the path the model commits to when it backs off to a coarser level (if it does)"
    )
    unknown: bool = Field(default=False, description="the model is not confident at any level of the tree")
    top_k: list[ScoredClass]
    attributes: list[Attribute] = Field(default_factory=list)
    products: list[ProductHit] = Field(
        default_factory=list, description="top matching products; empty without a catalog"
    )
    engine: str
    elapsed_ms: float
    objects: list[ObjectAnswer] | None = Field(
        default=None,
        description="with objects=true: each product found, best first (the fields above answer the first one)",
    )


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    engine: str
    catalog: bool


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"] = "ready"
    reason: str | None = None
    # each check's state: "ok", or why not (model, database, schema, index)
    checks: dict[str, str]


class ModelInfo(BaseModel):
    name: str
    engine: str
    classes: int
    img_size: int | None
    has_tree: bool


class AuthInfo(BaseModel):
    reads: bool = Field(description="read endpoints need an API key")
    writes: bool = Field(description="write endpoints are enabled (they always need a key)")


class LimitsInfo(BaseModel):
    max_upload_bytes: int
    max_pixels: int
    formats: list[str]
    max_bulk_images: int
    request_timeout_s: float


class InfoResponse(BaseModel):
    version: str
    model: ModelInfo
    catalog: bool
    explain: bool = Field(default=False, description="POST /v1/explain can draw Grad-CAM heat maps for this model")
    objects: bool = Field(default=False, description="POST /v1/recognize?objects=true finds each product (a detector)")
    auth: AuthInfo
    limits: LimitsInfo
    max_batch_size: int
    max_wait_ms: float


JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobProgress(BaseModel):
    done: int
    total: int | None


class JobSubmitted(BaseModel):
    job_id: str
    status: JobState
    status_url: str


class JobStatus(BaseModel):
    job_id: str
    kind: str
    status: JobState
    progress: JobProgress
    created_at: float
    started_at: float | None
    finished_at: float | None
    result: Any | None = Field(default=None, description="the job's result once it has succeeded")
    error: ErrorBody | None = None
    attempts: int = Field(
        default=0, description="servers that have run the job: above 1 when one took it over from another"
    )


class BulkItem(BaseModel):
    index: int
    filename: str | None
    prediction: RecognizeResponse | None = None
    error: ErrorBody | None = None


class BulkResult(BaseModel):
    items: list[BulkItem]


# --- catalog --------------------------------------------------------------------------------------


class ProductSummary(BaseModel):
    """A product in a listing (no score: listings are ordered by SKU)."""

    sku: str
    title: str
    image_url: str | None = None
    category_path: list[str] = Field(default_factory=list)
    attributes: dict[str, str] = Field(default_factory=dict)


class ProductDetail(ProductSummary):
    description: str = ""
    image_count: int = Field(description="catalog photos; image_url serves the first")
    gallery_image_count: int = Field(default=0, description="extra search examples (e.g. labelled shopper photos)")


class ProductPage(BaseModel):
    products: list[ProductSummary]
    offset: int
    limit: int
    next_offset: int | None = Field(description="offset of the next page; null on the last page")


class SearchResponse(BaseModel):
    products: list[ProductHit]
    elapsed_ms: float


class DeletedResponse(BaseModel):
    sku: str
    deleted: Literal[True] = True


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ProductFields(BaseModel):
    """Product metadata; in an update, a field left out keeps its current value."""

    model_config = ConfigDict(extra="forbid")
    title: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = None
    category_path: list[Name] | None = Field(
        default=None, max_length=12, description='from the top of the tree, e.g. ["Fruit", "Apple"]'
    )
    attributes: (
        dict[
            Annotated[str, StringConstraints(min_length=1, max_length=100)],
            Annotated[str, StringConstraints(max_length=1000)],
        ]
        | None
    ) = Field(default=None, max_length=64)
    description: Annotated[str, StringConstraints(max_length=20_000)] | None = None


class ProductCreate(ProductFields):
    sku: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class ImportProduct(ProductCreate):
    images: list[str] = Field(
        min_length=1,
        max_length=16,
        description="base64 image files (a data: URL prefix is accepted); the first is the catalog photo",
    )


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    products: list[ImportProduct] = Field(min_length=1)
    on_conflict: Literal["error", "update", "skip"] = Field(
        default="error",
        description="a SKU already in the catalog with different data: reject the item, update the product, or skip it",
    )


class ImportRejection(BaseModel):
    index: int = Field(description="position in the request's products list")
    sku: str
    reason: str


class ImportResult(BaseModel):
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[ImportRejection] = Field(default_factory=list)


class SimilarResponse(BaseModel):
    sku: str
    products: list[ProductHit]


class CategoryNode(BaseModel):
    name: str
    path: list[str]
    product_count: int
    children: list[CategoryNode] = Field(default_factory=list)


class CategoryTreeResponse(BaseModel):
    roots: list[CategoryNode]


class DeviceModel(BaseModel):
    url: str = Field(description="the INT8 ONNX file; its name is its SHA-256, so it may be cached forever")
    sha256: str
    bytes: int
    name: str = Field(description="the architecture, e.g. efficientnet_lite0")
    input: str
    outputs: list[str]


class DeviceLimits(BaseModel):
    max_bytes: int
    max_pixels: int
    max_aspect_ratio: int
    formats: list[str]


class DeviceSearch(BaseModel):
    url: str = Field(description="POST the vector here (JSON)")
    model: str = Field(description="the identity to send with the vector: the catalog's search model")
    dim: int
    flip: bool = Field(description="send the mean of the photo's and its mirror image's embedding outputs")


class DeviceManifest(BaseModel):
    """What the web page needs to recognise a photo in the browser (``available`` false: why not)."""

    available: bool
    reason: str | None = None
    runtime: str | None = Field(default=None, description="URL of onnxruntime-web's ES module, served here")
    model: DeviceModel | None = None
    preprocessing: dict = Field(default_factory=dict, description="the run's recorded preprocessing")
    limits: DeviceLimits | None = None
    classes: list[str] = Field(default_factory=list)
    paths: list[list[str]] = Field(default_factory=list, description="each class's category path")
    top_k: int = 5
    search: DeviceSearch | None = None
    search_reason: str | None = None


class VectorSearchRequest(BaseModel):
    vector: list[float] = Field(min_length=1, max_length=8192, description="the model's embedding output")
    model: str = Field(min_length=1, max_length=64, description="GET /v1/device/manifest's search.model")
    top_k: int | None = Field(default=None, ge=1, le=100)
    category: list[str] = Field(default_factory=list, max_length=12)
    attributes: dict[str, str] = Field(default_factory=dict, max_length=12)
