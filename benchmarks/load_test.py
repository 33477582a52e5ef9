"""Load test of POST /v1/recognize on this machine: throughput and p50/p95/p99 latency at several concurrencies.

    python benchmarks/load_test.py --run runs/demo                      # starts `skulens serve` itself
    python benchmarks/load_test.py --url http://127.0.0.1:8000           # or tests a running server
    python benchmarks/load_test.py --run runs/demo --requests 100 --concurrency 1,4,16 --image photo.jpg

Loopback only (a --url elsewhere is refused), a fixed number of requests per level and an overall time
limit, so it always stops by itself. Writes benchmarks/results/load_test-<name>.json and exits 1 when
any request failed or when throughput at the highest concurrency is under --min-speedup (1.5) times
that at concurrency 1 (what micro-batching should give).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--run", help="run folder: start `skulens serve RUN` on a free loopback port")
    target.add_argument("--url", help="a server already running on this machine (loopback only)")
    p.add_argument("--requests", type=int, default=200, help="requests per concurrency level (default 200)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels (default 1,4,16)")
    p.add_argument("--image", default=None, help="photo to send (default: a synthetic 800x600 JPEG)")
    p.add_argument("--max-batch-size", type=int, default=16, help="server setting when --run (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="server setting when --run (default 5)")
    p.add_argument("--engine", default="auto", help="server setting when --run (default auto)")
    p.add_argument("--max-seconds", type=float, default=600, help="stop sending after this long in all (default 600)")
    p.add_argument("--min-speedup", type=float, default=1.5)
    p.add_argument("--name", default=None, help="results file name suffix (default: the run folder's name)")
    p.add_argument("--out", default=None, help="results JSON path (default benchmarks/results/load_test-NAME.json)")
    return p.parse_args(argv)


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        sys.exit(f"load_test: cannot resolve {host}")
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        sys.exit(f"load_test: {url} is not a loopback address; this script only loads servers on this machine")


def synthetic_photo() -> bytes:
    """A smooth photo-like image with some noise: compresses like a real 800x600 product photo."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:600, 0:800]
    base = np.stack([120 + 80 * np.sin(x / 90), 110 + 70 * np.cos(y / 70), 140 + 60 * np.sin((x + y) / 120)], -1)
    base[180:420, 260:540] = (200, 60, 40)
    arr = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=88)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "skulens",
        "serve",
        args.run,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--max-batch-size",
        str(args.max_batch_size),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--engine",
        args.engine,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"load_test: the server exited: {proc.stderr.read().strip()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.kill()
    sys.exit("load_test: the server did not answer /healthz within 120 s")


def batch_stats(url: str, headers: dict) -> tuple[float, float]:
    """(batches, images) so far, from the server's Prometheus histogram."""
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    values = {}
    for line in text.splitlines():
        if line.startswith("skulens_inference_batch_size_count") or line.startswith("skulens_inference_batch_size_sum"):
            name, value = line.split()
            values[name] = float(value)
    return values.get("skulens_inference_batch_size_count", 0.0), values.get("skulens_inference_batch_size_sum", 0.0)


async def run_level(url: str, photo: bytes, concurrency: int, n_requests: int, deadline: float, headers: dict) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0

    async def worker(client: httpx.AsyncClient):
        nonlocal next_index
        while next_index < n_requests and time.monotonic() < deadline:
            next_index += 1
            started = time.perf_counter()
            try:
                response = await client.post("/v1/recognize", files={"image": ("photo.jpg", photo, "image/jpeg")})
                ok = response.status_code == 200
                reason = str(response.status_code)
            except httpx.HTTPError as exc:
                ok, reason = False, type(exc).__name__
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors[reason] = errors.get(reason, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers) as client:
        started = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + sum(errors.values()),
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "seconds": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 2) if wall > 0 else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.requests < 1 or not levels or min(levels) < 1:
        sys.exit("load_test: --requests and every --concurrency level must be at least 1")
    photo = Path(args.image).read_bytes() if args.image else synthetic_photo()
    headers = {"X-API-Key": os.environ["SKULENS_API_KEY"]} if os.environ.get("SKULENS_API_KEY") else {}
    proc = None
    if args.url:
        require_loopback(args.url)
        url = args.url.rstrip("/")
    else:
        proc, url = start_server(args)
    try:
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        info = httpx.get(f"{url}/v1/info", timeout=10).json()
        deadline = time.monotonic() + args.max_seconds
        asyncio.run(run_level(url, photo, max(levels), 2 * max(levels), deadline, headers))  # warm-up
        results = []
        for concurrency in levels:
            before = batch_stats(url, headers)
            level = asyncio.run(run_level(url, photo, concurrency, args.requests, deadline, headers))
            after = batch_stats(url, headers)
            batches = after[0] - before[0]
            level["mean_batch_size"] = round((after[1] - before[1]) / batches, 2) if batches else None
            results.append(level)
            print(
                f"concurrency {concurrency:3d}: {level['throughput_rps']:8.1f} req/s   p50 {level['p50_ms']:7.1f} ms   "
                f"p95 {level['p95_ms']:7.1f} ms   p99 {level['p99_ms']:7.1f} ms   errors {level['errors']}   "
                f"mean batch {level['mean_batch_size']}",
                flush=True,
            )
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    first, last = results[0], results[-1]
    speedup = last["throughput_rps"] / first["throughput_rps"] if first["throughput_rps"] else 0.0
    complete = all(r["requests"] == args.requests for r in results)
    checks = {
        "zero_errors": all(r["errors"] == 0 for r in results),
        "complete": complete,
        f"speedup_c{last['concurrency']}_vs_c{first['concurrency']}": round(speedup, 2),
        "speedup_ok": speedup >= args.min_speedup,
    }
    name = args.name or (Path(args.run).name if args.run else "url")
    report = {
        "benchmark": "load_test",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "server": {
            "run": args.run,
            "url": args.url,
            "engine": health.get("engine"),
            "model": info.get("model"),
            "max_batch_size": info.get("max_batch_size"),
            "max_wait_ms": info.get("max_wait_ms"),
        },
        "image_bytes": len(photo),
        "requests_per_level": args.requests,
        "levels": results,
        "checks": checks,
    }
    out = Path(args.out) if args.out else RESULTS / f"load_test-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"speedup c{last['concurrency']}/c{first['concurrency']}: {speedup:.2f}x (need {args.min_speedup}x); "
        f"errors: {sum(r['errors'] for r in results)}; results: {out}"
    )
    return 0 if checks["zero_errors"] and complete and checks["speedup_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
