"""Every image enters through load_image: odd formats decode right, broken ones fail clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from skulens.data.images import load_image
from skulens.errors import ImageError
from tests.conftest import coloured_photo, jpeg_bytes


def test_plain_jpeg_decodes_to_rgb(tmp_path):
    path = tmp_path / "a.jpg"
    coloured_photo((200, 0, 0), 1, 64).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (64, 64)


def test_draft_decodes_large_jpeg_at_reduced_size_but_not_below_request():
    big = Image.new("RGB", (1600, 1200), (10, 200, 10))
    img = load_image(jpeg_bytes(big), draft_size=224)
    assert 224 <= min(img.size) < 1200
    assert img.getpixel((10, 10))[1] > 150


@pytest.mark.parametrize("mode", ["CMYK", "L", "RGBA", "LA", "P"])
def test_other_modes_become_rgb(mode):
    src = Image.new("RGB", (20, 20), (255, 0, 0)).convert(mode)
    buf = io.BytesIO()
    src.save(buf, "TIFF" if mode == "CMYK" else "PNG")
    img = load_image(buf.getvalue())
    assert img.mode == "RGB" and img.size == (20, 20)


def test_transparent_pixels_are_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    assert load_image(buf.getvalue()).getpixel((5, 5)) == (255, 255, 255)


def test_palette_with_transparency():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=1)
    assert load_image(buf.getvalue()).getpixel((0, 0)) == (0, 0, 255)


def test_16bit_grayscale_keeps_its_range():
    arr = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")  # uint16 -> mode I;16
    img = np.asarray(load_image(buf.getvalue()))
    assert img.min() == 0 and img.max() == 255  # not clipped to white


def test_exif_orientation_is_honoured():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = load_image(jpeg_bytes(img, exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes(coloured_photo((1, 2, 3), 0, 200))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = Image.new("1", (12_000, 12_000))  # 144 Mpx, a few kB as PNG
    buf = io.BytesIO()
    bomb.save(buf, "PNG")
    assert len(buf.getvalue()) < 100_000
    with pytest.raises(ImageError, match="pixels"):
        load_image(buf.getvalue())


def test_disallowed_format_is_refused():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PPM")
    with pytest.raises(ImageError, match="not allowed"):
        load_image(buf.getvalue())


def test_file_over_byte_limit(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(coloured_photo((9, 9, 9), 0, 64)))
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path, max_bytes=100)
