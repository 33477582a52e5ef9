"""Issue 21: with ``load_in_background`` the server answers before its model is loaded. /healthz is
liveness (200 throughout), /readyz is 503 while the model loads or after it failed to load and 200 once
it is in, and the routes that need the model answer 503 ``not_ready`` meanwhile, never a 500."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from skulens.cli import main
from skulens.errors import SkulensError
from skulens.recognition.recognizer import Prediction, ScoredClass
from skulens.serving import ServeConfig, create_app
from skulens.serving import app as app_module
from tests.conftest import COLOURS, coloured_photo, jpeg_bytes
from tests.helpers import assert_json_error, free_port, wait_until

PHOTO = jpeg_bytes(coloured_photo(COLOURS["red"], 1))


class StubRecognizer:
    """The shape of a Recognizer, answering "a" to every photo."""

    classes = ["a", "b"]

    def predict_batch(self, images, top_k=5):
        scored = [ScoredClass("a", 0.9, ["a"]), ScoredClass("b", 0.1, ["b"])]
        return [Prediction("a", 0.9, ["a"], scored) for _ in images]


class StubEmbedder:
    def input_tensor(self, image):
        import torch

        return torch.zeros(3, 4, 4)

    def embed_tensors(self, x):
        return np.ones((len(x), 2), np.float32)


class StubCatalog:
    embedder = StubEmbedder()

    def readiness(self) -> dict[str, str]:
        return {"database": "ok"}


@pytest.fixture
def gate(monkeypatch) -> threading.Event:
    """Loading blocks until the test sets this event (the seam: app.py's module-level load_recognizer)."""
    release = threading.Event()

    def blocked(config: ServeConfig):
        assert release.wait(30), "the test never released the loader"
        return config.recognizer

    monkeypatch.setattr(app_module, "load_recognizer", blocked)
    return release


def background_app(**overrides):
    return create_app(ServeConfig(recognizer=StubRecognizer(), load_in_background=True, **overrides))


def recognize(client):
    return client.post("/v1/recognize", files={"image": ("a.jpg", PHOTO, "image/jpeg")})


def is_ready(client) -> bool:
    return client.get("/readyz").status_code == 200


def test_not_ready_while_loading_then_ready(gate):
    with TestClient(background_app(), raise_server_exceptions=False) as c:
        waiting = c.get("/readyz")
        assert waiting.status_code == 503
        assert waiting.json() == {"status": "not ready", "reason": "model: loading", "checks": {"model": "loading"}}
        refused = recognize(c)
        error = assert_json_error(refused, 503, "not_ready")
        assert error["message"] == "the model is still loading; retry shortly"
        assert int(refused.headers["Retry-After"]) > 0
        assert_json_error(c.get("/v1/info"), 503, "not_ready")
        # Liveness, metrics and the web page do not need the model.
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
        gate.set()
        wait_until(lambda: is_ready(c), 10, message="/readyz did not turn 200 after loading")
        assert c.get("/readyz").json() == {"status": "ready", "reason": None, "checks": {"model": "ok"}}
        assert recognize(c).json()["label"] == "a"
        assert c.get("/v1/info").status_code == 200


def test_catalog_reports_loading_then_its_own_checks(gate):
    with TestClient(background_app(catalog=StubCatalog()), raise_server_exceptions=False) as c:
        assert c.get("/readyz").json()["checks"] == {"model": "loading", "catalog": "loading"}
        gate.set()
        wait_until(lambda: is_ready(c), 10, message="/readyz did not turn 200 after loading")
        assert c.get("/readyz").json()["checks"] == {"model": "ok", "database": "ok"}
        assert c.get("/healthz").json()["catalog"] is True


def test_a_failed_load_keeps_answering_why(monkeypatch, caplog):
    def broken(config: ServeConfig):
        raise SkulensError("the weights do not match their checksum\n(more detail)")

    monkeypatch.setattr(app_module, "load_recognizer", broken)
    with TestClient(background_app(catalog=StubCatalog()), raise_server_exceptions=False) as c:
        wait_until(lambda: c.get("/readyz").json()["checks"]["model"] != "loading", 10)
        failed = c.get("/readyz")
        assert failed.status_code == 503
        assert failed.json()["checks"] == {
            "model": "failed: the weights do not match their checksum",
            "catalog": "not loaded",
        }
        assert "the weights do not match their checksum" in failed.json()["reason"]
        assert c.get("/healthz").status_code == 200
        refused = recognize(c)
        assert_json_error(refused, 503, "not_ready")
        assert "Retry-After" not in refused.headers  # retrying will not fix a broken run folder
    assert "could not load the model" in caplog.text


def test_loading_first_is_unchanged(monkeypatch):
    loaded = []
    monkeypatch.setattr(app_module, "load_recognizer", lambda config: loaded.append(1) or config.recognizer)
    app = create_app(ServeConfig(recognizer=StubRecognizer(), warmup=False))
    assert loaded == [1]  # before the app exists, as before issue 21
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200 and recognize(c).status_code == 200


def test_uvicorn_listens_before_the_model_is_loaded(gate):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(background_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"

    def answers():
        try:
            return httpx.get(f"{base}/healthz", timeout=2)
        except httpx.TransportError:
            return None

    try:
        assert wait_until(answers, 20).status_code == 200
        assert httpx.get(f"{base}/readyz").status_code == 503
        gate.set()
        wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 200, 10)
    finally:
        gate.set()
        server.should_exit = True
        thread.join(10)


def test_skulens_serve_loads_in_the_background_unless_told_not_to(monkeypatch, tmp_path):
    import skulens.serving.server as server_module

    seen: list[ServeConfig] = []
    monkeypatch.setattr(server_module, "serve", lambda config, **kw: seen.append(config))
    assert main(["serve", str(tmp_path), "--no-catalog"]) == 0
    assert main(["serve", str(tmp_path), "--no-catalog", "--load-first"]) == 0
    assert [c.load_in_background for c in seen] == [True, False]
    assert ServeConfig(run_dir=tmp_path).load_in_background is False  # Python callers load first
