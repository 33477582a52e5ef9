"""Text search: each product's sentence vector.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Empty for the products already there: the first text search makes them (catalog/text_search.py).
    with op.batch_alter_table("products") as batch:
        batch.add_column(sa.Column("text_vector", sa.LargeBinary(), nullable=True))
    op.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")


def downgrade() -> None:
    with op.batch_alter_table("products") as batch:
        batch.drop_column("text_vector")
    op.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
