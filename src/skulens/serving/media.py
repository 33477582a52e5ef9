"""Product photos: storing the ones uploaded through the API, and serving any the catalog references.

Uploaded photos go to the catalog's database by default (every server of a fleet reads them there:
``DatabaseMedia``), or to a folder (``FolderMedia``, ``skulens serve --media-dir``: shared by the
servers only if the folder is, e.g. a network mount).

An upload is never stored as sent. Only its decoded pixels are re-encoded, so EXIF (GPS position,
camera serial numbers), ICC profiles and anything appended after the image data never reach the
disk, and the file name is a hash: nothing the client chose (file name, SKU text) becomes a path.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi.responses import FileResponse, Response
from PIL import Image

from skulens.data.images import load_image
from skulens.errors import ImageError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Product images may change under the same URL (an update); ETags make revalidation cheap.
IMAGE_HEADERS = {"Cache-Control": "no-cache"}


@dataclass
class EncodedImage:
    name: str  # relative to the media folder
    data: bytes


class MediaStore:
    """Re-encoding shared by both stores; ``write`` / ``owns`` / ``discard`` are each store's own."""

    def __init__(self, max_side: int = 1600, quality: int = 90):
        self.max_side = max_side
        self.quality = quality

    def encode(self, sku: str, image: Image.Image) -> EncodedImage:
        """Re-encode decoded pixels as a JPEG (CPU work: done before taking the catalog lock)."""
        pixels = Image.fromarray(np.asarray(image.convert("RGB")))  # a fresh image: no info, no EXIF
        if max(pixels.size) > self.max_side:
            pixels.thumbnail((self.max_side, self.max_side), Image.LANCZOS)
        buf = io.BytesIO()
        pixels.save(buf, "JPEG", quality=self.quality, optimize=True)
        data = buf.getvalue()
        # The SKU is hashed in so that a file belongs to exactly one product: removing one product's
        # files can never break another product that was sent the same photo.
        digest = hashlib.sha256(sku.encode("utf-8") + b"\0" + data).hexdigest()
        return EncodedImage(f"{digest[:2]}/{digest[:40]}.jpg", data)


class DatabaseMedia(MediaStore):
    """Photos as rows of the catalog's database (``media:<name>`` URIs)."""

    def __init__(self, catalog, max_side: int = 1600, quality: int = 90):
        super().__init__(max_side, quality)
        self.catalog = catalog

    def write(self, encoded: EncodedImage) -> tuple[str, bool]:
        return self.catalog.store_photo(encoded.name, encoded.data)

    def owns(self, uri: str) -> bool:
        return str(uri).startswith("media:")

    def discard(self, uris) -> None:
        self.catalog.discard_photos([uri for uri in uris if self.owns(uri)])


class FolderMedia(MediaStore):
    """Photos as files under ``root``."""

    def __init__(self, root: str | Path, max_side: int = 1600, quality: int = 90):
        super().__init__(max_side, quality)
        self.root = Path(root).expanduser().resolve()

    def write(self, encoded: EncodedImage) -> tuple[Path, bool]:
        """Store the file (atomically); returns its path and whether this call created it."""
        path = self.root / encoded.name
        if path.is_file():
            return path, False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(encoded.data)
        os.replace(tmp, path)  # readers see the whole file or none
        return path, True

    def owns(self, path: str | Path) -> bool:
        try:
            return Path(path).resolve().is_relative_to(self.root)
        except (OSError, ValueError):
            return False

    def discard(self, paths) -> None:
        """Delete the files among ``paths`` that this store made; files the catalog imported from
        elsewhere (a CSV's image folder, a dataset) are never touched."""
        for path in paths:
            if self.owns(path):
                path = Path(path)
                path.unlink(missing_ok=True)
                try:
                    path.parent.rmdir()  # only succeeds when the hash-prefix folder is empty
                except OSError:
                    pass


def image_response(source: bytes | str | Path) -> Response:
    """A catalog image (stored bytes or a file) as JPEG or PNG. Files in other formats (a CSV import
    may reference WebP or TIFF) are converted in memory, so clients only ever get the two formats
    every browser shows."""
    if isinstance(source, bytes):
        head = source[:8]
    else:
        source = Path(source)
        with source.open("rb") as handle:
            head = handle.read(8)
    for magic, media_type in ((JPEG_MAGIC, "image/jpeg"), (PNG_MAGIC, "image/png")):
        if head.startswith(magic):
            if isinstance(source, bytes):
                return Response(source, media_type=media_type, headers=IMAGE_HEADERS)
            return FileResponse(source, media_type=media_type, headers=IMAGE_HEADERS)
    try:
        image = load_image(source)
    except ImageError:
        raise FileNotFoundError("not an image") from None
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return Response(buf.getvalue(), media_type="image/jpeg", headers=IMAGE_HEADERS)
