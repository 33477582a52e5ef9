"""Hostile input: the corpus of tests/hostile_corpus.py through the Python API, the CLI and every HTTP
endpoint that takes a photo. Each file gets a clear error or a correct answer: never a 500, a hang or
a crash, and the server's memory stays flat while it chews through them. Also: malformed CSV imports,
path traversal in SKUs and file names, and model folders whose weights were tampered with."""

from __future__ import annotations

import base64
import io
import json
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from skulens.cli import main
from skulens.data.images import load_image
from skulens.errors import CheckpointError, ImageError
from skulens.recognition.recognizer import Recognizer
from skulens.runs import CHECKSUMS_FILE, WEIGHTS_FILE, load_run
from skulens.serving import ServeConfig, create_app
from skulens.serving.security import hash_key, new_key
from tests.helpers import wait_for_job
from tests.hostile_corpus import Case, build_corpus, encode, kinds, quadrants

CORPUS = build_corpus()
KEY = new_key()
SLOW_S = 15.0  # a request slower than this counts as a hang


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_line(message: str) -> bool:
    return bool(message) and "\n" not in message and "Traceback" not in message


def judge(case: Case, outcome: str, detail: str = "") -> str | None:
    """None when ``outcome`` ("ok" / "error") is what the case allows, else why not."""
    if outcome == case.expect or (case.expect == "either" and outcome in ("ok", "error")):
        return None
    return f"{case.name}: expected {case.expect}, got {outcome} {detail[:200]}"


def test_the_corpus_covers_what_the_issue_lists():
    counts = kinds(CORPUS)
    for kind in (
        "valid",
        "truncated",
        "corrupted",
        "not an image",
        "pixel bomb",
        "huge dimensions",
        "odd mode",
        "animated",
        "EXIF rotation",
        "oversized metadata",
        "polyglot",
    ):
        assert counts.get(kind, 0) >= 3, kind
    names = {c.name for c in CORPUS}
    for needed in (
        "zero-bytes",
        "text-named-jpg",
        "html-named-jpg",
        "svg-named-png",
        "zip-named-jpg",
        "cmyk-jpeg",
        "16bit-png",
        "palette-transparency-png",
        "animated-gif",
        "truncated-webp-50",
        "truncated-gif-50",
        "png-claims-100k-square",
        "jpeg-claims-65500-square",
        "exif-orientation-6",
        "jpeg-plus-zip",
    ):
        assert needed in names
    assert len(CORPUS) >= 120


# --- Python API ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recognizer(trained_run):
    return Recognizer.load(trained_run[0])


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for case in CORPUS:
        (folder / case.filename).write_bytes(case.data)
    return folder


def test_python_api_answers_or_refuses_clearly(recognizer, corpus_dir):
    problems = []
    for case in CORPUS:
        for source in (case.data, corpus_dir / case.filename, io.BytesIO(case.data)):
            started = time.perf_counter()
            try:
                img = load_image(source)
            except ImageError as exc:
                problems.append(judge(case, "error") or (None if one_line(str(exc)) else f"{case.name}: {exc!r}"))
            else:
                bad = judge(case, "ok")
                if not bad and case.expect == "ok":
                    if img.mode != "RGB" or (case.size and img.size != case.size):
                        bad = f"{case.name}: decoded as {img.mode} {img.size}, expected RGB {case.size}"
                    elif case.check and not case.check(img):
                        bad = f"{case.name}: wrong pixels (orientation, colour or transparency)"
                    elif load_image(img).size != img.size:  # the server hands decoded photos on: no second turn
                        bad = f"{case.name}: decoding a decoded photo again changed it"
                problems.append(bad)
            if time.perf_counter() - started > SLOW_S:
                problems.append(f"{case.name}: {time.perf_counter() - started:.0f} s to decode")
        try:
            prediction = recognizer.predict(case.data)
            problems.append(judge(case, "ok") or (None if prediction.label in recognizer.classes else case.name))
        except ImageError:
            problems.append(judge(case, "error"))
    assert [p for p in problems if p] == []


