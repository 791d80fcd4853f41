"""The store's side of several server replicas: leases, session owners, takeovers.

Each ``datasite serve`` process registers a row in ``replicas`` and renews its lease.
A session's ``replica`` column names the server that runs its requests (its kernel
lives there). Owners change only inside the store's serialised write transactions,
so two replicas never both believe they own a session for longer than a lease; and a
request starts only through :meth:`Store.start_request`, which checks the owner, so no
request runs twice whatever a replica holds in its in-memory queue.

A session whose owner's lease ran out is taken over by the replica that next needs it
(a submission) or finds it (:func:`take_over_orphans`, with ``FOR UPDATE SKIP LOCKED``
so that replicas looking at once split the work instead of queueing on each other).
Its kernel died with its owner, so its unfinished requests end ``interrupted`` with the
restart message -- what a single server does after a restart, and what Jupyter does
with the cells queued behind one whose kernel died.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, or_, select

from remote_kernel.datasite.store import (
    KernelSession,
    Replica,
    Request,
    Store,
    utcnow,
)
from remote_kernel.protocol.errors import Conflict
from remote_kernel.protocol.models import RequestStatus

_REPLICAS = Replica.__table__
_SESSIONS = KernelSession.__table__
_REQUESTS = Request.__table__
UNFINISHED = (RequestStatus.QUEUED.value, RequestStatus.RUNNING.value)
#: A session's owner is gone: none, an unknown replica, or one whose lease ran out.
_OWNER_GONE = or_(
    _SESSIONS.c.replica.is_(None),
    ~_SESSIONS.c.replica.in_(
        select(_REPLICAS.c.id).where(_REPLICAS.c.lease_until >= bindparam("now"))
    ),
)


class SecondSqliteServer(Conflict):
    """A second server on a SQLite store: only PostgreSQL supports several replicas."""


@dataclass
class Takeover:
    """A session this replica took from a dead owner, and what that ended."""

    session_id: str
    previous: str | None
    kernel_pid: int | None
    previous_host: str | None
    interrupted: list[int] = field(default_factory=list)


def new_replica_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{os.urandom(3).hex()}"


def register(store: Store, replica_id: str, lease: float) -> None:
    """Add this replica's row (its lease starts now); audited."""
    now = utcnow()
    with store._write() as conn:
        conn.execute(
            _REPLICAS.insert(),
            {
                "id": replica_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started_at": now,
                "lease_until": now + timedelta(seconds=lease),
            },
        )
        store._audit(conn, "datasite", "replica.start", f"replica:{replica_id}")


def refuse_second_sqlite_server(store: Store, replica_id: str) -> None:
    """On SQLite one server only: refuse if another live process serves this store."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(_REPLICAS).where(
                _REPLICAS.c.id != replica_id,
                _REPLICAS.c.stopped_at.is_(None),
                _REPLICAS.c.host == socket.gethostname(),
            )
        ).all()
    for row in rows:
        if row.pid != os.getpid() and _alive(row.pid):
            raise SecondSqliteServer(
                f"another datasite server (pid {row.pid}) is serving this SQLite store; "
                "SQLite supports one server process only -- stop it, or use a PostgreSQL "
                "store (store: postgresql+psycopg://...) to run several replicas"
            )


def renew(store: Store, replica_id: str, lease: float) -> bool:
    """Extend this replica's lease; False if it had already run out (sessions may be gone).

    No audit entry: a heartbeat every few seconds would drown the log, and a lease
    decides nothing by itself (takeovers are audited).
    """
    now = utcnow()
    with store.engine.begin() as conn:
        row = conn.execute(
            _REPLICAS.update()
            .where(_REPLICAS.c.id == replica_id)
            .values(lease_until=now + timedelta(seconds=lease), stopped_at=None)
            .returning(_REPLICAS.c.lease_until)
        ).first()
    return row is not None


def lease_still_valid(store: Store, replica_id: str) -> bool:
    with store.engine.connect() as conn:
        until = conn.execute(
            select(_REPLICAS.c.lease_until).where(_REPLICAS.c.id == replica_id)
        ).scalar()
    return until is not None and until >= utcnow()


def expire_dead_neighbours(store: Store, replica_id: str) -> list[str]:
    """Replicas on this host whose process is gone: end their leases now.

    A replica elsewhere is known dead only when its lease runs out; one on this machine
    whose pid no longer exists is dead at once (a restart after a crash, the tests).
    """
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(_REPLICAS.c.id, _REPLICAS.c.pid).where(
                _REPLICAS.c.id != replica_id,
                _REPLICAS.c.host == socket.gethostname(),
                _REPLICAS.c.lease_until >= utcnow(),
            )
        ).all()
    dead = [row.id for row in rows if not _alive(row.pid)]
    if dead:
        with store.engine.begin() as conn:
            conn.execute(
                _REPLICAS.update()
                .where(_REPLICAS.c.id.in_(dead))
                .values(lease_until=datetime(1970, 1, 1))
            )
    return dead


def stop(store: Store, replica_id: str) -> None:
    """A clean stop: the lease ends now, so others take this replica's sessions at once."""
    now = utcnow()
    with store._write() as conn:
        conn.execute(
            _REPLICAS.update()
            .where(_REPLICAS.c.id == replica_id)
            .values(lease_until=now, stopped_at=now)
        )
        store._audit(conn, "datasite", "replica.stop", f"replica:{replica_id}")


def owned_sessions(store: Store, replica_id: str) -> set[str]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(_SESSIONS.c.id).where(_SESSIONS.c.replica == replica_id))
        return {row.id for row in rows}


