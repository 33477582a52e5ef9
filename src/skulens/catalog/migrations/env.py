"""Alembic's environment for the catalog: always given an open connection by skulens.catalog.schema
(no alembic.ini, no URL here), so the upgrade runs inside skulens's own transaction and lock."""

from alembic import context

from skulens.catalog.db import Base

connection = context.config.attributes["connection"]
# SQLite alters tables by copying them ("batch" mode); the same revisions then run on PostgreSQL.
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
