"""Files written whole or not at all, and their fingerprints: the lowest layer beside ``errors``.

Run folders, catalogs and projections all write through here, so an interrupt (Ctrl-C, kill -9, a
full disk) never leaves half a file behind, and a file's SHA-256 is computed one way everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Where skulens keeps derived files it can make again (the demo catalog, the unpacked text
    model): ``$SKULENS_CACHE_DIR``, else ``$XDG_CACHE_HOME/skulens``, else ``~/.cache/skulens``."""
    explicit = os.environ.get("SKULENS_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "skulens"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write via a temp file and rename, so an interrupt never leaves half a JSON file."""
    write_text_atomic(path, json.dumps(data, indent=2))


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
