"""The server side of on-device mode (issue 19): the manifest the page reads, the model file it downloads,
and search by a vector computed on the device, on the built-in demo model's INT8 export and a small
catalog it embedded. No browser here (tests/test_device_mode.py drives the page)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from skulens.catalog import Catalog, Embedder, Product
from skulens.data.transforms import image_to_array
from skulens.recognition.recognizer import Recognizer
from skulens.serving import ServeConfig, create_app, web_runtime
from skulens.serving.config import demo_run_dir

DEMO = demo_run_dir()
pytestmark = pytest.mark.skipif(
    DEMO is None or not (DEMO / "model.int8.onnx").is_file(), reason="needs the demo model's INT8 export"
)
MINI = Path(__file__).resolve().parents[1] / "src" / "skulens" / "demo_data" / "grocery-mini"


def iconic_products() -> list[Product]:
    images = sorted((MINI / "iconic-images-and-descriptions").rglob("*.jpg"))
    return [Product(sku=p.stem, title=p.stem.replace("_", " "), images=[str(p)]) for p in images]


@pytest.fixture(scope="module")
def int8_shop(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("device-shop") / "shop.db"
    embedder = Embedder.from_run(DEMO, device="cpu", engine="auto")
    assert embedder.engine.name == "onnx-int8"
    with Catalog.open(db, embedder) as catalog:
        assert not catalog.upsert(iconic_products()).rejected
    return db


@pytest.fixture(scope="module")
def client(int8_shop):
    config = ServeConfig(run_dir=DEMO, catalog_db=int8_shop, warmup=False)
    with TestClient(create_app(config), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def manifest(client):
    response = client.get("/v1/device/manifest")
    assert response.status_code == 200
    return response.json()


def device_embedding(manifest: dict, photo: Path) -> list[float]:
    """What the page computes: the INT8 file it downloaded, run on the photo (here by Python's ORT)."""
    import onnxruntime as ort

    from skulens.data.transforms import Preprocessing

    session = ort.InferenceSession(str(DEMO / "model.int8.onnx"))
    x = image_to_array(photo, Preprocessing.from_dict(manifest["preprocessing"]))[None]
    return session.run(["embedding"], {manifest["model"]["input"]: x})[0][0].tolist()


def test_manifest_describes_the_servers_own_int8_model(client, manifest):
    recognizer = Recognizer.load(DEMO)
    assert manifest["available"] is web_runtime.installed()
    if not manifest["available"]:
        assert "onnxruntime-web" in manifest["reason"]
        return
    model = manifest["model"]
    data = client.get(model["url"])
    assert data.status_code == 200 and len(data.content) == model["bytes"]
    assert hashlib.sha256(data.content).hexdigest() == model["sha256"] == model["url"].split("/")[-1][:-5]
    assert data.content == (DEMO / "model.int8.onnx").read_bytes()
    assert "immutable" in data.headers["cache-control"]
    assert manifest["preprocessing"] == recognizer.config.preprocessing.to_dict()
    assert manifest["classes"] == recognizer.classes
    assert manifest["paths"][1] == recognizer.category_path(1) and len(manifest["paths"]) == len(recognizer.classes)
    assert manifest["limits"]["max_pixels"] == ServeConfig.__dataclass_fields__["max_pixels"].default
    assert manifest["search"]["dim"] == Embedder.from_run(DEMO, device="cpu", engine="auto").model_dim
    assert not manifest["search"]["flip"]
    assert client.get(manifest["runtime"]).status_code == 200


def test_the_runtime_is_sent_compressed_and_nothing_else_is_served_from_its_folder(client):
    if not web_runtime.installed():
        pytest.skip("onnxruntime-web is not vendored here")
    base = web_runtime.URL_PREFIX
    wasm = client.get(f"{base}/ort-wasm-simd-threaded.wasm", headers={"Accept-Encoding": "gzip"})
    assert wasm.status_code == 200 and wasm.headers["content-encoding"] == "gzip"
    assert wasm.headers["content-type"] == "application/wasm"
    assert wasm.content == (web_runtime.VENDOR_DIR / "ort-wasm-simd-threaded.wasm").read_bytes()  # decoded
    for name in ("ort-wasm-simd-threaded.wasm.gz", "ort.all.min.js", "package.json.gz"):
        response = client.get(f"{base}/{name}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_a_vector_from_the_device_finds_what_the_photo_finds(client, manifest):
    photo = sorted((MINI / "test").rglob("*.jpg"))[0]
    by_vector = client.post(
        "/v1/search/vector", json={"vector": device_embedding(manifest, photo), "model": manifest["search"]["model"]}
    )
    by_photo = client.post("/v1/search", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert by_vector.status_code == 200, by_vector.text
    got = [(p["sku"], p["score"]) for p in by_vector.json()["products"]]
    want = [(p["sku"], p["score"]) for p in by_photo.json()["products"]]
    assert [s for s, _ in got] == [s for s, _ in want] and len(got) > 3
    assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-4)


def test_malformed_vectors_get_a_clear_422(client, manifest):
    model = manifest["search"]["model"]
    good = [0.01] * 512
    cases = {
        "wrong size": {"vector": [1.0, 2.0], "model": model},
        "zeros": {"vector": [0.0] * 512, "model": model},
        "another model": {"vector": good, "model": "0123456789abcdef"},
        "text": {"vector": ["a"] * 512, "model": model},
        "nested": {"vector": [[0.1]] * 512, "model": model},
        "too long": {"vector": [0.1] * 9000, "model": model},
        "no model": {"vector": good},
        "empty": {},
        "top_k 0": {"vector": good, "model": model, "top_k": 0},
    }
    for name, body in cases.items():
        response = client.post("/v1/search/vector", json=body)
        assert response.status_code == 422, name
        message = response.json()["error"]["message"]
        assert message and "\n" not in message and "Traceback" not in message, name
    raw = {
        "NaN": '{"vector": [NaN' + ", 0.1" * 511 + f'], "model": "{model}"}}',
        "Infinity": '{"vector": [Infinity' + ", 0.1" * 511 + f'], "model": "{model}"}}',
        "not JSON": "vector=1,2,3",
    }
    for name, body in raw.items():
        response = client.post("/v1/search/vector", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, name
        assert json.loads(response.text)["error"]["message"], name


def test_a_server_without_the_int8_engine_says_why_the_device_cannot(trained_run):
    config = ServeConfig(recognizer=Recognizer.load(trained_run[0], engine="torch"), warmup=False)
    with TestClient(create_app(config), raise_server_exceptions=False) as c:
        body = c.get("/v1/device/manifest").json()
        assert body["available"] is False and "INT8 export" in body["reason"]
        assert c.get("/v1/device/model/" + "0" * 64 + ".onnx").status_code == 404
        no_catalog = c.post("/v1/search/vector", json={"vector": [0.1] * 8, "model": "x"})
        assert no_catalog.status_code == 404 and no_catalog.json()["error"]["code"] == "no_catalog"
