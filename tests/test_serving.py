"""The HTTP service: every endpoint, bad input answered 4xx with a JSON error, keys, batching, jobs,
and `skulens serve` as a real subprocess."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from skulens.cli import main
from skulens.errors import SkulensError
from skulens.recognition.recognizer import Recognizer
from skulens.serving import ServeConfig, create_app
from skulens.serving.batching import MicroBatcher, Overloaded
from skulens.serving.security import hash_key, key_matches, load_key_hashes, new_key
from tests.helpers import (
    assert_json_error,
    free_port,
    noise_jpeg,
    start_cli,
    stop,
    wait_for_job,
    wait_healthy,
)
from tests.hostile_corpus import png_header_only

KEY = new_key()
OTHER_KEY = new_key()


@pytest.fixture(scope="module")
def recognizer(trained_run):
    return Recognizer.load(trained_run[0])


@pytest.fixture(scope="module")
def photo(trained_run) -> bytes:
    return sorted((trained_run[1] / "test" / "red").glob("*.jpg"))[0].read_bytes()


@contextmanager
def serving(recognizer, **overrides):
    app = create_app(ServeConfig(recognizer=recognizer, **overrides))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def client(recognizer):
    with serving(recognizer) as c:
        yield c


def upload(client, data: bytes, content_type: str = "image/jpeg", name: str = "photo.jpg", **kw):
    return client.post("/v1/recognize", files={"image": (name, data, content_type)}, **kw)


# --- recognize ------------------------------------------------------------------------------------


def test_recognize_matches_the_python_api(client, recognizer, photo):
    response = upload(client, photo)
    assert response.status_code == 200, response.text
    body = response.json()
    direct = recognizer.predict(photo)
    assert body["label"] == direct.label
    assert body["confidence"] == pytest.approx(direct.confidence, abs=1e-5)
    assert [level["name"] for level in body["path"]] == direct.path
    assert body["path"][-1]["confidence"] == pytest.approx(direct.confidence, abs=1e-5)
    assert [s["label"] for s in body["top_k"]] == [s.label for s in direct.top_k]
    confidences = [s["confidence"] for s in body["top_k"]]
    assert confidences == sorted(confidences, reverse=True)
    assert body["products"] == []  # no catalog configured
    assert body["engine"] == "torch" and body["elapsed_ms"] > 0


def test_top_k_setting_and_level_confidences_sum_subtrees(recognizer, photo):
    from skulens.recognition.recognizer import ScoredClass
    from skulens.serving.predictions import level_confidences

    with serving(recognizer, top_k=2) as c:
        assert len(upload(c, photo).json()["top_k"]) == 2
    scored = [
        ScoredClass("granny", 0.5, ["Fruit", "Apple", "granny"]),
        ScoredClass("gala", 0.3, ["Fruit", "Apple", "gala"]),
        ScoredClass("pear", 0.15, ["Fruit", "Pear", "pear"]),
        ScoredClass("milk", 0.05, ["Dairy", "Milk", "milk"]),
    ]
    levels = level_confidences(["Fruit", "Apple", "granny"], scored)
    assert [round(lv.confidence, 6) for lv in levels] == [0.95, 0.8, 0.5]


def test_products_come_from_the_catalog(recognizer, photo, tmp_path):
    from dataclasses import dataclass

    import torch

    @dataclass
    class SearchHit:  # the shape of skulens.catalog's hits
        sku: str
        title: str
        score: float
        category_path: list
        attributes: dict
        image: str | None

    class FakeEmbedder:  # the shape of skulens.catalog's Embedder
        def input_tensor(self, image):
            assert isinstance(image, Image.Image)
            return torch.zeros(3, 4, 4)

        def embed_tensors(self, x):
            return np.ones((len(x), 2), np.float32)

    class FakeCatalog:
        embedder = FakeEmbedder()

        def search_vectors(self, vector, top_k, category=None, attributes=None):
            assert vector.shape == (2,) and category is None and attributes is None
            return [
                SearchHit(
                    sku=f"SKU {i}",
                    title=f"Product {i}",
                    score=1 - i / 10,
                    category_path=["red"],
                    attributes={"colour": "red"},
                    image=f"/srv/catalog/{i}.jpg" if i else None,
                )
                for i in range(top_k)
            ]

    with serving(recognizer, catalog=FakeCatalog(), products_k=3, media_dir=tmp_path / "media") as c:
        body = upload(c, photo).json()
        assert c.get("/healthz").json()["catalog"] is True
    assert [p["sku"] for p in body["products"]] == ["SKU 0", "SKU 1", "SKU 2"]
    assert body["products"][0]["title"] == "Product 0" and body["products"][0]["image_url"] is None
    # A server-side image path never reaches the client: it becomes a URL of this API.
    assert body["products"][1]["image_url"] == "/v1/products/SKU%201/image"
    assert body["products"][1]["attributes"] == {"colour": "red"}


def test_catalog_tree_as_api_response():
    from skulens.serving.catalog_views import category_tree

    tree = {
        "name": "",
        "count": 3,
        "children": [
            {
                "name": "Fruit",
                "count": 3,
                "children": [
                    {"name": "Apple", "count": 2, "children": []},
                    {"name": "Pear", "count": 1, "children": []},
                ],
            }
        ],
    }
    roots = category_tree(tree).model_dump()["roots"]
    assert roots[0]["product_count"] == 3 and roots[0]["path"] == ["Fruit"]
    assert [(c["name"], c["path"], c["product_count"]) for c in roots[0]["children"]] == [
        ("Apple", ["Fruit", "Apple"], 2),
        ("Pear", ["Fruit", "Pear"], 1),
    ]


# --- bad input: always 4xx with a JSON error -------------------------------------------------------


def test_non_image_is_422(client):
    assert_json_error(upload(client, b"this is not a photo"), 422, "bad_image")


def test_truncated_jpeg_is_422(client):
    data = noise_jpeg()
    error = assert_json_error(upload(client, data[: len(data) // 2]), 422, "bad_image")
    assert "truncated" in error["message"]


def test_empty_file_is_422(client):
    assert_json_error(upload(client, b""), 422, "bad_image")


def test_decompression_bomb_is_refused(client):
    error = assert_json_error(
        upload(client, png_header_only(100_000, 100_000), "image/png", "bomb.png"), 422, "bad_image"
    )
    assert "pixels" in error["message"]


def test_pixel_limit_is_configurable(recognizer):
    buf = io.BytesIO()
    Image.new("1", (1500, 1000)).save(buf, "PNG")  # 1.5 M pixels in a few hundred bytes
    with serving(recognizer, max_pixels=1_000_000) as c:
        error = assert_json_error(upload(c, buf.getvalue(), "image/png", "big.png"), 422, "bad_image")
    assert "1,000,000" in error["message"]


def test_oversized_upload_is_413(recognizer):
    with serving(recognizer, max_upload_bytes=20_000) as c:
        assert upload(c, noise_jpeg(64)).status_code == 200
        assert_json_error(upload(c, noise_jpeg(400)), 413, "upload_too_large")


def test_oversized_chunked_upload_is_cut_off(recognizer):
    """No Content-Length to trust: the body is counted while it streams."""
    boundary = "skulens-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + os.urandom(300_000)
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks():
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]

    with serving(recognizer, max_upload_bytes=20_000) as c:
        response = c.post(
            "/v1/recognize", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
        )
    assert_json_error(response, 413, "upload_too_large")


def test_wrong_request_content_type_is_415(client, photo):
    assert_json_error(client.post("/v1/recognize", json={"image": "x"}), 415, "unsupported_media_type")
    assert_json_error(
        client.post("/v1/recognize", content=photo, headers={"content-type": "image/jpeg"}),
        415,
        "unsupported_media_type",
    )


def test_wrong_part_content_type_is_415(client, photo):
    assert_json_error(upload(client, photo, "text/plain", "notes.txt"), 415, "unsupported_media_type")


def test_missing_image_field_is_422(client, photo):
    response = client.post("/v1/recognize", files={"photo": ("a.jpg", photo, "image/jpeg")})
    assert_json_error(response, 422, "missing_image")


def test_malformed_multipart_is_400(client):
    response = client.post("/v1/recognize", content=b"garbage", headers={"content-type": "multipart/form-data"})
    assert_json_error(response, 400, "bad_multipart")


def test_unknown_path_and_method_are_json(client):
    assert_json_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_json_error(client.get("/v1/recognize"), 405, "method_not_allowed")


def test_uploads_never_roll_over_to_disk(client, monkeypatch):
    """Starlette spools parts over 1 MB to a temporary file; our parser keeps photos in memory."""
    import starlette.formparsers as formparsers

    rolled = []
    original = formparsers.SpooledTemporaryFile

    class Watched(original):
        def rollover(self):
            rolled.append(True)
            super().rollover()

    monkeypatch.setattr(formparsers, "SpooledTemporaryFile", Watched)
    big = noise_jpeg(1000, quality=95)
    assert len(big) > 1024 * 1024
    assert upload(client, big).status_code == 200
    assert rolled == []


# --- limits under load: timeouts, errors, batching -------------------------------------------------


class SlowRecognizer:
    classes = ["a", "b"]

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.delay, self.fail, self.batches = delay, fail, []

    def predict_batch(self, images, top_k=5):
        self.batches.append(len(images))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        from skulens.recognition.recognizer import Prediction, ScoredClass

        return [
            Prediction("a", 0.9, ["a"], [ScoredClass("a", 0.9, ["a"]), ScoredClass("b", 0.1, ["b"])]) for _ in images
        ]


def test_request_timeout_is_504(photo):
    with serving(SlowRecognizer(delay=1.0), request_timeout_s=0.2, warmup=False) as c:
        assert_json_error(upload(c, photo), 504, "timeout")


def test_unexpected_failure_is_json_500_without_details(photo):
    with serving(SlowRecognizer(fail=True)) as c:  # its failed warm-up does not stop the server either
        response = upload(c, photo)
    assert_json_error(response, 500, "internal_error")
    assert "exploded" not in response.text


def test_concurrent_requests_share_batches(photo):
    rec = SlowRecognizer(delay=0.05)
    app = create_app(ServeConfig(recognizer=rec, max_batch_size=8, max_wait_ms=100, warmup=False))

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                replies = await asyncio.gather(
                    *[c.post("/v1/recognize", files={"image": ("a.jpg", photo, "image/jpeg")}) for _ in range(16)]
                )
                metrics = (await c.get("/metrics")).text
        return replies, metrics

    replies, metrics = asyncio.run(burst())
    assert [r.status_code for r in replies] == [200] * 16
    assert sum(rec.batches) == 16 and max(rec.batches) > 1 and max(rec.batches) <= 8
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    count = [s.value for s in families["skulens_inference_batch_size"].samples if s.name.endswith("_count")][0]
    assert count == len(rec.batches)


def test_micro_batcher_keeps_results_in_order_and_bounds_its_queue():
    async def scenario():
        release = threading.Event()
        sizes = []

        def double(items):
            release.wait(5)
            sizes.append(len(items))
            return [2 * x for x in items]

        batcher = MicroBatcher(double, max_batch_size=4, max_wait_ms=20, max_queue=8)
        await batcher.start()
        try:
            tasks = [asyncio.create_task(batcher.submit(i)) for i in range(7)]
            await asyncio.sleep(0.1)  # the first batch of 4 is running (blocked); 3 are queued
            extra = [asyncio.create_task(batcher.submit(i)) for i in range(7, 13)]
            await asyncio.sleep(0.01)
            # 3 queued + 5 more fill the queue of 8; the 6th extra is refused at once.
            assert [t.done() and isinstance(t.exception(), Overloaded) for t in extra] == [False] * 5 + [True]
            release.set()
            results = await asyncio.gather(*tasks)
            extra_results = await asyncio.gather(*extra[:5])
        finally:
            release.set()
            await batcher.stop()
        return results + extra_results, sizes

    results, sizes = asyncio.run(scenario())
    assert results == [2 * i for i in range(12)]
    assert sizes[0] == 4 and max(sizes) <= 4 and sum(sizes) == 12


# --- keys, CORS, logs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(recognizer):
    with serving(recognizer, api_key_hashes={hash_key(KEY)}, protect_reads=True) as c:
        yield c


def test_reads_need_a_key_when_protected(keyed, photo):
    assert_json_error(upload(keyed, photo), 401, "missing_api_key")
    assert_json_error(upload(keyed, photo, headers={"X-API-Key": OTHER_KEY}), 401, "invalid_api_key")
    assert upload(keyed, photo, headers={"X-API-Key": KEY}).status_code == 200
    assert upload(keyed, photo, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert_json_error(keyed.get("/metrics"), 401, "missing_api_key")
    assert keyed.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
    assert keyed.get("/healthz").status_code == 200  # liveness stays open for orchestrators


def test_write_endpoints_need_a_key(keyed, client):
    assert_json_error(client.delete("/v1/jobs/some-job"), 403, "writes_disabled")
    assert_json_error(keyed.delete("/v1/jobs/some-job"), 401, "missing_api_key")
    assert_json_error(keyed.delete("/v1/jobs/some-job", headers={"X-API-Key": OTHER_KEY}), 401, "invalid_api_key")
    assert_json_error(keyed.delete("/v1/jobs/some-job", headers={"X-API-Key": KEY}), 404, "job_not_found")


def test_key_hashing_and_key_files(tmp_path):
    key = new_key()
    assert key != new_key() and len(key) > 40
    assert key_matches(key, frozenset({hash_key(key), hash_key(OTHER_KEY)}))
    assert not key_matches(key + "x", frozenset({hash_key(key)}))
    good = tmp_path / "keys.txt"
    good.write_text(
        f"# shop front\n{hash_key(key)}  web\n\n{hash_key(OTHER_KEY).upper().replace('SHA256', 'sha256')}\n"
    )
    assert load_key_hashes(good) == {hash_key(key), hash_key(OTHER_KEY)}
    raw = tmp_path / "raw.txt"
    raw.write_text(key + "\n")
    with pytest.raises(SkulensError) as info:
        load_key_hashes(raw)
    assert key not in str(info.value) and "raw.txt:1" in str(info.value)


def test_keys_new_command(capsys, tmp_path):
    assert main(["keys", "new", "--name", "shop"]) == 0
    key, line = capsys.readouterr().out.strip().splitlines()
    assert line == f"{hash_key(key)}  shop"
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(line + "\n")
    assert key_matches(key, load_key_hashes(keys_file))


def test_cors_only_for_configured_origins(recognizer):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    with serving(recognizer, cors_origins=("https://shop.example",)) as c:
        ok = c.options("/v1/recognize", headers={"Origin": "https://shop.example", **preflight})
        bad = c.options("/v1/recognize", headers={"Origin": "https://evil.example", **preflight})
    assert ok.headers["access-control-allow-origin"] == "https://shop.example"
    assert "access-control-allow-origin" not in bad.headers
    with serving(recognizer) as c:
        off = c.options("/v1/recognize", headers={"Origin": "https://shop.example", **preflight})
    assert "access-control-allow-origin" not in off.headers


def test_access_log_has_no_keys_images_or_client_addresses(recognizer, photo, caplog):
    caplog.set_level(logging.INFO, logger="skulens")
    with serving(recognizer, api_key_hashes={hash_key(KEY)}, protect_reads=True) as c:
        upload(c, photo, headers={"X-API-Key": KEY})
        upload(c, photo, headers={"X-API-Key": OTHER_KEY})
        c.get(f"/v1/jobs/secret-job-id?api_key={KEY}", headers={"X-API-Key": KEY})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "POST /v1/recognize 200" in text and "POST /v1/recognize 401" in text
    assert KEY not in text and OTHER_KEY not in text and "secret-job-id" not in text
    assert "testclient" not in text  # TestClient's client address
    caplog.clear()
    with serving(recognizer, log_client_ips=True) as c:
        upload(c, photo)
    assert "client=testclient" in "\n".join(r.getMessage() for r in caplog.records)


# --- health, info, metrics, docs ---------------------------------------------------------------------


def test_healthz_info_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok", "engine": "torch", "catalog": False}
    info = client.get("/v1/info").json()
    assert info["model"]["classes"] == 3 and info["model"]["name"] == "seedcnn"
    assert info["auth"] == {"reads": False, "writes": False}
    assert "JPEG" in info["limits"]["formats"]
    spec = client.get("/openapi.json").json()
    recognize = spec["paths"]["/v1/recognize"]["post"]
    assert "image" in recognize["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert "products" in spec["components"]["schemas"]["RecognizeResponse"]["properties"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200  # served locally, no CDN


def test_metrics_count_requests_errors_and_batches(recognizer, photo):
    with serving(recognizer) as c:
        upload(c, photo)
        upload(c, b"nope")
        text = c.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert (
        samples[("skulens_http_requests_total", (("method", "POST"), ("route", "/v1/recognize"), ("status", "200")))]
        == 1
    )
    assert (
        samples[("skulens_http_requests_total", (("method", "POST"), ("route", "/v1/recognize"), ("status", "422")))]
        == 1
    )
    assert samples[("skulens_errors_total", (("code", "bad_image"),))] == 1
    assert samples[("skulens_inference_batch_size_count", ())] == 1  # the warm-up is not counted
    assert samples[("skulens_http_request_duration_seconds_count", (("route", "/v1/recognize"),))] == 2


def test_static_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'capture="environment"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


# --- bulk jobs -----------------------------------------------------------------------------------------


def test_bulk_recognize_runs_as_a_job(client, recognizer, photo):
    files = [
        ("images", ("a.jpg", photo, "image/jpeg")),
        ("images", ("bad.jpg", b"nope", "image/jpeg")),
        ("images", ("b.jpg", photo, "image/jpeg")),
    ]
    submitted = client.post("/v1/recognize/bulk", files=files)
    assert submitted.status_code == 202, submitted.text
    status = wait_for_job(client, submitted.json()["status_url"])
    assert status["status"] == "succeeded" and status["progress"] == {"done": 3, "total": 3}
    items = status["result"]["items"]
    assert [i["filename"] for i in items] == ["a.jpg", "bad.jpg", "b.jpg"]
    assert items[0]["prediction"]["label"] == recognizer.predict(photo).label
    assert items[1]["prediction"] is None and items[1]["error"]["code"] == "bad_image"
    assert_json_error(client.get("/v1/jobs/unknown-job"), 404, "job_not_found")


def test_bulk_refuses_too_many_images(recognizer, photo):
    with serving(recognizer, max_bulk_images=2) as c:
        files = [("images", (f"{i}.jpg", photo, "image/jpeg")) for i in range(3)]
        error = assert_json_error(c.post("/v1/recognize/bulk", files=files), 400, "bad_multipart")
    assert "Too many files" in error["message"]


# --- skulens serve ---------------------------------------------------------------------------------------


def test_serve_without_run_or_demo_explains(capsys, monkeypatch):
    import skulens.serving.config as serving_config

    monkeypatch.setattr(serving_config, "demo_run_dir", lambda: None)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass one" in err and "skulens serve runs/demo" in err


@pytest.mark.slow
def test_skulens_serve_starts_and_answers(trained_run, photo):
    port = free_port()
    proc = start_cli("serve", trained_run[0], "--port", port, "--max-wait-ms", "100", "--log-level", "warning")
    base = f"http://127.0.0.1:{port}"
    try:
        ready = wait_healthy(base, proc, timeout=60)
        assert ready.json()["status"] == "ready" and httpx.get(f"{base}/healthz").json()["status"] == "ok"

        async def burst():
            async with httpx.AsyncClient(base_url=base, timeout=30) as c:
                return await asyncio.gather(
                    *[c.post("/v1/recognize", files={"image": ("a.jpg", photo, "image/jpeg")}) for _ in range(12)]
                )

        replies = asyncio.run(burst())
        assert [r.status_code for r in replies] == [200] * 12
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)}
        batches = [s.value for s in families["skulens_inference_batch_size"].samples if s.name.endswith("_count")][0]
        assert batches < 12  # concurrent requests were micro-batched
    finally:
        out = stop(proc)
    assert "Traceback" not in out


def test_rate_limit_answers_429_with_retry_after_per_client(recognizer):
    with serving(recognizer, rate_limit="3/minute", api_key_hashes=frozenset({hash_key(KEY)})) as c:
        assert [c.get("/v1/info").status_code for _ in range(3)] == [200, 200, 200]
        limited = c.get("/v1/info")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200  # probes exempt
        # a valid key is its own client; a made-up key counts as the address it comes from
        assert c.get("/v1/info", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/v1/info", headers={"X-API-Key": OTHER_KEY}).status_code == 429


def test_a_malformed_rate_limit_is_refused_before_serving(recognizer):
    with pytest.raises(SkulensError, match="use N/second, N/minute or N/hour"):
        ServeConfig(recognizer=recognizer, rate_limit="lots")
