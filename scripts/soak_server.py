"""Soak test: a real `skulens serve` (uvicorn, catalog, API keys, encrypted upload storage) chews through
the hostile corpus of tests/hostile_corpus.py on every endpoint that takes a photo, concurrently, for a
bounded time, while its memory is sampled from /proc. Prints the figures RELIABILITY.md records.

    python scripts/soak_server.py                      # trains a tiny seedcnn run first (~20 s)
    python scripts/soak_server.py --run runs/demo --duration 120 --concurrency 8 --json soak.json

Exits 1 when any request got a 5xx or no answer, when the server died, or when its memory kept
growing after the warm-up (more than --max-growth-mb between the first and the last quarter).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.hostile_corpus import build_corpus, kinds  # noqa: E402


def tiny_run(folder: Path) -> Path:
    """A seedcnn trained for a few epochs on coloured squares, as the tests' ``trained_run``."""
    from skulens.data.datasets import load_dataset
    from skulens.training.config import TrainConfig
    from skulens.training.trainer import train
    from tests.conftest import write_class_folders

    data = write_class_folders(folder / "shop", per_class=16)
    cfg = TrainConfig(model="seedcnn", epochs=4, img_size=40, batch_size=8, lr=2e-3, patience=0, progress=False)
    train(cfg, load_dataset(data), folder / "run")
    return folder / "run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


