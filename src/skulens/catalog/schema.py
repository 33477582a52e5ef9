"""The catalog schema over time: Alembic revisions in ``catalog/migrations/versions``.

A new database is made at the newest revision (``create_all`` + stamp: one fast step, and a test keeps
the revisions and the models in agreement). An existing one must be at the revision this skulens
knows: an older one is refused with the command that upgrades it (``skulens catalog upgrade``), a
newer one with "upgrade skulens". Catalogs made before Alembic (a ``meta`` table, no
``alembic_version``) are at the baseline revision. On PostgreSQL an advisory lock makes the servers
of a fleet that start together set up or upgrade the schema one at a time.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection, Engine

from skulens.errors import SkulensError

MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"  # the schema of every catalog made before Alembic (schema_version 1 in ``meta``)
_PG_LOCK_KEY = 0x5C1E45  # any constant: the schema lock of every skulens process on this database


class SchemaError(SkulensError):
    """The database's schema is not the one this skulens reads and writes."""


def _config(connection: Connection | None = None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _scripts():
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    return _scripts().get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The database's revision; the baseline for a catalog made before Alembic; None for a database
    that holds no catalog yet."""
    from alembic.runtime.migration import MigrationContext

    found = MigrationContext.configure(connection).get_current_revision()
    if found is None and inspect(connection).has_table("meta"):
        return BASELINE
    return found


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def redacted_url(url: str) -> str:
    """The URL without its password, for messages, logs and `catalog info`."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all
        return "(unreadable URL)"


def _upgrade_hint(url: str) -> str:
    # a SQLite catalog by its file, as the user names it
    shown = url[len("sqlite:///") :] if url.startswith("sqlite:///") else redacted_url(url)
    return f"run `skulens catalog upgrade {shown}`"


def _newer_than_known(revision: str | None) -> str | None:
    if revision is None or revision in {script.revision for script in _scripts().walk_revisions()}:
        return None
    head = head_revision()
    return f"catalog schema revision {revision} is newer than this skulens understands ({head}); upgrade skulens"


def check_revision(revision: str | None, url: str) -> str | None:
    """Why a database at ``revision`` cannot be used as it is (None: it can)."""
    head = head_revision()
    if revision == head:
        return None
    return _newer_than_known(revision) or (
        f"catalog schema revision {revision} is older than this skulens needs ({head}): {_upgrade_hint(url)}"
    )


def ensure_schema(engine: Engine, metadata: MetaData, url: str) -> None:
    """Make a new catalog at the newest revision; refuse one at another revision (SchemaError)."""
    from alembic import command

    with engine.begin() as connection:
        _lock(connection)
        revision = current_revision(connection)
        if revision is None:
            metadata.create_all(connection)
            command.stamp(_config(connection), "head")
            return
    problem = check_revision(revision, url)
    if problem:
        raise SchemaError(problem)


def upgrade(engine: Engine, url: str) -> tuple[str | None, str]:
    """Bring the catalog to the newest revision, keeping every row: (revision before, revision after)."""
    from alembic import command

    head = head_revision()
    with engine.begin() as connection:
        _lock(connection)
        before = current_revision(connection)
        newer = _newer_than_known(before)
        if newer:
            raise SchemaError(newer)
        config = _config(connection)
        if before == BASELINE and not inspect(connection).has_table("alembic_version"):
            command.stamp(config, BASELINE)  # made before Alembic: record where it stands first
        command.upgrade(config, "head")
    return before, head
