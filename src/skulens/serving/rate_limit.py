"""Per-client rate limits: each API key (or, without one, each client address) may send so many
requests per window; the next gets 429 JSON with ``Retry-After``. Counting is the `limits` library's
moving window (the engine behind slowapi and Flask-Limiter), kept in this process by default or in a
store every server shares (``--rate-limit-storage redis://...``, `limits`' storage URIs).

A middleware rather than slowapi's per-route decorators: one limit covers every endpoint but the
probes (/healthz, /readyz, /metrics), and the answer is our own error format.
"""

from __future__ import annotations

import hashlib
import json
import math
import time

from limits import parse, storage, strategies

from skulens.errors import SkulensError
from skulens.serving.security import key_matches, presented_key

EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})


def parse_rate(rate: str):
    """``"60/minute"``, ``"10 per second"``, ``"1000/hour"`` -> a `limits` item; one line when malformed."""
    try:
        return parse(rate)
    except ValueError:
        raise SkulensError(f"rate limit {rate!r}: use N/second, N/minute or N/hour (e.g. 60/minute)") from None


class RateLimitMiddleware:
    """ASGI middleware: counts each client's requests and answers 429 past the limit."""

    def __init__(self, app, rate: str, storage_uri: str = "memory://", key_hashes: frozenset[str] = frozenset()):
        self.app = app
        self.key_hashes = key_hashes
        self.item = parse_rate(rate)
        try:
            backend = storage.storage_from_string(storage_uri)
        except Exception as exc:  # noqa: BLE001 - a bad URI or a missing driver, said in one line
            raise SkulensError(f"rate-limit storage {storage_uri!r}: {exc}") from None
        self.limiter = strategies.MovingWindowRateLimiter(backend)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            return await self.app(scope, receive, send)
        key = client_key(scope, self.key_hashes)
        if self.limiter.hit(self.item, key):
            return await self.app(scope, receive, send)
        reset, _ = self.limiter.get_window_stats(self.item, key)
        await _too_many(send, max(1, math.ceil(reset - time.time())), str(self.item))


def client_key(scope, key_hashes: frozenset[str] = frozenset()) -> str:
    """Who is counted: a valid API key (hashed: keys never sit in memory in the clear), else the
    client's address; an unknown key counts as its address, so made-up keys buy no extra requests."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    key = presented_key(headers)
    if key and key_matches(key, key_hashes):
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    client = scope.get("client") or ("unknown", 0)
    return f"addr:{client[0]}"


async def _too_many(send, retry_after: int, limit: str) -> None:
    body = json.dumps(
        {"error": {"code": "rate_limited", "message": f"too many requests ({limit}); retry in {retry_after} s"}}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
