"""The catalog's tables (SQLAlchemy): SQLite file by default, PostgreSQL by URL.

The database is the source of truth. Besides products and their images it keeps each image's
embedding and an append-only ``index_log`` of vector additions and removals, written in the same
transaction as the product change. The FAISS index beside the database is a cache that records
the last log entry it reflects, so after a crash (or a write by another server) it catches up
from the log, or is rebuilt from the stored vectors; it can never silently disagree.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from skulens.catalog.schema import check_revision, current_revision, ensure_schema, redacted_url
from skulens.errors import SkulensError

# Written to ``meta`` for skulens releases from before Alembic, which refuse a catalog whose number
# is above theirs; the schema itself is versioned by Alembic revisions (catalog/schema.py).
SCHEMA_VERSION = 3


class Base(DeclarativeBase):
    pass


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ProductRow(Base):
    __tablename__ = "products"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    title: Mapped[str] = mapped_column(Text, default="")
    category_path: Mapped[list] = mapped_column(JSON, default=list)
    # "Fruit/Apple/Granny-Smith/": prefix queries for the category filter and the tree counts
    category_key: Mapped[str] = mapped_column(Text, default="/", index=True)
    attributes: Mapped[dict] = mapped_column(JSON, default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    content_hash: Mapped[str] = mapped_column(String(64))
    # the sentence vector of the product's text (title, description, path, attributes) for text search
    text_vector: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    images: Mapped[list[ImageRow]] = relationship(
        back_populates="product", cascade="all, delete-orphan", order_by="ImageRow.position"
    )


class ImageRow(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    # "catalog" (the product's own photo) or "gallery" (e.g. labelled shopper photos)
    role: Mapped[str] = mapped_column(String(16), default="catalog")
    vector: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    product: Mapped[ProductRow] = relationship(back_populates="images")


class IndexLog(Base):
    __tablename__ = "index_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(Integer, index=True)
    op: Mapped[str] = mapped_column(String(8))  # "add" | "remove"


class MediaRow(Base):
    """A product photo uploaded through the API, kept in the database so every server can serve it
    (the images' uri is then ``media:<name>``)."""

    __tablename__ = "media"
    name: Mapped[str] = mapped_column(String(96), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class JobRow(Base):
    """A background job (bulk recognition, API import) that any server may run, answer for, or take
    over: the server running it holds a lease it renews; an expired lease frees the job."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(80), default="")  # hash of the API key that submitted it
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued running succeeded failed cancelled
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    checkpoint: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the work kept so far
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)


class JobInputRow(Base):
    """A job's input (an uploaded photo, an import's JSON), deleted when the job finishes."""

    __tablename__ = "job_inputs"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[bytes] = mapped_column(LargeBinary)


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL as given, or a file path turned into a SQLite URL."""
    text = str(db)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def _shown(url: str) -> str:
    return repr(redacted_url(url))


def open_engine(db: str | Path) -> Engine:
    """An engine on the catalog ``db``: a new database gets the newest schema; one at another schema
    revision is refused with what to do (SchemaError)."""
    url = database_url(db)
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.parent.is_dir():
            raise SkulensError(f"{path.parent}: folder for the catalog database does not exist")
    try:
        engine = create_engine(url, future=True)
    except Exception as exc:  # noqa: BLE001 - a bad URL or a missing driver
        raise SkulensError(f"cannot open catalog database {_shown(url)}: {exc}") from None
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # noqa: ANN001
            cur = conn.cursor()
            # WAL: readers never block the writer; synchronous=NORMAL is still crash-safe in WAL mode.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()

    try:
        ensure_schema(engine, Base.metadata, url)
        with Session(engine) as session, session.begin():
            if session.get(Meta, "schema_version") is None:  # a new catalog
                session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
    except SkulensError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise SkulensError(f"cannot open catalog database {_shown(url)}: {exc}") from None
    return engine


def get_meta(session: Session, key: str) -> dict | None:
    row = session.get(Meta, key)
    return json.loads(row.value) if row else None


def set_meta(session: Session, key: str, value: dict) -> None:
    row = session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=json.dumps(value)))
    else:
        row.value = json.dumps(value)


def schema_problem(session: Session, url: str) -> str | None:
    """Why this skulens cannot use the database's schema as it is (None: it can)."""
    return check_revision(current_revision(session.connection()), url)


def catalog_identity(engine) -> str:
    """A random id the database keeps from its first use: names this catalog's index files and
    collections whatever URL reaches it, and changes when the database is made anew at the same URL
    (so a leftover index of the old one is never replayed onto the new one)."""
    from sqlalchemy.exc import IntegrityError

    for _ in range(2):
        with Session(engine) as session:
            found = get_meta(session, "catalog_id")
        if found:
            return found["id"]
        try:
            with Session(engine) as session, session.begin():
                set_meta(session, "catalog_id", {"id": uuid.uuid4().hex[:16]})
        except IntegrityError:
            continue  # another process named it first
    with Session(engine) as session:
        return get_meta(session, "catalog_id")["id"]


def last_log_seq(session: Session) -> int:
    from sqlalchemy import func

    return int(session.scalar(select(func.coalesce(func.max(IndexLog.seq), 0))))
