"""Antennas (their linked Factories, keys, limits), their operators, and the assertion ids already accepted.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "antennas",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=False),
        sa.Column("title", sa.String(length=255), nullable=False),
        sa.Column("factories", _json(), nullable=False),
        sa.Column("jwks", _json(), nullable=False),
        sa.Column("requests_per_minute", sa.Integer(), nullable=False),
        sa.Column("max_active_jobs", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_antennas")),
    )
    op.create_table(
        "antenna_operators",
        sa.Column("antenna_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["antenna_id"], ["antennas.id"], name=op.f("fk_antenna_operators_antenna_id_antennas")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_antenna_operators_user_id_users")),
        sa.PrimaryKeyConstraint("antenna_id", "user_id", name=op.f("pk_antenna_operators")),
    )
    op.create_table(
        "antenna_assertions_seen",
        sa.Column("antenna_id", sa.String(length=64), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("antenna_id", "jti", name=op.f("pk_antenna_assertions_seen")),
    )
    op.create_index(
        op.f("ix_antenna_assertions_seen_expires_at"), "antenna_assertions_seen", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_antenna_assertions_seen_expires_at"), table_name="antenna_assertions_seen")
    op.drop_table("antenna_assertions_seen")
    op.drop_table("antenna_operators")
    op.drop_table("antennas")
