"""Schema-driven fuzzing of the HTTP API with schemathesis: requests generated from /openapi.json
(valid and invalid) against a real `skulens serve` with a catalog, an API key and encrypted upload
storage. The server must never answer 5xx, and its answers must match the schema it publishes.

    pip install schemathesis                       # in the dev extra
    python scripts/fuzz_api.py                     # trains a tiny seedcnn run first; 3 minutes at most
    python scripts/fuzz_api.py --run runs/demo --max-examples 100 --max-time 600
    python scripts/fuzz_api.py --checks not_a_server_error          # only the "no 5xx" check

Exits with schemathesis' status (non-zero on any failed check), or 1 when the server died. The JSON
report (requests, failures) lands in --report-dir (default: a temp folder; its path is printed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak_server import memory_mb, running_server, seed_catalog, tiny_run  # noqa: E402

DEFAULT_CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="run folder to serve (default: train a tiny seedcnn first)")
    p.add_argument("--max-examples", type=int, default=40, help="generated cases per operation (default 40)")
    p.add_argument("--max-time", type=int, default=180, help="time budget in seconds (default 180, at most 1800)")
    p.add_argument("--checks", default=DEFAULT_CHECKS, help=f"schemathesis checks (default {DEFAULT_CHECKS})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-dir", default=None)
    args = p.parse_args(argv)
    if shutil.which("schemathesis", path=str(Path(sys.executable).parent)) is None:
        print("schemathesis is not installed: pip install schemathesis (or pip install -e '.[dev]')", file=sys.stderr)
        return 2
    report_dir = Path(args.report_dir or tempfile.mkdtemp(prefix="skulens-fuzz-api-"))
    with tempfile.TemporaryDirectory(prefix="skulens-fuzz-api-") as tmp:
        work = Path(tmp)
        run = Path(args.run) if args.run else tiny_run(work / "train")
        with running_server(run, work) as (base, key, proc):
            seed_catalog(base, key)
            cmd = [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{base}/openapi.json",
                "--header",
                f"X-API-Key: {key}",
                "--checks",
                args.checks,
                "--max-examples",
                str(args.max_examples),
                "--max-time",
                str(min(args.max_time, 1800)),
                "--seed",
                str(args.seed),
                "--workers",
                "1",
                "--request-timeout",
                "60",
                "--no-color",
                "--suppress-health-check",
                "all",
                "--report",
                "json",
                "--report-dir",
                str(report_dir),
                "--output-sanitize",
                "true",
            ]
            code = subprocess.run(cmd, check=False).returncode
            alive = proc.poll() is None and httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            rss, peak = memory_mb(proc.pid)
        server_log = (work / "server.log").read_text(errors="replace")
    errors_logged = server_log.count("unexpected ")
    print(
        json.dumps(
            {
                "schemathesis_exit": code,
                "server_alive": alive,
                "server_rss_mb": round(rss),
                "server_peak_rss_mb": round(peak),
                "server_unexpected_errors_logged": errors_logged,
                "report_dir": str(report_dir),
            },
            indent=2,
        )
    )
    if not alive:
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
