"""Privacy by design: uploads dropped by default; when an operator stores them, no metadata, faces
pixelated, encryption at rest, a retention purge, and access logs without images or client identifiers."""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import struct
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from skulens.cli import main
from skulens.errors import SkulensError
from skulens.privacy import crypto, faces
from skulens.privacy.store import UploadStore, read_stored
from skulens.serving import ServeConfig, create_app
from tests.helpers import wait_for_job
from tests.hostile_corpus import SECRET, build_corpus, encode, metadata_rich_jpeg, metadata_rich_png, quadrants, upright

KEY = crypto.new_key()


class StubRecognizer:
    """Answers without a model: these tests are about what happens to the photo, not the prediction.
    No ``config`` means no reduced-size JPEG decoding, so stored photos keep their full size."""

    classes = ["a", "b"]

    def predict_batch(self, images, top_k=5):
        from skulens.recognition.recognizer import Prediction, ScoredClass

        return [
            Prediction("a", 0.9, ["a"], [ScoredClass("a", 0.9, ["a"]), ScoredClass("b", 0.1, ["b"])]) for _ in images
        ]


@contextmanager
def serving(**overrides):
    app = create_app(ServeConfig(recognizer=StubRecognizer(), warmup=False, **overrides))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def post(client, data: bytes, name: str = "photo.jpg", endpoint: str = "/v1/recognize"):
    return client.post(endpoint, files={"image": (name, data, "application/octet-stream")})


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def face_photo() -> bytes:
    """Grace Hopper's portrait, shipped with matplotlib (a real face, no download), at half size to
    keep face detection quick."""
    import matplotlib.cbook

    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    return encode(img.resize((img.width // 2, img.height // 2), Image.LANCZOS), "JPEG", quality=92)


def jpeg_markers(data: bytes) -> list[int]:
    """The JPEG segment markers up to the image data, and whether anything follows EOI."""
    assert data[:2] == b"\xff\xd8"
    markers, i = [], 2
    while i < len(data):
        marker = data[i + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: entropy-coded data follows until EOI
            break
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return markers


# --- off by default --------------------------------------------------------------------------------


def test_uploads_are_dropped_by_default(monkeypatch):
    def never(*_a, **_k):
        raise AssertionError("nothing may be stored without --store-uploads")

    monkeypatch.setattr(UploadStore, "_save", never)
    with serving() as client:
        assert client.app.state.services.config.upload_store is None
        assert post(client, encode(quadrants(), "JPEG")).status_code == 200
        assert client.get("/v1/info").status_code == 200


def test_storage_options_need_a_folder_and_a_key(tmp_path, monkeypatch):
    with pytest.raises(SkulensError, match="--store-uploads"):
        ServeConfig(recognizer=StubRecognizer(), blur_faces=True)
    monkeypatch.delenv(crypto.KEY_ENV, raising=False)
    with pytest.raises(SkulensError, match=f"{crypto.KEY_ENV}.*new-key"):
        ServeConfig(recognizer=StubRecognizer(), store_uploads_dir=tmp_path, encrypt_at_rest=True)
    monkeypatch.setenv(crypto.KEY_ENV, "too-short")
    with pytest.raises(SkulensError, match="not a valid key") as info:
        ServeConfig(recognizer=StubRecognizer(), store_uploads_dir=tmp_path, encrypt_at_rest=True)
    assert "too-short" not in str(info.value)  # a key (even a wrong one) is never echoed
    with pytest.raises(SkulensError, match="positive"):
        ServeConfig(recognizer=StubRecognizer(), store_uploads_dir=tmp_path, retention_days=0)


def test_serve_command_refuses_storage_flags_without_a_folder(capsys, tmp_path):
    assert main(["serve", str(tmp_path), "--blur-faces"]) == 2  # refused before any model is loaded
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--store-uploads" in err


# --- what a stored photo holds ---------------------------------------------------------------------


def test_stored_photos_keep_pixels_and_lose_every_kind_of_metadata(tmp_path):
    rotated = next(c for c in build_corpus() if c.name == "exif-orientation-6")
    uploads = {"meta.jpg": metadata_rich_jpeg(), "meta.png": metadata_rich_png(), "rotated.jpg": rotated.data}
    assert all(SECRET in data for name, data in uploads.items() if name.startswith("meta"))
    with serving(store_uploads_dir=tmp_path / "store") as client:
        for name, data in uploads.items():
            assert post(client, data, name).status_code == 200
        assert post(client, b"not an image").status_code == 422  # refused uploads are not stored
    files = stored_files(tmp_path / "store")
    assert len(files) == 3
    for path in files:
        data = path.read_bytes()
        assert SECRET not in data and b"SecretCam" not in data and b"Photoshop" not in data
        # JFIF header, tables, frame, scan: no APPn (EXIF, XMP, ICC, IPTC) and no comment segments.
        assert set(jpeg_markers(data)) <= {0xE0, 0xDB, 0xC4, 0xC0, 0xC2, 0xDD, 0xDA}
        assert data.endswith(b"\xff\xd9")  # nothing smuggled after the image
        img = Image.open(io.BytesIO(data))
        assert not {"exif", "xmp", "icc_profile", "photoshop", "comment"} & set(img.info)
        assert len(img.getexif()) == 0
        assert img.size == (96, 72) or img.size == (64, 48)
        assert upright(img.convert("RGB"))  # orientation applied to the pixels, then the tag dropped


def test_stored_names_are_random_and_files_private(tmp_path):
    with serving(store_uploads_dir=tmp_path / "store") as client:
        for name in ("../../../../tmp/evil.jpg", "John Doe GPS 52.1N.jpg", "..\\..\\x.jpg", "a\x00b.jpg"):
            assert post(client, encode(quadrants(), "JPEG"), name).status_code == 200
    files = stored_files(tmp_path / "store")
    assert len(files) == 4 and not (tmp_path / "evil.jpg").exists() and not Path("/tmp/evil.jpg").exists()
    for path in files:
        assert path.parent.parent == tmp_path / "store"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", path.parent.name)
        assert re.fullmatch(r"[0-9a-f]{32}\.jpg", path.name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0


def test_bulk_uploads_are_stored_the_same_way(tmp_path):
    with serving(store_uploads_dir=tmp_path / "store") as client:
        files = [("images", (f"{i}.jpg", metadata_rich_jpeg(), "image/jpeg")) for i in range(3)]
        files.append(("images", ("bad.jpg", b"junk", "image/jpeg")))
        job = client.post("/v1/recognize/bulk", files=files).json()
        wait_for_job(client, job["status_url"])
    stored = stored_files(tmp_path / "store")
    assert len(stored) == 3 and all(SECRET not in p.read_bytes() for p in stored)


def test_faces_are_pixelated_before_storing(tmp_path):
    photo = face_photo()
    with serving(store_uploads_dir=tmp_path / "plain") as client:
        assert post(client, photo).status_code == 200
    with serving(store_uploads_dir=tmp_path / "blurred", blur_faces=True) as client:
        assert post(client, photo).status_code == 200
    plain = Image.open(stored_files(tmp_path / "plain")[0]).convert("RGB")
    blurred = Image.open(stored_files(tmp_path / "blurred")[0]).convert("RGB")
    ((fx, fy, fw, fh),) = faces.detect_faces(plain)  # the control: without blurring, the face is there
    assert faces.detect_faces(blurred) == []

    def detail(img: Image.Image, box) -> float:  # mean difference between neighbouring pixels
        arr = np.asarray(img.crop(box).convert("L"), dtype=np.float32)
        return float(np.abs(np.diff(arr, axis=1)).mean())

    face_box = (fx + fw // 4, fy + fh // 4, fx + 3 * fw // 4, fy + 3 * fh // 4)
    assert detail(blurred, face_box) < 0.35 * detail(plain, face_box)
    corner = (0, plain.height - 40, 40, plain.height)  # flag and uniform, far from the face
    diff = np.abs(np.asarray(blurred.crop(corner), np.int16) - np.asarray(plain.crop(corner), np.int16))
    assert diff.mean() < 3


def test_face_blur_leaves_product_photos_alone():
    photo = quadrants((320, 240))
    out, found = faces.blur_faces(photo)
    assert found == 0 and out is photo


# --- encryption at rest ----------------------------------------------------------------------------


def test_encrypted_at_rest_and_only_the_key_opens_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(crypto.KEY_ENV, KEY)
    with serving(store_uploads_dir=tmp_path / "store", encrypt_at_rest=True) as client:
        assert post(client, metadata_rich_jpeg()).status_code == 200
    (path,) = stored_files(tmp_path / "store")
    assert path.name.endswith(".jpg.enc")
    sealed = path.read_bytes()
    assert sealed.startswith(crypto.MAGIC) and b"\xff\xd8\xff" not in sealed and b"JFIF" not in sealed
    clear = read_stored(path, crypto.parse_key(KEY))
    img = Image.open(io.BytesIO(clear))
    assert img.format == "JPEG" and upright(img.convert("RGB")) and SECRET not in clear

    with pytest.raises(SkulensError, match="wrong key"):
        read_stored(path, crypto.parse_key(crypto.new_key()))
    tampered = bytearray(sealed)
    tampered[-5] ^= 1
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / path.name).write_bytes(bytes(tampered))
    with pytest.raises(SkulensError, match="changed"):
        read_stored(tmp_path / "t" / path.name, crypto.parse_key(KEY))
    renamed = tmp_path / "t" / ("0" * 32 + ".jpg.enc")  # swapped for another stored file's name
    renamed.write_bytes(sealed)
    with pytest.raises(SkulensError, match="renamed"):
        read_stored(renamed, crypto.parse_key(KEY))

    out = tmp_path / "clear.jpg"
    assert main(["privacy", "decrypt", str(path), "--out", str(out)]) == 0
    assert out.read_bytes() == clear
    monkeypatch.setenv(crypto.KEY_ENV, crypto.new_key())
    assert main(["privacy", "decrypt", str(path), "--out", str(tmp_path / "x.jpg")]) == 2
    assert "wrong key" in capsys.readouterr().err


def test_new_key_command(capsys):
    assert main(["privacy", "new-key"]) == 0
    key = capsys.readouterr().out.strip()
    assert len(crypto.parse_key(key)) == 32 and key != crypto.new_key()


# --- retention -------------------------------------------------------------------------------------


def _age(path: Path, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def test_purge_command_deletes_only_old_stored_uploads(tmp_path, capsys):
    root = tmp_path / "store"
    store = UploadStore(root)
    old = [store.save(quadrants()).path for _ in range(3)]
    new = store.save(quadrants()).path
    for path in old:
        _age(path, 40)
    old_day = root / "2001-01-01"  # a past day's folder that empties out is removed too
    old_day.mkdir()
    (old_day / ("a" * 32 + ".jpg")).write_bytes(b"x")
    _age(old_day / ("a" * 32 + ".jpg"), 9000)
    foreign = [root / "notes.txt", old_day.parent / new.parent.name / "keep-me.jpg"]
    for path in foreign:  # files skulens did not name are never touched, however old
        path.write_bytes(b"operator's own file")
        _age(path, 400)

    assert main(["privacy", "purge", "--dir", str(root), "--older-than-days", "30", "--dry-run", "--json"]) == 0
    assert '"removed": 4' in capsys.readouterr().out and all(p.exists() for p in old)
    assert main(["privacy", "purge", "--dir", str(root), "--older-than-days", "30"]) == 0
    assert "removed 4 stored upload(s)" in capsys.readouterr().out
    assert not any(p.exists() for p in old) and new.exists() and all(p.exists() for p in foreign)
    assert not old_day.exists()
    assert main(["privacy", "purge", "--dir", str(tmp_path / "nope"), "--older-than-days", "1"]) == 2


def test_server_purges_expired_uploads_itself(tmp_path):
    root = tmp_path / "store"
    expired = UploadStore(root).save(quadrants()).path
    _age(expired, 10)
    with serving(store_uploads_dir=root, retention_days=7) as client:
        assert not expired.exists()  # at start...
        assert post(client, encode(quadrants(), "JPEG")).status_code == 200
    assert len(stored_files(root)) == 1  # ...and what it stores now is kept until it expires


def test_a_failing_store_does_not_fail_the_answer(tmp_path, caplog):
    root = tmp_path / "store"
    with serving(store_uploads_dir=root) as client:
        client.app.state.services.config.upload_store.root = tmp_path / "missing" / "deeper"
        with caplog.at_level(logging.ERROR, logger="skulens.privacy"):
            assert post(client, encode(quadrants(), "JPEG")).status_code == 200
    assert "could not store an upload" in caplog.text


# --- logs ------------------------------------------------------------------------------------------


def test_logs_hold_no_image_bytes_names_or_client_identifiers(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv(crypto.KEY_ENV, KEY)
    uploads = [(f"customer-42-{c.filename}", c.data) for c in build_corpus()[:40]]
    uploads.append(("jane-doe.jpg", metadata_rich_jpeg()))
    caplog.set_level(logging.DEBUG)  # every logger, every level (Pillow's debug log would print EXIF tags)
    with serving(store_uploads_dir=tmp_path / "store", encrypt_at_rest=True) as client:
        for name, data in uploads:
            post(client, data, name)
    text = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "skulens.access" in text  # the access log did run
    assert "testclient" not in text  # the client's address (off unless --log-client-ips)
    assert "customer-42" not in text and "jane-doe" not in text
    assert SECRET.decode() not in text and "JFIF" not in text and "\\xff\\xd8" not in text
    assert KEY not in text