@contextmanager
def running_server(run: Path, work: Path, extra: list[str] = ()):
    """`skulens serve RUN` with a catalog, an API key and encrypted upload storage; yields (base URL, key, proc)."""
    from skulens.privacy.crypto import KEY_ENV
    from skulens.privacy.crypto import new_key as new_storage_key
    from skulens.serving.security import key_file_line, new_key

    key = new_key()
    (work / "keys.txt").write_text(key_file_line(key, "soak") + "\n")
    port = free_port()
    env = {**os.environ, KEY_ENV: new_storage_key(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [
        sys.executable,
        "-m",
        "skulens",
        "serve",
        str(run),
        "--port",
        str(port),
        "--catalog",
        str(work / "shop.db"),
        "--media-dir",
        str(work / "media"),
        "--api-keys-file",
        str(work / "keys.txt"),
        "--store-uploads",
        str(work / "stored"),
        "--encrypt-at-rest",
        "--retention-days",
        "1",
        "--log-level",
        "warning",
        *extra,
    ]
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited at start: see {work / 'server.log'}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 180 s")
            time.sleep(0.2)
        yield base, key, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def seed_catalog(base: str, key: str) -> None:
    from PIL import Image

    from tests.hostile_corpus import encode

    for i, colour in enumerate(((220, 30, 30), (30, 200, 40), (30, 40, 210))):
        photo = encode(Image.new("RGB", (64, 48), colour), "JPEG")
        reply = httpx.post(
            f"{base}/v1/products",
            headers={"X-API-Key": key},
            timeout=60,
            data={"product": json.dumps({"sku": f"base-{i}", "title": "seed"})},
            files={"images": ("p.jpg", photo, "image/jpeg")},
        )
        reply.raise_for_status()


class Stats:
    def __init__(self):
        self.by_endpoint: dict[str, dict[str, int]] = {}
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.requests = 0

    def record(self, endpoint: str, status: int | str, seconds: float, note: str = "") -> None:
        self.requests += 1
        self.latencies.append(seconds)
        # 413 and 429 are the server's limits at work (batch size, unfinished jobs): counted on their own.
        bucket = str(status) if isinstance(status, str) or status in (413, 429) else f"{status // 100}xx"
        counts = self.by_endpoint.setdefault(endpoint, {})
        counts[bucket] = counts.get(bucket, 0) + 1
        if isinstance(status, str) or status >= 500:
            self.failures.append(f"{endpoint} {status} {note}"[:300])


async def one_request(client: httpx.AsyncClient, endpoint: str, cases, rng: random.Random, stats: Stats, n: int):
    case = rng.choice(cases)
    file = (
        "images" if endpoint in ("products", "update", "bulk") else "image",
        (case.filename, case.data, "application/octet-stream"),
    )
    started = time.perf_counter()
    try:
        if endpoint == "bulk":
            batch = rng.sample(list(cases), 16)
            reply = await client.post(
                "/v1/recognize/bulk", files=[("images", (c.filename, c.data, "image/jpeg")) for c in batch]
            )
        elif endpoint == "import":
            batch = rng.sample(list(cases), 16)
            products = [
                {"sku": f"soak-{n}-{i}", "title": c.name, "images": [base64.b64encode(c.data).decode()]}
                for i, c in enumerate(batch)
            ]
            reply = await client.post("/v1/products/import", json={"products": products, "on_conflict": "update"})
        elif endpoint == "products":
            reply = await client.post(
                "/v1/products", files=[file], data={"product": json.dumps({"sku": f"soak-{n}", "title": case.name})}
            )
        elif endpoint == "update":
            reply = await client.put("/v1/products/base-0", files=[file])
        else:
            reply = await client.post(f"/v1/{endpoint}", files=[file])
        stats.record(endpoint, reply.status_code, time.perf_counter() - started, f"{case.name}: {reply.text[:150]}")
        if endpoint in ("bulk", "import") and reply.status_code == 202:
            await poll_job(client, reply.json()["status_url"], endpoint, stats)
    except httpx.HTTPError as exc:
        stats.record(endpoint, f"no answer ({type(exc).__name__})", time.perf_counter() - started, case.name)


async def poll_job(client, url: str, endpoint: str, stats: Stats) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = (await client.get(url)).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                stats.failures.append(f"{endpoint} job {job['status']}: {job.get('error')}")
            return
        await asyncio.sleep(0.1)
    stats.failures.append(f"{endpoint} job still running after 120 s")


ENDPOINTS = ["recognize", "recognize", "recognize", "search", "explain", "products", "update", "bulk", "import"]


async def soak(base: str, key: str, pid: int, duration: float, concurrency: int, seed: int) -> tuple[Stats, list]:
    cases = build_corpus()
    stats, samples = Stats(), []
    rng = random.Random(seed)
    stop_at = time.monotonic() + duration
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=60, limits=limits) as client:

        async def worker(w: int) -> None:
            local = random.Random(seed * 1000 + w)
            while time.monotonic() < stop_at:
                await one_request(client, local.choice(ENDPOINTS), cases, local, stats, next(counter))

        async def sampler() -> None:
            started = time.monotonic()
            while time.monotonic() < stop_at:
                samples.append((time.monotonic() - started, *memory_mb(pid)))
                await asyncio.sleep(1.0)

        await asyncio.gather(sampler(), *[worker(w) for w in range(concurrency)])
    del rng
    return stats, samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="run folder to serve (default: train a tiny seedcnn first)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120, at most 1800)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument(
        "--max-growth-mb",
        type=float,
        default=100.0,
        help="allowed RSS growth from the first to the last quarter of the run (default 100)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    duration = min(max(args.duration, 5.0), 1800.0)
    cases = build_corpus()
    with tempfile.TemporaryDirectory(prefix="skulens-soak-") as tmp:
        work = Path(tmp)
        run = Path(args.run) if args.run else tiny_run(work / "train")
        with running_server(run, work) as (base, key, proc):
            seed_catalog(base, key)
            rss_start, _ = memory_mb(proc.pid)
            stats, samples = asyncio.run(soak(base, key, proc.pid, duration, args.concurrency, args.seed))
            alive = proc.poll() is None and httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            rss_end, peak = memory_mb(proc.pid)
        stored = len(list((work / "stored").rglob("*.jpg.enc")))
    quarter = max(1, len(samples) // 4)
    early = max(s[1] for s in samples[:quarter]) if samples else rss_start
    late = max(s[1] for s in samples[-quarter:]) if samples else rss_end
    figures = {
        "corpus": {"files": len(cases), "by_kind": kinds(cases)},
        "duration_s": duration,
        "concurrency": args.concurrency,
        "requests": stats.requests,
        "by_endpoint": stats.by_endpoint,
        "failures": stats.failures[:50],
        "failure_count": len(stats.failures),
        "latency_s": {
            "p50": round(percentile(stats.latencies, 0.5), 3),
            "p95": round(percentile(stats.latencies, 0.95), 3),
            "max": round(max(stats.latencies, default=0.0), 3),
        },
        "server_rss_mb": {
            "start": round(rss_start),
            "early_max": round(early),
            "late_max": round(late),
            "end": round(rss_end),
            "peak": round(peak),
        },
        "rss_timeline_mb": [[round(t), round(rss)] for t, rss, _ in samples[:: max(1, len(samples) // 12)]],
        "server_alive": alive,
        "uploads_stored_encrypted": stored,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    grew = late - early
    ok = alive and not stats.failures and grew <= args.max_growth_mb
    print(
        f"\n{stats.requests} requests at concurrency {args.concurrency} over {duration:.0f} s: "
        f"{len(stats.failures)} 5xx/no-answer, peak RSS {peak:.0f} MB, growth after warm-up {grew:.0f} MB, "
        f"server {'alive' if alive else 'DEAD'} -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
