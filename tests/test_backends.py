"""Index backends (FAISS, Milvus) give the same answers; a catalog on PostgreSQL is shared by processes.

Milvus runs as milvus-lite: a local folder (one process) or its gRPC server (shared, like a Milvus
server). The PostgreSQL tests need a server: ``SKULENS_TEST_POSTGRES_URL`` (``bash .ci/run`` starts
one and sets it); without it they are skipped with the reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from skulens.catalog import Catalog, Embedder, Product
from skulens.errors import SkulensError
from tests.conftest import COLOURS, coloured_photo
from tests.helpers import ROOT, drop_every_table, free_port, start_cli, stop, subprocess_env, wait_healthy

pytestmark = pytest.mark.services
pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus (pip install 'skulens[scale]')")
PG_ENV = "SKULENS_TEST_POSTGRES_URL"


@pytest.fixture(scope="module")
def embedder(trained_run) -> Embedder:
    return Embedder.from_run(trained_run[0], device="cpu")


def _products(folder: Path, per_colour: int = 4, seed: int = 700) -> list[Product]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(per_colour):
            path = folder / f"{name}_{i}.jpg"
            coloured_photo(colour, seed + 100 * c + i).save(path)
            extra = folder / f"{name}_{i}_shelf.jpg"
            coloured_photo(colour, seed + 5000 + 100 * c + i).save(extra)
            out.append(
                Product(
                    sku=f"{name}-{i}",
                    title=f"{name} {i}",
                    category_path=["Paint", name],
                    images=[str(path)],
                    gallery_images=[str(extra)],
                )
            )
    return out


def _queries(folder: Path, n: int = 4) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for c, colour in enumerate(COLOURS.values()):
        for i in range(n):
            path = folder / f"q{c}_{i}.jpg"
            coloured_photo(colour, 9000 + 10 * c + i).save(path)
            paths.append(path)
    return paths


def _ranking(hits) -> list[tuple[str, float]]:
    return [(h.sku, round(h.score, 4)) for h in hits]


def test_milvus_gives_the_same_results_as_faiss(tmp_path, embedder):
    db = tmp_path / "shop.db"
    with Catalog.open(db, embedder) as faiss_catalog:
        result = faiss_catalog.upsert(_products(tmp_path / "img"))
        assert len(result.added) == 12
        with Catalog.open(db, embedder, index_backend="milvus", milvus_uri=str(tmp_path / "milvus.db")) as milvus:
            assert milvus.info()["index_backend"] == "milvus" and milvus.index().state.ntotal == 24
            vectors = embedder.embed([str(q) for q in _queries(tmp_path / "q")])
            for vector in vectors:
                a = faiss_catalog.search_vectors(vector[None], top_k=5)
                b = milvus.search_vectors(vector[None], top_k=5)
                assert [h.sku for h in a] == [h.sku for h in b]
                np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
                # the category filter runs inside each index, so both fill the top k from that category
                a = faiss_catalog.search_vectors(vector[None], top_k=3, category=["Paint", "blue"])
                b = milvus.search_vectors(vector[None], top_k=3, category=["Paint", "blue"])
                assert _ranking(a) == _ranking(b) and {h.sku.split("-")[0] for h in b} == {"blue"}
            assert [h.sku for h in faiss_catalog.similar("red-1", 4)] == [h.sku for h in milvus.similar("red-1", 4)]


def test_milvus_follows_every_write_and_recovers_a_lost_collection(tmp_path, embedder):
    db, uri = tmp_path / "shop.db", str(tmp_path / "milvus.db")
    products = _products(tmp_path / "img", per_colour=2)
    blue = coloured_photo(COLOURS["blue"], 4242)
    with Catalog.open(db, embedder, index_backend="milvus", milvus_uri=uri) as catalog:
        catalog.upsert([p for p in products if not p.sku.startswith("blue")])
        assert catalog.index().state.ntotal == 8
        assert not catalog.search(blue, top_k=1)[0].sku.startswith("blue")
        # a write by a FAISS-backed process on the same database reaches Milvus through the log
        with Catalog.open(db, embedder) as other:
            other.upsert([p for p in products if p.sku.startswith("blue")])
            other.remove(["red-0"])
        assert catalog.search(blue, top_k=1)[0].sku.startswith("blue")
        assert catalog.index().state.ntotal == 10 and catalog.get("red-0") is None
        rebuilt = catalog.rebuild_index("ivf", nprobe=4)
        assert (rebuilt.state.kind, rebuilt.state.ntotal) == ("flat", 10)  # too few vectors for IVF cells
        catalog.backend.client.drop_collection(catalog.backend.collection_name())  # e.g. a new, empty Milvus
    # a server started now finds the collection gone and rebuilds it from the database
    with Catalog.open(db, embedder, index_backend="milvus", milvus_uri=uri) as again:
        assert again.index().state.ntotal == 10 and again.search(blue, top_k=1)[0].sku.startswith("blue")
        log_seq = again.index().state.log_seq
    # reopened: the collection and its log position are reused
    with Catalog.open(db, embedder, index_backend="milvus", milvus_uri=uri) as third:
        assert third.index().state.log_seq == log_seq and third.search(blue, top_k=1)[0].sku.startswith("blue")


def test_backend_errors_are_one_line(tmp_path, embedder):
    with pytest.raises(SkulensError, match="index backend must be one of faiss, milvus"):
        Catalog.open(tmp_path / "a.db", embedder, index_backend="annoy")
    os.environ.pop("SKULENS_MILVUS_URI", None)
    with pytest.raises(SkulensError, match="needs a Milvus URI"):
        Catalog.open(tmp_path / "a.db", embedder, index_backend="milvus")
    with pytest.raises(SkulensError, match="ending in .db"):
        Catalog.open(tmp_path / "a.db", embedder, index_backend="milvus", milvus_uri=str(tmp_path / "m"))
    with pytest.raises(SkulensError, match="does not exist"):
        Catalog.open(tmp_path / "a.db", embedder, index_backend="milvus", milvus_uri=str(tmp_path / "no" / "m.db"))
    with pytest.raises(SkulensError, match="cannot connect to Milvus at http://127.0.0.1:9") as caught:
        Catalog.open(tmp_path / "a.db", embedder, index_backend="milvus", milvus_uri="http://127.0.0.1:9")
    assert "\n" not in str(caught.value)


def test_cli_flags_choose_the_backend(tmp_path, trained_run, capsys):
    from skulens.cli import main

    run, data = trained_run
    common = [
        "--db",
        str(tmp_path / "shop.db"),
        "--run",
        str(run),
        "--device",
        "cpu",
        "--index-backend",
        "milvus",
        "--milvus-uri",
        str(tmp_path / "milvus.db"),
    ]
    assert main(["catalog", "import", str(data), "--gallery-split", "val", "--no-progress", *common]) == 0
    capsys.readouterr()
    assert main(["catalog", "info", *common]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["index_backend"] == "milvus" and info["index"]["vectors"] == info["images"] > 0
    photo = next((data / "test" / "green").glob("*.jpg"))
    assert main(["search", str(photo), "--top-k", "1", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out)[0]["products"][0]["sku"] == "green"


# -- PostgreSQL --------------------------------------------------------------------------------------
def _postgres_url() -> str:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL to test against (bash .ci/run starts one and sets it)")
    from sqlalchemy import create_engine, make_url, text

    try:
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any reason the server is not usable
        shown = make_url(url).render_as_string(hide_password=True)
        pytest.skip(f"PostgreSQL at {shown} is not reachable: {str(exc).splitlines()[0][:150]}")
    engine.dispose()
    drop_every_table(url)  # a clean catalog for each test
    return url


@pytest.fixture
def postgres_url():
    url = _postgres_url()
    yield url
    drop_every_table(url)


@pytest.fixture
def milvus_server(tmp_path):
    """milvus-lite's gRPC server: one Milvus that several processes share, as in production."""
    from milvus_lite.adapter.grpc.server import start_server_in_thread

    server, db, port = start_server_in_thread(str(tmp_path / "milvus-server"))
    yield f"http://127.0.0.1:{port}"
    server.stop(grace=1)
    db.close()


