"""Helpers shared by several test files: a free port, the `skulens` command line in a subprocess,
waiting for a condition, a server or an HTTP job. Fixtures live in tests/conftest.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots and caches kept between runs (gitignored)
JOB_FINISHED = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    """A loopback TCP port that nothing listens on (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child, with one OpenMP thread (the suite shares few cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def skulens_command(*args: str | Path) -> list[str]:
    """The argv of `python -m skulens ARGS` with this interpreter."""
    return [sys.executable, "-m", "skulens", *map(str, args)]


def run_cli(
    *args: str | Path, timeout: float = 300, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m skulens ARGS` to the end; returns the CompletedProcess, stdout and stderr as text."""
    return subprocess.run(skulens_command(*args), capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def start_cli(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None, **popen: Any
) -> subprocess.Popen:
    """Start `python -m skulens ARGS` in the background; by default stdout and stderr go to one text pipe."""
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen(skulens_command(*args), text=True, env=env, cwd=cwd, **popen)


def stop(proc: subprocess.Popen, timeout: float = 15) -> str:
    """Terminate a process started by :func:`start_cli` (kill it if it lingers); returns its output."""
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05, message: str = "") -> Any:
    """Call ``condition`` until it returns something other than None or False; return that value.
    Fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)


def wait_healthy(base_url: str, proc: subprocess.Popen, timeout: float = 120, interval: float = 0.2):
    """Poll ``BASE_URL/readyz`` until the server answers 200 (its model loaded: `skulens serve` binds
    first and loads in the background) and return that response; fails at once, with the server's
    output, if the process exits first."""
    import httpx

    def answer():
        if proc.poll() is not None:
            output = proc.stdout.read()[-3000:] if proc.stdout else ""
            raise AssertionError(f"the server exited with code {proc.returncode} before answering:\n{output}")
        try:
            reply = httpx.get(f"{base_url}/readyz", timeout=5)
        except httpx.TransportError:
            return None
        return reply if reply.status_code == 200 else None

    return wait_until(answer, timeout, interval, f"{base_url}/readyz did not answer 200 within {timeout} s")


def wait_for_job(client, url: str, timeout: float = 30, **request: Any) -> dict:
    """Poll an HTTP job's status URL (``client`` is a TestClient, an httpx client or the httpx module)
    until the job has finished; returns its last status."""
    seen: list[dict] = []

    def finished():
        seen.append(client.get(url, **request).json())
        return seen[-1] if seen[-1].get("status") in JOB_FINISHED else None

    try:
        return wait_until(finished, timeout)
    except AssertionError:
        raise AssertionError(f"job {url} still {seen[-1].get('status')} after {timeout} s") from None


def assert_json_error(response, status: int, code: str) -> dict:
    """An HTTP error answered as one-line JSON ``{"error": {"code", "message"}}``; returns the error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and "\n" not in error["message"] and "Traceback" not in response.text
    return error


def noise_jpeg(size: int = 200, seed: int = 0, quality: int = 90) -> bytes:
    """A JPEG of random pixels (hard to compress: its size grows with ``size``)."""
    import numpy as np
    from PIL import Image

    from tests.conftest import jpeg_bytes

    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return jpeg_bytes(Image.fromarray(arr), quality=quality)


def drop_every_table(url: str) -> None:
    """An empty database at ``url``: every table, Alembic's revision table included."""
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url)
    try:
        tables = MetaData()
        tables.reflect(engine)
        tables.drop_all(engine)
    finally:
        engine.dispose()


def empty_postgres_url() -> str:
    """``$SKULENS_TEST_POSTGRES_URL`` with every table dropped (the test skips without it); callers
    drop the tables again when done."""
    import pytest

    url = os.environ.get("SKULENS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("SKULENS_TEST_POSTGRES_URL is not set: no PostgreSQL to test against (bash .ci/run starts one)")
    drop_every_table(url)
    return url