# --- CLI -------------------------------------------------------------------------------------------


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_predict_reports_each_bad_file_and_answers_the_rest(trained_run, corpus_dir, recognizer):
    code, out, err = run_cli(
        ["predict", str(trained_run[0]), *[str(corpus_dir / c.filename) for c in CORPUS], "--json", "--engine", "torch"]
    )
    assert code == 1  # some inputs failed, the others were processed
    records = json.loads(out)
    assert len(records) == len(CORPUS)
    by_source = {Path(r["source"]).name: r for r in records}
    problems = []
    for case in CORPUS:
        record = by_source[case.filename]
        problems.append(judge(case, "error" if "error" in record else "ok", record.get("error", "")))
        if "error" in record:
            assert one_line(record["error"]) and case.filename in record["error"]
        elif case.expect == "ok":
            problems.append(None if record["label"] == recognizer.predict(case.data).label else case.name)
    assert [p for p in problems if p] == []
    assert "Traceback" not in err
    assert len(err.splitlines()) == sum("error" in r for r in records)  # one line per bad file


# --- every HTTP endpoint ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(trained_run, recognizer, tmp_path_factory):
    from skulens.privacy import crypto

    base = tmp_path_factory.mktemp("hostile-server")
    (base / "catalog").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(crypto.KEY_ENV, crypto.new_key())
        # Every opt-in path on too: catalog writes, media, and encrypted upload storage.
        config = ServeConfig(
            recognizer=recognizer,
            catalog_db=base / "catalog" / "shop.db",
            catalog_run=trained_run[0],
            media_dir=base / "media",
            api_key_hashes=frozenset({hash_key(KEY)}),
            store_uploads_dir=base / "stored",
            encrypt_at_rest=True,
            retention_days=30,
            warmup=False,
            max_bulk_images=64,
        )
    app = create_app(config)
    with TestClient(app, raise_server_exceptions=False, headers={"X-API-Key": KEY}) as client:
        for i, colour in enumerate(((220, 30, 30), (30, 200, 40), (30, 40, 210))):
            created = client.post(
                "/v1/products",
                data={"product": json.dumps({"sku": f"base-{i}", "title": "t"})},
                files={"images": ("p.jpg", encode(Image.new("RGB", (64, 48), colour), "JPEG"), "image/jpeg")},
            )
            assert created.status_code == 201, created.text
        yield client, base


def _file(case: Case) -> tuple[str, bytes, str]:
    return case.filename, case.data, "application/octet-stream"


SINGLE = {
    ("POST", "/v1/recognize"): lambda c, case, i: c.post("/v1/recognize", files={"image": _file(case)}),
    ("POST", "/v1/search"): lambda c, case, i: c.post("/v1/search", files={"image": _file(case)}),
    ("POST", "/v1/explain"): lambda c, case, i: c.post("/v1/explain", files={"image": _file(case)}),
    ("POST", "/v1/products"): lambda c, case, i: c.post(
        "/v1/products",
        data={"product": json.dumps({"sku": f"h-{i}", "title": case.name})},
        files={"images": _file(case)},
    ),
    ("PUT", "/v1/products/{sku}"): lambda c, case, i: c.put("/v1/products/base-0", files={"images": _file(case)}),
}
JOBS = {("POST", "/v1/recognize/bulk"), ("POST", "/v1/products/import")}
# Takes a JSON vector, not a photo: its malformed inputs are in tests/test_device_api.py.
VECTORS = {("POST", "/v1/search/vector")}


def outcome_of(response) -> tuple[str, str]:
    if response.status_code < 300:
        return "ok", ""
    if 400 <= response.status_code < 500 and response.headers.get("content-type", "").startswith("application/json"):
        error = response.json()["error"]
        return ("error" if one_line(error["message"]) else "unclear"), f"{response.status_code} {error['message']}"
    return f"HTTP {response.status_code}", response.text[:200]


def test_every_photo_endpoint_is_in_the_hostile_run(server):
    client, _ = server
    taking_input = {
        (method.upper(), path)
        for path, ops in client.get("/openapi.json").json()["paths"].items()
        for method, op in ops.items()
        if "requestBody" in op
    }
    assert taking_input == set(SINGLE) | JOBS | VECTORS, "a new endpoint takes input: add it to SINGLE or JOBS"


