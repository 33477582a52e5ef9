"""Per-request metrics, the access log and a few security headers, as one plain ASGI middleware.

The access log has method, route, status and time only: never query strings, bodies, image bytes or
headers (so never keys), and the client's address only when the operator turns that on.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import MutableHeaders

from skulens.serving.metrics import Metrics

access_log = logging.getLogger("skulens.access")
# Pillow's debug log prints the EXIF tags (GPS position, camera serial) of every photo it decodes.
logging.getLogger("PIL").setLevel(logging.INFO)


class ObserveMiddleware:
    def __init__(self, app, metrics: Metrics, log_client_ips: bool = False):
        self.app = app
        self.metrics = metrics
        self.log_client_ips = log_client_ips

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            elapsed = time.perf_counter() - started
            # The route template, not the raw path: bounded metric labels, and job ids stay out of logs.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(elapsed)
            client = ""
            if self.log_client_ips and scope.get("client"):
                client = f" client={scope['client'][0]}"
            access_log.info("%s %s %d %.1fms%s", method, route, status, 1000 * elapsed, client)
