"""Fault drill for a fleet: two `skulens serve` processes on one PostgreSQL catalog behind nginx
(deploy/nginx/skulens.conf), and kill -9 of a server while it works. Loopback only, bounded in time.

Part 1 (a job survives its server): a bulk import of N products is posted to server A and polled
through server B; once it is part-way, A is killed with kill -9. B must take the job over when its
lease expires (`--job-lease`) and finish it: then B lists exactly N products, its /readyz says the
index is in sync, and a search by one product's photo finds that product.

Part 2 (clients never see a kill): A is restarted, and M recognitions go through nginx from a few
client threads; a third of the way through one server is killed with kill -9, two thirds of the way
through it is restarted. Every request must get a 200 (nginx retries the ones the dead server held
on the other server); nginx's access log says how many it retried.

    python scripts/fault_drill.py                                   # $SKULENS_TEST_POSTGRES_URL, tiny model
    python scripts/fault_drill.py --postgres-url postgresql+psycopg://u:p@127.0.0.1/db --run runs/search \\
        --products 48 --requests 150 --json drill.json

The drill DROPS EVERY TABLE of that database first (use a database kept for tests). It needs nginx
(on PATH or /usr/sbin/nginx) and trains a tiny seedcnn (~20 s) unless --run names a run folder.
Prints one JSON object with every figure and timing. Exit status: 0 when both parts passed, 1 when a
check failed, 2 when the drill could not run (no database, no nginx, a server that would not start).
"""

from __future__ import annotations

import argparse
import base64
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "skulens.conf"
PG_ENV = "SKULENS_TEST_POSTGRES_URL"
FINISHED = ("succeeded", "failed", "cancelled")


class DrillError(Exception):
    """The drill could not run (exit 2), as opposed to a check that failed (exit 1)."""


class Deadline:
    """The drill's overall time limit: every wait takes the smaller of its own limit and what is left."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self, limit: float | None = None) -> float:
        left = max(0.0, self.end - time.monotonic())
        return left if limit is None else min(limit, left)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def since(t0: float) -> float:
    return round(time.monotonic() - t0, 3)


# -- the database ----------------------------------------------------------------------------------
def fresh_database(url: str) -> None:
    """Drop every table of the database (the catalog's, the jobs', anything else): the drill starts empty."""
    from sqlalchemy import MetaData, create_engine, make_url, text

    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        meta = MetaData()
        meta.reflect(engine)
        meta.drop_all(engine)
    except Exception as exc:  # noqa: BLE001 - any reason the database is not usable ends the drill
        raise DrillError(f"PostgreSQL at {shown} is not usable: {str(exc).splitlines()[0][:200]}") from None
    finally:
        engine.dispose()


# -- the model and the photos ----------------------------------------------------------------------
def tiny_run(folder: Path) -> Path:
    """A seedcnn trained for a few epochs on coloured squares, as the tests' ``trained_run``."""
    from skulens.data.datasets import load_dataset
    from skulens.training.config import TrainConfig
    from skulens.training.trainer import train
    from tests.conftest import write_class_folders

    data = write_class_folders(folder / "shop", per_class=16)
    cfg = TrainConfig(model="seedcnn", epochs=4, img_size=40, batch_size=8, lr=2e-3, patience=0, progress=False)
    train(cfg, load_dataset(data), folder / "run")
    return folder / "run"


def photo(i: int, size: int) -> bytes:
    from tests.conftest import COLOURS, coloured_photo, jpeg_bytes

    names = list(COLOURS)
    return jpeg_bytes(coloured_photo(COLOURS[names[i % 3]], 7000 + i, size=size), quality=92)


def import_payload(n: int, size: int) -> dict:
    """N products with one generated JPEG each (as tests/test_faults.py builds them)."""
    from tests.conftest import COLOURS

    names = list(COLOURS)
    products = [
        {
            "sku": f"sku-{i:03d}",
            "title": f"product {i}",
            "category_path": ["Paint", names[i % 3]],
            "images": [base64.b64encode(photo(i, size)).decode()],
        }
        for i in range(n)
    ]
    return {"products": products, "on_conflict": "error"}


