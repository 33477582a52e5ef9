"""On-device preprocessing (src/skulens/serving/static/preprocess.js) in a real headless Chromium against
Python's one image path (load_image + to_model_array): the browser must give the model the input the
server gives it, so that both modes answer alike, and refuse a bad photo with the server's message.

The module is served from the static folder by http.server on a loopback port and imported into a blank
page; photos go in as base64, and the Float32Array comes back as a SHA-256 of its bytes (compared with
Python's array), or whole where a difference is measured. Differences are in normalised units (one 8-bit
level is 1 / 255 / std, about 0.017 for ImageNet's std)."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import skulens
from skulens.data.images import load_image
from skulens.data.transforms import Preprocessing, image_to_array
from skulens.errors import ImageError
from tests.hostile_corpus import build_corpus, png_header_only
from tests.test_web_page import CHROMIUM, CHROMIUM_ARGS, sync_api

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium; `make test` does it)"
    ),
]

STATIC = Path(skulens.__file__).parent / "serving" / "static"
DEMO_JPEGS = sorted((Path(skulens.__file__).parent / "demo_data" / "grocery-mini").rglob("*.jpg"))
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
EXACT = 1e-6  # float32 rounding only: the same 8-bit pixels went in

# Runs preprocess.js on each photo; the module is imported once per page (window.preprocess). The input
# comes back as a SHA-256 of its float32 bytes, and whole (base64) only when asked: exact matches are
# checked by hash, which keeps ~600 KB per photo off the DevTools connection.
RUN = """async ([photos, pre, limits, withData]) => {
  const { imageToModelInput } = window.preprocess;
  const results = [];
  for (const b64 of photos) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    try {
      const r = await imageToModelInput(new Blob([bytes]), pre, limits);
      const raw = new Uint8Array(r.data.buffer);
      const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", raw));
      const out = { sha256: Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""), dims: r.dims };
      Object.assign(out, { width: r.width, height: r.height, draft: r.draft });
      if (withData) {
        let s = "";
        for (let i = 0; i < raw.length; i += 8192) s += String.fromCharCode(...raw.subarray(i, i + 8192));
        out.data = btoa(s);
      }
      results.push(out);
    } catch (e) {
      results.push({ error: String(e.message), name: e.name, code: e.code ?? null });
    }
  }
  return results;
}"""

# Counts the browser decodes, to show that a refused photo was refused before any decoding.
COUNT_DECODES = """() => {
  window.decodes = 0;
  const bitmap = window.createImageBitmap;
  window.createImageBitmap = (...args) => { window.decodes++; return bitmap(...args); };
  if (window.ImageDecoder) {
    const Decoder = window.ImageDecoder;
    window.ImageDecoder = class extends Decoder {
      constructor(init) { window.decodes++; super(init); }
    };
    window.ImageDecoder.isTypeSupported = Decoder.isTypeSupported;
  }
}"""


class StaticFiles(SimpleHTTPRequestHandler):
    """The static folder as the server's /static serves it, plus a blank page at / to import it from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(STATIC), **kwargs)

    def do_GET(self):
        if self.path != "/":
            return super().do_GET()
        body = b"<!doctype html><meta charset=utf-8><title>preprocess</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet test output
        pass


@pytest.fixture(scope="module")
def page() -> Iterator:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StaticFiles)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # http://127.0.0.1 is a secure context, as the real page's https:// is (WebCodecs needs one)
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.evaluate("async () => { window.preprocess = await import('/preprocess.js'); }")
            page.evaluate(COUNT_DECODES)
            yield page
            assert errors == []
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


def device(
    page, photos: list[bytes], pre: Preprocessing, limits: dict | None = None, arrays: bool = False
) -> list[dict]:
    """preprocess.js's answer for each photo: {sha256, dims, width, height, draft, array (if asked)} or
    {error, name, code}."""
    encoded = [base64.b64encode(p).decode() for p in photos]
    results = page.evaluate(RUN, [encoded, pre.to_dict(), limits, arrays])
    for r in results:
        if "data" in r:
            r["array"] = np.frombuffer(base64.b64decode(r.pop("data")), np.float32).reshape(r["dims"][1:])
    return results


