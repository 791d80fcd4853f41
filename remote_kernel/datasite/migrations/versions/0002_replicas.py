"""Replicas: a table of running servers with their leases; sessions get an owner.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03

Several ``datasite serve`` processes on one PostgreSQL database each register a row in
``replicas`` and renew its lease; a session's ``replica`` names the server that runs its
requests (its kernel lives there). An index on ``requests.status`` keeps the replicas'
search for unfinished work cheap as the table grows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("lease_until", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
    )
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("replica", sa.String(64), nullable=True))
    op.create_index("ix_sessions_replica", "sessions", ["replica"])
    op.create_index("ix_requests_status", "requests", ["status"])


def downgrade() -> None:
    op.drop_index("ix_requests_status", "requests")
    op.drop_index("ix_sessions_replica", "sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("replica")
    op.drop_table("replicas")
