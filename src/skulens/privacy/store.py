"""Opt-in storage of uploaded photos, and the retention purge.

Layout: ``DIR/YYYY-MM-DD/<32 random hex>.jpg`` (``.jpg.enc`` when encrypted), the day in UTC. Names
are random so nothing about the client (file name, address, key) ends up on disk, and nothing can
steer where a file goes. Files are written to a temp name and renamed, owner-only (0600 in a 0700
folder), so a crash never leaves half a photo under a real name.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

from skulens.errors import SkulensError
from skulens.privacy import crypto, faces
from skulens.privacy.scrub import STORED_SUFFIX, encode_clean

log = logging.getLogger("skulens.privacy")

DAY_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
STORED_NAME = re.compile(r"^[0-9a-f]{32}\.jpg(\.enc)?$")
TEMP_PREFIX = ".upload-"
PURGE_EVERY_S = 3600.0


@dataclass
class Stored:
    path: Path
    faces_blurred: int


@dataclass
class PurgeResult:
    removed: int = 0
    bytes: int = 0
    kept: int = 0

    def to_dict(self) -> dict:
        return {"removed": self.removed, "bytes": self.bytes, "kept": self.kept}


class UploadStore:
    def __init__(
        self,
        root: str | Path,
        *,
        blur_faces: bool = False,
        key: bytes | None = None,
        retention_days: float | None = None,
    ):
        if retention_days is not None and retention_days <= 0:
            raise SkulensError(f"--retention-days must be positive (got {retention_days:g})")
        self.root = Path(root)
        self.blur_faces = blur_faces
        self.key = key
        self.retention_days = retention_days
        self._last_purge = 0.0
        self._purge_lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SkulensError(f"--store-uploads {self.root}: cannot create the folder ({exc.strerror})") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise SkulensError(f"--store-uploads {self.root}: the folder is not writable")
        if blur_faces:
            faces.check_available()
        self._maybe_purge()

    @classmethod
    def from_settings(cls, root, *, blur_faces: bool, encrypt: bool, retention_days: float | None) -> UploadStore:
        return cls(
            root, blur_faces=blur_faces, key=crypto.key_from_env() if encrypt else None, retention_days=retention_days
        )

    def describe(self) -> str:
        parts = [
            "metadata stripped",
            "faces blurred" if self.blur_faces else "faces not blurred",
            "encrypted (AES-256-GCM)" if self.key else "not encrypted",
            f"kept {self.retention_days:g} days" if self.retention_days else "kept until purged",
        ]
        return f"storing uploads in {self.root}: " + ", ".join(parts)

    def save(self, image: Image.Image) -> Stored | None:
        """Store a decoded upload; never raises (a full disk must not fail the recognition), logs instead."""
        try:
            return self._save(image)
        except Exception as exc:  # noqa: BLE001 - storage is a side effect of answering, not the answer
            log.error("could not store an upload: %s: %s", type(exc).__name__, exc)
            return None
        finally:
            self._maybe_purge()

    def _save(self, image: Image.Image) -> Stored:
        found = 0
        if self.blur_faces:
            image, found = faces.blur_faces(image)
        data = encode_clean(image)
        name = secrets.token_hex(16) + STORED_SUFFIX
        if self.key is not None:
            data = crypto.seal(data, self.key, name)
            name += crypto.ENCRYPTED_SUFFIX
        day = self.root / datetime.now(UTC).strftime("%Y-%m-%d")
        day.mkdir(exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=day, prefix=TEMP_PREFIX)  # created 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, day / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Stored(day / name, found)

    def _maybe_purge(self) -> None:
        if not self.retention_days:
            return
        now = time.time()
        # One purge at a time, at most hourly; cron (`skulens privacy purge`) covers an idle server.
        if now - self._last_purge < PURGE_EVERY_S or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._last_purge = now
            result = purge(self.root, self.retention_days, now=now)
            if result.removed:
                log.info(
                    "retention: removed %d stored upload(s) older than %g days", result.removed, self.retention_days
                )
        except SkulensError as exc:
            log.error("retention purge failed: %s", exc)
        finally:
            self._purge_lock.release()


def purge(root: str | Path, older_than_days: float, *, now: float | None = None, dry_run: bool = False) -> PurgeResult:
    """Delete stored uploads last modified more than ``older_than_days`` ago (and empty day folders).
    Only files that skulens itself names are touched: whatever else lives in ``root`` is left alone."""
    root = Path(root)
    if older_than_days < 0:
        raise SkulensError(f"--older-than-days must be 0 or more (got {older_than_days:g})")
    if not root.is_dir():
        raise SkulensError(f"{root}: no such folder")
    now = time.time() if now is None else now
    cutoff = now - older_than_days * 86400
    # Only folders of past days are removed when empty: the server may be about to write into today's.
    today = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")
    result = PurgeResult()
    for day in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and DAY_DIR.match(p.name)):
        for path in day.iterdir():
            ours = STORED_NAME.match(path.name) or path.name.startswith(TEMP_PREFIX)
            if not ours or not path.is_file() or path.is_symlink():
                continue
            stat = path.lstat()
            if stat.st_mtime >= cutoff:
                result.kept += 1
                continue
            if not dry_run:
                try:
                    path.unlink()
                except FileNotFoundError:  # a concurrent purge (server and cron) got there first
                    continue
            result.removed += 1
            result.bytes += stat.st_size
        if not dry_run and day.name < today:
            try:
                day.rmdir()  # only succeeds when empty
            except OSError:
                pass
    return result


def read_stored(path: str | Path, key: bytes | None = None) -> bytes:
    """The JPEG bytes of a stored upload, decrypting ``.enc`` files with ``key``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SkulensError(f"{path}: cannot read ({exc.strerror})") from None
    if path.name.endswith(crypto.ENCRYPTED_SUFFIX):
        if key is None:
            raise SkulensError(f"{path}: encrypted; set {crypto.KEY_ENV} to the storage key")
        data = crypto.open_sealed(data, key, path.name[: -len(crypto.ENCRYPTED_SUFFIX)])
    return data
