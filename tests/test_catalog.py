"""Catalog + visual search: imports, incremental updates, crash safety, model identity, search quality."""

from __future__ import annotations

import csv
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from skulens.catalog import Catalog, CsvMapping, Embedder, Product, import_products, read_products_csv
from skulens.catalog.index import VectorIndex
from skulens.catalog.search_eval import Query, average_precision, evaluate_search
from skulens.errors import SkulensError
from tests.conftest import COLOURS, coloured_photo
from tests.helpers import run_cli, skulens_command, subprocess_env


@pytest.fixture(scope="module")
def embedder(trained_run) -> Embedder:
    return Embedder.from_run(trained_run[0], device="cpu")


def _photos(folder: Path, n_per_colour: int, seed: int = 500) -> dict[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {}
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(n_per_colour):
            path = folder / f"{name}_{i}.jpg"
            coloured_photo(colour, seed + 100 * c + i).save(path)
            out.setdefault(name, []).append(path)
    return out


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["sku", "image", "title", "dept", "kind", "colour"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def shop(tmp_path: Path) -> tuple[Path, dict[str, list[Path]]]:
    photos = _photos(tmp_path / "img", 3)
    rows = [
        {
            "sku": f"{name}-{i}",
            "image": f"img/{p.name}",
            "title": f"{name} thing {i}",
            "dept": "Paint" if name != "blue" else "Ink",
            "kind": name,
            "colour": name,
        }
        for name, paths in photos.items()
        for i, p in enumerate(paths)
    ]
    return _write_csv(tmp_path / "products.csv", rows), photos


MAPPING = CsvMapping(tree=["dept", "kind"])


def test_import_is_idempotent_and_searchable(tmp_path, shop, embedder):
    csv_path, photos = shop
    with Catalog.open(tmp_path / "shop.db", embedder) as catalog:
        rows, bad = read_products_csv(csv_path, MAPPING)
        assert bad == []
        first = import_products(catalog, rows, progress=False)
        assert (first.added, first.unchanged, first.rejected) == (9, 0, [])
        again = import_products(catalog, rows, progress=False)
        assert (again.added, again.updated, again.unchanged) == (0, 0, 9)
        assert len(catalog) == 9 and catalog.index().state.ntotal == 9
        product = catalog.get("red-1")
        assert product.category_path == ["Paint", "red"] and product.attributes == {"colour": "red"}
        hits = catalog.search(photos["red"][1], top_k=3)
        assert hits[0].sku == "red-1" and hits[0].score == pytest.approx(1.0, abs=1e-4)
        # a photo of the same colour the catalog has never seen still finds that colour first
        fresh = tmp_path / "fresh.jpg"
        coloured_photo(COLOURS["blue"], 9999).save(fresh)
        assert catalog.search(fresh, top_k=1)[0].sku.startswith("blue")
        tree = catalog.category_tree()
        assert tree["count"] == 9
        assert {c["name"]: c["count"] for c in tree["children"]} == {"Paint": 6, "Ink": 3}


@pytest.mark.slow
def test_bad_rows_are_reported_and_the_rest_imported(tmp_path, shop, embedder):
    csv_path, photos = shop
    (tmp_path / "img" / "broken.jpg").write_text("<html>not an image</html>")
    rows = list(csv.DictReader(csv_path.open()))
    rows += [
        {"sku": "ghost", "image": "img/missing.jpg", "title": "", "dept": "Paint", "kind": "red", "colour": ""},
        {"sku": "broken", "image": "img/broken.jpg", "title": "", "dept": "Paint", "kind": "red", "colour": ""},
        {
            "sku": "red-0",
            "image": "img/red_0.jpg",
            "title": "another title",
            "dept": "Paint",
            "kind": "red",
            "colour": "red",
        },
        {"sku": "", "image": "img/red_0.jpg", "title": "", "dept": "", "kind": "", "colour": ""},
        {"sku": "escape", "image": "../etc/passwd", "title": "", "dept": "", "kind": "", "colour": ""},
    ]
    bad_csv = _write_csv(tmp_path / "bad.csv", rows)
    db = tmp_path / "shop.db"
    proc = run_cli(
        "catalog",
        "import",
        bad_csv,
        "--db",
        db,
        "--run",
        embedder.source["run"],
        "--tree-columns",
        "dept,kind",
        "--no-progress",
    )
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("skulens: row")]
    assert len(errors) == 5
    assert any(line.startswith("skulens: row 11 (ghost)") and "not found" in line for line in errors)
    assert any(line.startswith("skulens: row 12 (broken)") for line in errors)
    assert any(line.startswith("skulens: row 13 (red-0)") and "duplicate SKU" in line for line in errors)
    assert any("row 14" in line and "empty SKU" in line for line in errors)
    assert any("row 15" in line and "leaves" in line for line in errors)
    assert "imported 9 new" in proc.stdout
    with Catalog.open(db, embedder) as catalog:
        assert len(catalog) == 9 and catalog.get("red-0").title == "red thing 0"


def test_incremental_add_remove_update_are_visible_at_once(tmp_path, shop, embedder):
    csv_path, photos = shop
    db = tmp_path / "shop.db"
    with Catalog.open(db, embedder) as catalog:
        import_products(catalog, read_products_csv(csv_path, MAPPING)[0], progress=False)
        new_photo = tmp_path / "new.jpg"
        coloured_photo((240, 240, 20), 77).save(new_photo)  # yellow: nothing like it in the catalog
        catalog.upsert([Product("yellow-1", "Yellow", ["Paint", "yellow"], images=[str(new_photo)])])
        assert catalog.search(new_photo, top_k=1)[0].sku == "yellow-1"
        assert sorted(catalog.remove(["yellow-1", "red-0", "never-there"])) == ["red-0", "yellow-1"]
        skus = [h.sku for h in catalog.search(new_photo, top_k=20)]
        assert "yellow-1" not in skus and "red-0" not in skus and len(skus) == 8
        # update: the product's image changes, its vector follows
        catalog.upsert(
            [Product("blue-0", "now green", ["Ink", "blue"], images=[str(photos["green"][0])])], on_conflict="update"
        )
        top = catalog.search(photos["green"][0], top_k=2)
        assert {h.sku for h in top} == {"blue-0", "green-0"}
        assert catalog.index().state.ntotal == 8
    # a new process (fresh Catalog) sees the same state, from the saved index or the log
    with Catalog.open(db, embedder) as reopened:
        assert reopened.index().state.ntotal == 8
        assert reopened.search(new_photo, top_k=20)[0].sku != "yellow-1"


def test_a_second_instance_sees_writes_of_the_first(tmp_path, shop, embedder):
    csv_path, photos = shop
    db = tmp_path / "shop.db"
    writer, reader = Catalog.open(db, embedder), Catalog.open(db, embedder)
    import_products(writer, read_products_csv(csv_path, MAPPING)[0][:3], progress=False)
    assert reader.index().state.ntotal == 3
    writer.remove(["red-0"])
    assert reader.index().state.ntotal == 2 and "red-0" not in [h.sku for h in reader.search(photos["red"][0], 5)]
    writer.close()
    reader.close()


@pytest.mark.slow
def test_kill_during_import_then_restart_agrees(tmp_path, embedder):
    photos = _photos(tmp_path / "img", 40)
    rows = [
        {"sku": f"{name}-{i}", "image": f"img/{p.name}", "title": name, "dept": "D", "kind": name, "colour": name}
        for name, paths in photos.items()
        for i, p in enumerate(paths)
    ]
    csv_path = _write_csv(tmp_path / "big.csv", rows)
    db = tmp_path / "shop.db"
    args = [
        "catalog",
        "import",
        csv_path,
        "--db",
        db,
        "--run",
        embedder.source["run"],
        "--tree-columns",
        "dept,kind",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        skulens_command(*args, "--chunk-size", "2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(),
    )
    committed = 0
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(db, timeout=1) as conn:
                committed = conn.execute("select count(*) from products").fetchone()[0]
        except sqlite3.Error:
            committed = 0
        if committed >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    with Catalog.open(db, embedder) as catalog:
        n = len(catalog)
        assert 6 <= n < 120
        import faiss

        index_ids = set(faiss.vector_to_array(catalog.index().index.id_map).tolist())
        with sqlite3.connect(db) as conn:
            db_ids = {r[0] for r in conn.execute("select id from images where vector is not null")}
        assert index_ids == db_ids
    # re-running the import finishes the job without duplicating what was already there
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    assert f"imported {120 - n} new" in done.stdout and f"{n} unchanged" in done.stdout
    with Catalog.open(db, embedder) as catalog:
        assert len(catalog) == 120 and catalog.index().state.ntotal == 120


def test_torn_index_file_is_rebuilt_from_the_database(tmp_path, shop, embedder):
    csv_path, photos = shop
    db = tmp_path / "shop.db"
    with Catalog.open(db, embedder) as catalog:
        import_products(catalog, read_products_csv(csv_path, MAPPING)[0], progress=False)
    folder = next(Path(str(db) + ".index").rglob("state.json")).parent
    index_file = folder / json.loads((folder / "state.json").read_text())["file"]
    for torn in (b"\0" * 100, b"\0" * index_file.stat().st_size):  # cut short; same size, garbage
        index_file.write_bytes(torn)
        with Catalog.open(db, embedder) as catalog:
            assert catalog.index().state.ntotal == 9
            assert catalog.search(photos["red"][2], top_k=1)[0].sku == "red-2"
        index_file = folder / json.loads((folder / "state.json").read_text())["file"]


def test_another_model_is_refused(tmp_path, shop, embedder):
    csv_path, _ = shop
    db = tmp_path / "shop.db"
    with Catalog.open(db, embedder) as catalog:
        import_products(catalog, read_products_csv(csv_path, MAPPING)[0][:2], progress=False)
    other = Embedder.pretrained("efficientnet_lite0", img_size=64, device="cpu")
    with pytest.raises(SkulensError, match="cannot search it"):
        Catalog.open(db, other)
    # the recorded model is picked up when none is named
    with Catalog.open_with_model(db, device="cpu") as catalog:
        assert catalog.embedder.model_id == embedder.model_id


def test_similar_leaves_out_itself_and_duplicates_and_filters_category(tmp_path, shop, embedder):
    csv_path, photos = shop
    with Catalog.open(tmp_path / "shop.db", embedder) as catalog:
        import_products(catalog, read_products_csv(csv_path, MAPPING)[0], progress=False)
        catalog.upsert([Product("red-copy", "same photo as red-0", ["Paint", "red"], images=[str(photos["red"][0])])])
        hits = catalog.similar("red-0", top_k=5)
        similar = [h.sku for h in hits]
        assert len(similar) == 5 and "red-0" not in similar and "red-copy" not in similar
        assert all(h.score < 0.995 for h in hits)
        # the category tree first: levels shared with red-0 never increase down the list, and within a
        # level the order is by look
        path = catalog.get("red-0").category_path
        shared = [sum(1 for a, b in zip(h.category_path, path) if a == b) for h in hits]
        assert shared == sorted(shared, reverse=True)
        for level in set(shared):
            scores = [h.score for h, s in zip(hits, shared) if s == level]
            assert scores == sorted(scores, reverse=True)
        by_look = catalog.similar("red-0", top_k=5, tree=False)
        assert [h.score for h in by_look] == sorted((h.score for h in by_look), reverse=True)
        assert {h.category_path[0] for h in catalog.similar("red-0", top_k=5, same_category=True)} == {"Paint"}
        only_ink = catalog.search(photos["red"][0], top_k=5, category=["Ink"])
        assert only_ink and all(h.category_path[0] == "Ink" for h in only_ink)
        with pytest.raises(SkulensError, match="unknown SKU"):
            catalog.similar("nope")


def test_search_filters_on_attribute_values(tmp_path, shop, embedder):
    from skulens.cli.catalog import _attributes

    _, photos = shop
    with Catalog.open(tmp_path / "shop.db", embedder) as catalog:
        catalog.upsert(
            [
                Product(
                    f"{name}-{size}",
                    f"{name} {size}",
                    ["Paint", name],
                    {"colour": name, "size": size},
                    images=[str(photos[name][i])],
                )
                for name in ("red", "blue")
                for i, size in enumerate(("S", "L"))
            ]
        )
        query = photos["red"][0]
        assert {h.sku for h in catalog.search(query, top_k=5, attributes={"colour": "blue"})} == {"blue-S", "blue-L"}
        assert [h.sku for h in catalog.search(query, top_k=5, attributes={"colour": "blue", "size": "L"})] == ["blue-L"]
        assert [h.sku for h in catalog.search(query, top_k=5, category=["Paint", "red"], attributes={"size": "S"})] == [
            "red-S"
        ]
        assert catalog.search(query, top_k=5, attributes={"colour": "green"}) == []
        assert catalog.search(query, top_k=5, attributes={"material": "oak"}) == []
        assert len(catalog.search(query, top_k=5, attributes={})) == 4
    assert _attributes(["colour=Navy Blue", " size = L "]) == {"colour": "Navy Blue", "size": "L"}
    with pytest.raises(SkulensError, match="NAME=VALUE"):
        _attributes(["colour"])


def test_ivf_index_add_remove_and_recall():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 32))
    x = (centres[rng.integers(0, 50, 4000)] + 0.3 * rng.normal(size=(4000, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(4000) * 3
    exact = VectorIndex.build(ids, x, dim=32, model_id="m", kind="flat")
    approx = VectorIndex.build(ids, x, dim=32, model_id="m", kind="ivf", nprobe=8)
    assert approx.state.kind == "ivf" and approx.state.nlist > 8
    q = x[:200] + 0.05 * rng.normal(size=(200, 32)).astype(np.float32)
    _, e = exact.search(q, 10)
    _, a = approx.search(q, 10)
    recall = np.mean([len(set(e[i]) & set(a[i])) / 10 for i in range(200)])
    assert recall >= 0.9
    approx.remove([0, 3])
    assert approx.state.ntotal == 3998 and 0 not in approx.search(x[:1], 5)[1][0]
    approx.add(np.array([0]), x[:1])
    assert approx.search(x[:1], 1)[1][0][0] == 0


def test_search_metrics_by_hand(tmp_path, shop, embedder):
    assert average_precision([False, True, False], 1) == 0.5
    assert average_precision([True, False, True], 2) == pytest.approx((1 + 2 / 3) / 2)
    csv_path, photos = shop
    with Catalog.open(tmp_path / "shop.db", embedder) as catalog:
        import_products(catalog, read_products_csv(csv_path, MAPPING)[0], progress=False)
        queries = [
            Query(str(photos["red"][0]), sku="red-0", category_leaf="red"),
            Query(str(photos["blue"][2]), sku="blue-2", category_leaf="blue"),
            Query(str(tmp_path / "img" / "nothing.jpg"), sku="red-1"),
        ]
        m = evaluate_search(catalog, queries, ks=(1, 3), progress=False)
    assert m["unreadable"] == 1
    assert m["recall@1"] == 1.0 and m["mAP"] == 1.0
    assert m["precision@1_category"] == 1.0  # each query photo is itself in the catalog
    assert 1 / 3 <= m["precision@3_category"] <= 1.0


def test_onnx_export_carries_the_embedding(tmp_path, trained_run):
    import shutil

    from skulens.data.datasets import load_dataset
    from skulens.engines.onnx_export import export_onnx

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    report = export_onnx(run, dataset=load_dataset(trained_run[1]))
    assert report.checks[0].embedding_cosine > 0.999
    torch_embedder = Embedder.from_run(run, device="cpu", engine="torch")
    onnx_embedder = Embedder.from_run(run, device="cpu", engine="auto")
    assert onnx_embedder.engine.name.startswith("onnx") and onnx_embedder.model_id != torch_embedder.model_id
    photos = sorted(Path(trained_run[1]).rglob("*.jpg"))[:6]
    a, b = torch_embedder.embed(photos), onnx_embedder.embed(photos)
    assert np.allclose(np.sum(a * b, axis=1), 1.0, atol=1e-4)


def test_flip_averaged_embedder_is_mirror_invariant_and_its_own_model(tmp_path, trained_run, shop, embedder):
    from PIL import Image, ImageOps

    from skulens.catalog.embedder import embedder_from_source

    _, photos = shop
    flip = Embedder.from_run(trained_run[0], device="cpu", flip=True)
    assert flip.model_id != embedder.model_id and flip.source["flip"] is True
    photo = Image.open(photos["red"][0]).convert("RGB")
    a, b = flip.embed([photo]), flip.embed([ImageOps.mirror(photo)])
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.allclose(a, b, atol=1e-4)  # a photo and its mirror image get the same vector
    plain = embedder.embed([photo, ImageOps.mirror(photo)])
    assert not np.allclose(plain[0], plain[1], atol=1e-4)  # which the plain embedder does not give
    with Catalog.open(tmp_path / "shop.db", flip) as catalog:
        catalog.upsert([Product("red-0", "red", ["Paint", "red"], images=[str(photos["red"][0])])])
    with pytest.raises(SkulensError, match="cannot search it"):
        Catalog.open(tmp_path / "shop.db", embedder)
    again = embedder_from_source(flip.source, device="cpu")
    assert again.flip and again.model_id == flip.model_id


def test_projection_is_pca_and_round_trips(tmp_path):
    from skulens.catalog.projection import Projection

    rng = np.random.default_rng(0)
    # 200 vectors with three strong directions and weak noise elsewhere
    axes = np.linalg.qr(rng.normal(size=(16, 3)))[0]
    x = (rng.normal(size=(200, 3)) * [5.0, 3.0, 2.0]) @ axes.T + 0.05 * rng.normal(size=(200, 16)) + 1.0
    p = Projection.fit(x, 3, fitted_for="abc")
    assert (p.in_dim, p.dim) == (16, 3)
    y = p.transform(x)
    assert y.shape == (200, 3) and np.allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-5)
    # the kept subspace is the top-3 principal subspace (same projector as numpy's SVD)
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    assert np.allclose(p.components @ p.components.T, vt[:3].T @ vt[:3], atol=1e-3)
    w = Projection.fit(x, 3, fitted_for="abc", whiten=True)
    assert np.allclose(((x - w.mean) @ w.components).std(0, ddof=1), 1.0, atol=1e-3)
    path = p.save(tmp_path / "p.safetensors")
    q = Projection.load(path)
    assert q.fitted_for == "abc" and q.info == p.info and q.digest == p.digest and q.path == str(path.resolve())
    assert np.array_equal(q.transform(x), y)
    with pytest.raises(SkulensError, match="1 <= dims <= 16"):
        Projection.fit(x, 17, fitted_for="abc")
    (tmp_path / "junk.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    for bad, message in [
        (tmp_path / "junk.safetensors", "not a projection file"),
        (tmp_path / "missing.safetensors", "no such projection file"),
    ]:
        with pytest.raises(SkulensError, match=message):
            Projection.load(bad)


def test_projected_catalog_is_its_own_model(tmp_path, trained_run, shop, embedder):
    from skulens.catalog.embedder import embedder_from_source
    from skulens.catalog.projection import Projection
    from skulens.cli import main

    run, data = trained_run
    out = tmp_path / "proj.safetensors"
    assert (
        main(
            [
                "catalog",
                "fit-projection",
                str(data),
                "--run",
                str(run),
                "--dims",
                "8",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    projection = Projection.load(out)
    n_images = sum(1 for p in Path(data, "train").rglob("*") if p.is_file())
    assert projection.fitted_for == embedder.model_id and projection.info["vectors"] == n_images
    projected = Embedder.from_run(run, device="cpu", projection=out)
    assert projected.dim == 8 and projected.model_id != embedder.model_id
    assert projected.source["projection"] == str(out.resolve())
    csv_path, photos = shop
    images = [str(photos["red"][0]), str(photos["blue"][1])]
    assert np.allclose(projected.embed(images), projection.transform(embedder.embed(images)), atol=1e-5)
    rows, _ = read_products_csv(csv_path, MAPPING)
    with Catalog.open(tmp_path / "shop.db", projected) as catalog:
        import_products(catalog, rows, progress=False)
        assert catalog.info()["index"]["dim"] == 8
        hits = catalog.search(str(photos["green"][0]), top_k=3)
        assert hits[0].sku.startswith("green")
    with pytest.raises(SkulensError, match="cannot search it"):
        Catalog.open(tmp_path / "shop.db", embedder)
    again = embedder_from_source(projected.source, device="cpu")
    assert again.model_id == projected.model_id and again.dim == 8
    # a projection fitted on one model's vectors is refused by another model (here: flip-averaged)
    with pytest.raises(SkulensError, match="fitted on the vectors of model"):
        Embedder.from_run(run, device="cpu", flip=True, projection=out)


def test_a_database_made_anew_at_the_same_place_never_inherits_the_old_index(tmp_path, shop, embedder):
    csv_path, photos = shop
    db = tmp_path / "shop.db"
    rows = read_products_csv(csv_path, MAPPING)[0]
    with Catalog.open(db, embedder) as catalog:
        import_products(catalog, rows, progress=False)
        old_folder = catalog.backend.folder
    for path in tmp_path.glob("shop.db*"):
        if path.is_file():
            path.unlink()  # the database goes; its index folder (shop.db.index) stays behind
    with Catalog.open(db, embedder) as catalog:
        # other image ids for the same products, and more index-log entries than the old index saw
        import_products(catalog, rows[::-1], progress=False)
        catalog.remove([p.sku for _, p in rows if not p.sku.startswith("red")])
        assert catalog.index().state.ntotal == 3
        for i in range(3):
            assert catalog.search(photos["red"][i], top_k=1)[0].sku == f"red-{i}"
        assert catalog.backend.folder != old_folder


def test_a_colour_family_filter_matches_every_value_of_the_family(tmp_path, shop, embedder):
    _, photos = shop
    colours = {"navy": "Navy Blue", "blue": "Blue", "teal": "Teal", "red": "Red", "maroon": "Maroon"}
    with Catalog.open(tmp_path / "shop.db", embedder) as catalog:
        catalog.upsert(
            [
                Product(sku, sku, ["Paint"], {"colour": value, "shade": value}, images=[str(photos["red"][i % 3])])
                for i, (sku, value) in enumerate(colours.items())
            ]
        )

        def found(**attributes):
            return {h.sku for h in catalog.search(photos["red"][0], top_k=10, attributes=attributes)}

        assert found(colour="Blue") == {"navy", "blue", "teal"}  # the family: what a shopper means by blue
        assert found(colour="blue") == {"navy", "blue", "teal"}
        assert found(colour="Navy Blue") == {"navy"}  # a value that is not a family: itself
        assert found(colour="red") == {"red", "maroon"}
        assert found(shade="Blue") == {"blue"}  # families apply to colour attributes only


def test_the_colour_families_file_covers_fashion_small_and_proposes_by_colour():
    import csv

    from skulens.data.colour_families import family_of, load_families, members, nearest_family
    from tests.conftest import SHARED

    families, values = load_families()
    assert set(values.values()) <= set(families) and members("GREY") == sorted(
        v for v, f in values.items() if f == "Grey"
    )
    assert nearest_family((35, 75, 200))[0] == "Blue" and nearest_family((205, 35, 40))[0] == "Red"
    products = SHARED / "fashion-small" / "products.csv"
    if not products.is_file():
        pytest.skip(f"needs {products}")
    with products.open(newline="") as handle:
        colours = {row["colour"] for row in csv.DictReader(handle) if row["colour"]}
    assert colours <= set(values), sorted(colours - set(values))  # every value has a family
    assert family_of("Navy Blue") == "Blue" and family_of("Charcoal") == "Grey"
