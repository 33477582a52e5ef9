"""Product photos kept in the catalog's database, so every server of a fleet can read and serve them.

A photo stored here is named ``media:<name>`` in the product's images (``name``: the hash-derived
relative name the server gave it); any other image URI is a file path. Rows are written once and never
changed (the name is a content hash), so readers need no lock.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from skulens.catalog.db import MediaRow
from skulens.files import sha256_file

SCHEME = "media:"


def is_stored(uri: str) -> bool:
    return str(uri).startswith(SCHEME)


def put(engine: Engine, name: str, data: bytes) -> tuple[str, bool]:
    """Store ``data`` as ``name`` unless it is there: (its URI, whether this call stored it)."""
    uri = SCHEME + name
    with Session(engine) as session:
        if session.get(MediaRow, name) is not None:
            return uri, False
    try:
        with Session(engine) as session, session.begin():
            session.add(MediaRow(name=name, data=data, created_at=time.time()))
    except IntegrityError:  # another server stored the same photo first
        return uri, False
    return uri, True


def read(engine: Engine, uri: str) -> bytes | None:
    with Session(engine) as session:
        return session.scalar(select(MediaRow.data).where(MediaRow.name == uri[len(SCHEME) :]))


def remove(engine: Engine, uris: Iterable[str]) -> None:
    names = [uri[len(SCHEME) :] for uri in uris if is_stored(uri)]
    if names:
        with Session(engine) as session, session.begin():
            session.execute(delete(MediaRow).where(MediaRow.name.in_(names)))


def source(engine: Engine, uri: str) -> bytes | Path:
    """What an image URI decodes from: the stored bytes, or the file (FileNotFoundError: neither)."""
    if is_stored(uri):
        data = read(engine, uri)
        if data is None:
            raise FileNotFoundError(uri)
        return data
    return Path(uri)


def exists(engine: Engine, uri: str) -> bool:
    return read(engine, uri) is not None if is_stored(uri) else Path(uri).is_file()


def sha256(engine: Engine, uri: str) -> str:
    found = source(engine, uri)
    return hashlib.sha256(found).hexdigest() if isinstance(found, bytes) else sha256_file(found)