# -- processes -------------------------------------------------------------------------------------
class Children:
    """Every process the drill starts, each in a session of its own, so that the end kills all of them."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        self.procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                except ProcessLookupError:
                    pass
            try:  # whatever is left of its session (nginx workers whose master died, say)
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def serve_help(env: dict[str, str]) -> str:
    reply = subprocess.run(
        [sys.executable, "-m", "skulens", "serve", "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    return reply.stdout


class Server:
    """One `skulens serve` on a loopback port; start() again after a kill restarts it on the same port."""

    def __init__(self, name: str, args: list[str], work: Path, env: dict[str, str], children: Children):
        self.name, self.args, self.work, self.env, self.children = name, args, work, env, children
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = work / f"server-{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "skulens", "serve", *self.args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.starts += 1
        with self.log.open("a") as out:
            out.write(f"\n--- start {self.starts} ---\n")
        self.proc = self.children.start(cmd, self.log, self.env)
        self.started_at = time.monotonic()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait_ready(self, timeout: float) -> float:
        """Poll /readyz until 200 (the model loads in the background: /healthz may answer first); seconds taken."""
        t0 = time.monotonic()
        last = "no answer"
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise DrillError(f"server {self.name} exited with code {self.proc.returncode}: {self.tail()}")
            try:
                reply = httpx.get(f"{self.base}/readyz", timeout=3)
                if reply.status_code == 200:
                    return since(t0)
                last = f"{reply.status_code} {reply.text[:300]}"
                if "failed" in str(reply.json().get("checks", {}).get("model", "")):
                    break  # the background load failed: it will not become ready
            except ValueError:
                pass
            except httpx.TransportError as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise DrillError(f"server {self.name} not ready after {since(t0):.0f} s (last: {last}): {self.tail()}")

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def find_nginx(given: str | None) -> str:
    for candidate in (given, shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise DrillError("nginx not found (on PATH or /usr/sbin/nginx): apt-get install nginx, or pass --nginx")


def render_site(template: str, upstreams: list[int], listen: int, access_log: Path) -> str:
    """deploy/nginx/skulens.conf with the drill's upstream ports, listen port and access log; nothing else
    changes, so the drill runs the configuration that ships."""

    def replace_once(pattern: str, new: str, text: str, flags: int = 0) -> str:
        out, count = re.subn(pattern, new, text, flags=flags)
        if count != 1:
            raise DrillError(f"{NGINX_TEMPLATE}: expected one match of {pattern!r}, found {count}")
        return out

    block = re.search(r"upstream skulens \{.*?\n\}", template, re.S)
    if not block:
        raise DrillError(f"{NGINX_TEMPLATE}: no 'upstream skulens {{ ... }}' block")
    lines = re.findall(r"^( *)server 127\.0\.0\.1:\d+( [^;]*)?;$", block.group(0), re.M)
    if not lines:
        raise DrillError(f"{NGINX_TEMPLATE}: no 'server 127.0.0.1:PORT ...;' line in the upstream block")
    indent, params = lines[0]
    servers = "\n".join(f"{indent}server 127.0.0.1:{port}{params};" for port in upstreams)
    new_block = re.sub(r"(^ *server 127\.0\.0\.1:\d+[^;]*;\n)+", servers + "\n", block.group(0), count=1, flags=re.M)
    text = template.replace(block.group(0), new_block)
    text = replace_once(r"^(\s*)listen [^;]+;", rf"\g<1>listen 127.0.0.1:{listen};", text, re.M)
    text = replace_once(
        r"^(\s*)access_log \S+ skulens_json;", rf"\g<1>access_log {access_log} skulens_json;", text, re.M
    )
    return text


def start_nginx(binary: str, work: Path, upstreams: list[int], children: Children, env: dict[str, str]):
    """nginx in the foreground as the current user, every path in ``work``; returns (process, port, log)."""
    folder = work / "nginx"
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    access_log = folder / "access.log"
    site = folder / "skulens.conf"
    site.write_text(render_site(NGINX_TEMPLATE.read_text(), upstreams, port, access_log))
    # As root, nginx would hand its workers to `nobody`; the drill keeps them as the current user.
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};"
    main_conf = folder / "nginx.conf"
    main_conf.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
{user}
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {site};
}}
"""
    )
    prefix = ["-p", str(folder), "-c", str(main_conf)]
    # -e: the error log before the configuration is read (default /var/log/nginx/error.log, not ours)
    early = ["-e", str(folder / "error.log")] if "-e filename" in nginx_help(binary) else []
    check = subprocess.run([binary, *early, *prefix, "-t"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise DrillError(f"nginx -t refused the generated configuration: {check.stderr.strip()[-800:]}")
    proc = children.start([binary, *early, *prefix], folder / "stdout.log", env)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise DrillError(f"nginx exited with code {proc.returncode}: {(folder / 'error.log').read_text()[-800:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise DrillError("nginx did not listen within 20 s") from None
            time.sleep(0.1)
    return proc, port, access_log


def nginx_help(binary: str) -> str:
    reply = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=30)
    return reply.stdout + reply.stderr


def nginx_version(binary: str) -> str:
    reply = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30)
    return (reply.stderr or reply.stdout).strip().split("/")[-1]


# -- part 1: a job outlives its server -------------------------------------------------------------
def job_status(base: str, url: str, key: str) -> tuple[int, dict | None]:
    try:
        reply = httpx.get(f"{base}{url}", headers={"X-API-Key": key}, timeout=5)
    except httpx.TransportError:
        return 0, None
    try:
        return reply.status_code, reply.json()
    except ValueError:
        return reply.status_code, None


def part1(a: Server, b: Server, key: str, args, deadline: Deadline, lease_supported: bool) -> dict:
    out: dict = {"products": args.products, "submitted_to": "A", "polled_on": "B", "failures": []}
    fail = out["failures"].append
    payload = import_payload(args.products, args.photo_size)
    query_photo = base64.b64decode(payload["products"][-1]["images"][0])
    expected_sku = payload["products"][-1]["sku"]
    t0 = time.monotonic()
    reply = httpx.post(f"{a.base}/v1/products/import", json=payload, headers={"X-API-Key": key}, timeout=60)
    if reply.status_code != 202:
        last_error = [line for line in a.tail(4000).splitlines() if line.strip()][-1:]  # the exception, if any
        fail(f"import not accepted by A: {reply.status_code} {reply.text[:300]} (A's log: {last_error})")
        return out
    url = reply.json()["status_url"]
    out["job_id"] = reply.json()["job_id"]
    out["submit_s"] = since(t0)

    # Wait until the job is part-way, as B reports it (A's own view when B does not know the job).
    seen_on_b = False
    done = 0
    while True:
        code_b, job_b = job_status(b.base, url, key)
        if code_b == 200 and job_b:
            seen_on_b = True
            job, where = job_b, "B"
        else:
            code_a, job = job_status(a.base, url, key)
            where = "A"
            if code_a != 200 or not job:
                fail(f"job unknown to both servers (B: {code_b}, A: {code_a})")
                return out
        done = job["progress"]["done"]
        if job["status"] in FINISHED:
            fail(f"the import ended ({job['status']}) before the kill: use more --products or a larger --photo-size")
            out["job_visible_on_b_before_kill"] = seen_on_b
            return out
        if 0 < done < args.products:
            break
        if deadline.left() <= 0 or time.monotonic() - t0 > 120:
            fail(f"the import made no progress within {since(t0)} s")
            return out
        time.sleep(0.02)
    out["job_visible_on_b_before_kill"] = seen_on_b
    if not seen_on_b:
        fail(f"B answered {code_b} for the job submitted to A: jobs are not shared through the database")
    out["progress_seen_on"] = where
    out["done_at_kill"] = done
    a.kill9()
    t_kill = time.monotonic()
    out["killed_after_s"] = round(t_kill - t0, 3)

    # B takes the job over once A's lease has expired, and finishes it.
    limit = args.takeover_timeout if lease_supported else min(args.takeover_timeout, 10)
    states: list[str] = []
    progress: list[int] = []
    last_code, job = 0, None
    while deadline.left() > 0 and time.monotonic() - t_kill < limit:
        last_code, job = job_status(b.base, url, key)
        state = job["status"] if last_code == 200 and job else f"http {last_code}"
        if not states or states[-1] != state:
            states.append(state)
        if last_code == 200 and job:
            if not progress or progress[-1] != job["progress"]["done"]:
                progress.append(job["progress"]["done"])
            # attempts: how many servers have run the job; 2 once B has taken it over from A
            if job.get("attempts", 0) > 1 and "taken_over_after_s" not in out:
                out["taken_over_after_s"] = since(t_kill)
            if job["status"] in FINISHED:
                break
        time.sleep(0.1)
    out["progress_on_b_after_kill"] = progress
    out["attempts"] = job.get("attempts") if last_code == 200 and job else None
    out["states_on_b_after_kill"] = states
    out["job_status_on_b"] = job["status"] if last_code == 200 and job else f"http {last_code}"
    if last_code == 200 and job and job["status"] == "succeeded":
        out["finished_after_kill_s"] = since(t_kill)
        result = job.get("result") or {}
        out["rejected"] = len(result.get("rejected", []))
        if out["rejected"]:
            fail(f"the job taken over rejected {out['rejected']} products: {result['rejected'][:3]}")
    else:
        fail(f"B did not finish the job within {limit:.0f} s of the kill (last: {out['job_status_on_b']})")

    # What B serves now.
    skus: list[str] = []
    offset = 0
    while offset is not None:
        page = httpx.get(f"{b.base}/v1/products", params={"offset": offset, "limit": 500}, timeout=30).json()
        skus += [p["sku"] for p in page["products"]]
        offset = page.get("next_offset")
    out["products_on_b"] = len(skus)
    out["distinct_products_on_b"] = len(set(skus))
    if sorted(skus) != sorted(p["sku"] for p in payload["products"]):
        fail(f"B lists {len(skus)} products ({len(set(skus))} distinct), expected exactly {args.products}")
    ready = httpx.get(f"{b.base}/readyz", timeout=30)
    out["readyz_b"] = {"http_status": ready.status_code, **ready.json()}
    if ready.status_code != 200:
        fail(f"B is not ready after the takeover: {ready.text[:300]}")
    found = httpx.post(
        f"{b.base}/v1/search", files={"image": ("q.jpg", query_photo, "image/jpeg")}, params={"top_k": 3}, timeout=30
    )
    top = found.json()["products"][0]["sku"] if found.status_code == 200 and found.json()["products"] else None
    out["search_top_sku"], out["search_expected_sku"] = top, expected_sku
    if top != expected_sku:
        fail(f"a search on B by {expected_sku}'s photo found {top} ({found.status_code})")
    out["ok"] = not out["failures"]
    return out


# -- part 2: recognitions through nginx while a server dies and comes back -------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 4)


def part2(servers: dict[str, Server], nginx_port: int, access_log: Path, args, deadline: Deadline) -> dict:
    victim = servers[args.victim.upper()]
    m = args.requests
    out: dict = {"requests": m, "clients": args.clients, "victim": args.victim.upper(), "failures": []}
    photos = [photo(10_000 + i, args.photo_size) for i in range(16)]
    url = f"http://127.0.0.1:{nginx_port}/v1/recognize"
    log_start = access_log.stat().st_size if access_log.exists() else 0

    lock = threading.Lock()
    next_index = 0
    results: list[dict] = []
    interval = args.clients / args.rate if args.rate > 0 else 0.0
    stop = threading.Event()

    def client(_: int) -> None:
        nonlocal next_index
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                with lock:
                    if next_index >= m:
                        return
                    i = next_index
                    next_index += 1
                started = time.monotonic()
                record = {"i": i, "status": None, "error": None}
                try:
                    reply = http.post(url, files={"image": ("p.jpg", photos[i % len(photos)], "image/jpeg")})
                    record["status"] = reply.status_code
                    if reply.status_code != 200:
                        record["error"] = reply.text[:200]
                except httpx.HTTPError as exc:
                    record["error"] = f"{type(exc).__name__}: {exc}"[:200]
                record["latency"] = time.monotonic() - started
                with lock:
                    results.append(record)
                if interval:
                    time.sleep(max(0.0, interval - record["latency"]))

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(args.clients)]
    for thread in threads:
        thread.start()
    events: dict[str, float] = {}
    try:
        while any(t.is_alive() for t in threads):
            with lock:
                sent = next_index
            if "killed_at_s" not in events and sent >= m // 3:
                victim.kill9()
                events["killed_at_s"] = since(t0)
                out["killed_after_requests"] = sent
            if "restarted_at_s" not in events and "killed_at_s" in events and sent >= 2 * m // 3:
                victim.start()
                events["restarted_at_s"] = since(t0)
                out["restarted_after_requests"] = sent
            if deadline.left() <= 0:
                stop.set()
                out["failures"].append("the drill's time limit ended part 2 early")
                break
            time.sleep(0.005)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=70)
    out["duration_s"] = since(t0)
    if "restarted_at_s" not in events:  # too few requests to reach two thirds before the end
        victim.start()
        events["restarted_at_s"] = since(t0)
    out.update(events)
    try:
        victim.wait_ready(deadline.left(args.ready_timeout))
        out["victim_ready_after_restart_s"] = since(victim.started_at)
    except DrillError as exc:
        out["failures"].append(str(exc))

    ok = [r for r in results if r["status"] == 200]
    bad = [r for r in results if r["status"] != 200]
    out["answered"] = len(results)
    out["ok_200"] = len(ok)
    out["failed"] = len(bad) + (m - len(results))
    out["failed_examples"] = [{k: r[k] for k in ("i", "status", "error")} for r in bad[:5]]
    latencies = [r["latency"] for r in results]
    out["latency_s"] = {
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "max": round(max(latencies), 4) if latencies else None,
    }
    if out["failed"]:
        out["failures"].append(f"{out['failed']} of {m} requests through nginx failed")

    # nginx's view: one log line per client request; a retried one names two servers in upstream_addr.
    time.sleep(0.3)  # nginx writes the line as the request ends; give the last ones a moment
    names = {f"127.0.0.1:{s.port}": n for n, s in servers.items()}
    entries = recognitions_logged(access_log, log_start)
    retried = [e for e in entries if len(attempts(e["upstream_addr"])) > 1]
    served_by: dict[str, int] = {}
    for entry in entries:
        last = attempts(entry["upstream_addr"])[-1]
        served_by[names.get(last, last)] = served_by.get(names.get(last, last), 0) + 1
    statuses: dict[str, int] = {}
    for entry in entries:
        for status in attempts(entry["upstream_status"]):
            statuses[status] = statuses.get(status, 0) + 1
    out["nginx"] = {
        "logged": len(entries),
        "retried_on_another_server": len(retried),
        "retried_then_200": sum(1 for e in retried if e["status"] == 200),
        "answered_by": served_by,
        "upstream_attempt_statuses": statuses,
        "client_status": {str(s): sum(1 for e in entries if e["status"] == s) for s in {e["status"] for e in entries}},
        "retried_examples": [
            {k: e[k] for k in ("upstream_addr", "upstream_status", "status", "request_time")} for e in retried[:5]
        ],
    }
    out["ok"] = not out["failures"]
    return out


