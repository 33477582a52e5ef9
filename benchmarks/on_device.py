"""On the shopper's device (issue 19): what the page costs to load and how fast it answers, next to the server.

    python benchmarks/on_device.py [--data ../shared/datasets/grocery-store] [--photos 100]

One run, one machine: `skulens serve`'s demo (the built-in model's INT8 export and the 81-product catalog)
in this process, Debian's headless chromium through Playwright.
- bytes the server sent on the first visit (page, runtime, model) and on a return visit (the service
  worker and the HTTP cache answer the rest), counted at the server, as they left it (gzip where sent so);
- per photo, in the browser: on-device recognition (decode, preprocessing, INT8 model; then the vector
  search as a separate figure) and the server mode's round trip (upload, recognition and product search
  on the server: what the page waits for), for the same Grocery Store test photos, median and p95;
- on-device top-1 agreement with the server on the same photos.
Saves benchmarks/results/on_device.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

from skulens.recognition.recognizer import Recognizer
from skulens.serving import ServeConfig, create_app
from skulens.serving.config import demo_catalog_dir, demo_run_dir

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "grocery-store"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

TIME_PHOTOS = """async ({photos, mode}) => {
  const { DeviceEngine } = await import('/static/device.js');
  const manifest = await (await fetch('/v1/device/manifest')).json();
  const engine = mode === 'device' ? await DeviceEngine.load(manifest) : null;
  const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const blobs = photos.map((b64) => new Blob([bytes(b64)], {type: 'image/jpeg'}));
  const rows = [];
  for (const blob of blobs) {
    const t0 = performance.now();
    if (mode === 'device') {
      const { answer, vector } = await engine.recognize(blob);
      const t1 = performance.now();
      await fetch('/v1/search/vector', {method: 'POST', headers: {'Content-Type': 'application/json'},
        body: JSON.stringify({vector, model: manifest.search.model})});
      rows.push({label: answer.label, confidence: answer.confidence, ms: t1 - t0, search_ms: performance.now() - t1});
    } else {
      const form = new FormData();
      form.append('image', blob, 'photo.jpg');
      const answer = await (await fetch('/v1/recognize', {method: 'POST', body: form})).json();
      rows.push({label: answer.label, confidence: answer.confidence, ms: performance.now() - t0});
    }
  }
  return {rows, threads: self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency) : 1};
}"""


class ByteCounter:
    """Response body bytes per request path, as the server sent them (after gzip)."""

    def __init__(self, app):
        self.app = app
        self.sent: list[tuple[str, int]] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        entry = [scope["path"], 0]
        self.sent.append(entry)

        async def counted(message):
            if message["type"] == "http.response.body":
                entry[1] += len(message.get("body", b""))
            await send(message)

        return await self.app(scope, receive, counted)

    def take(self) -> dict:
        total, requests = sum(n for _, n in self.sent), len(self.sent)
        biggest = sorted(self.sent, key=lambda e: -e[1])[:5]
        self.sent = []
        return {"bytes": total, "requests": requests, "largest": [{"path": p, "bytes": n} for p, n in biggest]}


def serve(app) -> tuple[str, object]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", server


def visits(page, url: str, counter: ByteCounter) -> dict:
    ready = "#status:has-text('Ready: photos are recognised on this device')"
    page.goto(f"{url}/?engine=device")
    page.wait_for_selector(ready, timeout=120_000)
    while not page.evaluate("navigator.serviceWorker.controller !== null"):  # CSP forbids wait_for_function
        time.sleep(0.1)
    first = counter.take()
    page.reload()
    page.wait_for_selector(ready, timeout=120_000)
    second = counter.take()
    page.reload()
    page.wait_for_selector(ready, timeout=120_000)
    return {"first_visit": first, "second_visit": second, "return_visit": counter.take()}


def summary(ms: list[float]) -> dict:
    return {"median_ms": round(float(np.median(ms)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1)}


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "on_device.json")
    args = parser.parse_args()
    test = sorted((args.data / "dataset" / "test").rglob("*.jpg"))
    photos = [test[i] for i in np.linspace(0, len(test) - 1, args.photos).astype(int)]
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in photos]

    cache = tempfile.mkdtemp(prefix="skulens-bench-")
    os.environ["SKULENS_CACHE_DIR"] = cache
    from skulens.serving.catalog_setup import open_demo_catalog

    catalog = open_demo_catalog(demo_run_dir(), demo_catalog_dir(), "cpu", progress=False)
    counter = ByteCounter(create_app(ServeConfig(run_dir=demo_run_dir(), catalog=catalog)))
    url, server = serve(counter)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_context().new_page()
            loading = visits(page, url, counter)
            timed = {
                mode: page.evaluate(TIME_PHOTOS, {"photos": encoded, "mode": mode}) for mode in ("server", "device")
            }
            browser.close()
    finally:
        server.should_exit = True
    report(args, photos, loading, timed)


def report(args, photos: list[Path], loading: dict, timed: dict) -> None:
    server_rows, device_rows = timed["server"]["rows"], timed["device"]["rows"]
    reference = Recognizer.load(demo_run_dir()).predict_batch(photos)
    same = [d["label"] == r.label for d, r in zip(device_rows, reference)]
    gaps = [abs(d["confidence"] - r.confidence) for d, r in zip(device_rows, reference) if d["label"] == r.label]
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, headless chromium (Playwright)",
        "split": f"Grocery Store test, {len(photos)} photos spread over the split",
        "loading": loading,
        "device_recognition": summary([r["ms"] for r in device_rows]),
        "device_vector_search": summary([r["search_ms"] for r in device_rows]),
        "server_round_trip": summary([r["ms"] for r in server_rows]),
        "browser_threads": timed["device"]["threads"],
        "device_top1_equals_server": f"{sum(same)}/{len(same)}",
        "max_top1_probability_gap": round(max(gaps), 5) if gaps else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
