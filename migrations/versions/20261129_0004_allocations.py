"""Allocations per project and Factory (in unit-seconds), and what each job reserved and was charged.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALLOCATION_UNITS = ("gpu_hours", "node_hours")


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "allocations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("factory_id", sa.String(length=64), nullable=False),
        sa.Column(
            "unit",
            sa.Enum(*ALLOCATION_UNITS, name="allocation_unit", native_enum=False, create_constraint=True, length=32),
            nullable=False,
        ),
        sa.Column("granted_s", sa.BigInteger(), nullable=False),
        sa.Column("used_s", sa.BigInteger(), nullable=False),
        sa.Column("starts_at", _utc(), nullable=False),
        sa.Column("ends_at", _utc(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], name=op.f("fk_allocations_project_id_projects")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocations")),
    )
    op.create_index(op.f("ix_allocations_project_id_factory_id"), "allocations", ["project_id", "factory_id"])
    op.create_table(
        "job_charges",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("allocation_id", sa.String(length=32), nullable=False),
        sa.Column("reserved_s", sa.BigInteger(), nullable=False),
        sa.Column("charged_s", sa.BigInteger(), nullable=True),
        sa.Column("settled_at", _utc(), nullable=True),
        sa.ForeignKeyConstraint(["allocation_id"], ["allocations.id"], name=op.f("fk_job_charges_allocation_id_allocations")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_charges_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_charges")),
    )
    op.create_index(op.f("ix_job_charges_allocation_id"), "job_charges", ["allocation_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_job_charges_allocation_id"), table_name="job_charges")
    op.drop_table("job_charges")
    op.drop_index(op.f("ix_allocations_project_id_factory_id"), table_name="allocations")
    op.drop_table("allocations")
