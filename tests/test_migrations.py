"""Catalog schema migrations (Alembic): a catalog written by the release before migrations upgrades with
every row kept, the revisions build the same schema as the models, and a catalog at another revision is
refused with what to do."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from skulens.catalog import Catalog
from skulens.catalog.db import SCHEMA_VERSION, Base
from skulens.catalog.schema import SchemaError, head_revision, upgrade
from skulens.cli import main
from tests.helpers import drop_every_table, empty_postgres_url

# Made by skulens at commit 4f24bf3 (schema_version 1, before Alembic): 3 products, 6 images with 4-d
# vectors (one product updated once), 9 index log entries. SQLite, page size 512: 8 KB.
HEAD = head_revision()
FIXTURE = Path(__file__).parent / "fixtures" / "catalog-schema-1.db"
TABLES = {
    "products": "SELECT id, sku, title, category_path, category_key, attributes, description, content_hash "
    "FROM products",
    "images": "SELECT id, product_id, position, uri, sha256, role, vector FROM images",
    "index_log": "SELECT seq, image_id, op FROM index_log",
}


def _rows(db: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as conn:
        return {name: sorted(conn.execute(query).fetchall()) for name, query in TABLES.items()}


def _schema_diff(url: str) -> list:
    """What differs between the database's tables and the models (Alembic's autogenerate comparison)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


@pytest.fixture
def old_catalog(tmp_path) -> Path:
    db = tmp_path / "shop.db"
    shutil.copy(FIXTURE, db)
    return db


def test_a_catalog_from_before_migrations_is_refused_with_the_command_then_upgrades_keeping_every_row(old_catalog):
    before = _rows(old_catalog)
    assert len(before["products"]) == 3 and len(before["images"]) == 5 and len(before["index_log"]) == 9
    with pytest.raises(SchemaError, match=f"run `skulens catalog upgrade {old_catalog}`"):
        Catalog.open(old_catalog)
    assert _rows(old_catalog) == before  # refusing changed nothing

    assert Catalog.upgrade(old_catalog) == ("0001", HEAD)
    assert _rows(old_catalog) == before
    assert _schema_diff(f"sqlite:///{old_catalog}") == []  # the revisions reach the models' schema
    with Catalog.open(old_catalog) as catalog:
        red = catalog.get("paint-red")
        assert red.title == "Red paint, 1 l" and red.attributes == {"colour": "Red"}
        assert catalog.stored_vectors("paint-blue").shape == (2, 4)
        assert catalog.readiness()["schema"] == "ok"
    assert Catalog.upgrade(old_catalog) == (HEAD, HEAD)  # a second run has nothing to do


def test_the_cli_upgrades_and_every_command_names_it_until_then(old_catalog, capsys):
    assert main(["catalog", "info", "--db", str(old_catalog)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"skulens catalog upgrade {old_catalog}" in err
    assert main(["catalog", "upgrade", str(old_catalog)]) == 0
    assert f"from revision 0001 to {HEAD}" in capsys.readouterr().out
    assert main(["catalog", "info", "--db", str(old_catalog)]) == 0
    assert '"products": 3' in capsys.readouterr().out


def test_a_newer_schema_is_refused_by_open_and_by_upgrade(old_catalog, capsys):
    Catalog.upgrade(old_catalog)
    with sqlite3.connect(old_catalog) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(SchemaError, match="newer than this skulens understands .*; upgrade skulens"):
        Catalog.open(old_catalog)
    assert main(["catalog", "upgrade", str(old_catalog)]) == 2
    assert "revision 0099 is newer" in capsys.readouterr().err


def test_a_new_catalog_is_made_at_the_newest_revision_and_upgrading_an_empty_database_builds_the_same(tmp_path):
    made = tmp_path / "new.db"
    Catalog.open(made).engine.dispose()
    with sqlite3.connect(made) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [
            (str(SCHEMA_VERSION),)
        ]
    assert _schema_diff(f"sqlite:///{made}") == []
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    engine = create_engine(f"sqlite:///{empty}")
    assert upgrade(engine, str(empty)) == (None, HEAD)  # every revision, from nothing
    engine.dispose()
    assert _schema_diff(f"sqlite:///{empty}") == []


@pytest.mark.services
def test_a_postgresql_catalog_at_the_baseline_upgrades_keeping_every_row(old_catalog):
    url = empty_postgres_url()
    try:
        engine = create_engine(url)
        _write_baseline_with_the_fixture_rows(engine, old_catalog)
        with pytest.raises(SchemaError, match="older than this skulens needs"):
            Catalog.open(url)
        assert Catalog.upgrade(url) == ("0001", HEAD)
        with engine.connect() as conn:
            for name, query in TABLES.items():
                assert sorted(tuple(r) for r in conn.execute(text(query)).fetchall()) == _pg_form(
                    _rows(old_catalog)[name]
                )
        engine.dispose()
        assert _schema_diff(url) == []
        with Catalog.open(url) as catalog:
            assert catalog.get("paint-green").category_path == ["Paint", "Green"]
            assert catalog.stored_vectors("paint-red").shape == (1, 4)
    finally:
        drop_every_table(url)


def _write_baseline_with_the_fixture_rows(engine, fixture: Path) -> None:
    """The baseline schema (revision 0001, no Alembic table: as the release before migrations made it)
    holding the fixture's rows."""
    from alembic import command

    from skulens.catalog.schema import _config

    with engine.begin() as conn:
        command.upgrade(_config(conn), "0001")
        conn.execute(text("DROP TABLE alembic_version"))
        with sqlite3.connect(fixture) as src:
            for name, query in TABLES.items():
                columns = query.split("SELECT ", 1)[1].split(" FROM")[0]
                for row in src.execute(query):
                    values = ", ".join(f":v{i}" for i in range(len(row)))
                    conn.execute(
                        text(f"INSERT INTO {name} ({columns}) VALUES ({values})"),
                        {f"v{i}": v for i, v in enumerate(row)},
                    )
        conn.execute(text("SELECT setval('index_log_seq_seq', (SELECT max(seq) FROM index_log))"))


def _pg_form(rows: list[tuple]) -> list[tuple]:
    """SQLite rows as PostgreSQL gives them back (JSON decoded, bytes as bytes)."""
    import json

    out = []
    for row in rows:
        out.append(tuple(json.loads(v) if isinstance(v, str) and v[:1] in ("[", "{") else v for v in row))
    return sorted(out)


def test_skulens_serve_refuses_an_old_catalog_before_listening(old_catalog, capsys):
    from skulens.serving import config as serving_config

    if serving_config.demo_run_dir() is None:
        pytest.skip("this install has no built-in demo model to serve")
    assert main(["serve", "--catalog", str(old_catalog), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"skulens: error: catalog schema revision 0001 is older than this skulens needs ({HEAD}): "
        f"run `skulens catalog upgrade {old_catalog}`"
    )
