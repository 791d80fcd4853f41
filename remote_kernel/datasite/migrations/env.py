"""Alembic's entry point for the datasite store's migrations.

Run by :func:`remote_kernel.datasite.migrations.upgrade` with an open connection
(in ``config.attributes["connection"]``), which is how the datasite and
``remote-kernel datasite migrate DIR`` use it. Run by the plain ``alembic`` command
(``alembic -x datasite=DIR …`` with ``script_location`` pointing here), it takes the
URL from that datasite's ``datasite.yaml``, never from alembic.ini.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from remote_kernel.datasite.config import DatasiteConfig


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        # Batch mode lets later revisions alter SQLite tables (SQLite's ALTER is limited).
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = context.config.attributes.get("url")
    if url:
        return str(url)
    directory = context.get_x_argument(as_dictionary=True).get("datasite")
    if not directory:
        raise SystemExit("say which datasite: alembic -x datasite=DIR ... (or use "
                         "remote-kernel datasite migrate DIR)")  # fmt: skip
    return DatasiteConfig.load(directory).database_url


def run() -> None:
    if context.is_offline_mode():  # `--sql`: print the SQL for a DBA to review
        context.configure(url=_url(), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    from remote_kernel.datasite.migrations import lock_schema
    from remote_kernel.datasite.store import Store

    store = Store(_url(), upgrade=False)  # the store's engine: its SQLite pragmas and hooks
    try:
        with store.engine.begin() as conn:
            lock_schema(conn)
            _configure_and_run(conn)
    finally:
        store.close()


run()
