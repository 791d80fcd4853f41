"""Several ``datasite serve`` processes on one store: leases, work, events between them.

One :class:`Replicas` per server. On SQLite it only registers the server (the core
refuses a second live server on the same store, by its pid). On PostgreSQL it also:

* **hears the others** over ``LISTEN rk_events`` (a psycopg 3 async connection) and
  **tells them** with ``pg_notify`` on another: payloads are small (kinds and ids;
  the receiving replica reads the rows), batched per event-loop turn, so a change made
  on one replica reaches researchers' websockets on every replica;
* **finds work**: queued requests of its own sessions that were submitted through
  another replica (told by NOTIFY, and every ``poll_seconds`` in case a notification
  was missed), and sessions of dead replicas (:func:`leases.take_over_orphans`);
* **renews its lease** (in a thread of its own) every ``heartbeat_seconds``; if it
  finds its lease already run out (it was stopped or cut off for longer than a
  lease), it drops the sessions that others took meanwhile.

The core stays the only place that runs requests and publishes events: this module
calls back into it (``deliver``, ``control``, ``enqueue_claimed``, ``apply_takeovers``,
``keep_only``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from remote_kernel.datasite import leases

if TYPE_CHECKING:
    from remote_kernel.datasite.core import DatasiteCore

log = logging.getLogger("remote_kernel.datasite.replicas")

CHANNEL = "rk_events"
#: PostgreSQL's NOTIFY payloads must stay under 8000 bytes.
MAX_PAYLOAD = 7000
#: Kinds of announcement: r(equest) o(utput) w(ork queued for a session's owner),
#: and what only a session's owner can do: i(nterrupt) s (restart) x (close).
KINDS = frozenset("rowisx")


class Replicas:
    """This server's membership in the datasite's set of replicas."""

    def __init__(self, core: DatasiteCore) -> None:
        self.core = core
        self.store = core.store
        self.settings = core.config.replicas
        self.id = leases.new_replica_id()
        #: Several replicas possible (PostgreSQL): events and work cross processes.
        self.shared = self.store.engine.dialect.name == "postgresql"
        self._pending: list[list[Any]] = []
        self._flushing = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._send: Any = None
        self._beating = threading.Event()

    # --- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Register, then (PostgreSQL) take over what dead replicas left and start the
        loops. (On SQLite the core refused a second live server already.)"""
        leases.register(self.store, self.id, self.settings.lease_seconds)
        if not self.shared:  # one server: no lease to keep (a second one is refused by pid)
            return
        self._beating = threading.Event()
        threading.Thread(
            target=self._heartbeat,
            args=(asyncio.get_running_loop(), self._beating),
            name="remote_kernel-heartbeat",
            daemon=True,
        ).start()
        leases.expire_dead_neighbours(self.store, self.id)
        self.find_work()
        self._tasks.append(asyncio.create_task(self._listen_loop()))
        self._tasks.append(asyncio.create_task(self._work_loop()))

    async def stop(self) -> None:
        self._beating.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._send is not None:
            with contextlib.suppress(Exception):
                await self._send.close()
        with contextlib.suppress(Exception):
            leases.stop(self.store, self.id)

    # --- telling the others --------------------------------------------------------------
    def announce(self, kind: str, ident: int | str, user_id: int) -> None:
        """Tell the other replicas (no-op on SQLite); sent at the end of this loop turn."""
        if not self.shared:
            return
        self._pending.append([kind, ident, user_id])
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        task = asyncio.ensure_future(self._flush())
        self._tasks = [t for t in self._tasks if not t.done()] + [task]

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, size = [], 0
                while self._pending and size < MAX_PAYLOAD // 2:
                    entry = self._pending.pop(0)
                    batch.append(entry)
                    size += len(json.dumps(entry)) + 1
                payload = json.dumps({"f": self.id, "e": batch}, separators=(",", ":"))
                await self._notify(payload)
        finally:
            self._flushing = False

    async def _notify(self, payload: str) -> None:
        import psycopg

        for attempt in range(2):
            try:
                if self._send is None or self._send.closed:
                    self._send = await psycopg.AsyncConnection.connect(self._dsn(), autocommit=True)
                await self._send.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                return
            except psycopg.Error:
                # Events are hints: every state is in the store, and clients catch up
                # with GET /api/requests when they reconnect. One retry, then log.
                self._send = None
                if attempt:
                    log.exception("could not tell the other replicas")

    def _dsn(self) -> str:
        url = make_url(self.store.engine.url).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    # --- hearing them --------------------------------------------------------------------
    async def _listen_loop(self) -> None:
        import psycopg

        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn(), autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.5
                    self.wake()  # anything announced while we were not listening
                    async for note in conn.notifies():
                        self._heard(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lost the connection that hears other replicas; reconnecting")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _heard(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            if message.get("f") == self.id:
                return
            entries = message["e"]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignored a malformed notification on %s", CHANNEL)
            return
        for entry in entries:
            if not isinstance(entry, list) or len(entry) != 3 or entry[0] not in KINDS:
                continue
            kind, ident, user_id = entry
            try:
                if kind in "ro":
                    self.core.deliver(kind, int(ident), int(user_id))
                elif kind == "w":
                    self.wake()
                else:
                    task = asyncio.ensure_future(self.core.control(kind, str(ident)))
                    self._tasks = [t for t in self._tasks if not t.done()] + [task]
            except Exception:
                log.exception("could not act on %s from another replica", entry)

    # --- work and leases -----------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    def find_work(self) -> None:
        """Take over dead replicas' sessions; queue what others accepted for ours."""
        message = self.core.restart_message
        self.core.end_orphan_kernels(leases.orphan_kernels(self.store))
        self.core.apply_takeovers(leases.take_over_orphans(self.store, self.id, message))
        self.core.enqueue_claimed(leases.queued_in_own_sessions(self.store, self.id))

    async def _work_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)
            self._wake.clear()
            try:
                self.find_work()
            except Exception:
                log.exception("looking for work failed; trying again")

    def _heartbeat(self, loop: asyncio.AbstractEventLoop, stopped: threading.Event) -> None:
        """Renew the lease from a thread of its own: the event loop can be busy for
        seconds (a kernel starting, a first DP query importing its engine) without this
        server being dead, and a lease that ran out then would give its live kernels'
        sessions away."""
        lease = self.settings.lease_seconds
        while not stopped.wait(self.settings.heartbeat_seconds):
            try:
                valid = leases.lease_still_valid(self.store, self.id)
                leases.renew(self.store, self.id, lease)
                if not valid and self.shared:
                    log.warning("this replica's lease had run out; keeping only its sessions")
                    owned = leases.owned_sessions(self.store, self.id)
                    asyncio.run_coroutine_threadsafe(self.core.keep_only(owned), loop)
                if self.shared and leases.expire_dead_neighbours(self.store, self.id):
                    loop.call_soon_threadsafe(self.wake)
            except RuntimeError:  # the loop closed: the server is stopping
                return
            except Exception:
                log.exception("could not renew this replica's lease; trying again")
