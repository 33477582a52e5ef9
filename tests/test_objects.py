"""Photos of several products (issue 18): find each one, then recognise it, through the Python API, the CLI
and POST /v1/recognize?objects=true. The detector is trained for a few steps on composites of the colour
shop (tests/conftest.py: the detector_dir, recognizer and scenes fixtures); the recogniser is the colour
shop's run, so each product's answer can be checked against the colour that was pasted there."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from skulens.data.datasets import load_dataset
from skulens.evaluation.detection import box_iou
from skulens.recognition.recognizer import Recognizer
from skulens.serving import ServeConfig, create_app

pytestmark = pytest.mark.slow


def png(image) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, "PNG")
    return buf.getvalue()


def test_each_product_is_found_and_recognised_on_its_own(recognizer, scenes, trained_run):
    classes = load_dataset(trained_run[1]).classes
    found = right = total = 0
    for scene in scenes:
        objects = [o for o in recognizer.predict(scene.pil(), objects=True) if o.score is not None]
        boxes = np.array([o.box for o in objects], np.float32).reshape(-1, 4)
        iou = box_iou(scene.boxes, boxes) if len(boxes) else np.zeros((len(scene.boxes), 1))
        for t, label in enumerate(scene.labels):
            total += 1
            if iou[t].max() >= 0.5:
                found += 1
                right += objects[int(iou[t].argmax())].prediction.label == classes[label]
    assert found >= total // 2, f"{found} of {total} products found"
    assert right >= 0.7 * found, f"{right} of {found} found products recognised as the colour pasted there"


def test_single_mode_and_the_whole_photo_fallback(recognizer, scenes):
    one = recognizer.predict_objects(scenes[0].pil(), single=True)
    assert len(one) == 1
    blank = Image.new("RGB", (120, 90), (128, 128, 128))
    fallback = recognizer.predict_objects(blank, score_threshold=1.0)  # nothing can pass: the whole photo
    assert len(fallback) == 1 and fallback[0].score is None and fallback[0].box == [0.0, 0.0, 120.0, 90.0]
    assert fallback[0].prediction.label == recognizer.predict(blank).label


class _Boxes:
    """A detector that finds the boxes it is given (the one-product rule is about boxes, not pixels)."""

    def __init__(self, *boxes):
        self.boxes = boxes

    def detect(self, photo, **options):
        from skulens.engines.detector import DetectedBox

        return [DetectedBox(tuple(map(float, box)), 0.9 - 0.1 * i) for i, box in enumerate(self.boxes)]


def test_a_photo_of_one_product_gets_the_same_answer_as_without_objects(recognizer, scenes):
    photo = scenes[0].pil()
    w, h = photo.size
    big, part, outside, small = (
        (0, 0, 0.85 * w, 0.85 * h),  # 72% of the photo
        (0.2 * w, 0.2 * h, 0.5 * w, 0.5 * h),
        (0.86 * w, 0.86 * h, w, h),
        (0, 0, 0.7 * w, 0.7 * h),  # 49%
    )
    whole = recognizer.predict(photo)
    detector = recognizer.detector
    try:
        for boxes in ([big], [big, part]):  # one box over most of the photo; with a part of it inside
            recognizer.detector = _Boxes(*boxes)
            (one,) = recognizer.predict_objects(photo)
            assert one.box == [round(v, 1) for v in big] and one.score == 0.9
            assert one.prediction.to_dict() == whole.to_dict()
        recognizer.detector = _Boxes(big, outside)  # another product outside it: two objects
        assert len(recognizer.predict_objects(photo)) == 2
        recognizer.detector = _Boxes(small)  # under ONE_PRODUCT_SHARE of the photo: the crop's answer
        (crop,) = recognizer.predict_objects(photo)
        expected = recognizer.predict(photo.crop(tuple(round(v) for v in small)))
        assert crop.prediction.to_dict() == expected.to_dict()
    finally:
        recognizer.detector = detector


def test_the_api_answers_an_object_list(recognizer, scenes, trained_run):
    app = create_app(ServeConfig(recognizer=recognizer, warmup=False))
    scene = scenes[0]
    with TestClient(app, raise_server_exceptions=False) as client:
        files = {"image": ("scene.png", png(scene.image), "image/png")}
        body = client.post("/v1/recognize?objects=true", files=files).json()
        assert body["objects"], body
        assert body["label"] == body["objects"][0]["label"]
        for obj in body["objects"]:
            x1, y1, x2, y2 = obj["box"]
            assert 0 <= x1 < x2 <= scene.image.shape[1] and 0 <= y1 < y2 <= scene.image.shape[0]
            assert obj["path"] and obj["top_k"]
        assert len(client.post("/v1/recognize?objects=true&single=true", files=files).json()["objects"]) == 1
        # a big JPEG: boxes in its own pixels (decoded at full size, not at the recogniser's draft scale)
        big = io.BytesIO()
        scene.pil().resize((4 * scene.image.shape[1], 4 * scene.image.shape[0]), Image.NEAREST).save(big, "JPEG")
        big_body = client.post("/v1/recognize?objects=true", files={"image": ("big.jpg", big.getvalue())}).json()
        small_right = max(o["box"][2] for o in body["objects"])
        assert max(o["box"][2] for o in big_body["objects"]) > 3 * small_right
        assert client.post("/v1/recognize", files=files).json()["objects"] is None
        bad = client.post("/v1/recognize?objects=true&detector_threshold=2", files=files)
        assert bad.status_code == 422 and "detector_threshold" in bad.json()["error"]["message"]
        strip = client.post("/v1/recognize?objects=true", files={"image": ("s.png", png(Image.new("RGB", (1, 5000))))})
        assert strip.status_code == 422 and strip.json()["error"]["code"] == "bad_image"
    plain = Recognizer.load(trained_run[0])
    with TestClient(create_app(ServeConfig(recognizer=plain, warmup=False)), raise_server_exceptions=False) as client:
        answer = client.post("/v1/recognize?objects=true", files=files)
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "no_detector"


def test_the_cli_prints_one_line_per_product(trained_run, detector_dir, scenes, tmp_path):
    photo = tmp_path / "scene.png"
    photo.write_bytes(png(scenes[1].image))
    cmd = [sys.executable, "-m", "skulens", "predict", str(trained_run[0]), str(photo), "--objects"]
    done = subprocess.run([*cmd, "--detector", str(detector_dir), "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert records and all(len(r["box"]) == 4 and r["label"] for r in records)
    missing = subprocess.run(cmd, capture_output=True, text=True)
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1 and "--detector" in missing.stderr


@pytest.mark.browser
def test_the_page_draws_a_box_per_product_and_answers_each(recognizer, scenes):
    from tests.test_web_page import CHROMIUM, CHROMIUM_ARGS, live_server

    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (`make test` installs it)")
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium; `make test` does it)")
    scene = next(s for s in scenes if sum(o.score is not None for o in recognizer.predict_objects(s.pil())) >= 2)
    objects = [o for o in recognizer.predict_objects(scene.pil()) if o.score is not None]
    with live_server(ServeConfig(recognizer=recognizer, warmup=False)) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#limits:not(:empty)")
        photo = [{"name": "s.png", "mimeType": "image/png", "buffer": png(scene.image)}]
        # On by default with a detector: a box per product
        page.set_input_files("#file-input", files=photo)
        page.wait_for_selector(".object-box")
        boxes = page.query_selector_all(".object-box")
        assert len(boxes) == len(objects)
        for box, obj in reversed(list(zip(boxes, objects))):
            box.click()
            assert page.get_attribute("[data-testid=top-label]", "data-label") == obj.prediction.label
            assert "current" in box.get_attribute("class")
        page.uncheck("#objects-toggle")  # off: the whole photo is answered, as without a detector (no boxes)
        page.set_input_files("#file-input", files=[{**photo[0], "name": "again.png"}])
        page.wait_for_function("document.querySelectorAll('.object-box').length === 0")
        page.wait_for_selector("[data-testid=top-label][data-label]")
        assert page.get_attribute("[data-testid=top-label]", "data-label") == recognizer.predict(scene.pil()).label
        browser.close()