def attempts(field: str) -> list[str]:
    """The servers (or their answers) of one nginx log line, in order: "a, b" = retried, "a : b" = redirected."""
    return [part.strip() for part in re.split(r", | : ", field) if part.strip()]


def recognitions_logged(access_log: Path, offset: int) -> list[dict]:
    """The /v1/recognize lines nginx logged from byte ``offset`` on."""
    entries = []
    with access_log.open() as handle:
        handle.seek(offset)
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("uri") == "/v1/recognize":
                entries.append(entry)
    return entries


def rejoin_check(victim: Server, nginx_port: int, access_log: Path, args, deadline: Deadline) -> dict:
    """After its restart, does the victim get requests through nginx again (passive checks let it back
    in after fail_timeout)? Recognitions one at a time until nginx logs one it answered."""
    url = f"http://127.0.0.1:{nginx_port}/v1/recognize"
    body = photo(20_000, args.photo_size)
    target = f"127.0.0.1:{victim.port}"
    offset = access_log.stat().st_size
    t0 = time.monotonic()
    sent = failed = 0
    with httpx.Client(timeout=30) as http:
        while time.monotonic() - t0 < deadline.left(30):
            sent += 1
            try:
                if http.post(url, files={"image": ("p.jpg", body, "image/jpeg")}).status_code != 200:
                    failed += 1
            except httpx.HTTPError:
                failed += 1
            time.sleep(0.1)
            if any(
                attempts(e["upstream_addr"])[-1] == target and e["status"] == 200
                for e in recognitions_logged(access_log, offset)
            ):
                return {"rejoined": True, "after_s": since(t0), "requests": sent, "failed": failed}
    return {"rejoined": False, "after_s": since(t0), "requests": sent, "failed": failed}


