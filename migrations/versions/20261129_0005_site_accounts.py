"""Factory operators, and the site accounts (Slurm user and account) users and projects run as per Factory.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "factory_operators",
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_factory_operators_user_id_users")),
        sa.PrimaryKeyConstraint("factory_id", "user_id", name=op.f("pk_factory_operators")),
    )
    op.create_table(
        "site_accounts",
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("slurm_user", sa.String(length=64), nullable=False),
        sa.Column("slurm_account", sa.String(length=64), nullable=True),
        sa.Column("set_by", sa.String(length=255), nullable=False),
        sa.Column("set_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("factory_id", "kind", "subject", name=op.f("pk_site_accounts")),
    )


def downgrade() -> None:
    op.drop_table("site_accounts")
    op.drop_table("factory_operators")
