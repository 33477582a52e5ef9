"""Everything the service needs to start, in one object; ``create_app(ServeConfig(...))`` reads only this."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skulens.errors import SkulensError
from skulens.serving.rate_limit import parse_rate

DEMO_ASSETS = Path(__file__).resolve().parents[1] / "demo_assets"


def demo_run_dir() -> Path | None:
    """The demo model shipped inside the package, or None when this install has none."""
    run = DEMO_ASSETS / "model"
    return run if (run / "config.json").is_file() else None


def demo_detector_dir() -> Path | None:
    """The demo's product detector (its checked INT8 ONNX export only), or None when this install has none."""
    detector = DEMO_ASSETS / "detector"
    return detector if (detector / "detector.json").is_file() else None


def demo_catalog_dir() -> Path | None:
    """The demo products (``products.csv`` + ``images/``) shipped inside the package, or None."""
    catalog = DEMO_ASSETS / "catalog"
    return catalog if (catalog / "products.csv").is_file() else None


@dataclass
class ServeConfig:
    """Settings of one server. ``recognizer`` may be passed pre-loaded (tests, embedding in another app);
    otherwise it is loaded from ``run_dir``. ``catalog`` is the product catalog for visual search (or None)."""

    run_dir: Path | None = None
    # A product detector's folder (skulens detector train): POST /v1/recognize?objects=true finds each product.
    detector_dir: Path | None = None
    engine: str = "auto"
    device: str = "auto"
    top_k: int = 5
    # Products per answer of /v1/recognize, and the default top_k of /v1/search and .../similar.
    products_k: int = 12
    # Micro-batching: a batch leaves when it is full or its oldest request has waited max_wait_ms.
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256
    # One prediction at start-up, so the first real request does not pay for lazy initialisation.
    warmup: bool = True
    # Bind first, load after: the model, catalog and warm-up load on a thread once the server starts, and
    # /readyz answers 503 meanwhile (`skulens serve` does this; --load-first, and Python callers, do not).
    load_in_background: bool = False
    request_timeout_s: float = 30.0
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_bulk_images: int = 64
    max_bulk_bytes: int = 64 * 1024 * 1024
    # Keys: hashes only (see security.py). Writes always need a key; reads only when protect_reads.
    api_key_hashes: frozenset[str] = frozenset()
    protect_reads: bool = False
    cors_origins: tuple[str, ...] = ()
    # Requests per API key (or client address without one), e.g. "60/minute"; None: no limit. Counted in
    # this process, or in a store the servers share (a `limits` storage URI such as redis://host:6379).
    rate_limit: str | None = None
    rate_limit_storage: str = "memory://"
    log_client_ips: bool = False
    # Unfinished jobs hold their uploads (in the catalog's database, else in memory): at most
    # max_active_jobs x max_bulk_bytes, counted over every server sharing the database.
    max_active_jobs: int = 4
    job_workers: int = 1
    job_ttl_s: float = 3600.0
    # A job's server renews its lease every lease/3 s; a job whose lease lapsed (its server died) is
    # resumed by another server. Shorter: faster takeover, more database writes.
    job_lease_s: float = 30.0
    # The product catalog: a pre-opened ``Catalog`` (tests, embedding), or ``catalog_db`` to open
    # with the model the catalog recorded (``catalog_run``'s embedder when the catalog is new).
    catalog: Any = None
    catalog_db: str | Path | None = None
    catalog_run: Path | None = None
    # Photos uploaded with new products (re-encoded, named by hash): in this folder (shared by the
    # servers only if the folder is); default: in the catalog's database, where every server reads them.
    media_dir: Path | None = None
    # Longest side of a stored product photo: catalogs need thumbnails and embeddings, not 40 MP.
    media_max_side: int = 1600
    recognizer: Any = None
    # Uploads are dropped after answering unless an operator opts in to storing them (privacy/store.py).
    store_uploads_dir: Path | None = None
    blur_faces: bool = False
    encrypt_at_rest: bool = False  # key from $SKULENS_STORAGE_KEY
    retention_days: float | None = None
    upload_store: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        positive = {
            "top_k": self.top_k,
            "products_k": self.products_k,
            "max_batch_size": self.max_batch_size,
            "max_queue": self.max_queue,
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
            "max_bulk_images": self.max_bulk_images,
            "max_bulk_bytes": self.max_bulk_bytes,
            "max_active_jobs": self.max_active_jobs,
            "job_workers": self.job_workers,
            "media_max_side": self.media_max_side,
        }
        for name, value in positive.items():
            if value < 1:
                raise SkulensError(f"{name.replace('_', '-')} must be at least 1 (got {value})")
        if not 0.5 <= self.job_lease_s <= 3600:
            raise SkulensError(f"job-lease must be between 0.5 and 3600 seconds (got {self.job_lease_s})")
        if self.max_wait_ms < 0:
            raise SkulensError(f"max-wait-ms must be 0 or more (got {self.max_wait_ms})")
        if self.request_timeout_s <= 0:
            raise SkulensError(f"timeout must be positive (got {self.request_timeout_s})")
        if self.rate_limit is not None:
            parse_rate(self.rate_limit)  # a malformed rate stops the server before it starts, in one line
        if self.recognizer is None and self.run_dir is None:
            raise SkulensError("no model to serve: pass a run folder")
        if self.catalog is not None and self.catalog_db is not None:
            raise SkulensError("give a catalog object or a catalog database, not both")
        if self.media_dir is not None:
            self.media_dir = Path(self.media_dir)
        self.cors_origins = tuple(self.cors_origins)
        self.api_key_hashes = frozenset(self.api_key_hashes)
        if self.protect_reads and not self.api_key_hashes:
            raise SkulensError("--protect-reads needs API keys (--api-keys-file)")
        if self.store_uploads_dir is not None:
            from skulens.privacy.store import UploadStore

            # Built here so a missing key or an unwritable folder stops the server at start, not per upload.
            self.upload_store = UploadStore.from_settings(
                self.store_uploads_dir,
                blur_faces=self.blur_faces,
                encrypt=self.encrypt_at_rest,
                retention_days=self.retention_days,
            )
        elif self.blur_faces or self.encrypt_at_rest or self.retention_days is not None:
            raise SkulensError(
                "--blur-faces, --encrypt-at-rest and --retention-days apply to stored uploads: add --store-uploads DIR"
            )
