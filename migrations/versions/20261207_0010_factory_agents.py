"""The Factory agent: its registered keys, the assertion ids already accepted, its sessions, the lease that
says which session receives submit and cancel orders (with its fencing epoch), and the orders themselves.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _id() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agent_keys",
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column("jwks", _json(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("factory_id", name=op.f("pk_agent_keys")),
    )
    op.create_table(
        "agent_assertions_seen",
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("factory_id", "jti", name=op.f("pk_agent_assertions_seen")),
    )
    op.create_index(op.f("ix_agent_assertions_seen_expires_at"), "agent_assertions_seen", ["expires_at"])
    op.create_table(
        "agent_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column("kid", sa.String(length=255), nullable=False),
        sa.Column("agent_version", sa.String(length=255), nullable=False),
        sa.Column("adapter", sa.String(length=16), nullable=False),
        sa.Column("slurm_release", sa.String(length=255), nullable=True),
        sa.Column("features", _json(), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("clock_offset_s", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_sessions")),
    )
    op.create_index(op.f("ix_agent_sessions_factory_id_expires_at"), "agent_sessions", ["factory_id", "expires_at"])
    op.create_table(
        "agent_leases",
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("factory_id", name=op.f("pk_agent_leases")),
    )
    op.create_table(
        "agent_orders",
        sa.Column("id", _id(), autoincrement=True, nullable=False),
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
        sa.Column("attempt", sa.String(length=255), nullable=True),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("report", _json(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_orders")),
    )
    op.create_index(op.f("ix_agent_orders_factory_id_state_id"), "agent_orders", ["factory_id", "state", "id"])
    op.create_index(op.f("ix_agent_orders_session_id_id"), "agent_orders", ["session_id", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_agent_orders_session_id_id"), table_name="agent_orders")
    op.drop_index(op.f("ix_agent_orders_factory_id_state_id"), table_name="agent_orders")
    op.drop_table("agent_orders")
    op.drop_table("agent_leases")
    op.drop_index(op.f("ix_agent_sessions_factory_id_expires_at"), table_name="agent_sessions")
    op.drop_table("agent_sessions")
    op.drop_index(op.f("ix_agent_assertions_seen_expires_at"), table_name="agent_assertions_seen")
    op.drop_table("agent_assertions_seen")
    op.drop_table("agent_keys")
