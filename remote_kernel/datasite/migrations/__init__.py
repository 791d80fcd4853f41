"""Schema migrations of the datasite store (Alembic), for SQLite and PostgreSQL alike.

:func:`upgrade` brings a store's schema to the newest revision. :class:`Store`
calls it whenever it opens a database, so ``datasite init``, ``serve`` and every
command line tool upgrade by themselves; ``remote-kernel datasite migrate DIR`` does
it explicitly (and reports the revisions) for operators who want to choose the
moment, e.g. after a backup.

Why a fast path: most opens find the schema at :data:`HEAD`, and one ``SELECT`` of
``alembic_version`` is all that costs; Alembic (its import and script directory) is
loaded only when something is to be done.

Why a lock: two processes may open a store at once (replicas starting together, the
server and an admin's command). The upgrade runs in one transaction that first takes
the database's writer lock (SQLite ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock),
and Alembic reads the current revision inside it, so the second process finds the
work done. PostgreSQL and SQLite both have transactional DDL: a failed upgrade leaves
the schema as it was.

A datasite made before migrations existed (its tables, no ``alembic_version``) is
adopted by the first revision, which creates only what is missing and keeps every row.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from remote_kernel.datasite.config import ConfigError

#: The newest revision in ``versions/`` (a test checks that Alembic agrees).
HEAD = "0002"
#: The advisory lock key schema changes hold on PostgreSQL (any constant; ours).
MIGRATION_LOCK = 0x726B_6D69  # "rkmi"
SCRIPT_LOCATION = Path(__file__).resolve().parent
#: Alembic's ``context`` is one global per process: threads upgrade one at a time.
_IN_PROCESS = threading.Lock()


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Any:
    """An Alembic ``Config`` for our scripts, bound to an open connection or a URL.

    Not read from an ``alembic.ini``: the URL is the datasite's (``store:`` in
    datasite.yaml), so there is one place that says where a datasite's state lives.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if connection is not None:
        config.attributes["connection"] = connection
    if url is not None:
        config.attributes["url"] = url
    return config


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None before Alembic ever ran on it."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def is_current(engine: Engine) -> bool:
    """Whether the schema is at :data:`HEAD` (one cheap read, no Alembic import)."""
    with engine.connect() as conn:
        try:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:  # no such table yet: a new or a pre-migration database
            conn.rollback()
            return False
        return bool(found == HEAD)


def lock_schema(connection: Connection) -> None:
    """Hold the schema lock until the transaction ends (SQLite: BEGIN IMMEDIATE did)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the schema to ``target`` in one locked transaction; (before, after)."""
    from alembic import command

    with _IN_PROCESS, engine.begin() as conn:
        lock_schema(conn)
        before = current_revision(conn)
        config = alembic_config(conn)
        _check_known(config, before)
        command.upgrade(config, target)
        after = current_revision(conn)
    return before, after


def _check_known(config: Any, revision: str | None) -> None:
    """Refuse a schema newer than this code (a newer release migrated it): its tables
    may mean things this code does not know, so it must not write to them."""
    from alembic.script import ScriptDirectory

    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    if revision is not None and revision not in known:
        raise ConfigError(
            f"the store's schema is at revision {revision}, which this remote_kernel does not "
            f"know (its newest is {HEAD}): a newer release upgraded it; upgrade remote_kernel"
        )


def ensure_current(engine: Engine) -> None:
    """What a store does when it opens a database: upgrade unless already at head."""
    if not is_current(engine):
        upgrade(engine)