def difference(page, data: bytes, r: dict, pre: Preprocessing) -> tuple[float, float]:
    """(max, mean) absolute difference between the browser's input `r` and Python's for `data`."""
    assert "sha256" in r, r
    expected = image_to_array(data, pre)
    assert tuple(r["dims"]) == (1, *expected.shape)
    if hashlib.sha256(expected.tobytes()).hexdigest() == r["sha256"]:
        return 0.0, 0.0  # the same float32 bytes
    diff = np.abs(device(page, [data], pre, arrays=True)[0]["array"] - expected)
    return float(diff.max()), float(diff.mean())


def compare(page, photos: list[bytes], pre: Preprocessing) -> list[tuple[float, float]]:
    return [difference(page, data, r, pre) for data, r in zip(photos, device(page, photos, pre))]


def pre(size: int = 224, resize: str = "crop", in_chans: int = 3) -> Preprocessing:
    return Preprocessing(
        img_size=size,
        mean=IMAGENET["mean"][:in_chans],
        std=IMAGENET["std"][:in_chans],
        in_chans=in_chans,
        resize=resize,
    )


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients, a repeating pattern and sensor-like noise: every resampling weight matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1), ((x + 2 * y) % 48) * 5], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 18, base.shape), 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def exif(orientation: int) -> Image.Exif:
    data = Image.Exif()
    data[0x0112] = orientation
    return data


@functools.cache
def mosaic(width: int, height: int) -> Image.Image:
    """A large photo made of the bundled shopper photos at their own resolution (real detail)."""
    rng = np.random.default_rng(7)
    tiles = [Image.open(p).convert("RGB").resize((160, 160)) for p in DEMO_JPEGS[::4]]
    out = Image.new("RGB", (width, height))
    for top in range(0, height, 160):
        for left in range(0, width, 160):
            out.paste(tiles[rng.integers(len(tiles))], (left, top))
    return out


def assert_exact(results: list[tuple[float, float]], names: list[str]) -> None:
    worst = max(r[0] for r in results)
    assert worst <= EXACT, {n: r for n, r in zip(names, results) if r[0] > EXACT}


# --- pixels: the same input as Python ---------------------------------------------------------------


@pytest.mark.parametrize("size", [224, 160])
@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_png_photos_give_python_input_exactly(page, size, resize):
    """Up- and downscaled, square and not, a side one pixel off, a 1:10 strip: Pillow's resampling ported."""
    shapes = [(300, 200), (200, 300), (100, 150), (161, 160), (224, 224), (640, 480), (40, 400)]
    photos = [encode(photo(w, h, seed=i)) for i, (w, h) in enumerate(shapes)]
    assert_exact(compare(page, photos, pre(size, resize)), [f"{w}x{h}" for w, h in shapes])


def test_png_modes_give_python_input_exactly(page):
    """Alpha on white (every colour at every alpha), grey, palettes, single-colour transparency that
    Pillow ignores, 16-bit grey stretched to its range, and the other formats without loss."""
    rng = np.random.default_rng(1)
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))
    every_alpha = Image.fromarray(np.stack([colour, 255 - colour, colour * 7 % 256, alpha], -1).astype(np.uint8))
    rgb = photo(200, 150, seed=2)
    cutout = rgb.copy()
    cutout.putalpha(photo(200, 150, seed=3).convert("L"))
    grey = photo(120, 90, seed=4).convert("L")
    palette = photo(90, 120, seed=5).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    grey16 = Image.fromarray((rng.integers(3000, 9000, (50, 70))).astype(np.uint16))
    cases = {
        "RGBA, every colour x alpha": encode(every_alpha),
        "RGBA cut-out": encode(cutout),
        "L": encode(grey),
        "LA": encode(Image.merge("LA", (grey, grey.transpose(Image.Transpose.ROTATE_180)))),
        "P": encode(palette),
        "P + transparent index": encode(palette, transparency=3),
        "RGB + tRNS colour": encode(rgb, transparency=(128, 128, 128)),
        "I;16 (16-bit grey)": encode(grey16),
        "1-bit": encode(grey.convert("1")),
        "WebP lossless RGBA": encode(cutout, "WEBP", lossless=True, exact=True),
        "WebP lossy": encode(rgb, "WEBP", quality=80),
        "GIF + transparency": encode(palette, "GIF", transparency=3),
        "BMP": encode(rgb, "BMP"),
        "BMP 32-bit (4th byte ignored)": encode(cutout, "BMP"),
    }
    for p in (pre(160, "pad"), pre(224, "crop", in_chans=1)):
        assert_exact(compare(page, list(cases.values()), p), list(cases))


