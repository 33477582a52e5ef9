"""API keys: only their SHA-256 hashes are stored, and presented keys are compared in constant time.

A plain (unsalted) SHA-256 is enough here because keys are 256-bit random tokens, not passwords:
there is nothing to brute-force, and a fast hash keeps each request cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from skulens.errors import SkulensError

KEY_PREFIX = "skl_"
HASH_PREFIX = "sha256:"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_file_line(key: str, name: str | None = None) -> str:
    return hash_key(key) + (f"  {name}" if name else "")


def load_key_hashes(path: str | Path) -> frozenset[str]:
    """Read a keys file: one ``sha256:HEX [name]`` per line; ``#`` comments and blank lines are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SkulensError(f"{path}: cannot read API keys file ({exc.strerror})") from None
    hashes = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        token = line.split()[0].lower()
        digest = token[len(HASH_PREFIX) :] if token.startswith(HASH_PREFIX) else ""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            # Never echo the line: a user may have pasted a raw key by mistake.
            raise SkulensError(
                f"{path}:{number}: not a key hash (expected 'sha256:<64 hex digits>'; make one with `skulens keys new`)"
            )
        hashes.add(HASH_PREFIX + digest)
    if not hashes:
        raise SkulensError(f"{path}: no key hashes in this file (make one with `skulens keys new`)")
    return frozenset(hashes)


def key_matches(presented: str, hashes: frozenset[str]) -> bool:
    """True when ``presented`` hashes to one of ``hashes``; every stored hash is compared, no early exit."""
    candidate = hash_key(presented).encode()
    found = False
    for stored in hashes:
        found |= hmac.compare_digest(candidate, stored.encode())
    return found


def presented_key(headers) -> str | None:
    """The key from ``X-API-Key`` or ``Authorization: Bearer``; never from the URL, which ends up in logs."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
