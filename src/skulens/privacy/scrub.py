"""Metadata-free copies of photos: only the pixels survive.

Deleting EXIF tags one by one misses what nobody listed (XMP packets, IPTC, maker notes, ICC
profiles with device names, PNG text chunks, JPEG comments, trailing data after the image). A
fresh image built from the pixel buffer carries none of it by construction.
"""

from __future__ import annotations

import io

from PIL import Image

STORED_FORMAT = "JPEG"
STORED_SUFFIX = ".jpg"
JPEG_QUALITY = 90


def pixels_only(image: Image.Image) -> Image.Image:
    """A new RGB image with the same pixels and an empty ``info`` (no metadata to leak on save)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return Image.frombytes("RGB", rgb.size, rgb.tobytes())


def encode_clean(image: Image.Image) -> bytes:
    """JPEG bytes of the pixels alone. The orientation is already applied to the pixels by
    ``load_image`` (EXIF transpose), so dropping the orientation tag keeps the photo upright."""
    buffer = io.BytesIO()
    pixels_only(image).save(buffer, STORED_FORMAT, quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()
