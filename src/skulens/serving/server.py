"""Running the app under uvicorn (what `skulens serve` calls)."""

from __future__ import annotations

import ipaddress
import logging

from skulens.serving.config import ServeConfig

log = logging.getLogger("skulens.serving")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    from skulens.serving.app import create_app

    app = create_app(config)
    if not is_loopback(host) and not config.protect_reads:
        log.warning("listening on %s without --protect-reads: anyone who can reach this port can use the model", host)
    logging.getLogger("skulens.access").setLevel(logging.INFO if log_level in ("info", "debug") else logging.WARNING)
    # uvicorn's own access log prints client addresses; ours (observe.py) does not unless asked to.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
