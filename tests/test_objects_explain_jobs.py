"""Photos of several products (issue 18), beyond predict: `skulens explain --objects` / ``Run.explain(objects=True)``,
POST /v1/explain?objects=true and the bulk job's ``objects=true``. The tiny detector and the colour shop's run
are tests/test_objects.py's fixtures; a scene of two pasted colours must give two explained objects."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from skulens.api import Run
from skulens.cli import main
from skulens.recognition.recognizer import Recognizer
from skulens.serving import ServeConfig, create_app
from tests.helpers import assert_json_error, wait_for_job
from tests.test_objects import png
from tests.test_serving_catalog import embedder, make_shop  # noqa: F401 - the colour shop's catalog


@pytest.fixture(scope="module")
def two_products(recognizer, scenes):  # the tiny detector's recogniser and scenes (conftest.py)
    """A composed scene in which the detector finds at least two products: (scene, its objects)."""
    for scene in scenes:
        objects = [o for o in recognizer.predict_objects(scene.pil()) if o.score is not None]
        if len(objects) >= 2:
            return scene, objects
    pytest.fail("the detector found two products in none of the scenes")


@pytest.fixture(scope="module")
def plain_client(trained_run):
    """A server without a detector: objects=true cannot be answered there."""
    app = create_app(ServeConfig(recognizer=Recognizer.load(trained_run[0]), warmup=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _files(field: str, *photos: tuple[str, bytes]) -> list:
    return [(field, (name, data, "image/png")) for name, data in photos]


# --- skulens explain --objects / Run.explain(objects=True) ---------------------------------------------


@pytest.mark.slow
def test_explain_writes_one_set_of_files_per_product(trained_run, detector_dir, two_products, tmp_path):
    scene, objects = two_products
    photo = tmp_path / "scene.png"
    photo.write_bytes(png(scene.image))
    heat, maps = tmp_path / "out" / "heat.png", tmp_path / "maps.png"
    record = Run(trained_run[0]).explain(photo, out=heat, feature_maps=maps, objects=True, detector=detector_dir)
    assert record["image"] == str(photo) and len(record["objects"]) == len(objects)
    for number, (explained, obj) in enumerate(zip(record["objects"], objects), 1):
        assert explained["object"] == number and explained["box"] == obj.box and explained["score"] == obj.score
        # the crop explained is the crop recognised: the same answer
        assert explained["predicted_label"] == obj.prediction.label
        assert explained["heatmap"] == str(tmp_path / "out" / f"heat_obj{number}.png")
        assert Image.open(explained["heatmap"]).size[0] >= 256 and Image.open(explained["feature_maps"]).width > 100
    assert not heat.exists() and not maps.exists()


@pytest.mark.slow
def test_cli_explain_objects_prints_each_box_and_its_file(trained_run, detector_dir, two_products, tmp_path, capsys):
    scene, objects = two_products
    photo = tmp_path / "scene.png"
    photo.write_bytes(png(scene.image))
    heat = tmp_path / "heat.png"
    cmd = ["explain", str(trained_run[0]), str(photo), "--out", str(heat), "--objects", "--detector", str(detector_dir)]
    assert main(cmd) == 0
    out = capsys.readouterr().out
    assert f"{photo}: {len(objects)} product(s)" in out
    for number, obj in enumerate(objects, 1):
        box = ",".join(f"{v:.0f}" for v in obj.box)
        assert f"#{number}\t{box}\t" in out and obj.prediction.label in out
        assert str(tmp_path / f"heat_obj{number}.png") in out and (tmp_path / f"heat_obj{number}.png").is_file()
    assert main([*cmd, "--single-object", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["objects"]) == 1
    # nothing found: the whole photo is the one object, as predict_objects answers
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 90), (128, 128, 128)).save(blank)
    assert main([*cmd[:2], str(blank), *cmd[3:], "--detector-threshold", "1", "--json"]) == 0
    (whole,) = json.loads(capsys.readouterr().out)["objects"]
    assert whole["score"] is None and whole["box"] == [0.0, 0.0, 120.0, 90.0]
    assert whole["heatmap"] == str(tmp_path / "heat_obj1.png")


@pytest.mark.slow
def test_cli_explain_objects_refuses_bad_options_in_one_line(trained_run, detector_dir, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(photo)
    base = ["explain", str(trained_run[0]), str(photo), "--out", str(tmp_path / "heat.png")]
    for extra, says in [
        (["--objects"], "--detector"),
        (["--single-object"], "need --objects"),
        (["--detector-threshold", "0.5"], "need --objects"),
        (["--objects", "--detector", str(detector_dir), "--detector-threshold", "2"], "between 0 and 1"),
        (["--objects", "--detector", str(tmp_path / "nowhere")], "nowhere"),
        (["--detector", str(detector_dir), "--out", str(tmp_path / "heat.gif")], "write a .png"),
    ]:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("skulens: error:") and err.count("\n") == 1 and says in err, (extra, err)
    assert not list(tmp_path.glob("heat*"))


# --- POST /v1/explain?objects=true ------------------------------------------------------------------


@pytest.mark.slow
def test_the_api_explains_each_product_in_one_picture(recognizer, two_products):
    scene, objects = two_products
    app = create_app(ServeConfig(recognizer=recognizer, warmup=False))
    files = _files("image", ("scene.png", png(scene.image)))
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/v1/explain?objects=true", files=files)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        listed = json.loads(answer.headers["x-objects"])
        assert [o["box"] for o in listed] == [o.box for o in objects]
        assert [o["predicted_label"] for o in listed] == [o.prediction.label for o in objects]
        picture = Image.open(io.BytesIO(answer.content))
        assert picture.size == (scene.image.shape[1], scene.image.shape[0])  # the photo, heat maps in its boxes
        single = client.post("/v1/explain?objects=true&single=true", files=files)
        assert single.status_code == 200 and len(json.loads(single.headers["x-objects"])) == 1
        assert "x-objects" not in client.post("/v1/explain", files=files).headers
        bad = client.post("/v1/explain?objects=true&detector_threshold=high", files=files)
        assert "detector_threshold" in assert_json_error(bad, 422, "invalid_request")["message"]
        unknown = client.post("/v1/explain?objects=true&label=purple", files=files)
        assert "purple" in assert_json_error(unknown, 400, "bad_request")["message"]


def test_explain_and_bulk_objects_need_a_detector(plain_client, trained_run):
    photo = png(Image.new("RGB", (64, 64), (200, 30, 30)))
    explain = plain_client.post("/v1/explain?objects=true", files=_files("image", ("p.png", photo)))
    assert "--detector" in assert_json_error(explain, 422, "no_detector")["message"]
    bulk = plain_client.post("/v1/recognize/bulk?objects=true", files=_files("images", ("p.png", photo)))
    assert_json_error(bulk, 422, "no_detector")
    bad = plain_client.post(
        "/v1/recognize/bulk?objects=true&detector_threshold=-1", files=_files("images", ("p.png", photo))
    )
    assert_json_error(bad, 422, "invalid_request")
    # without objects the job runs as before: no objects in its answers
    submitted = plain_client.post("/v1/recognize/bulk", files=_files("images", ("p.png", photo)))
    (item,) = wait_for_job(plain_client, submitted.json()["status_url"])["result"]["items"]
    assert item["prediction"]["objects"] is None


# --- POST /v1/recognize/bulk?objects=true ------------------------------------------------------------


@pytest.mark.slow
def test_the_bulk_job_answers_each_photos_objects(recognizer, two_products, embedder, tmp_path):  # noqa: F811
    scene, objects = two_products
    # a catalog: its database holds the job (options stored as JSON) and each product gets its matches
    app = create_app(ServeConfig(recognizer=recognizer, catalog_db=make_shop(tmp_path, embedder), warmup=False))
    photos = [("scene.png", png(scene.image)), ("bad.png", b"not an image"), ("again.png", png(scene.image))]
    with TestClient(app, raise_server_exceptions=False) as client:
        submitted = client.post("/v1/recognize/bulk?objects=true", files=_files("images", *photos))
        assert submitted.status_code == 202, submitted.text
        status = wait_for_job(client, submitted.json()["status_url"])
        assert status["status"] == "succeeded" and status["progress"] == {"done": 3, "total": 3}
        first, bad, again = status["result"]["items"]
        assert [o["box"] for o in first["prediction"]["objects"]] == [o.box for o in objects]
        assert [o["label"] for o in first["prediction"]["objects"]] == [o.prediction.label for o in objects]
        assert first["prediction"]["label"] == objects[0].prediction.label  # the top level answers the first
        assert again["prediction"]["objects"] == first["prediction"]["objects"]
        assert bad["prediction"] is None and bad["error"]["code"] == "bad_image"
        # the same answer as the single-photo route gives
        one = client.post("/v1/recognize?objects=true", files=_files("image", photos[0])).json()
        for single_photo, in_job in zip(one["objects"], first["prediction"]["objects"], strict=True):
            assert single_photo["box"] == in_job["box"] and single_photo["label"] == in_job["label"]
            skus = [[hit["sku"] for hit in answer["products"]] for answer in (single_photo, in_job)]
            assert skus[0] and skus[0] == skus[1]  # each product's own crop matched in the catalog
            assert in_job["products"][0]["category_path"] == ["Paint", in_job["label"]]
        single = client.post("/v1/recognize/bulk?objects=true&single=true", files=_files("images", photos[0]))
        (item,) = wait_for_job(client, single.json()["status_url"])["result"]["items"]
        assert len(item["prediction"]["objects"]) == 1
