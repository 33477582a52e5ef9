"""onnxruntime-web for the page's on-device mode, vendored into the package at install time.

The web page runs the run's INT8 model in the shopper's browser with Microsoft's onnxruntime-web (the
npm package). skulens serves the runtime itself (no CDN at run time: the page must work offline and
must not tell a third party who is shopping), so ``make install`` fetches the pinned npm tarball once,
checks it against the registry's published SHA-512, and copies the two files the page needs (the
WebAssembly build's ES module and its SIMD + threads binary) under ``serving/static/vendor/``, with a
gzip copy of each that the server sends to browsers that accept it.

    python -m skulens.serving.web_runtime            # what `make install` runs
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "1.30.0"
# The registry's `dist.integrity` of onnxruntime-web@1.30.0 (`npm view onnxruntime-web@1.30.0 dist.integrity`).
INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
# The WebAssembly-only build: the ES module with its loader bundled in (73 KB) and the SIMD + threads
# binary. The WebGPU build (jsep, 28 MB) is left out: headless and most phones have no WebGPU, and the
# INT8 model's quantised operators run on the CPU kernels anyway.
# package.json carries the licence (MIT) and the version that was vendored.
FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm", "package.json")
STATIC_DIR = Path(__file__).parent / "static"
VENDOR_DIR = STATIC_DIR / "vendor" / f"onnxruntime-web-{VERSION}"
# The URL the page imports; versioned, so browsers and the service worker may keep it forever.
URL_PREFIX = f"/static/vendor/onnxruntime-web-{VERSION}"
MODULE_URL = f"{URL_PREFIX}/ort.wasm.bundle.min.mjs"


def installed() -> bool:
    return all((VENDOR_DIR / name).is_file() for name in FILES)


def tarball_url(registry: str | None = None) -> str:
    registry = (registry or os.environ.get("NPM_CONFIG_REGISTRY") or "https://registry.npmjs.org/").rstrip("/")
    return f"{registry}/onnxruntime-web/-/onnxruntime-web-{VERSION}.tgz"


def check_integrity(data: bytes, integrity: str = INTEGRITY) -> None:
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise ValueError(f"onnxruntime-web {VERSION}: the tarball does not match its published {algorithm}")


def extract(data: bytes, target: Path = VENDOR_DIR) -> None:
    """The files the page needs, each with a ``.gz`` twin, written to a fresh folder then renamed into place."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for name in FILES:
            member = tar.getmember(f"package/{name}" if name == "package.json" else f"package/dist/{name}")
            content = tar.extractfile(member).read()
            (staging / name).write_bytes(content)
            if name != "package.json":
                (staging / f"{name}.gz").write_bytes(gzip.compress(content, compresslevel=9, mtime=0))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def vendor(registry: str | None = None, timeout_s: float = 120.0) -> Path:
    """Download, check and unpack the pinned runtime unless it is already there; returns its folder."""
    if installed():
        return VENDOR_DIR
    with urllib.request.urlopen(tarball_url(registry), timeout=timeout_s) as response:  # noqa: S310 - fixed https URL
        data = response.read()
    check_integrity(data)
    extract(data)
    return VENDOR_DIR


def main() -> int:
    try:
        folder = vendor()
    except (OSError, ValueError, KeyError) as exc:
        print(f"onnxruntime-web {VERSION} not installed ({exc}): the page's on-device mode stays off", file=sys.stderr)
        return 0  # best effort: the server and every other page feature work without it
    print(f"onnxruntime-web {VERSION} in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
