"""`skulens serve` and `skulens keys new`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skulens.cli.options import EXIT_OK, add_device, add_engine
from skulens.cli.privacy import add_serve_storage_args, serve_storage_settings
from skulens.errors import SkulensError


def add_parsers(sub) -> None:
    sv = sub.add_parser(
        "serve",
        help="HTTP API + web page (FastAPI + uvicorn); without RUN, the built-in demo",
        description="Serve a run over HTTP: POST /v1/recognize, the web page at /, docs at /docs. "
        "Without arguments: the demo model and the demo product catalog.",
    )
    sv.add_argument(
        "run", nargs="?", default=None, help="run folder to serve (default: the demo model shipped with skulens)"
    )
    sv.add_argument(
        "--catalog",
        default=None,
        metavar="DB",
        help="product catalog to search (a SQLite file or a SQLAlchemy URL; made empty when it does not "
        "exist); searched with the model it was indexed with. Default without RUN: the demo catalog",
    )
    sv.add_argument("--no-catalog", action="store_true", help="no product catalog, not even the demo one")
    sv.add_argument(
        "--detector",
        default=None,
        metavar="DIR",
        help="a product detector (skulens detector train): POST /v1/recognize?objects=true finds each product",
    )
    sv.add_argument(
        "--media-dir",
        default=None,
        help="store photos of products added through the API in this folder (shared by a fleet only if the "
        "folder is; default: in the catalog's database, where every server reads them)",
    )
    sv.add_argument(
        "--job-lease",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="bulk jobs live in the catalog's database; a job whose server stops renewing its lease for this "
        "long is resumed by another server (default: 30)",
    )
    sv.add_argument("--products-k", type=int, default=12, help="products per answer (default 12)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="(default: 8000)")
    add_engine(sv)
    add_device(sv)
    _limit_args(sv)
    add_serve_storage_args(sv)
    sv.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    sv.add_argument(
        "--load-first",
        action="store_true",
        help="load the model and catalog before listening (default: listen at once, load in the background, "
        "and answer /readyz 503 until loaded)",
    )
    sv.set_defaults(handler=cmd_serve)
    keys = sub.add_parser("keys", help="API keys for `skulens serve`")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    new = keys_sub.add_parser("new", help="print a new API key and the hash line for the keys file")
    new.add_argument("--name", default=None, help="a label kept next to the hash (e.g. who uses the key)")
    new.set_defaults(handler=cmd_keys)


def _limit_args(sv) -> None:
    sv.add_argument("--top-k", type=int, default=5, help="classes per answer (default 5)")
    sv.add_argument("--max-batch-size", type=int, default=16, help="most photos per model call (default 16)")
    sv.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="longest a photo waits for others to share its model call (default 5)",
    )
    sv.add_argument("--timeout", type=float, default=30.0, help="per-request time limit in seconds (default 30)")
    sv.add_argument("--max-upload-mb", type=float, default=10.0, help="largest photo accepted (default 10 MB)")
    sv.add_argument("--max-pixels", type=int, default=40_000_000, help="largest photo in pixels (default 40M)")
    sv.add_argument(
        "--api-keys-file",
        default=None,
        help="file of key hashes from `skulens keys new`; write endpoints need one of these keys",
    )
    sv.add_argument("--protect-reads", action="store_true", help="read endpoints need a key too")
    sv.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let web pages from ORIGIN call the API (repeatable), e.g. https://shop.example",
    )
    sv.add_argument(
        "--log-client-ips", action="store_true", help="put client addresses in the access log (off by default)"
    )
    sv.add_argument(
        "--rate-limit",
        default=None,
        metavar="RATE",
        help="requests per API key (or client address without one), e.g. 60/minute; past it: 429 with "
        "Retry-After (default: no limit)",
    )
    sv.add_argument(
        "--rate-limit-storage",
        default="memory://",
        metavar="URI",
        help="where the counts live: memory:// (this server) or a store the servers share, e.g. "
        "redis://host:6379 (default: memory://)",
    )


def _check(args: argparse.Namespace) -> None:
    if args.catalog and args.no_catalog:
        raise SkulensError("--catalog and --no-catalog contradict each other")
    if not 0 < args.port < 65536:
        raise SkulensError(f"--port must be between 1 and 65535 (got {args.port})")
    if args.max_upload_mb <= 0:
        raise SkulensError("--max-upload-mb must be positive")


def config_from_args(args: argparse.Namespace):
    """The ServeConfig that `skulens serve ARGS` runs; without RUN, the demo model and its catalog."""
    from skulens.serving import config as serving_config
    from skulens.serving.config import ServeConfig
    from skulens.serving.security import load_key_hashes

    _check(args)
    run = Path(args.run) if args.run else serving_config.demo_run_dir()
    if run is None:
        raise SkulensError(
            "no run folder given, and this install has no built-in demo model: "
            "pass one, e.g. `skulens demo` then `skulens serve runs/demo`"
        )
    if not args.run:
        print(f"serving the built-in demo model ({run})", file=sys.stderr)
    if args.detector and not (Path(args.detector) / "detector.json").is_file():
        raise SkulensError(
            f"{args.detector}: not a product detector folder (no detector.json; see skulens detector train)"
        )
    # The demo serves its own detector too, so multi-product photos work with no arguments.
    detector = Path(args.detector) if args.detector else None if args.run else serving_config.demo_detector_dir()
    config = ServeConfig(
        run_dir=run,
        detector_dir=detector,
        engine=args.engine,
        device=args.device,
        top_k=args.top_k,
        products_k=args.products_k,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        request_timeout_s=args.timeout,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        api_key_hashes=load_key_hashes(args.api_keys_file) if args.api_keys_file else frozenset(),
        protect_reads=args.protect_reads,
        cors_origins=tuple(args.cors_origin),
        log_client_ips=args.log_client_ips,
        rate_limit=args.rate_limit,
        rate_limit_storage=args.rate_limit_storage,
        catalog_db=args.catalog,
        catalog_run=run if args.catalog else None,
        media_dir=Path(args.media_dir) if args.media_dir else None,
        job_lease_s=args.job_lease,
        **serve_storage_settings(args),
    )
    if config.upload_store is not None:
        print(config.upload_store.describe(), file=sys.stderr)
    demo_products = serving_config.demo_catalog_dir()
    if not args.run and not args.catalog and not args.no_catalog and demo_products is not None:
        from skulens.serving.catalog_setup import open_demo_catalog

        # After every setting is checked: a typo must not cost the first start's embedding work.
        print("opening the demo catalog (the first start embeds its photos)", file=sys.stderr)
        config.catalog = open_demo_catalog(run, demo_products, args.device, engine=args.engine)
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    from skulens.serving.server import serve

    config = config_from_args(args)
    if config.catalog_db is not None:
        from skulens.catalog import Catalog

        # Before listening: a server on an older (or newer) schema refuses to start, naming the command.
        Catalog.check_schema(config.catalog_db)
    # Set here, not in config_from_args: only a real server gains from binding before loading (a load
    # balancer sees it up but not ready); an app built in-process from these settings loads first.
    config.load_in_background = not args.load_first
    serve(config, host=args.host, port=args.port, log_level=args.log_level)
    return EXIT_OK


def cmd_keys(args: argparse.Namespace) -> int:
    from skulens.serving.security import key_file_line, new_key

    key = new_key()
    # stdout: the key, then the line for the keys file (easy to script); advice goes to stderr.
    print(key)
    print(key_file_line(key, args.name))
    print(
        "Give the key (first line) to the client; it is not stored anywhere and cannot be shown again.\n"
        "Add the hash line (second line) to the file you pass to `skulens serve --api-keys-file`.",
        file=sys.stderr,
    )
    return EXIT_OK
