"""Safe image decoding shared by training, evaluation and prediction.

Every image that enters skulens goes through :func:`load_image`, so the rules live in one place:
allowed formats only, a pixel limit checked *before* decoding (decompression bombs), truncated
files refused rather than silently padded, EXIF orientation honoured, and every mode (CMYK, RGBA,
palette with transparency, 16-bit, grayscale) turned into 8-bit RGB.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from skulens.errors import ImageError

# Truncated images must fail loudly: a half-grey photo is a silent wrong answer.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# We check the pixel count ourselves (with a clear message); keep Pillow's own guard as a backstop.
Image.MAX_IMAGE_PIXELS = 200_000_000

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Preprocessing scales the shorter side up to the model size: a 1x20000 strip (121 bytes as PNG) would
# become 224x4.5M pixels (4.7 GB). No product photo is 50 times longer than it is wide.
MAX_ASPECT_RATIO = 50

ImageSource = str | Path | bytes | BinaryIO | Image.Image


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _describe(source: ImageSource) -> str:
    return str(source) if isinstance(source, (str, Path)) else "image"


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode ``source`` into an 8-bit RGB image or raise :class:`ImageError`.

    ``draft_size`` lets JPEG decode straight at a reduced scale (DCT scaling), never below
    ``draft_size`` on the shorter side: much faster for large photos that are resized anyway.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        _check_aspect(*source.size, name)
        return _to_rgb(_upright(source), name)
    data = _read_bytes(source, name, max_bytes)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image or an unsupported format") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image has too many pixels (decompression bomb?)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: cannot read image header ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - a plugin tripping over hostile bytes (fuzzing found an
        # OverflowError in Pillow's PSD header parser) is still an unreadable file, not a crash
        raise ImageError(f"{name}: cannot read image header ({type(exc).__name__})") from None
    if img.format not in ALLOWED_FORMATS:
        raise ImageError(f"{name}: format {img.format} is not allowed (use JPEG, PNG, WebP, GIF, BMP or TIFF)")
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels")
    if width * height > max_pixels:
        raise ImageError(f"{name}: image is {width}x{height} pixels, over the limit of {max_pixels:,}")
    _check_aspect(width, height, name)
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    try:
        img.load()
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image has too many pixels (decompression bomb?)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{name}: image data is truncated or corrupt ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - see above: hostile bytes, whatever a decoder raises
        raise ImageError(f"{name}: image data is truncated or corrupt ({type(exc).__name__})") from None
    return _to_rgb(_upright(img), name)


def _upright(img: Image.Image) -> Image.Image:
    # Also for already-decoded images: a photo whose EXIF Pillow cannot parse still carries it in
    # ``info``, and the server hands decoded photos on to the recognizer, which calls load_image again.
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF must not lose an otherwise good photo
        return img


def _check_aspect(width: int, height: int, name: str) -> None:
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise ImageError(
            f"{name}: image is {width}x{height} pixels, more than {MAX_ASPECT_RATIO} times longer "
            "than it is wide (not a photo)"
        )


def _read_bytes(source: ImageSource, name: str, max_bytes: int) -> bytes:
    if isinstance(source, bytes):
        data = source
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise ImageError(f"{name}: file not found")
        if not path.is_file():
            raise ImageError(f"{name}: not a file")
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageError(f"{name}: file is {size:,} bytes, over the limit of {max_bytes:,}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{name}: cannot read file ({exc.strerror})") from None
    else:
        data = source.read(max_bytes + 1)
    if len(data) == 0:
        raise ImageError(f"{name}: file is empty")
    if len(data) > max_bytes:
        raise ImageError(f"{name}: file is over the limit of {max_bytes:,} bytes")
    return data


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Pillow's convert("L") clips 16-bit data to 255; rescale the real range instead.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Product photos with an alpha channel are cut-outs: put them on white like a catalog.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ImageError(f"{name}: cannot convert {mode} image to RGB ({exc})") from None
