"""The catalog over HTTP: visual search, products (list, detail, image, similar, create, update, delete,
bulk import), categories, Grad-CAM heat maps, `skulens serve`'s catalog and demo settings; every bad
input answered 4xx with a JSON error."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from skulens.catalog import Catalog, Embedder, Product
from skulens.catalog.schema import head_revision
from skulens.cli import build_parser
from skulens.cli.serve import config_from_args
from skulens.errors import SkulensError
from skulens.recognition.recognizer import Recognizer
from skulens.serving import ServeConfig, create_app
from skulens.serving import config as serving_config
from skulens.serving.media import FolderMedia
from skulens.serving.security import hash_key, new_key
from tests.conftest import COLOURS, coloured_photo, jpeg_bytes
from tests.helpers import (
    ARTIFACTS,
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
KEYS = frozenset({hash_key(KEY)})
WRITE = {"X-API-Key": KEY}
# Each colour's product photos in another format, so the image endpoint meets JPEG, PNG and WebP files.
FORMATS = {"red": "jpg", "green": "png", "blue": "webp"}


@pytest.fixture(scope="module")
def recognizer(trained_run):
    return Recognizer.load(trained_run[0])


@pytest.fixture(scope="module")
def embedder(trained_run):
    return Embedder.from_run(trained_run[0], device="cpu")


def make_shop(folder: Path, embedder) -> Path:
    """Six products, two per colour, under Paint > colour; returns the catalog database."""
    (folder / "img").mkdir(parents=True)
    products = []
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(2):
            path = folder / "img" / f"{name}{i}.{FORMATS[name]}"
            coloured_photo(colour, 7000 + 10 * c + i, size=64).save(path)
            products.append(
                Product(
                    sku=f"{name}-{i}",
                    title=f"{name.title()} paint {i}",
                    category_path=["Paint", name],
                    attributes={"colour": name},
                    images=[str(path)],
                )
            )
    with Catalog.open(folder / "shop.db", embedder) as catalog:
        assert not catalog.upsert(products).rejected
    return folder / "shop.db"


def photo_of(colour: str, seed: int = 1) -> bytes:
    return jpeg_bytes(coloured_photo(COLOURS[colour], seed, size=64), quality=92)


@contextmanager
def serving(recognizer, db: Path | None, run: Path | None = None, **overrides):
    app = create_app(ServeConfig(recognizer=recognizer, catalog_db=db, catalog_run=run, **overrides))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory, embedder) -> Path:
    return make_shop(tmp_path_factory.mktemp("shop"), embedder)


@pytest.fixture(scope="module")
def client(recognizer, shop_db):
    """Read-only tests share this server; tests that write get their own catalog (``writable``)."""
    with serving(recognizer, shop_db, api_key_hashes=KEYS) as c:
        yield c


@pytest.fixture
def writable(recognizer, embedder, trained_run, tmp_path):
    db = make_shop(tmp_path / "shop", embedder)
    with serving(recognizer, db, trained_run[0], api_key_hashes=KEYS, media_dir=tmp_path / "media") as c:
        c.media_dir = tmp_path / "media"
        yield c


def search(client, data: bytes, content_type: str = "image/jpeg", **kw):
    return client.post("/v1/search", files={"image": ("photo.jpg", data, content_type)}, **kw)


def create(client, sku: str, images: list[bytes], headers=WRITE, **fields):
    product = {"sku": sku, "title": fields.pop("title", f"Product {sku}"), **fields}
    files = [("product", (None, json.dumps(product)))]
    files += [("images", (f"client-name-{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    return client.post("/v1/products", files=files, headers=headers)


def media_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- search ------------------------------------------------------------------------------------------


def test_search_finds_products_that_look_like_the_photo(client):
    response = search(client, photo_of("blue"), params={"top_k": 3})
    assert response.status_code == 200, response.text
    products = response.json()["products"]
    assert len(products) == 3
    assert {p["sku"] for p in products[:2]} == {"blue-0", "blue-1"}
    assert products[0]["image_url"] == f"/v1/products/{products[0]['sku']}/image"
    assert products[0]["category_path"] == ["Paint", "blue"] and products[0]["attributes"] == {"colour": "blue"}
    scores = [p["score"] for p in products]
    assert scores == sorted(scores, reverse=True)
    # top_k and the category as form fields (curl -F) instead of query parameters
    form = client.post(
        "/v1/search",
        files=[
            ("image", ("p.jpg", photo_of("blue"), "image/jpeg")),
            ("top_k", (None, "2")),
            ("category", (None, "Paint")),
            ("category", (None, "red")),
        ],
    )
    assert [p["sku"] for p in form.json()["products"]] in (["red-0", "red-1"], ["red-1", "red-0"])
    filtered = search(client, photo_of("blue"), params={"category": ["Paint", "green"]}).json()["products"]
    assert {p["sku"] for p in filtered} == {"green-0", "green-1"}
    assert search(client, photo_of("blue"), params={"category": "Toys"}).json()["products"] == []


def test_search_filters_on_attributes(client):
    green = search(client, photo_of("blue"), params={"attribute": "colour=green"}).json()["products"]
    assert {p["sku"] for p in green} == {"green-0", "green-1"}
    form = client.post(
        "/v1/search",
        files=[
            ("image", ("p.jpg", photo_of("blue"), "image/jpeg")),
            ("attribute", (None, "colour=red")),
            ("category", (None, "Paint")),
        ],
    )
    assert {p["sku"] for p in form.json()["products"]} == {"red-0", "red-1"}
    assert search(client, photo_of("blue"), params={"attribute": "colour=purple"}).json()["products"] == []
    assert search(client, photo_of("blue"), params={"attribute": "size=XL"}).json()["products"] == []
    bad = search(client, photo_of("blue"), params={"attribute": "colour"})
    assert bad.status_code == 422 and "NAME=VALUE" in bad.json()["error"]["message"], bad.text


def test_recognize_answers_with_catalog_products(client):
    body = client.post("/v1/recognize", files={"image": ("p.jpg", photo_of("red", 5), "image/jpeg")}).json()
    assert body["label"] == "red"
    assert {p["sku"] for p in body["products"][:2]} == {"red-0", "red-1"}


def test_concurrent_searches_share_embedding_batches(recognizer, shop_db):
    app = create_app(ServeConfig(recognizer=recognizer, catalog_db=shop_db, max_wait_ms=100, warmup=False))
    photos = [photo_of(colour, seed) for seed in range(3) for colour in COLOURS]

    async def burst():
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                replies = await asyncio.gather(
                    *[c.post("/v1/search", files={"image": ("p.jpg", p, "image/jpeg")}) for p in photos]
                )
                metrics = (await c.get("/metrics")).text
        return replies, metrics

    replies, metrics = asyncio.run(burst())
    assert [r.status_code for r in replies] == [200] * len(photos)
    colours = [colour for _ in range(3) for colour in COLOURS]
    assert [r.json()["products"][0]["sku"].split("-")[0] for r in replies] == colours  # each got its own answer
    samples = {s.name: s.value for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert samples["skulens_embedding_batch_size_sum"] == len(photos)
    assert samples["skulens_embedding_batch_size_count"] < len(photos)


def test_bad_search_uploads_are_4xx_json(recognizer, shop_db, client):
    assert_json_error(search(client, b"not a photo"), 422, "bad_image")
    data = noise_jpeg()
    assert "truncated" in assert_json_error(search(client, data[: len(data) // 2]), 422, "bad_image")["message"]
    assert (
        "pixels"
        in assert_json_error(search(client, png_header_only(100_000, 100_000), "image/png"), 422, "bad_image")[
            "message"
        ]
    )
    assert_json_error(search(client, photo_of("red"), "text/plain"), 415, "unsupported_media_type")
    assert_json_error(client.post("/v1/search", json={"image": "x"}), 415, "unsupported_media_type")
    assert_json_error(
        client.post("/v1/search", files={"photo": ("p.jpg", photo_of("red"), "image/jpeg")}), 422, "missing_image"
    )
    assert_json_error(search(client, photo_of("red"), params={"top_k": 0}), 422, "invalid_request")
    assert_json_error(search(client, photo_of("red"), params={"top_k": "many"}), 422, "invalid_request")
    with serving(recognizer, shop_db, max_upload_bytes=20_000) as small:
        assert_json_error(search(small, noise_jpeg(400)), 413, "upload_too_large")


# --- reading products ----------------------------------------------------------------------------------


def test_list_products_with_paging_and_category(client):
    first = client.get("/v1/products", params={"limit": 4}).json()
    assert [p["sku"] for p in first["products"]] == ["blue-0", "blue-1", "green-0", "green-1"]
    assert first["next_offset"] == 4 and "score" not in first["products"][0]
    rest = client.get("/v1/products", params={"offset": 4, "limit": 4}).json()
    assert [p["sku"] for p in rest["products"]] == ["red-0", "red-1"] and rest["next_offset"] is None
    red = client.get("/v1/products", params={"category": ["Paint", "red"]}).json()
    assert [p["sku"] for p in red["products"]] == ["red-0", "red-1"]
    assert client.get("/v1/products", params={"category": "Toys"}).json()["products"] == []
    assert_json_error(client.get("/v1/products", params={"limit": 0}), 422, "invalid_request")
    assert_json_error(client.get("/v1/products", params={"offset": -1}), 422, "invalid_request")


def test_product_detail_and_its_image(client, shop_db):
    detail = client.get("/v1/products/green-1").json()
    assert detail == {
        "sku": "green-1",
        "title": "Green paint 1",
        "image_url": "/v1/products/green-1/image",
        "category_path": ["Paint", "green"],
        "attributes": {"colour": "green"},
        "description": "",
        "image_count": 1,
        "gallery_image_count": 0,
    }
    for sku, content_type in (("red-0", "image/jpeg"), ("green-0", "image/png"), ("blue-0", "image/jpeg")):
        response = client.get(f"/v1/products/{sku}/image")
        assert response.status_code == 200 and response.headers["content-type"] == content_type
        # WebP is converted, so a client only ever gets what every browser shows
        assert Image.open(io.BytesIO(response.content)).size == (64, 64)
    assert str(shop_db.parent) not in json.dumps(detail)  # server paths stay on the server


def test_unknown_and_invalid_skus_are_4xx_json(client):
    assert_json_error(client.get("/v1/products/nothing"), 404, "product_not_found")
    assert_json_error(client.get("/v1/products/nothing/image"), 404, "product_not_found")
    assert_json_error(client.get("/v1/products/nothing/similar"), 404, "product_not_found")
    # Path traversal: a SKU never names a file, and these are not even valid SKUs.
    for path in (
        "/v1/products/%2E%2E",
        "/v1/products/%2E%2E/image",
        "/v1/products/..%5Cetc%5Cpasswd/image",
        "/v1/products/%2E",
        "/v1/products/%00/image",
        "/v1/products/a%0Ab/similar",
    ):
        assert_json_error(client.get(path), 422, "invalid_sku")
    # An encoded slash never matches a route with one SKU segment.
    for path in ("/v1/products/..%2Fx", "/v1/products/..%2F..%2Fetc%2Fpasswd/image", "/v1/products/%2Fetc%2Fpasswd"):
        response = client.get(path)
        assert 400 <= response.status_code < 500 and response.json()["error"]["code"] in ("not_found", "invalid_sku")
    assert_json_error(client.get("/v1/products/" + "x" * 200), 422, "invalid_sku")


def test_similar_products(client):
    body = client.get("/v1/products/red-0/similar", params={"top_k": 3}).json()
    assert body["sku"] == "red-0"
    skus = [p["sku"] for p in body["products"]]
    assert "red-0" not in skus and skus[0] == "red-1" and len(skus) == 3
    same = client.get("/v1/products/red-0/similar", params={"same_category": "true"}).json()
    assert [p["sku"] for p in same["products"]] == ["red-1"]
    assert_json_error(client.get("/v1/products/red-0/similar", params={"top_k": 1000}), 422, "invalid_request")


def test_category_tree_with_counts(client):
    roots = client.get("/v1/categories").json()["roots"]
    assert [(r["name"], r["product_count"]) for r in roots] == [("Paint", 6)]
    assert sorted((c["name"], c["path"], c["product_count"]) for c in roots[0]["children"]) == [
        ("blue", ["Paint", "blue"], 2),
        ("green", ["Paint", "green"], 2),
        ("red", ["Paint", "red"], 2),
    ]


def test_catalog_routes_are_documented(client):
    spec = client.get("/openapi.json").json()
    for path, method in (
        ("/v1/search", "post"),
        ("/v1/products", "get"),
        ("/v1/products", "post"),
        ("/v1/products/{sku}", "put"),
        ("/v1/products/{sku}", "delete"),
        ("/v1/products/{sku}/image", "get"),
        ("/v1/products/{sku}/similar", "get"),
        ("/v1/products/import", "post"),
        ("/v1/categories", "get"),
        ("/v1/explain", "post"),
    ):
        assert method in spec["paths"][path], (path, method)
    # Routes that read a request body answer a malformed one with 400, and say so
    for path, method in (
        ("/v1/search", "post"),
        ("/v1/products", "post"),
        ("/v1/products/{sku}", "put"),
        ("/v1/explain", "post"),
        ("/v1/recognize", "post"),
        ("/v1/recognize/bulk", "post"),
    ):
        assert "400" in spec["paths"][path][method]["responses"], (path, method)
    broken = client.post(
        "/v1/search", content=b"--xyz\r\nnot a part header\r\n", headers={"content-type": "multipart/form-data"}
    )  # no boundary
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "bad_multipart", broken.text
    # Bodies documented by hand carry their nested models inline: no reference dangles.
    assert "$defs" not in json.dumps(spec)
    imported = spec["paths"]["/v1/products/import"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "sku" in imported["properties"]["products"]["items"]["properties"]


def test_without_a_catalog_the_catalog_routes_say_so(recognizer):
    with serving(recognizer, None, api_key_hashes=KEYS) as c:
        assert c.get("/v1/info").json()["catalog"] is False
        assert_json_error(c.get("/v1/categories"), 404, "no_catalog")
        assert_json_error(c.get("/v1/products"), 404, "no_catalog")
        assert_json_error(search(c, photo_of("red")), 404, "no_catalog")
        assert_json_error(create(c, "new-1", [photo_of("red")]), 404, "no_catalog")


def test_a_new_empty_catalog_answers_with_nothing(recognizer, trained_run, tmp_path):
    with serving(recognizer, tmp_path / "new.db", trained_run[0]) as c:
        assert search(c, photo_of("red")).json()["products"] == []
        assert (
            c.post("/v1/recognize", files={"image": ("p.jpg", photo_of("red"), "image/jpeg")}).json()["products"] == []
        )
        assert c.get("/v1/categories").json() == {"roots": []}


# --- writing products ------------------------------------------------------------------------------------


def exif_photo() -> bytes:
    """A 60x30 photo whose EXIF says 'rotate 90°' and names a camera, with bytes appended after the image."""
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    exif[0x010F] = "SecretCam"
    exif[0x0131] = "location-leaking-app"
    buf = io.BytesIO()
    Image.new("RGB", (60, 30), (200, 200, 0)).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue() + b"HIDDEN-PAYLOAD"


def test_create_is_searchable_at_once_then_update_and_delete(writable):
    c, media = writable, writable.media_dir
    yellow = jpeg_bytes(coloured_photo((220, 210, 30), 3, size=64), quality=92)
    created = create(
        c,
        "yellow-1",
        [yellow, exif_photo()],
        title="Yellow paint",
        category_path=["Paint", "yellow"],
        attributes={"colour": "yellow"},
        description="bright",
    )
    assert created.status_code == 201, created.text
    assert created.json()["image_count"] == 2 and created.json()["category_path"] == ["Paint", "yellow"]
    hit = search(c, yellow, params={"top_k": 1}).json()["products"][0]
    assert hit["sku"] == "yellow-1" and hit["score"] == pytest.approx(1.0, abs=0.02)

    # Stored files: re-encoded pixels under the media folder, named by hash, without metadata
    files = media_files(media)
    assert len(files) == 2 and all(re.fullmatch(r"[0-9a-f]{40}\.jpg", f.name) for f in files)
    stored = [f.read_bytes() for f in files]
    assert all(b"SecretCam" not in s and b"location-leaking" not in s and b"HIDDEN-PAYLOAD" not in s for s in stored)
    assert yellow not in stored
    rotated = [f for f in files if Image.open(f).size == (30, 60)]  # the orientation applied to the pixels
    assert len(rotated) == 1 and not Image.open(rotated[0]).getexif()
    served = c.get("/v1/products/yellow-1/image")
    assert served.headers["content-type"] == "image/jpeg" and served.content in stored

    # Metadata only (JSON): photos and other fields stay
    changed = c.put("/v1/products/yellow-1", json={"title": "Lemon paint"}, headers=WRITE)
    assert changed.status_code == 200, changed.text
    assert changed.json()["title"] == "Lemon paint" and changed.json()["description"] == "bright"
    assert changed.json()["image_count"] == 2 and media_files(media) == files
    # New photos (multipart): they replace the old ones, whose files go
    blue = photo_of("blue", 77)
    replaced = c.put(
        "/v1/products/yellow-1",
        headers=WRITE,
        files=[("product", (None, '{"category_path": ["Paint", "lemon"]}')), ("images", ("x.jpg", blue, "image/jpeg"))],
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["image_count"] == 1 and replaced.json()["category_path"] == ["Paint", "lemon"]
    assert len(media_files(media)) == 1 and not set(media_files(media)) & set(files)
    assert search(c, blue, params={"top_k": 1}).json()["products"][0]["sku"] == "yellow-1"
    assert search(c, yellow, params={"top_k": 1}).json()["products"][0]["sku"] != "yellow-1"

    deleted = c.delete("/v1/products/yellow-1", headers=WRITE)
    assert deleted.status_code == 200 and deleted.json() == {"sku": "yellow-1", "deleted": True}
    assert_json_error(c.get("/v1/products/yellow-1"), 404, "product_not_found")
    assert "yellow-1" not in [p["sku"] for p in search(c, blue).json()["products"]]
    assert media_files(media) == []
    assert_json_error(c.delete("/v1/products/yellow-1", headers=WRITE), 404, "product_not_found")
    # Photos the catalog imported from elsewhere are never deleted with their product
    source = Path(c.app.state.services.catalog.get("red-0").images[0])
    assert c.delete("/v1/products/red-0", headers=WRITE).status_code == 200 and source.is_file()


def test_bad_writes_are_4xx_json_and_store_nothing(writable, recognizer, embedder, tmp_path):
    c, media = writable, writable.media_dir
    ok = photo_of("red", 9)
    data = noise_jpeg()
    assert_json_error(create(c, "n1", [b"not an image"]), 422, "bad_image")
    assert_json_error(create(c, "n1", [ok, data[: len(data) // 2]]), 422, "bad_image")
    assert_json_error(create(c, "n1", [png_header_only(100_000, 100_000)]), 422, "bad_image")
    assert_json_error(create(c, "n1", []), 422, "missing_image")
    assert_json_error(
        c.post(
            "/v1/products",
            headers=WRITE,
            files=[("product", (None, '{"sku": "n1"}')), ("images", ("a.txt", ok, "text/plain"))],
        ),
        415,
        "unsupported_media_type",
    )
    assert_json_error(c.post("/v1/products", headers=WRITE, json={"sku": "n1"}), 415, "unsupported_media_type")
    assert_json_error(
        c.post("/v1/products", headers=WRITE, files=[("images", ("a.jpg", ok, "image/jpeg"))]), 422, "invalid_product"
    )
    bad_json = [("product", (None, "{not json")), ("images", ("a.jpg", ok, "image/jpeg"))]
    assert_json_error(c.post("/v1/products", headers=WRITE, files=bad_json), 422, "invalid_product")
    assert_json_error(create(c, "n1", [ok], category_path="Paint"), 422, "invalid_product")
    assert_json_error(create(c, "n1", [ok], price=3), 422, "invalid_product")  # unknown fields are refused
    for sku in ("../x", "..", "a/b", "a\\b", "bad\x01sku"):
        assert_json_error(create(c, sku, [ok]), 422, "invalid_sku")
    assert_json_error(create(c, "red-0", [ok]), 409, "product_exists")
    assert_json_error(c.put("/v1/products/nothing", json={"title": "x"}, headers=WRITE), 404, "product_not_found")
    assert_json_error(c.put("/v1/products/%2E%2E", json={"title": "x"}, headers=WRITE), 422, "invalid_sku")
    assert_json_error(c.put("/v1/products/red-0", json={"title": 5}, headers=WRITE), 422, "invalid_product")
    assert_json_error(
        c.put("/v1/products/red-0", content=b"title=x", headers={**WRITE, "content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    assert_json_error(c.delete("/v1/products/%2E%2E", headers=WRITE), 422, "invalid_sku")
    assert media_files(media) == []
    assert c.get("/v1/products/red-0").json()["title"] == "Red paint 0"
    Path(c.app.state.services.catalog.get("green-1").images[0]).unlink()
    assert_json_error(c.get("/v1/products/green-1/image"), 404, "no_image")
    db = make_shop(tmp_path / "small", embedder)
    with serving(recognizer, db, api_key_hashes=KEYS, max_upload_bytes=20_000, media_dir=media) as small:
        assert_json_error(create(small, "n1", [noise_jpeg(400)]), 413, "upload_too_large")


def test_writes_need_a_key(recognizer, shop_db, client):
    with serving(recognizer, shop_db) as open_server:  # no keys file: writes are off
        assert_json_error(create(open_server, "n1", [photo_of("red")], headers={}), 403, "writes_disabled")
    for headers, code in (
        ({}, "missing_api_key"),
        ({"X-API-Key": new_key()}, "invalid_api_key"),
        ({"Authorization": f"Bearer {new_key()}"}, "invalid_api_key"),
    ):
        assert_json_error(create(client, "n1", [photo_of("red")], headers=headers), 401, code)
        assert_json_error(client.put("/v1/products/red-0", json={"title": "x"}, headers=headers), 401, code)
        assert_json_error(client.delete("/v1/products/red-0", headers=headers), 401, code)
        assert_json_error(client.post("/v1/products/import", json={"products": []}, headers=headers), 401, code)
    assert client.get("/v1/products/red-0").status_code == 200  # reads stay open


# --- bulk import -------------------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_import_runs_as_a_job_and_reports_bad_items(writable):
    c = writable
    purple = jpeg_bytes(coloured_photo((140, 30, 160), 4, size=64))
    items = [
        {"sku": "purple-1", "title": "Purple", "category_path": ["Paint", "purple"], "images": [b64(purple)]},
        {"sku": "purple-2", "images": ["data:image/jpeg;base64," + b64(photo_of("red", 31))]},
        {"sku": "bad-b64", "images": ["%%% not base64"]},
        {"sku": "not-image", "images": [b64(b"plain text")]},
        {"sku": "a/b", "images": [b64(purple)]},
        {"sku": "purple-1", "title": "again", "images": [b64(purple)]},
        {"sku": "red-0", "title": "Changed", "images": [b64(photo_of("red", 32))]},
    ]
    submitted = c.post("/v1/products/import", json={"products": items}, headers=WRITE)
    assert submitted.status_code == 202, submitted.text
    status = wait_for_job(c, submitted.json()["status_url"], headers=WRITE)
    assert status["status"] == "succeeded" and status["progress"] == {"done": 7, "total": 7}
    # The job is the submitting key's: another key, or none, finds no such job (nor can cancel it).
    assert_json_error(c.get(submitted.json()["status_url"]), 404, "job_not_found")
    other = {"X-API-Key": new_key()}
    assert_json_error(c.get(submitted.json()["status_url"], headers=other), 404, "job_not_found")
    result = status["result"]
    assert (result["added"], result["updated"], result["unchanged"]) == (2, 0, 0)
    reasons = {r["index"]: r["reason"] for r in result["rejected"]}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "base64" in reasons[2] and "not an image" in reasons[3] and "invalid SKU" in reasons[4]
    assert "repeated" in reasons[5] and "different data" in reasons[6]  # on_conflict defaults to error
    assert search(c, purple, params={"top_k": 1}).json()["products"][0]["sku"] == "purple-1"
    assert len(media_files(c.media_dir)) == 2  # rejected items left no files behind

    again = c.post(
        "/v1/products/import",
        headers=WRITE,
        json={
            "on_conflict": "update",
            "products": [{"sku": "red-0", "title": "Changed", "images": [b64(photo_of("red", 32))]}, items[0]],
        },
    )
    result = wait_for_job(c, again.json()["status_url"], headers=WRITE)["result"]
    assert (result["added"], result["updated"], result["unchanged"], result["rejected"]) == (0, 1, 1, [])
    assert c.get("/v1/products/red-0").json()["title"] == "Changed"


def test_bad_imports_are_4xx_json(writable, recognizer, shop_db, tmp_path):
    c = writable
    assert_json_error(
        c.post("/v1/products/import", headers=WRITE, files={"f": ("a.csv", b"sku\n", "text/csv")}),
        415,
        "unsupported_media_type",
    )
    assert_json_error(
        c.post("/v1/products/import", headers={**WRITE, "content-type": "application/json"}, content=b"{oops"),
        422,
        "invalid_product",
    )
    assert_json_error(c.post("/v1/products/import", headers=WRITE, json={"products": []}), 422, "invalid_product")
    assert_json_error(
        c.post("/v1/products/import", headers=WRITE, json={"products": [{"sku": "x"}]}), 422, "invalid_product"
    )
    assert_json_error(
        c.post(
            "/v1/products/import",
            headers=WRITE,
            json={"products": [{"sku": "x", "images": ["AA=="]}], "on_conflict": "merge"},
        ),
        422,
        "invalid_product",
    )
    with serving(recognizer, shop_db, api_key_hashes=KEYS, max_bulk_bytes=10_000, media_dir=tmp_path) as small:
        big = {"products": [{"sku": "x", "images": [b64(noise_jpeg(400))]}]}
        assert_json_error(small.post("/v1/products/import", headers=WRITE, json=big), 413, "upload_too_large")


def test_media_store_names_by_hash_and_strips_metadata(tmp_path):
    store = FolderMedia(tmp_path / "media", max_side=50)
    image = Image.open(io.BytesIO(exif_photo()))
    encoded = store.encode("sku-1", image)
    assert encoded.name.endswith(".jpg") and "sku" not in encoded.name
    path, new = store.write(encoded)
    assert new and path.read_bytes() == encoded.data and max(Image.open(path).size) == 50
    assert store.write(encoded) == (path, False)
    # the same photo for another product is another file, so deleting one never breaks the other
    assert store.encode("sku-2", image).name != encoded.name
    store.discard([path, tmp_path / "elsewhere.jpg"])
    assert not path.exists() and not path.parent.exists()
    assert not store.owns(tmp_path / "media" / ".." / "x.jpg")


# --- Grad-CAM ------------------------------------------------------------------------------------------------


def test_explain_returns_the_heat_map_over_the_photo(client):
    assert client.get("/v1/info").json()["explain"] is True
    response = client.post("/v1/explain", files={"image": ("p.jpg", photo_of("red"), "image/jpeg")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and response.headers["cache-control"] == "no-store"
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.format == "PNG" and overlay.size == (256, 256)  # small photos are scaled up to be seen
    assert (
        client.post(
            "/v1/explain", params={"label": "blue"}, files={"image": ("p.jpg", photo_of("red"), "image/jpeg")}
        ).status_code
        == 200
    )
    assert_json_error(client.post("/v1/explain", files={"image": ("p.jpg", b"nope", "image/jpeg")}), 422, "bad_image")
    error = client.post(
        "/v1/explain", params={"label": "purple"}, files={"image": ("p.jpg", photo_of("red"), "image/jpeg")}
    )
    assert 400 <= error.status_code < 500 and "purple" in error.json()["error"]["message"]


def test_explain_is_unavailable_without_pytorch_weights():
    from tests.test_serving import SlowRecognizer

    with serving(SlowRecognizer(), None, warmup=False) as c:
        assert c.get("/v1/info").json()["explain"] is False
        assert_json_error(
            c.post("/v1/explain", files={"image": ("p.jpg", photo_of("red"), "image/jpeg")}), 501, "explain_unavailable"
        )


# --- skulens serve: catalog and demo settings ---------------------------------------------------------------


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_serve_with_a_run_and_a_catalog(trained_run, shop_db, tmp_path, monkeypatch):
    config = config_from_args(
        serve_args(
            str(trained_run[0]), "--catalog", str(shop_db), "--media-dir", str(tmp_path / "m"), "--products-k", "2"
        )
    )
    assert (config.catalog_db, config.catalog_run, config.media_dir) == (str(shop_db), trained_run[0], tmp_path / "m")
    with TestClient(create_app(config)) as c:
        assert c.get("/healthz").json()["catalog"] is True
        assert len(search(c, photo_of("green")).json()["products"]) == 2
    assert config_from_args(serve_args(str(trained_run[0]))).catalog_db is None  # a run alone: no catalog
    with pytest.raises(SkulensError, match="contradict"):
        config_from_args(serve_args("--catalog", str(shop_db), "--no-catalog"))


def write_demo_products(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    with (folder / "products.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "image", "title", "department", "coarse", "fine", "description"])
        for c, (name, colour) in enumerate(COLOURS.items()):
            coloured_photo(colour, 8000 + c).save(folder / "images" / f"{name}.jpg")
            writer.writerow([f"demo-{name}", f"images/{name}.jpg", f"Demo {name}", "Paint", "Bright", name, "a colour"])
    return folder


def test_serve_without_arguments_builds_the_demo_catalog_once(trained_run, tmp_path, monkeypatch, capsys):
    products = write_demo_products(tmp_path / "demo")
    monkeypatch.setattr(serving_config, "demo_run_dir", lambda: trained_run[0])
    monkeypatch.setattr(serving_config, "demo_catalog_dir", lambda: products)
    monkeypatch.setenv("SKULENS_CACHE_DIR", str(tmp_path / "cache"))
    config = config_from_args(serve_args())
    catalog = config.catalog
    assert len(catalog) == 3 and catalog.get("demo-red").category_path == ["Paint", "Bright", "red"]
    assert Path(catalog.url.removeprefix("sqlite:///")).parent == tmp_path / "cache"
    seq = catalog.info()["log_seq"]
    catalog.close()
    again = config_from_args(serve_args()).catalog  # a restart embeds nothing: every product is unchanged
    assert again.url == catalog.url and again.info()["log_seq"] == seq
    with TestClient(create_app(ServeConfig(run_dir=trained_run[0], catalog=again, warmup=False))) as c:
        assert search(c, photo_of("blue")).json()["products"][0]["sku"] == "demo-blue"
    assert config_from_args(serve_args("--no-catalog")).catalog is None
    assert "built-in demo model" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    serving_config.demo_run_dir() is None or serving_config.demo_catalog_dir() is None,
    reason="this checkout has no demo assets (src/skulens/demo_assets)",
)
def test_skulens_serve_without_arguments_serves_the_demo():
    """The README's first command, as a real process. The demo catalog's database is a cache kept in
    test-artifacts/, so only the first run pays for embedding the demo photos (the cold import is
    tested in-process above, with a small catalog)."""
    port = free_port()
    env = {**os.environ, "SKULENS_CACHE_DIR": str(ARTIFACTS / "demo-cache")}
    proc = start_cli("serve", "--port", port, "--log-level", "warning", env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, timeout=240, interval=0.3)
        assert httpx.get(f"{base}/healthz").json()["catalog"] is True
        photo = (serving_config.demo_catalog_dir() / "images" / "Granny-Smith.jpg").read_bytes()
        found = httpx.post(f"{base}/v1/search", files={"image": ("p.jpg", photo, "image/jpeg")}, timeout=60).json()
        assert found["products"][0]["sku"] == "Granny-Smith"
        assert httpx.get(f"{base}/v1/products/Granny-Smith/image").headers["content-type"] == "image/jpeg"
    finally:
        out = stop(proc)
    assert "Traceback" not in out


def test_readyz_says_ready_and_why_not(writable, tmp_path):
    import sqlite3

    ready = writable.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "reason": None,
        "checks": {"model": "ok", "database": "ok", "schema": "ok", "index": "ok"},
    }
    db = next((tmp_path / "shop").glob("*.db"))
    with sqlite3.connect(db) as conn:  # as if the schema had been changed under the running server
        conn.execute("UPDATE alembic_version SET version_num = '0001'")
    not_ready = writable.get("/readyz")
    assert not_ready.status_code == 503
    body = not_ready.json()
    assert body["status"] == "not ready" and body["checks"]["schema"] == (
        f"catalog schema revision 0001 is older than this skulens needs ({head_revision()}): "
        f"run `skulens catalog upgrade {db}`"
    )
    assert body["reason"] == f"schema: {body['checks']['schema']}"
    assert writable.get("/healthz").status_code == 200  # liveness is another question


def test_readyz_without_a_catalog_checks_the_model(recognizer):
    with serving(recognizer, None) as c:
        assert c.get("/readyz").json() == {"status": "ready", "reason": None, "checks": {"model": "ok"}}


# --- a fleet: servers sharing one catalog database -----------------------------------------------------------


def test_two_servers_share_product_photos_and_jobs_through_the_database(recognizer, embedder, trained_run, tmp_path):
    """No media folder: a photo uploaded to server A is in the database, so server B serves it; an import
    submitted to A is answered for by B; a product removed on B takes its photo with it."""
    import sqlite3

    db = make_shop(tmp_path / "shop", embedder)
    with (
        serving(recognizer, db, trained_run[0], api_key_hashes=KEYS, warmup=False) as a,
        serving(recognizer, db, trained_run[0], api_key_hashes=KEYS, warmup=False) as b,
    ):
        photo = photo_of("blue", 41)
        assert create(a, "blue-new", [photo]).status_code == 201
        served = b.get("/v1/products/blue-new/image")
        assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
        assert served.content == a.get("/v1/products/blue-new/image").content
        assert not list(tmp_path.rglob("*.media"))  # no per-host folder was made

        items = [{"sku": f"teal-{i}", "images": [b64(photo_of("green", 50 + i))]} for i in range(3)]
        submitted = a.post("/v1/products/import", json={"products": items}, headers=WRITE)
        job = wait_for_job(b, submitted.json()["status_url"], headers=WRITE)
        assert job["status"] == "succeeded" and job["result"]["added"] == 3
        assert b.get("/v1/products/teal-2/image").status_code == 200

        assert b.delete("/v1/products/blue-new", headers=WRITE).status_code == 200
        assert_json_error(a.get("/v1/products/blue-new/image"), 404, "product_not_found")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM media").fetchone() == (3,)  # the three teal photos only
        assert conn.execute("SELECT count(*) FROM job_inputs").fetchone() == (0,)  # inputs go with the job


# --- text search ----------------------------------------------------------------------------------------------


def test_text_search_over_http_and_its_bad_queries(client):
    found = client.get("/v1/search", params={"q": "green paint", "top_k": 2, "mode": "lexical"})
    assert found.status_code == 200, found.text
    assert {p["sku"] for p in found.json()["products"]} == {"green-0", "green-1"}
    assert (
        client.get("/v1/search", params={"q": "paint", "attribute": "colour=blue"}).json()["products"][0]["sku"][:4]
        == "blue"
    )
    for params, code in [
        ({"q": ""}, "invalid_query"),
        ({"q": "   "}, "invalid_query"),
        ({"q": "the of and"}, "invalid_query"),
        ({"q": "x" * 600}, "invalid_query"),
        ({"q": "x" * 10_000}, "invalid_request"),
        ({"q": "paint", "mode": "telepathic"}, "invalid_request"),
        ({"q": "paint", "attribute": "colour=Bluish"}, "invalid_query"),
        ({"q": "paint", "top_k": 0}, "invalid_request"),
    ]:
        assert_json_error(client.get("/v1/search", params=params), 422, code)
    assert_json_error(client.get("/v1/search"), 422, "invalid_request")  # no q at all
    other_script = client.get("/v1/search", params={"q": "运动鞋"})
    assert other_script.status_code == 200  # answered: nothing shares its words, the sentence model may still guess


def test_a_photo_refined_by_words_over_http(client):
    red = photo_of("red", 77)
    plain = search(client, red, params={"top_k": 3}).json()["products"]
    assert plain[0]["sku"].startswith("red")
    refined = client.post(
        "/v1/search", files={"image": ("p.jpg", red, "image/jpeg")}, data={"q": "in blue", "top_k": "3"}
    ).json()["products"]
    assert refined[0]["sku"].startswith("blue") and refined[1]["sku"].startswith("blue")
