"""A job's secret environment values, sealed with the broker's secrets key, beside its redacted spec; the same
for a submit order while it waits for its agent.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("secrets", sa.Text(), nullable=True))
    with op.batch_alter_table("agent_orders") as batch:
        batch.add_column(sa.Column("secrets", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agent_orders") as batch:
        batch.drop_column("secrets")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("secrets")
