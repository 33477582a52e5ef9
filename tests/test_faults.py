"""Faults: kill -9 of training during an epoch, and of `skulens serve` during a bulk import and while
storing uploads. After the restart nothing that was acknowledged is lost, the catalog and its index
agree, and training resumes where its last saved epoch ended."""

from __future__ import annotations

import base64
import csv
import json
import logging
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from skulens.cli import main
from skulens.runs import load_run
from skulens.serving import ServeConfig, create_app
from skulens.serving.security import hash_key, key_file_line, new_key
from tests.conftest import COLOURS, coloured_photo, jpeg_bytes, write_class_folders
from tests.helpers import free_port, start_cli, subprocess_env, wait_for_job, wait_healthy

pytestmark = pytest.mark.slow  # kill -9 of real training and serving processes
ENV = subprocess_env()


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def read_state(run: Path) -> dict | None:
    try:
        return json.loads((run / "train_state.json").read_text())
    except (OSError, ValueError):
        return None


def log_rows(run: Path) -> list[dict]:
    with (run / "log.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_kill_during_an_epoch_then_resume_finishes_the_run(tmp_path, caplog):
    data = write_class_folders(tmp_path / "shop", per_class=12)
    run = tmp_path / "run"
    epochs = 4
    args = [
        str(data),
        "--model",
        "seedcnn",
        "--epochs",
        str(epochs),
        "--img-size",
        "40",
        "--batch-size",
        "4",
        "--patience",
        "0",
        "--no-progress",
        "--out",
        str(run),
    ]
    proc = start_cli("train", *args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Time epoch 2 (epoch 1 also pays for decoding), then kill half-way through epoch 3.
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 240
    while proc.poll() is None and len(seen) < 2:
        state = read_state(run)
        if state and state["epoch"] not in seen:
            seen[state["epoch"]] = time.monotonic()
        assert time.monotonic() < deadline, "training did not get through two epochs in 240 s"
        time.sleep(0.01)
    assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read()[-500:]}"
    first, second = sorted(seen)
    epoch_s = seen[second] - seen[first]
    time.sleep(epoch_s / 2)
    kill9(proc)

    saved = read_state(run)
    acknowledged = [row for row in log_rows(run) if int(row["epoch"]) <= saved["epoch"]]
    assert 2 <= saved["epoch"] < epochs and saved["batch"] == 0  # the last save is an epoch's end
    load_run(run)  # the best weights so far load (their checksum matches)

    with caplog.at_level(logging.INFO, logger="skulens"):
        assert main(["train", *args, "--resume"]) == 0
    assert f"at epoch {saved['epoch'] + 1}, batch 0" in caplog.text  # resumed, not restarted
    rows = log_rows(run)
    logged = [int(r["epoch"]) for r in rows]
    assert sorted(set(logged)) == list(range(1, epochs + 1))
    assert rows[: len(acknowledged)] == acknowledged  # epochs saved before the kill are kept as they were
    # A kill between an epoch's log line and its resume state re-runs that epoch: its line appears twice.
    assert all(logged.count(e) == 1 for e in logged if e != saved["epoch"] + 1)
    assert read_state(run)["epoch"] == epochs
    model, config = load_run(run)
    assert config.metrics["epoch"] >= 1


def import_payload(n: int) -> dict:
    names = list(COLOURS)
    products = []
    for i in range(n):
        photo = jpeg_bytes(coloured_photo(COLOURS[names[i % 3]], 7000 + i, size=64))
        products.append(
            {
                "sku": f"sku-{i:03d}",
                "title": f"product {i}",
                "category_path": ["Paint", names[i % 3]],
                "images": [base64.b64encode(photo).decode()],
            }
        )
    return {"products": products, "on_conflict": "error"}


def test_kill_serve_during_bulk_import_then_restart_agrees(trained_run, tmp_path):
    key = new_key()
    keys = tmp_path / "keys.txt"
    keys.write_text(key_file_line(key, "test") + "\n")
    db, media, stored = tmp_path / "shop.db", tmp_path / "media", tmp_path / "stored"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_cli(
        "serve",
        trained_run[0],
        "--port",
        port,
        "--catalog",
        db,
        "--media-dir",
        media,
        "--api-keys-file",
        keys,
        "--store-uploads",
        stored,
        "--engine",
        "torch",
        "--job-lease",
        "2",
        "--log-level",
        "warning",
        env=ENV,
    )
    n = 128
    payload = import_payload(n)
    headers = {"X-API-Key": key}
    try:
        wait_healthy(base, proc)
        photo = jpeg_bytes(coloured_photo(COLOURS["red"], 1, size=64))
        answered = sum(
            httpx.post(f"{base}/v1/recognize", files={"image": ("a.jpg", photo, "image/jpeg")}, timeout=30).status_code
            == 200
            for _ in range(5)
        )
        reply = httpx.post(f"{base}/v1/products/import", json=payload, headers=headers, timeout=60)
        assert reply.status_code == 202, reply.text
        status_url = f"{base}{reply.json()['status_url']}"
        acknowledged = 0
        deadline = time.monotonic() + 180
        while acknowledged < 32:  # at least two committed chunks, and the job still running
            job = httpx.get(status_url, headers=headers, timeout=10).json()
            assert job["status"] in ("queued", "running"), f"the import ended before the kill: {job['status']}"
            acknowledged = job["progress"]["done"]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        kill9(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert acknowledged < n
    assert answered == 5
    # Every answered upload is on disk, under its final name (written to a temp file, then renamed).
    assert len([p for p in stored.rglob("*.jpg")]) == answered

    # Restart (the same app `skulens serve` runs) on the same database and media folder: the job is in the
    # database, and once the dead server's lease lapses the new one resumes it from its last checkpoint.
    app = create_app(
        ServeConfig(
            run_dir=trained_run[0],
            engine="torch",
            catalog_db=db,
            media_dir=media,
            api_key_hashes=frozenset({hash_key(key)}),
            job_lease_s=2,
            warmup=False,
        )
    )
    with TestClient(app, raise_server_exceptions=False, headers=headers) as client:
        catalog = client.app.state.services.catalog
        present = {p["sku"] for p in client.get("/v1/products", params={"limit": 500}).json()["products"]}
        assert {f"sku-{i:03d}" for i in range(acknowledged)} <= present  # nothing acknowledged is lost
        job = wait_for_job(client, status_url.removeprefix(base), timeout=180)
        assert job["status"] == "succeeded" and job["attempts"] == 2 and job["result"]["rejected"] == []
        # Each product counted once: added (before the last checkpoint, by the first server; after it, by
        # this one), or unchanged when a chunk committed after the last checkpoint is written again.
        assert job["result"]["added"] + job["result"]["unchanged"] == n and job["result"]["unchanged"] <= 16
        products = client.get("/v1/products", params={"limit": 500}).json()["products"]
        assert sorted(p["sku"] for p in products) == [f"sku-{i:03d}" for i in range(n)]
        assert_index_agrees(catalog, db)
        for sku in ("sku-000", f"sku-{n - 1:03d}"):  # no product points at a photo that is not there
            assert client.get(f"/v1/products/{sku}/image").status_code == 200
        hit = client.post(
            "/v1/search",
            files={"image": ("q.jpg", base64.b64decode(payload["products"][-1]["images"][0]), "image/jpeg")},
        ).json()
        assert hit["products"][0]["sku"] == payload["products"][-1]["sku"]


def assert_index_agrees(catalog, db: Path) -> None:
    import sqlite3

    import faiss

    index = catalog.index()
    ids = set(faiss.vector_to_array(index.index.id_map).tolist())
    with sqlite3.connect(db) as conn:
        db_ids = {r[0] for r in conn.execute("select id from images where vector is not null")}
    assert ids == db_ids and index.state.ntotal == len(db_ids)
