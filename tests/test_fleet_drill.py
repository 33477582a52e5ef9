"""The fleet fault drill (scripts/fault_drill.py) in small: two `skulens serve` on one PostgreSQL catalog
behind nginx (deploy/nginx/skulens.conf), kill -9 of a server during a bulk import and during traffic.

Needs PostgreSQL (``SKULENS_TEST_POSTGRES_URL``; ``bash .ci/run`` starts one and sets it) and nginx
(``.ci/run`` installs Debian's); skipped with the reason otherwise. The drill drops every table of
that database first, as tests/test_backends.py does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, subprocess_env

pytestmark = [pytest.mark.services, pytest.mark.slow]
PG_ENV = "SKULENS_TEST_POSTGRES_URL"
DRILL = ROOT / "scripts" / "fault_drill.py"
PRODUCTS, REQUESTS = 40, 60


def _nginx() -> str | None:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    return found if Path(found).is_file() and os.access(found, os.X_OK) else None


@pytest.fixture(scope="module")
def drill(trained_run, tmp_path_factory) -> dict:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set: no PostgreSQL for the fleet drill (bash .ci/run starts one and sets it)")
    nginx = _nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx; bash .ci/run does): no load balancer to drill")
    out = tmp_path_factory.mktemp("drill") / "drill.json"
    # fmt: off
    cmd = [
        sys.executable, str(DRILL), "--postgres-url", url, "--run", str(trained_run[0]), "--nginx", nginx,
        "--products", str(PRODUCTS), "--requests", str(REQUESTS), "--clients", "3", "--rate", "30",
        "--takeover-timeout", "40", "--ready-timeout", "60", "--time-limit", "150", "--json", str(out),
    ]
    # fmt: on
    reply = subprocess.run(cmd, capture_output=True, text=True, timeout=200, env=subprocess_env(), cwd=ROOT)
    if not out.exists():
        output = f"{reply.stdout[-3000:]}\n{reply.stderr[-3000:]}"
        pytest.fail(f"the drill wrote no figures (exit {reply.returncode}):\n{output}")
    figures = json.loads(out.read_text())
    if reply.returncode == 2:
        pytest.fail(f"the drill could not run: {figures.get('error')}\n{json.dumps(figures, indent=1)[-3000:]}")
    assert reply.returncode == (0 if figures["ok"] else 1)
    return figures


def test_requests_through_nginx_survive_a_server_kill_and_restart(drill):
    part2 = drill["part2"]
    shown = json.dumps(part2, indent=1)
    assert part2["failures"] == [], shown
    assert part2["answered"] == REQUESTS and part2["failed"] == 0 and part2["ok_200"] == REQUESTS, shown
    assert "killed_at_s" in part2 and "restarted_at_s" in part2, shown
    assert part2["nginx"]["logged"] == REQUESTS, shown  # every request is in the access log, retries on one line
    assert part2["nginx"]["retried_on_another_server"] == part2["nginx"]["retried_then_200"], shown
    assert part2["victim_ready_after_restart_s"] is not None and part2["rejoin"]["rejoined"], shown


def test_a_bulk_job_is_finished_by_another_server_when_its_server_dies(drill):
    part1 = drill["part1"]
    shown = json.dumps(part1, indent=1)
    if not drill["job_lease_supported"]:
        # Issue 21: jobs move into the database with leases (`skulens serve --job-lease`). Until that
        # lands a job lives and dies with its server; strict as soon as the flag exists.
        pytest.xfail(f"`skulens serve` has no --job-lease yet (jobs are per server): {part1['failures']}")
    assert part1["failures"] == [], shown  # what the drill found wrong, in its words
    assert 0 < part1["done_at_kill"] < PRODUCTS, shown
    assert part1["job_visible_on_b_before_kill"], shown
    assert part1["job_status_on_b"] == "succeeded" and part1["rejected"] == 0, shown
    assert part1["attempts"] >= 2, shown  # B ran it too: taken over, not finished by A before the kill
    assert part1["products_on_b"] == part1["distinct_products_on_b"] == PRODUCTS, shown
    assert part1["readyz_b"]["http_status"] == 200, shown
    assert part1["search_top_sku"] == part1["search_expected_sku"], shown