def test_postgres_catalog_processes_follow_each_other(tmp_path, embedder, postgres_url):
    """Two catalogs on one PostgreSQL database, each with its own FAISS cache (as two servers on two
    machines would have): a write through one is searchable through the other."""
    products = _products(tmp_path / "img", per_colour=2)
    blue = coloured_photo(COLOURS["blue"], 4242)
    with (
        Catalog.open(postgres_url, embedder, index_dir=tmp_path / "a") as writer,
        Catalog.open(postgres_url, embedder, index_dir=tmp_path / "b") as reader,
    ):
        writer.upsert([p for p in products if not p.sku.startswith("blue")])
        assert reader.index().state.ntotal == 8 and not reader.search(blue, top_k=1)[0].sku.startswith("blue")
        writer.upsert([p for p in products if p.sku.startswith("blue")])
        found = reader.search(blue, top_k=1)[0].sku
        assert found.startswith("blue")
        writer.remove([found])
        assert found not in [h.sku for h in reader.search(blue, top_k=3)] and reader.index().state.ntotal == 10
        # attribute filters are JSON lookups in the database: the same answers on PostgreSQL as on SQLite
        writer.upsert(
            [
                Product(
                    "blue-large",
                    "blue L",
                    ["Paint", "blue"],
                    {"colour": "blue", "size": "L"},
                    images=[str(tmp_path / "img" / "blue_1.jpg")],
                )
            ]
        )
        assert [h.sku for h in reader.search(blue, top_k=3, attributes={"size": "L"})] == ["blue-large"]
        assert reader.search(blue, top_k=3, attributes={"size": "S"}) == []