@pytest.mark.slow
def test_http_endpoints_answer_or_refuse_every_file(server, recognizer):
    client, base = server
    stored_before = len(list((base / "stored").rglob("*.jpg.enc")))
    problems, statuses, slowest = [], {}, 0.0
    for endpoint, send in SINGLE.items():
        for i, case in enumerate(CORPUS):
            started = time.perf_counter()
            response = send(client, case, i)
            slowest = max(slowest, time.perf_counter() - started)
            outcome, detail = outcome_of(response)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            bad = judge(case, outcome, detail)
            if not bad and outcome == "ok" and endpoint == ("POST", "/v1/recognize") and case.expect == "ok":
                if response.json()["label"] != recognizer.predict(case.data).label:
                    bad = f"{case.name}: the API and the Python API disagree"
            if not bad and outcome == "ok" and endpoint == ("POST", "/v1/explain"):
                bad = None if response.content.startswith(b"\x89PNG") else f"{case.name}: explain is not a PNG"
            problems.append(f"{endpoint}: {bad}" if bad else None)
    assert [p for p in problems if p] == []
    assert not [s for s in statuses if s >= 500], statuses
    assert slowest < SLOW_S
    # Encrypted, metadata-free copies of exactly the photos /v1/recognize accepted (PRIVACY.md).
    accepted = sum(1 for c in CORPUS if c.expect == "ok" or (c.expect == "either" and recognizes(c)))
    assert len(list((base / "stored").rglob("*.jpg.enc"))) - stored_before == accepted


def recognizes(case: Case) -> bool:
    try:
        load_image(case.data, max_pixels=40_000_000, max_bytes=10 * 1024 * 1024)
        return True
    except ImageError:
        return False


def test_bulk_recognize_and_import_report_each_file(server):
    client, _ = server
    problems = []
    for start in range(0, len(CORPUS), 64):
        chunk = CORPUS[start : start + 64]
        reply = client.post("/v1/recognize/bulk", files=[("images", _file(c)) for c in chunk])
        assert reply.status_code == 202, reply.text
        job = wait_for_job(client, reply.json()["status_url"], timeout=120)
        assert job["status"] == "succeeded", job
        items = {item["index"]: item for item in job["result"]["items"]}
        for i, case in enumerate(chunk):
            item = items[i]
            if item["error"]:
                assert item["error"]["code"] == "bad_image" and one_line(item["error"]["message"])
            problems.append(judge(case, "error" if item["error"] else "ok", str(item["error"])))

        products = [
            {"sku": f"imp-{start + i}", "title": c.name, "images": [base64.b64encode(c.data).decode()]}
            for i, c in enumerate(chunk)
        ]
        reply = client.post("/v1/products/import", json={"products": products, "on_conflict": "update"})
        assert reply.status_code == 202, reply.text
        job = wait_for_job(client, reply.json()["status_url"], timeout=120)
        assert job["status"] == "succeeded", job
        rejected = {r["index"]: r["reason"] for r in job["result"]["rejected"]}
        for i, case in enumerate(chunk):
            assert i not in rejected or one_line(rejected[i])
            problems.append(judge(case, "error" if i in rejected else "ok", rejected.get(i, "")))
    assert [p for p in problems if p] == []


@pytest.mark.slow
def test_memory_stays_flat_while_chewing_through_the_corpus(server):
    client, _ = server

    def one_pass():
        for case in CORPUS:
            assert client.post("/v1/recognize", files={"image": _file(case)}).status_code < 500

    one_pass()  # warm: allocator pools, caches and lazy imports settle
    before = rss_mb()
    one_pass()
    grown = rss_mb() - before
    assert grown < 40, f"memory grew by {grown:.0f} MB over a second pass"


@pytest.mark.parametrize(
    "hostile",
    [
        "../../etc/passwd",
        "..",
        "%2e%2e%2fetc%2fpasswd",
        "a" * 5000,
        "\u202e\u0000x",
        "<script>alert(1)</script>",
        "' OR 1=1 --",
    ],
)
def test_hostile_path_and_query_values_are_4xx(server, hostile):
    client, base = server
    from urllib.parse import quote

    value = quote(hostile, safe="")
    replies = [
        client.get(f"/v1/products/{value}"),
        client.get(f"/v1/products/{value}/image"),
        client.get(f"/v1/products/{value}/similar"),
        client.put(f"/v1/products/{value}", json={"title": "x"}),
        client.delete(f"/v1/products/{value}"),
        client.get(f"/v1/jobs/{value}"),
        client.delete(f"/v1/jobs/{value}"),
        client.get(f"/v1/products?category={value}"),
        client.post(f"/v1/explain?label={value}", files={"image": _file(CORPUS[0])}),
        client.post(
            "/v1/products",
            data={"product": json.dumps({"sku": hostile, "title": "x"})},
            files={"images": ("../../../../tmp/evil.jpg", encode(quadrants(), "JPEG"), "image/jpeg")},
        ),
    ]
    for reply in replies:
        assert reply.status_code < 500, (reply.request.url, reply.text)
        if reply.status_code >= 400:
            assert one_line(reply.json()["error"]["message"])
    assert replies[-1].status_code == 422 or "/" not in hostile  # slashes are never a SKU
    # Upload file names never name a stored file: media and stored uploads are named by content or at random.
    assert not any("evil" in p.name for p in base.rglob("*")) and not Path("/tmp/evil.jpg").exists()