# -- the drill -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--postgres-url", default=os.environ.get(PG_ENV), help=f"catalog database (default: ${PG_ENV})")
    parser.add_argument("--run", default=None, help="run folder to serve (default: train a tiny seedcnn, ~20 s)")
    parser.add_argument("--engine", default="torch", choices=["torch", "onnx", "auto"])
    parser.add_argument("--products", type=int, default=48, help="products in part 1's import (default 48)")
    parser.add_argument("--photo-size", type=int, default=160, help="side of the generated JPEGs (default 160)")
    parser.add_argument("--requests", type=int, default=150, help="recognitions in part 2 (default 150)")
    parser.add_argument("--clients", type=int, default=4, help="client threads in part 2 (default 4)")
    parser.add_argument(
        "--rate", type=float, default=25.0, help="part 2's requests per second, all clients (0: flat out)"
    )
    parser.add_argument("--victim", default="b", choices=["a", "b"], help="the server part 2 kills (default b)")
    parser.add_argument("--job-lease", type=float, default=3.0, help="`skulens serve --job-lease` (default 3 s)")
    parser.add_argument("--takeover-timeout", type=float, default=120.0, help="part 1's wait for B to finish the job")
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="wait for a server's /readyz (default 180)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="the whole drill (default 600 s)")
    parser.add_argument("--separate-caches", action="store_true", help="a FAISS/media cache per server (two hosts)")
    parser.add_argument("--nginx", default=None, help="nginx binary (default: on PATH, else /usr/sbin/nginx)")
    parser.add_argument("--skip-part1", action="store_true", help="only part 2")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, nginx config)")
    args = parser.parse_args(argv)
    if args.products < 2 * 16 + 1:
        parser.error("--products must be at least 33 (the import commits 16 per chunk; the kill needs a job part-way)")
    if not args.postgres_url:
        print(json.dumps({"ok": False, "error": f"no PostgreSQL: pass --postgres-url or set ${PG_ENV}"}))
        return 2

    deadline = Deadline(args.time_limit)
    children = Children()
    work = Path(tempfile.mkdtemp(prefix="skulens-drill-"))
    figures: dict = {"ok": False, "work_dir": str(work) if args.keep else None}
    timings: dict[str, float] = {}
    t_start = time.monotonic()
    exit_code = 2

    def on_alarm(signum, frame):
        raise DrillError(f"the drill's time limit ({args.time_limit:.0f} s) ran out")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.time_limit) + 30)  # a last resort; every wait is bounded by the deadline first
    try:
        nginx = find_nginx(args.nginx)
        figures["nginx_version"] = nginx_version(nginx)
        fresh_database(args.postgres_url)
        timings["database_reset_s"] = since(t_start)
        run = Path(args.run) if args.run else tiny_run(work / "model")
        timings["model_s"] = since(t_start)

        from skulens.serving.security import key_file_line, new_key

        key = new_key()
        keys = work / "keys.txt"
        keys.write_text(key_file_line(key, "drill") + "\n")
        base_env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        flags = serve_help(base_env)
        lease_supported = "--job-lease" in flags
        figures["job_lease_supported"] = lease_supported
        serve_args = [str(run), "--catalog", args.postgres_url, "--api-keys-file", str(keys), "--engine", args.engine]
        serve_args += ["--log-level", "warning"]  # product photos: in the database (the default)
        if lease_supported:
            serve_args += ["--job-lease", str(args.job_lease)]
        servers = {}
        for name in ("A", "B"):
            home = work / (f"home-{name}" if args.separate_caches else "home")
            home.mkdir(exist_ok=True)
            env = {**base_env, "HOME": str(home), "SKULENS_CACHE_DIR": str(home / "cache")}
            servers[name] = Server(name, serve_args, work, env, children)
        a, b = servers["A"], servers["B"]
        t0 = time.monotonic()
        for server in (a, b):  # at once: a fleet's servers start together on an empty database
            server.start()
        timings["a_ready_s"] = a.wait_ready(deadline.left(args.ready_timeout))
        timings["b_ready_s"] = b.wait_ready(deadline.left(args.ready_timeout))
        timings["servers_ready_s"] = since(t0)
        nginx_proc, nginx_port, access_log = start_nginx(nginx, work, [a.port, b.port], children, base_env)
        figures["config"] = {
            "products": args.products,
            "requests": args.requests,
            "clients": args.clients,
            "rate": args.rate,
            "job_lease_s": args.job_lease if lease_supported else None,
            "engine": args.engine,
            "photo_size": args.photo_size,
            "separate_caches": args.separate_caches,
        }

        t0 = time.monotonic()
        if args.skip_part1:
            figures["part1"] = {"skipped": True, "ok": True}
        else:
            figures["part1"] = part1(a, b, key, args, deadline, lease_supported)
            figures["part1"]["ok"] = not figures["part1"]["failures"]
        timings["part1_s"] = since(t0)

        t0 = time.monotonic()
        if a.proc.poll() is not None:
            a.start()
            timings["a_restart_ready_s"] = a.wait_ready(deadline.left(args.ready_timeout))
        figures["part2"] = part2(servers, nginx_port, access_log, args, deadline)
        if not figures["part2"]["failures"]:
            figures["part2"]["rejoin"] = rejoin_check(
                servers[args.victim.upper()], nginx_port, access_log, args, deadline
            )
            if not figures["part2"]["rejoin"]["rejoined"] or figures["part2"]["rejoin"]["failed"]:
                figures["part2"]["failures"].append(f"after its restart: {figures['part2']['rejoin']}")
                figures["part2"]["ok"] = False
        timings["part2_s"] = since(t0)
        if nginx_proc.poll() is not None:
            raise DrillError(f"nginx died: {(work / 'nginx' / 'error.log').read_text()[-800:]}")
        figures["ok"] = figures["part1"]["ok"] and figures["part2"]["ok"]
        exit_code = 0 if figures["ok"] else 1
    except DrillError as exc:
        figures["error"] = str(exc)
        exit_code = 2
    except Exception as exc:  # noqa: BLE001 - a bug or a surprise: still clean up and report
        import traceback

        figures["error"] = f"{type(exc).__name__}: {exc}"
        figures["traceback"] = traceback.format_exc()[-3000:]
        exit_code = 2
    finally:
        signal.alarm(0)
        children.kill_all()
        timings["total_s"] = since(t_start)
        figures["timings_s"] = timings
        # informational: a kill -9 itself leaves no traceback; one here is a server-side error to read
        figures["server_log_tracebacks"] = {
            p.stem.removeprefix("server-"): p.read_text(errors="replace").count("Traceback")
            for p in sorted(work.glob("server-*.log"))
        }
        if exit_code != 0:
            figures["server_log_tails"] = {
                p.name: p.read_text(errors="replace")[-1500:] for p in sorted(work.glob("server-*.log"))
            }
            nginx_errors = work / "nginx" / "error.log"
            if nginx_errors.exists():
                figures["nginx_error_log_tail"] = nginx_errors.read_text(errors="replace")[-1500:]
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