def test_bundled_shopper_jpegs_give_python_input(page):
    """Chromium's libjpeg-turbo decodes as Pillow's does: measured identical on every bundled photo."""
    results = []
    for p in (pre(224, "crop"), pre(160, "pad")):
        results += compare(page, [path.read_bytes() for path in DEMO_JPEGS], p)
    worst, mean = max(r[0] for r in results), float(np.mean([r[1] for r in results]))
    print(f"\n{len(DEMO_JPEGS)} bundled JPEGs x 2 settings: max abs diff {worst:.2e}, mean {mean:.2e}")
    assert len(DEMO_JPEGS) >= 100
    assert worst <= EXACT, f"JPEG decode differs from Pillow's: max {worst}, mean {mean}"


def test_rotated_photos_are_upright_like_python(page):
    """EXIF orientation as ImageOps.exif_transpose applies it: JPEG, PNG (eXIf), WebP (which Chromium
    does not turn) and XMP's tiff:Orientation (which Pillow reads and browsers do not)."""
    img = photo(300, 200, seed=8)
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>'
    )
    png_xmp = PngInfo()
    png_xmp.add_itxt("XML:com.adobe.xmp", xmp.decode())
    cases = {
        "JPEG orientation 6": encode(img, "JPEG", quality=92, exif=exif(6)),
        "JPEG orientation 3": encode(img, "JPEG", quality=92, exif=exif(3)),
        "JPEG orientation 5": encode(img, "JPEG", quality=92, exif=exif(5)),
        "PNG orientation 6": encode(img, exif=exif(6)),
        "WebP orientation 6": encode(img, "WEBP", lossless=True, exif=exif(6)),
        "JPEG XMP orientation 8": encode(img, "JPEG", quality=92, xmp=xmp),
        "PNG XMP orientation 8": encode(img, pnginfo=png_xmp),
    }
    results = device(page, list(cases.values()), pre(224))
    for name, data, r in zip(cases, cases.values(), results):
        upright = (300, 200) if "orientation 3" in name else (200, 300)  # 5, 6 and 8 swap the sides
        assert (r.get("width"), r.get("height")) == load_image(data).size == upright, name
        assert difference(page, data, r, pre(224))[0] <= EXACT, name


# --- JPEG draft: large photos are decoded at a reduced DCT scale ----------------------------------


def large_jpegs() -> dict[str, bytes]:
    big = mosaic(1000, 800)
    return {
        "1000x800 4:2:0": encode(big, "JPEG", quality=90),
        "1000x800 4:2:2": encode(big, "JPEG", quality=90, subsampling=1),
        "1000x800 progressive": encode(big, "JPEG", quality=90, progressive=True),
        "1001x803 orientation 6": encode(mosaic(1001, 803), "JPEG", quality=90, exif=exif(6)),
        "2000x1600 grey": encode(mosaic(2000, 1600).convert("L"), "JPEG", quality=90),
    }