def queued_in_own_sessions(store: Store, replica_id: str) -> list[tuple[int, str, int]]:
    """(request id, session id, user id) of queued requests of this replica's sessions."""
    query = (
        select(_REQUESTS.c.id, _REQUESTS.c.session_id, _REQUESTS.c.user_id)
        .join(_SESSIONS, _SESSIONS.c.id == _REQUESTS.c.session_id)
        .where(
            _REQUESTS.c.status == RequestStatus.QUEUED.value,
            _SESSIONS.c.replica == replica_id,
            _SESSIONS.c.closed_at.is_(None),
        )
        .order_by(_REQUESTS.c.id)
    )
    with store.engine.connect() as conn:
        return [(row.id, row.session_id, row.user_id) for row in conn.execute(query)]


def claim_session(
    store: Store, conn: Connection, session_id: str, replica_id: str, message: str
) -> Takeover | None:
    """In a write transaction: make ``replica_id`` the session's owner if its owner is
    gone (or it has none). Returns None when another live replica owns it."""
    row = conn.execute(
        select(_SESSIONS.c.replica, _SESSIONS.c.kernel_pid)
        .where(_SESSIONS.c.id == session_id)
        .with_for_update()
    ).first()
    if row is None or row.replica == replica_id:
        return Takeover(session_id, replica_id, None, None)
    gone = conn.execute(
        select(_SESSIONS.c.id).where(_SESSIONS.c.id == session_id, _OWNER_GONE),
        {"now": utcnow()},
    ).first()
    if gone is None:
        return None
    return _take(store, conn, session_id, row.replica, row.kernel_pid, replica_id, message)


def orphan_kernels(store: Store) -> list[tuple[str, int]]:
    """(session id, pid) of kernels that dead replicas on this machine left running.

    They hold private data and nobody will use them (a session's next cell starts a
    new kernel on its new owner), so the replica that finds them ends them, whether
    or not their sessions have unfinished requests.
    """
    query = (
        select(_SESSIONS.c.id, _SESSIONS.c.kernel_pid)
        .outerjoin(_REPLICAS, _REPLICAS.c.id == _SESSIONS.c.replica)
        .where(
            _SESSIONS.c.kernel_pid.is_not(None),
            _OWNER_GONE,
            or_(_REPLICAS.c.host.is_(None), _REPLICAS.c.host == socket.gethostname()),
        )
    )
    with store.engine.connect() as conn:
        return [(row.id, row.kernel_pid) for row in conn.execute(query, {"now": utcnow()})]


def take_over_orphans(store: Store, replica_id: str, message: str) -> list[Takeover]:
    """Sessions with unfinished requests whose owner is gone: take them (SKIP LOCKED)."""
    orphans = (
        select(_SESSIONS.c.id, _SESSIONS.c.replica, _SESSIONS.c.kernel_pid)
        .where(
            _OWNER_GONE,
            _SESSIONS.c.id.in_(
                select(_REQUESTS.c.session_id).where(_REQUESTS.c.status.in_(UNFINISHED))
            ),
        )
        .order_by(_SESSIONS.c.id)
    )
    with store.engine.connect() as conn:  # a cheap look first: usually there are none
        if conn.execute(orphans.limit(1), {"now": utcnow()}).first() is None:
            return []
    taken = []
    with store._write() as conn:
        rows = conn.execute(
            orphans.with_for_update(of=_SESSIONS, skip_locked=True), {"now": utcnow()}
        ).all()
        for row in rows:
            taken.append(
                _take(store, conn, row.id, row.replica, row.kernel_pid, replica_id, message)
            )
    return taken


def _take(
    store: Store,
    conn: Connection,
    session_id: str,
    previous: str | None,
    kernel_pid: int | None,
    replica_id: str,
    message: str,
) -> Takeover:
    """The session becomes ``replica_id``'s; its unfinished requests are interrupted."""
    host = None
    if previous is not None:
        host = conn.execute(select(_REPLICAS.c.host).where(_REPLICAS.c.id == previous)).scalar()
    ended = conn.execute(
        _REQUESTS.update()
        .where(_REQUESTS.c.session_id == session_id, _REQUESTS.c.status.in_(UNFINISHED))
        .values(status=RequestStatus.INTERRUPTED.value, message=message, finished_at=utcnow())
        .returning(_REQUESTS.c.id)
    ).all()
    interrupted = sorted(row.id for row in ended)
    conn.execute(
        _SESSIONS.update()
        .where(_SESSIONS.c.id == session_id)
        .values(replica=replica_id, kernel_pid=None)
    )
    if previous is None and not interrupted:  # a new session's first owner: no news
        return Takeover(session_id, None, kernel_pid, None)
    for request_id in interrupted:
        store._audit(
            conn, "datasite", "request.status", f"request:{request_id}",
            status=RequestStatus.INTERRUPTED.value, reason="replica gone",
        )  # fmt: skip
    store._audit(
        conn, "datasite", "session.takeover", f"session:{session_id}",
        previous=previous, replica=replica_id, interrupted=interrupted,
    )  # fmt: skip
    return Takeover(session_id, previous, kernel_pid, host, interrupted)


def replica_counts(store: Store) -> dict[str, int]:
    """How many requests each replica started (from the audit log: the benchmark's share)."""
    counts: dict[str, int] = {}
    for entry in store.audit_entries():
        if entry.action == "request.status" and entry.detail.get("status") == "running":
            replica = str(entry.detail.get("replica", "?"))
            counts[replica] = counts.get(replica, 0) + 1
    return counts


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
