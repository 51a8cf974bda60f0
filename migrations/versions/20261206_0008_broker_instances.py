"""Broker instances and their heartbeats: a dead instance's claims are taken over at once, and an instance id
is refused while a live process holds it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "broker_instances",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_broker_instances")),
        sa.UniqueConstraint("worker_id", name=op.f("uq_broker_instances_worker_id")),
    )
    op.create_index(op.f("ix_broker_instances_expires_at"), "broker_instances", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_broker_instances_expires_at"), table_name="broker_instances")
    op.drop_table("broker_instances")