def test_two_serve_processes_share_postgres_and_milvus(
    tmp_path, trained_run, embedder, postgres_url, milvus_server, monkeypatch
):
    """`skulens serve` twice on one PostgreSQL + Milvus: one in this process, one a real subprocess.
    A product added through either is found by the other's search; a removal, likewise."""
    import httpx
    from fastapi.testclient import TestClient

    from skulens.recognition.recognizer import Recognizer
    from skulens.serving import ServeConfig, create_app
    from skulens.serving.security import hash_key, new_key
    from tests.conftest import jpeg_bytes

    monkeypatch.setenv("SKULENS_INDEX_BACKEND", "milvus")  # the backend is configuration, for serve too
    monkeypatch.setenv("SKULENS_MILVUS_URI", milvus_server)
    run = trained_run[0]
    with Catalog.open(postgres_url, embedder) as seed:  # the catalog exists, with its model, before either starts
        seed.upsert([p for p in _products(tmp_path / "img", per_colour=1) if not p.sku.startswith("blue")])
    key = new_key()
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{hash_key(key)}  test\n")
    port = free_port()
    other = start_cli(
        "serve",
        run,
        "--catalog",
        postgres_url,
        "--port",
        port,
        "--api-keys-file",
        keys,
        "--media-dir",
        tmp_path / "media",
        "--log-level",
        "warning",
        env=subprocess_env(),
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    blue = jpeg_bytes(coloured_photo(COLOURS["blue"], 4343, size=64), quality=92)
    product = json.dumps({"sku": "blue-new", "title": "Blue", "category_path": ["Paint", "blue"]})

    def top(search) -> str | None:
        products = search.json()["products"]
        return products[0]["sku"] if products else None

    config = ServeConfig(
        recognizer=Recognizer.load(run),
        catalog_db=postgres_url,
        catalog_run=run,
        api_key_hashes=frozenset({hash_key(key)}),
        media_dir=tmp_path / "media",
        warmup=False,
    )
    try:
        with TestClient(create_app(config), raise_server_exceptions=False) as here:
            wait_healthy(base, other, timeout=240, interval=0.4)
            created = here.post(
                "/v1/products",
                headers={"X-API-Key": key},
                files=[("product", (None, product)), ("images", ("b.jpg", blue, "image/jpeg"))],
            )
            assert created.status_code == 201, created.text
            found = httpx.post(f"{base}/v1/search", files={"image": ("q.jpg", blue, "image/jpeg")}, timeout=60)
            assert found.status_code == 200 and top(found) == "blue-new", found.text
            assert httpx.get(f"{base}/v1/products/blue-new").status_code == 200
            removed = httpx.delete(f"{base}/v1/products/blue-new", headers={"X-API-Key": key}, timeout=60)
            assert removed.status_code == 200, removed.text
            assert here.get("/v1/products/blue-new").status_code == 404
            assert top(here.post("/v1/search", files={"image": ("q.jpg", blue, "image/jpeg")})) != "blue-new"
            from pymilvus import MilvusClient

            shared = MilvusClient(uri=milvus_server).list_collections()
            assert [c for c in shared if c.startswith("skulens_")], shared  # the searches went through Milvus
    finally:
        out = stop(other, timeout=30)
    assert "Traceback" not in out, out[-3000:]
