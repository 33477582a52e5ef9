"""Vector search at catalog scale: 1,000,000 vectors, exact vs IVF, on this machine.

    python benchmarks/search_scale.py --vectors runs/grocery-vectors.npy [--n 1000000]

The vectors are synthesised to look like a real catalog, not uniform noise: every synthetic
product is a random mixture of three real product embeddings plus a little noise (``--vectors``:
unit-length embeddings of real photos, e.g. saved by benchmarks/grocery_search.py --save-vectors),
and every query is a new "photo" of a catalog product (noise giving cosine ~0.8 to it). The
dimension is the one the catalog stores (the trained 512-d embedding).

Reported: index build time (k-means training + adding), memory, query latency p50/p99 at batch 1
for exact search and for IVF at several nprobe values, and IVF's recall@10 against exact search.
Saves benchmarks/results/search_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from datetime import date
from pathlib import Path

import numpy as np

from skulens.catalog.index import VectorIndex

RESULTS = Path(__file__).resolve().parent / "results"


def synthesise_catalog(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n distinct synthetic products spread over the region real products occupy.

    Each is a random mixture of three real embeddings (Dirichlet weights, mostly dominated by one,
    so the catalog keeps a cluster structure with plenty in between) plus a little noise. Copies of
    a few real vectors would be far too easy for an IVF index: all near neighbours would share one
    cell. Here the neighbours of a query are many different products, some in other cells."""
    rng = np.random.default_rng(seed)
    dim = real.shape[1]
    out = np.empty((n, dim), np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        weights = rng.dirichlet([0.5, 0.5, 0.5], m).astype(np.float32)
        picks = rng.integers(0, len(real), (m, 3))
        block = np.einsum("mk,mkd->md", weights, real[picks])
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block += np.sqrt(0.1 / dim) * rng.standard_normal((m, dim)).astype(np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def new_photos(catalog: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Queries: a new photo of a catalog product, as similar to it as photos of one product are in
    the trained embedding (cosine ~0.8: noise with sigma^2 * dim = 0.25)."""
    rng = np.random.default_rng(seed)
    dim = catalog.shape[1]
    base = catalog[rng.integers(0, len(catalog), n)]
    noisy = base + np.sqrt(0.25 / dim) * rng.standard_normal((n, dim)).astype(np.float32)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def latencies_ms(
    index: VectorIndex, queries: np.ndarray, k: int, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    times, ids = [], []
    for q in queries:
        t0 = time.perf_counter()
        _, found = index.search(q[None], k, nprobe=nprobe)
        times.append((time.perf_counter() - t0) * 1000)
        ids.append(found[0])
    return np.array(times), np.array(ids)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_real_vectors(path: str) -> np.ndarray:
    if not path.endswith(".db"):
        return np.load(path, allow_pickle=False).astype(np.float32)
    import sqlite3

    # the catalog's own rows: what it stores, after its model's flip averaging and projection
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        blobs = [row[0] for row in db.execute("SELECT vector FROM images WHERE vector IS NOT NULL")]
    return np.stack([np.frombuffer(b, dtype=np.float32) for b in blobs])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--vectors",
        required=True,
        help=".npy of real unit-length embeddings (n, dim), or a SQLite catalog (.db): the vectors it stores",
    )
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--nlist", type=int, default=None)
    p.add_argument("--nprobes", default="4,8,16,32,64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "search_scale.json"))
    args = p.parse_args()
    real = load_real_vectors(args.vectors)
    dim = real.shape[1]
    print(f"synthesising {args.n} x {dim} vectors from {len(real)} real embeddings", flush=True)
    base_mb = rss_mb()
    data = synthesise_catalog(real, args.n, args.seed)
    queries = new_photos(data, args.queries, args.seed + 1)
    ids = np.arange(args.n, dtype=np.int64)
    results: dict = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "n": args.n,
        "dim": dim,
        "real_vectors": len(real),
        "queries": args.queries,
        "vectors_mb": round(data.nbytes / 2**20, 1),
    }

    t0 = time.perf_counter()
    exact = VectorIndex.build(ids, data, dim=dim, model_id="bench", kind="flat")
    results["flat"] = {"build_s": round(time.perf_counter() - t0, 2)}
    flat_times, truth = latencies_ms(exact, queries[:200], 10)
    results["flat"].update(
        {
            "p50_ms": float(np.percentile(flat_times, 50)),
            "p99_ms": float(np.percentile(flat_times, 99)),
            "timed_queries": 200,
        }
    )
    # exact neighbours of every query, batched (fast), as ground truth
    _, truth = exact.search(queries, 10)
    print("flat:", results["flat"], flush=True)
    del exact

    before = rss_mb()
    t0 = time.perf_counter()
    ivf = VectorIndex.build(ids, data, dim=dim, model_id="bench", kind="ivf", nlist=args.nlist)
    build_s = time.perf_counter() - t0
    results["ivf"] = {
        "nlist": ivf.state.nlist,
        "build_s": round(build_s, 1),
        "rss_growth_mb": round(rss_mb() - before, 1),
        "process_peak_rss_mb": round(rss_mb(), 1),
        "sweep": [],
    }
    print(f"ivf built in {build_s:.1f} s (nlist {ivf.state.nlist})", flush=True)
    for nprobe in [int(x) for x in args.nprobes.split(",")]:
        times, found = latencies_ms(ivf, queries, 10, nprobe)
        recall = float(np.mean([len(set(found[i]) & set(truth[i])) / 10 for i in range(len(queries))]))
        row = {
            "nprobe": nprobe,
            "recall@10": round(recall, 4),
            "p50_ms": round(float(np.percentile(times, 50)), 3),
            "p99_ms": round(float(np.percentile(times, 99)), 3),
        }
        results["ivf"]["sweep"].append(row)
        print("ivf:", row, flush=True)
    ok = [r for r in results["ivf"]["sweep"] if r["recall@10"] >= 0.95]
    results["ivf"]["chosen"] = min(ok, key=lambda r: r["p50_ms"]) if ok else None
    results["base_rss_mb"] = round(base_mb, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results["ivf"]["chosen"]), f"saved {args.out}")


if __name__ == "__main__":
    main()
