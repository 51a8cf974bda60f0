"""What the Factory agent pushes: per Factory, the snapshot and delta its listing view stands on, the jobs of
that view, and the site's state (Slurm health and cluster information).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "agent_listings",
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("snapshot", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("listed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("full_listed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("factory_id", name=op.f("pk_agent_listings")),
    )
    op.create_table(
        "agent_listed_jobs",
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column("slurm_job_id", sa.BigInteger(), nullable=False),
        sa.Column("record", _json(), nullable=False),
        sa.PrimaryKeyConstraint("factory_id", "slurm_job_id", name=op.f("pk_agent_listed_jobs")),
    )
    op.create_table(
        "agent_site_states",
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("health", _json(), nullable=True),
        sa.Column("error", _json(), nullable=True),
        sa.Column("cluster_info", _json(), nullable=True),
        sa.PrimaryKeyConstraint("factory_id", name=op.f("pk_agent_site_states")),
    )


def downgrade() -> None:
    op.drop_table("agent_site_states")
    op.drop_table("agent_listed_jobs")
    op.drop_table("agent_listings")
