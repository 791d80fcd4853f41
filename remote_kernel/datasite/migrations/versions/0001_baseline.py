"""Baseline: the store's tables as they were when migrations began; adopts older datasites.

Revision ID: 0001
Revises:
Create Date: 2026-12-03

On an empty database this creates every table. On a datasite made before migrations
existed (SQLite, tables made by ``create_all`` plus columns added by hand since), it
creates only what is missing — tables, the columns ``users.expires_at``,
``outputs.parent_id`` and ``outputs.note``, their indexes — and keeps every row.
The tables are written out here, not imported from the store's models: a revision
must stay what it was when the models change.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

meta = sa.MetaData()
sa.Table(
    "users", meta,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("revoked_at", sa.DateTime(), nullable=True),
    sa.Column("expires_at", sa.DateTime(), nullable=True),
)  # fmt: skip
sa.Table(
    "audit", meta,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("detail", sa.JSON(), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)  # fmt: skip
sa.Table(
    "budgets", meta,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("epsilon_total", sa.BigInteger(), nullable=False),
    sa.Column("delta_total", sa.BigInteger(), nullable=False),
    sa.Column("epsilon_spent", sa.BigInteger(), nullable=False),
    sa.Column("delta_spent", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
    sa.UniqueConstraint("user_id", "dataset"),
)  # fmt: skip
sa.Table(
    "sessions", meta,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("closed_at", sa.DateTime(), nullable=True),
    sa.Column("kernel_pid", sa.Integer(), nullable=True),
)  # fmt: skip
sa.Table(
    "budget_charges", meta,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("budget_id", sa.Integer(), sa.ForeignKey("budgets.id"), nullable=False,
              index=True),
    sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("epsilon", sa.BigInteger(), nullable=False),
    sa.Column("delta", sa.BigInteger(), nullable=False),
    sa.Column("what", sa.String(256), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)  # fmt: skip
sa.Table(
    "requests", meta,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), nullable=False),
    sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("code", sa.Text(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("started_at", sa.DateTime(), nullable=True),
    sa.Column("finished_at", sa.DateTime(), nullable=True),
)  # fmt: skip
sa.Table(
    "outputs", meta,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("request_id", sa.Integer(), sa.ForeignKey("requests.id"), nullable=False,
              index=True),
    sa.Column("seq", sa.Integer(), nullable=False),
    sa.Column("msg_type", sa.String(32), nullable=False),
    sa.Column("origin", sa.String(16), nullable=False),
    sa.Column("parent_id", sa.Integer(), sa.ForeignKey("outputs.id"), nullable=True,
              index=True),
    sa.Column("note", sa.Text(), nullable=True),
    sa.Column("body", sa.Text(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.Integer(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("verdict", sa.String(16), nullable=True),
    sa.Column("findings", sa.JSON(), nullable=False),
    sa.Column("summary", sa.Text(), nullable=False),
    sa.Column("decided_by", sa.String(64), nullable=True),
    sa.Column("decided_at", sa.DateTime(), nullable=True),
    sa.Column("comment", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)  # fmt: skip
sa.Table(
    "pushes", meta,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("request_id", sa.Integer(), sa.ForeignKey("requests.id"), nullable=False,
              index=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("type_name", sa.String(256), nullable=False),
    sa.Column("size", sa.Integer(), nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("data", sa.LargeBinary(), nullable=False),
)  # fmt: skip
sa.Table(
    "reviews", meta,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("output_id", sa.Integer(), sa.ForeignKey("outputs.id"), nullable=False,
              index=True),
    sa.Column("reviewer_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("comment", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)  # fmt: skip


def upgrade() -> None:
    conn = op.get_bind()
    if op.get_context().as_sql:  # offline (`--sql`): the script for an empty database
        for table in meta.sorted_tables:
            op.execute(sa.schema.CreateTable(table))
            for index in sorted(table.indexes, key=lambda index: str(index.name)):
                op.execute(sa.schema.CreateIndex(index))
        return
    inspector = sa.inspect(conn)
    for table in meta.sorted_tables:
        if not inspector.has_table(table.name):
            table.create(conn)
            continue
        # A pre-migration datasite: add what later code added (nullable columns only).
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                _add_column(conn, column)
        indexes = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                index.create(conn)


def _add_column(conn: sa.Connection, column: sa.Column[Any]) -> None:
    """``ALTER TABLE … ADD COLUMN`` with its REFERENCES, as the code before migrations
    did (Alembic's SQLite ``add_column`` leaves foreign keys out)."""
    sql_type = column.type.compile(dialect=conn.dialect)
    ddl = f"ALTER TABLE {column.table.name} ADD COLUMN {column.name} {sql_type}"
    for key in column.foreign_keys:
        ddl += f" REFERENCES {key.column.table.name}({key.column.name})"
    conn.exec_driver_sql(ddl)


def downgrade() -> None:
    for table in reversed(meta.sorted_tables):
        op.drop_table(table.name)