def test_large_jpeg_draft_is_pillows_exactly(page):
    """Where Python drafts (1/2, 1/4, 1/8), Chromium's ImageDecoder, asked for the scaled size, decodes
    in the DCT domain like Pillow's libjpeg: the same pixels."""
    cases = large_jpegs()
    for p, scale in ((pre(224), {"1000x800": 2, "1001x803": 2, "2000x1600": 4}), (pre(160, "pad"), None)):
        results = device(page, list(cases.values()), p)
        for name, data, r in zip(cases, cases.values(), results):
            assert r["draft"]["method"] == "dct", (name, r.get("draft"))
            if scale:
                assert r["draft"]["scale"] == scale[name.split()[0]], (name, r["draft"])
            diff = difference(page, data, r, p)
            assert diff[0] <= EXACT, (name, p.img_size, diff)


def test_draft_box_emulation_where_the_browser_cannot_scale(page):
    """Without ImageDecoder (browsers other than Chromium's, or a page on plain http from a LAN address)
    the draft is emulated with a box average of the full decode: close, not exact. Measured here: 4:2:0
    max 0.35 (20 levels, at a few strong chroma edges), mean 0.0105 (0.6 level); 4:2:2 max 0.54, mean
    0.033 (the full decode's chroma upsampling blurs what libjpeg's scaled decode keeps); grey max 0.0175
    (1 level), mean 0.001. Enough to move the int8 demo model's probabilities by more than 0.02."""
    cases = large_jpegs()
    page.evaluate("() => { window.realImageDecoder = window.ImageDecoder; window.ImageDecoder = undefined; }")
    try:
        stats = {}
        for p in (pre(224), pre(160)):
            for name, data, r in zip(cases, cases.values(), device(page, list(cases.values()), p, arrays=True)):
                assert r["draft"]["method"] == "box", (name, r.get("draft"))
                diff = np.abs(r["array"] - image_to_array(data, p))
                stats[f"{name} @{p.img_size}"] = (round(float(diff.max()), 4), round(float(diff.mean()), 5))
    finally:
        page.evaluate("() => { window.ImageDecoder = window.realImageDecoder; }")
    print("\nbox-average draft vs Pillow's DCT-domain draft (max, mean):", stats)
    chroma_422 = [v for k, v in stats.items() if "4:2:2" in k]
    others = [v for k, v in stats.items() if "4:2:2" not in k]
    assert max(m for m, _ in others) <= 0.5 and max(a for _, a in others) <= 0.016, stats
    assert max(m for m, _ in chroma_422) <= 0.9 and max(a for _, a in chroma_422) <= 0.045, stats


# --- refusals: the server's message, before any decoding ------------------------------------------