# --- CSV imports and file names --------------------------------------------------------------------


def test_malformed_csv_imports_are_refused_with_one_line(trained_run, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(encode(quadrants(), "JPEG"))
    header = "sku,image,title\n"
    files = {
        "binary.csv": bytes(range(256)) * 8,
        "utf16.csv": (header + "a,img/a.jpg,t\n").encode("utf-16"),
        "latin1.csv": (header + "a,img/a.jpg,caf\xe9\n").encode("latin-1"),
        "huge-field.csv": (header + "a,img/a.jpg," + "x" * 200_000 + "\n").encode(),
        "no-columns.csv": b"foo,bar\n1,2\n",
        "empty.csv": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        code, out, err = run_cli(
            [
                "catalog",
                "import",
                str(tmp_path / name),
                "--db",
                str(tmp_path / "shop.db"),
                "--run",
                str(trained_run[0]),
                "--no-progress",
            ]
        )
        assert code == 2 and err.startswith("skulens: error: ") and err.count("\n") == 1, (name, err)
        assert "unexpected" not in err and "Traceback" not in err, (name, err)


def test_traversal_in_skus_and_image_paths_is_refused(trained_run, tmp_path):
    (tmp_path / "shop" / "img").mkdir(parents=True)
    (tmp_path / "shop" / "img" / "a.jpg").write_bytes(encode(quadrants(), "JPEG"))
    (tmp_path / "outside.jpg").write_bytes(encode(quadrants(), "JPEG"))
    bad_skus = ["../../etc/passwd", "a/b", "..", "a\\b", "\x1b[31mred", "x" * 300]
    bad_paths = ["../outside.jpg", "img/../../outside.jpg", "img/../../../../../../etc/passwd"]
    rows = (
        ["sku,image,title"]
        + [f'"{s}",img/a.jpg,t' for s in bad_skus]
        + [f"p{i},{p},t" for i, p in enumerate(bad_paths)]
    )
    rows.append("good,img/a.jpg,t")
    (tmp_path / "shop" / "products.csv").write_text("\n".join(rows) + "\n")
    code, out, err = run_cli(
        [
            "catalog",
            "import",
            str(tmp_path / "shop" / "products.csv"),
            "--db",
            str(tmp_path / "shop.db"),
            "--run",
            str(trained_run[0]),
            "--no-progress",
        ]
    )
    assert code == 1 and "imported 1 new" in out
    assert f"{len(bad_skus) + len(bad_paths)} rejected" in out
    assert err.count("invalid SKU") == len(bad_skus) and err.count("leaves the CSV's folder") == len(bad_paths)


# --- model files -----------------------------------------------------------------------------------


def test_tampered_weights_are_refused_and_old_runs_still_load(trained_run, tmp_path, caplog):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    record = json.loads((run / CHECKSUMS_FILE).read_text())
    assert set(record["sha256"]) >= {WEIGHTS_FILE, "last.safetensors"} and record["pending"] == {}
    load_run(run)
    weights = (run / WEIGHTS_FILE).read_bytes()
    flipped = bytearray(weights)
    flipped[-3] ^= 0x01  # one bit of one float: still a valid safetensors file
    (run / WEIGHTS_FILE).write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="does not match its recorded checksum"):
        load_run(run)
    code, _, err = run_cli(["predict", str(run), str(run / "curves.png"), "--engine", "torch"])
    assert code == 2 and "checksum" in err and err.count("\n") == 1
    (run / CHECKSUMS_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable checksum record"):
        load_run(run)
    (run / WEIGHTS_FILE).write_bytes(weights)
    (run / CHECKSUMS_FILE).unlink()  # a run saved before checksums existed
    with caplog.at_level("WARNING", logger="skulens.runs.folder"):
        load_run(run)
    assert "no recorded checksum" in caplog.text


def test_only_safetensors_and_json_are_read_from_a_run(trained_run):
    run = Path(trained_run[0])
    suffixes = {p.suffix for p in run.iterdir() if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".toml", ".md", ".csv", ".png", ".onnx"}, suffixes
    source = Path(__file__).resolve().parents[1] / "src" / "skulens"
    for path in source.rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text and "allow_pickle=True" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
