"""Each job names the Antenna it was accepted for, and each Antenna counts its jobs not yet ended: its quota
of active jobs becomes a compare-and-set on that counter, kept in the transactions that start and end jobs.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PREFIX = "antenna:"  # a national user's issuer is "antenna:<id>"
ENDED = "('completed', 'failed', 'cancelled', 'timeout', 'rejected', 'lost')"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("antenna", sa.String(length=64), nullable=True))
    op.add_column("antennas", sa.Column("active_jobs", sa.Integer(), server_default=sa.text("0"), nullable=False))
    # The jobs of national users so far, and each Antenna's count of those not ended.
    op.execute(
        f"UPDATE jobs SET antenna = (SELECT substr(users.issuer, {len(PREFIX) + 1}) FROM users "
        f"WHERE users.id = jobs.owner AND users.issuer LIKE '{PREFIX}%')"
    )
    op.execute(
        "UPDATE antennas SET active_jobs = (SELECT count(*) FROM jobs "
        f"WHERE jobs.antenna = antennas.id AND jobs.state NOT IN {ENDED})"
    )


def downgrade() -> None:
    op.drop_column("antennas", "active_jobs")
    op.drop_column("jobs", "antenna")