def python_message(data: bytes, **limits) -> str:
    """str(ImageError) from load_image, which the server answers; a count only Pillow's decoder knows
    ("(N bytes not processed)") is left out, as the browser does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageError) as raised:
            load_image(data, **limits)
    return re.sub(r"image file is truncated \(\d+ bytes not processed\)", "image file is truncated", str(raised.value))


def png_strip(width: int, height: int) -> bytes:
    return encode(Image.new("L", (width, height), 128))


def test_bad_photos_get_the_server_message_without_decoding(page):
    page.evaluate("() => { window.decodes = 0; }")
    jpeg = encode(photo(160, 120), "JPEG", quality=90)
    png = encode(photo(160, 120))
    gif = encode(photo(160, 120).convert("P"), "GIF")
    ppm = b"P6\n4 4\n255\n" + bytes(48)
    limits = {"max_bytes": 50 * 1024 * 1024, "max_pixels": 50_000_000}
    cases = {
        "not an image": b"this is not a photo, just some notes\n" * 4,
        "empty": b"",
        "truncated JPEG": jpeg[: len(jpeg) // 2],
        "JPEG less its last byte": jpeg[:-1],
        "truncated PNG": png[: len(png) * 3 // 4],
        "truncated GIF": gif[: len(gif) // 2],
        "PNG header claims 20000x20000": png_header_only(20_000, 20_000),
        "PNG header claims 100000x100000": png_header_only(100_000, 100_000),
        "1x5000 strip": png_strip(1, 5000),
        "5000x2 strip": png_strip(5000, 2),
        "PPM (not allowed)": ppm,
        "SOI only": b"\xff\xd8",
    }
    results = device(page, list(cases.values()), pre(224), {**limits, "max_aspect_ratio": 50})
    for (name, data), r in zip(cases.items(), results):
        assert r.get("name") == "ImageError" and r["code"] == "bad_image", (name, r)
        assert r["error"] == python_message(data, **limits), name
    assert "over the limit of 50,000,000" in results[6]["error"]
    assert "more than 50 times longer than it is wide" in results[8]["error"]
    assert page.evaluate("() => window.decodes") == 0  # all refused from the bytes alone

    small = {"max_bytes": 1000, "max_pixels": 10_000, "max_aspect_ratio": 50}
    over = device(page, [jpeg, png], pre(224), small)
    assert [r["error"] for r in over] == [python_message(jpeg, max_bytes=1000, max_pixels=10_000)] * 2
    assert over[0]["error"] == "image: file is over the limit of 1,000 bytes"
    assert page.evaluate("() => window.decodes") == 0


def test_hostile_corpus_gets_the_server_answer(page):
    """tests/hostile_corpus.py (truncated, corrupted, bombs, odd modes, animations, EXIF, polyglots):
    the same refusal message, or the same input, for every file but TIFF, which browsers cannot decode
    (refused with code "unsupported_on_device" so the page can offer the server)."""
    p = pre(64)
    corpus = build_corpus()
    results = device(page, [c.data for c in corpus], p)
    wrong = []
    for case, r in zip(corpus, results):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = image_to_array(case.data, p)
        except ImageError:
            expected = python_message(case.data)
        if case.data[:4] in (b"II*\0", b"MM\0*"):
            ok = r.get("code") == "unsupported_on_device" or r.get("error") == expected
        elif isinstance(expected, str):
            ok = r.get("error") == expected
        else:
            ok = "sha256" in r and difference(page, case.data, r, p)[0] <= EXACT
        if not ok:
            wrong.append((case.name, r.get("error"), expected if isinstance(expected, str) else "an input"))
    assert wrong == []


def test_read_image_header(page):
    """Format and size from the header alone (no decoding), for each format skulens takes."""
    img = photo(37, 23)
    tiff = encode(img, "TIFF")
    cases = {
        "JPEG": encode(img, "JPEG"),
        "PNG": encode(img),
        "GIF": encode(img.convert("P"), "GIF"),
        "WEBP": encode(img, "WEBP"),
        "BMP": encode(img, "BMP"),
        "TIFF": tiff,
    }
    headers = page.evaluate(
        """(photos) => photos.map((b64) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          try { return window.preprocess.readImageHeader(bytes); } catch (e) { return { error: e.message }; }
        })""",
        [base64.b64encode(d).decode() for d in [*cases.values(), b"GIF89a", struct.pack(">I", 7) * 4]],
    )
    for (fmt, _), header in zip(cases.items(), headers):
        assert header == {"format": fmt, "width": 37, "height": 23}, fmt
    assert headers[-2]["error"] == headers[-1]["error"] == "image: not an image or an unsupported format"


def test_a_png_cut_after_its_image_data_still_loads(page):
    """Pillow loads a PNG whose IEND (or zlib checksum) is missing, as every row is there; browsers
    refuse it, so the device re-wraps the data. A cut inside the data is refused by both."""
    png = encode(photo(80, 60))
    idat = png.rindex(b"IDAT") - 4
    (length,) = struct.unpack(">I", png[idat : idat + 4])
    zlib_end = idat + 8 + length - 4  # where the 4-byte adler32 starts
    cases = [png[:-12], png[: zlib_end + 2], png[: zlib_end - 40]]
    assert zlib.decompressobj().decompress(png[idat + 8 : zlib_end - 40])  # some data is there
    results = device(page, cases, pre(64))
    for data, r in zip(cases[:2], results[:2]):
        assert difference(page, data, r, pre(64))[0] <= EXACT
    cut_in_data = "image: image data is truncated or corrupt (image file is truncated)"
    assert results[2]["error"] == python_message(cases[2]) == cut_in_data
