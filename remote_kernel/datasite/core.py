"""The datasite's core: sessions, requests, the output path and reviews.

Independent of HTTP so that the server handlers stay thin and the same rules
apply whichever way a request arrives (REST or websocket). The order of the
output path is the security argument, so it is spelled out once, in
:meth:`DatasiteCore._on_output`: record the exact bytes, check the stored bytes,
store the verdict, then tell the researcher only what the verdict allows.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import keyword
import logging
import os
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from remote_kernel.checks import sqltier
from remote_kernel.checks.errors import error_facts, error_release_item, error_summary
from remote_kernel.checks.filter import QUERY_MIME, CheckContext, OutputFilter
from remote_kernel.checks.kernel_tables import suppressed_variant
from remote_kernel.checks.policy import Policy
from remote_kernel.datasite import leases
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.datasets import load_private_tables
from remote_kernel.datasite.dp_tier import DP_MIME
from remote_kernel.datasite.kernels import KernelDied, KernelHandle, KernelProvider
from remote_kernel.datasite.replicas import Replicas
from remote_kernel.datasite.store import (
    KernelSession,
    NewPush,
    NotFound,
    Output,
    Request,
    Store,
    User,
)
from remote_kernel.datasite.views import (
    DP_ANSWERS_SHOWN,
    Votes,
    dp_view,
    output_view,
    request_view,
)
from remote_kernel.datasite.watchdog import CellStopped, CellWatchdog
from remote_kernel.protocol.errors import InputError, PermissionDenied, RemoteKernelError, TooLarge
from remote_kernel.protocol.kernel_env import DATASETS_ENV, SITE_ENV
from remote_kernel.protocol.models import (
    Finding,
    OutputItem,
    OutputState,
    RequestStatus,
    Role,
    Verdict,
)

log = logging.getLogger("remote_kernel.datasite.core")

Listener = Callable[[dict[str, Any]], None]


class OutputLimitExceeded(RemoteKernelError, RuntimeError):
    """A request produced more outputs or bytes than this datasite allows."""


RESTART_MESSAGE = (
    "the datasite server stopped while this request was queued or running; "
    "its kernel state is gone, so run the cells it needs again"
)


@dataclass
class SessionRuntime:
    """What lives only in memory for a session: its kernel and its queue."""

    session_id: str
    kernel: KernelHandle | None = None
    queue: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    worker: asyncio.Task[None] | None = None
    current_request: int | None = None
    starting: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The running kernel's working directory and uid (None: the server's user).
    workdir: Path | None = None
    kernel_uid: int | None = None
    #: Queued requests that carry pushes (most do not: no push query for them).
    with_pushes: set[int] = field(default_factory=set)
    #: Every request ever put in ``queue`` (a replica finds queued work more than once).
    seen: set[int] = field(default_factory=set)


class EventBus:
    """Fan-out of live events to websocket listeners, keyed by user id."""

    def __init__(self) -> None:
        self._listeners: dict[int, set[Listener]] = defaultdict(set)

    def subscribe(self, user_id: int, listener: Listener) -> None:
        self._listeners[user_id].add(listener)

    def unsubscribe(self, user_id: int, listener: Listener) -> None:
        self._listeners[user_id].discard(listener)

    def has(self, user_id: int) -> bool:
        """Whether anyone here listens for ``user_id`` (else events from others are skipped)."""
        return bool(self._listeners.get(user_id))

    def publish(self, user_id: int, event: dict[str, Any]) -> None:
        for listener in list(self._listeners.get(user_id, ())):
            try:
                listener(event)
            except Exception:  # a broken listener must not stop the output path
                log.exception("event listener failed")


class KernelApiServer(Protocol):
    """Where the site's kernels ask it for aggregates (``rk.query``), served beside the core.

    The HTTP layer provides it (:class:`remote_kernel.datasite.http.kernel_api.KernelApi`);
    the core only starts and stops it and hands each kernel its environment.
    """

    socket_path: Path

    def start(self, other_users: bool) -> None: ...

    def stop(self) -> None: ...

    def kernel_env(self, session_id: str) -> dict[str, str]: ...


class DatasiteCore:
    """One datasite, without HTTP: sessions, per-session queues, the output path, reviews.

    The HTTP layer (:mod:`remote_kernel.datasite.http`) is a thin shell over this;
    the command line and the tests drive it the same way.
    """

    def __init__(
        self,
        config: DatasiteConfig,
        store: Store,
        output_filter: OutputFilter,
        kernels: KernelProvider,
        policy: Policy | None = None,
        private_tables: dict[str, pd.DataFrame] | None = None,
        kernel_api: Callable[[DatasiteCore], KernelApiServer] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.filter = output_filter
        self.kernels = kernels
        self.policy = policy or Policy()
        self.events = EventBus()
        self.runtimes: dict[str, SessionRuntime] = {}
        self._culler: asyncio.Task[None] | None = None
        self._private_tables = private_tables
        self.replicas = Replicas(self)
        if not self.replicas.shared:  # before the kernel API clears its stale directories
            leases.refuse_second_sqlite_server(store, self.replicas.id)
        self.kernel_api = kernel_api(self) if kernel_api is not None else None
        self.restart_message = RESTART_MESSAGE

    # --- life cycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Recover from whatever the last run left behind, then start culling.

        On SQLite (one server) that is everything unfinished; with replicas on
        PostgreSQL, only what dead replicas left (:meth:`Replicas.start`).
        """
        await self.replicas.start()
        if not self.replicas.shared:
            self._kill_orphan_kernels()
            interrupted = self.store.interrupt_unfinished_requests(RESTART_MESSAGE)
            if interrupted:
                log.warning("marked %d unfinished request(s) interrupted", len(interrupted))
        for output in self.store.unchecked_outputs():
            self._check_and_store(output)
        status = self.sandbox_status()
        if self.kernel_api is not None:
            self.kernel_api.start(other_users=bool(status.get("separate_user")))
            keep = getattr(self.kernels, "keep_paths", None)
            if keep is not None:
                keep.append(self.kernel_api.socket_path.parent)
        self._culler = asyncio.create_task(self._cull_loop())

    async def stop(self) -> None:
        if self._culler:
            self._culler.cancel()
        for runtime in list(self.runtimes.values()):
            if runtime.worker:
                runtime.worker.cancel()
            await self._shutdown_kernel(runtime)
        await self.replicas.stop()
        if self.kernel_api is not None:
            self.kernel_api.stop()
        close = getattr(self.kernels, "close", None)
        if close is not None:
            close()

    def sandbox_status(self) -> dict[str, Any]:
        """What sandbox kernels get here (the provider's own account, or 'unknown')."""
        status = getattr(self.kernels, "status", None)
        if status is None:
            return {"mode": "unknown", "warnings": ["this kernel provider reports no sandbox"]}
        return dict(status.to_json())

    def private_tables(self) -> dict[str, pd.DataFrame]:
        """The private datasets, loaded once (the leak index and the SQL tier read them)."""
        if self._private_tables is None:
            self._private_tables = load_private_tables(self.config)
        return self._private_tables

    def _kill_orphan_kernels(self) -> None:
        """Kernels of a server that was killed keep running; end them (they hold private data)."""
        for session in self.store.open_sessions_with_kernels():
            pid = session.kernel_pid
            if pid and _is_our_kernel(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self.store.set_kernel_pid(session.id, None)

    async def _cull_loop(self) -> None:
        settings = self.config.kernels
        while True:
            await asyncio.sleep(settings.cull_interval_seconds)
            now = time.monotonic()
            for runtime in list(self.runtimes.values()):
                kernel = runtime.kernel
                if (
                    kernel is not None
                    and runtime.current_request is None
                    and runtime.queue.empty()
                    and now - kernel.last_activity > settings.cull_idle_seconds
                ):
                    log.info("culling idle kernel of session %s", runtime.session_id)
                    await self._shutdown_kernel(runtime)

    async def _shutdown_kernel(self, runtime: SessionRuntime) -> None:
        kernel, runtime.kernel = runtime.kernel, None
        if kernel is not None:
            with contextlib.suppress(Exception):
                await kernel.shutdown()
            self.store.set_kernel_pid(runtime.session_id, None)

    # --- access checks -------------------------------------------------------------------
    def own_session(self, user: User, session_id: str) -> KernelSession:
        try:
            session = self.store.get_session(session_id)
        except NotFound:
            raise
        if session.user_id != user.id:
            # Same answer as for a missing id: do not confirm that others' ids exist.
            raise NotFound(f"no session {session_id!r}")
        return session

    def visible_request(self, user: User, request_id: int) -> Request:
        request = self.store.get_request(request_id)
        if user.role_enum is Role.RESEARCHER and request.user_id != user.id:
            raise NotFound(f"no request {request_id}")
        return request

    def visible_output(self, user: User, output_id: int) -> Output:
        """The output ``user`` may see under ``output_id``.

        For a researcher a variant does not exist (404, like any unknown id), and an
        output released with suppression is its released variant (shown under this id).
        """
        output = self.store.get_output(output_id)
        self.visible_request(user, output.request_id)
        if user.role_enum is Role.RESEARCHER:
            if output.parent_id is not None:
                raise NotFound(f"no output {output_id}")
            return self.store.released_variant_of(output.id) or output
        return output

    # --- sessions ------------------------------------------------------------------------
    def create_session(self, user: User) -> KernelSession:
        if user.role_enum is not Role.RESEARCHER:
            raise PermissionDenied("only researchers run code at a datasite")
        return self.store.create_session(str(uuid.uuid4()), user)

    def kernel_state(self, session_id: str) -> str:
        runtime = self.runtimes.get(session_id)
        if runtime is None or runtime.kernel is None:
            return "not started"
        return "busy" if runtime.current_request is not None else "idle"

    async def close_session(self, user: User, session_id: str) -> None:
        self.own_session(user, session_id)
        # Closed first, before any await, so that submit() refuses from here on.
        self.store.close_session(session_id, user.name)
        if session_id not in self.runtimes:
            self.replicas.announce("x", session_id, user.id)  # its owner may be elsewhere
        await self._drop_runtime(session_id, "the session was closed before this request ran")

    async def _drop_runtime(self, session_id: str, message: str) -> None:
        """End a session's life here: its worker, its queued requests, its kernel."""
        runtime = self.runtimes.pop(session_id, None)
        if runtime is None:
            return
        if runtime.worker:
            runtime.worker.cancel()
        while not runtime.queue.empty():
            self._finish(runtime.queue.get_nowait(), RequestStatus.INTERRUPTED, message)
        await self._shutdown_kernel(runtime)

    async def interrupt(self, user: User, session_id: str) -> None:
        self.own_session(user, session_id)
        runtime = self.runtimes.get(session_id)
        if runtime and runtime.kernel:
            await runtime.kernel.interrupt()
            self.store.audit(user.name, "session.interrupt", f"session:{session_id}")
        elif runtime is None:
            self.replicas.announce("i", session_id, user.id)

    async def restart(self, user: User, session_id: str) -> None:
        self.own_session(user, session_id)
        runtime = self.runtimes.get(session_id)
        if runtime and runtime.kernel:
            await runtime.kernel.restart()
            self.store.set_kernel_pid(session_id, runtime.kernel.pid)
            self.store.audit(user.name, "session.restart", f"session:{session_id}")
        elif runtime is None:
            self.replicas.announce("s", session_id, user.id)

    # --- requests ------------------------------------------------------------------------
    def submit(self, user: User, session_id: str, code: Any, push: Any = None) -> Request:
        """Validate, store and queue a cell. Nothing is stored if validation fails."""
        if user.role_enum is not Role.RESEARCHER:
            raise PermissionDenied("only researchers run code at a datasite")
        if not isinstance(code, str):
            raise InputError("'code' must be a string")
        size = len(code.encode())
        limit = self.config.limits.max_code_bytes
        if size > limit:
            raise TooLarge(f"code is {size} bytes, over this datasite's limit of {limit} bytes")
        pushes = parse_pushes(push, self.config.limits.max_push_bytes)
        session = self.own_session(user, session_id)
        if session.closed_at is not None:
            raise InputError(f"session {session_id} is closed; create a new one")
        if self.replicas.shared and session_id not in self.runtimes:
            request, owned = self._submit_claiming(session_id, user, code, pushes)
            if not owned:  # another live replica runs this session: tell it
                self.replicas.announce("w", session_id, user.id)
                self._publish_request(request)
                return request
        else:
            request = self.store.create_request(session_id, user, code, pushes)
        runtime = self.runtimes.setdefault(session_id, SessionRuntime(session_id))
        if pushes:
            runtime.with_pushes.add(request.id)
        runtime.seen.add(request.id)
        runtime.queue.put_nowait(request.id)
        if runtime.worker is None or runtime.worker.done():
            runtime.worker = asyncio.create_task(self._worker(runtime, user))
        self._publish_request(request)
        return request

    def _submit_claiming(
        self, session_id: str, user: User, code: str, pushes: tuple[NewPush, ...]
    ) -> tuple[Request, bool]:
        """Store the request and, in the same transaction, claim its session for this
        replica unless a live one owns it; (the request, whether this replica owns it)."""
        claims: list[leases.Takeover | None] = []

        def claim(conn: Any) -> None:
            me = self.replicas.id
            claims.append(leases.claim_session(self.store, conn, session_id, me, RESTART_MESSAGE))

        request = self.store.create_request(session_id, user, code, pushes, first=claim)
        if claims[0] is None:
            return request, False
        self.apply_takeovers([claims[0]])
        return request, True

    # --- replicas: what the others tell this one -----------------------------------------
    def apply_takeovers(self, takeovers: list[leases.Takeover]) -> None:
        """Sessions taken from dead replicas: end their kernels if on this machine, tell
        researchers about the requests that were interrupted."""
        for takeover in takeovers:
            if takeover.previous == self.replicas.id:
                continue
            pid = takeover.kernel_pid
            if (
                pid
                and takeover.previous_host == leases.socket.gethostname()
                and _is_our_kernel(pid)
            ):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            for request_id in takeover.interrupted:
                with contextlib.suppress(NotFound):
                    self._publish_request(self.store.get_request(request_id))
            if takeover.interrupted:
                log.warning(
                    "took over session %s from %s: %d request(s) interrupted",
                    takeover.session_id, takeover.previous, len(takeover.interrupted),
                )  # fmt: skip

    def end_orphan_kernels(self, orphans: list[tuple[str, int]]) -> None:
        """Kernels dead replicas on this machine left behind (see :func:`leases.orphan_kernels`)."""
        for session_id, pid in orphans:
            if _is_our_kernel(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self.store.set_kernel_pid(session_id, None)

    def enqueue_claimed(self, queued: list[tuple[int, str, int]]) -> None:
        """Queued requests of this replica's sessions, accepted by another replica."""
        users: dict[int, User] = {}
        for request_id, session_id, user_id in queued:
            runtime = self.runtimes.setdefault(session_id, SessionRuntime(session_id))
            if request_id in runtime.seen:
                continue
            runtime.seen.add(request_id)
            runtime.with_pushes.add(request_id)  # unknown here: looked up when it runs
            runtime.queue.put_nowait(request_id)
            if runtime.worker is None or runtime.worker.done():
                user = users.get(user_id) or users.setdefault(user_id, self.store.get_user(user_id))
                runtime.worker = asyncio.create_task(self._worker(runtime, user))

    def deliver(self, kind: str, ident: int, user_id: int) -> None:
        """A change another replica made: read the row, tell this replica's listeners."""
        if not self.events.has(user_id):
            return
        # The payload's user id only picks who might care; whom to tell is the row's
        # (a notification is a hint: it never decides who sees what).
        with contextlib.suppress(NotFound):
            if kind == "r":
                request = self.store.get_request(ident)
                if request.user_id == user_id:
                    self._publish_request(request, announce=False)
            else:
                self._publish_output(self.store.get_output(ident), None, announce=False)

    async def control(self, kind: str, session_id: str) -> None:
        """What only a session's owner can do, asked for through another replica."""
        runtime = self.runtimes.get(session_id)
        if runtime is None:
            return
        if kind == "x":
            if self.store.get_session(session_id).closed_at is None:
                return  # only a session closed in the store is ended here
            await self._drop_runtime(session_id, "the session was closed before this request ran")
        elif runtime.kernel is not None:
            session = self.store.get_session(session_id)
            actor = self.store.user_name(session.user_id)
            if kind == "i":
                await runtime.kernel.interrupt()
                self.store.audit(actor, "session.interrupt", f"session:{session_id}")
            else:
                await runtime.kernel.restart()
                self.store.set_kernel_pid(session_id, runtime.kernel.pid)
                self.store.audit(actor, "session.restart", f"session:{session_id}")

    async def keep_only(self, owned: set[str]) -> None:
        """After this replica's lease ran out: drop the sessions others took meanwhile."""
        for session_id in [s for s in self.runtimes if s not in owned]:
            await self._drop_runtime(session_id, RESTART_MESSAGE)

    async def _worker(self, runtime: SessionRuntime, user: User) -> None:
        while True:
            request_id = await runtime.queue.get()
            runtime.current_request = request_id
            try:
                await self._run(runtime, user, request_id)
            except asyncio.CancelledError:
                self._finish(request_id, RequestStatus.INTERRUPTED, "the session was closed")
                raise
            except Exception as exc:  # the server must stay up whatever a request does
                log.exception("request %s failed", request_id)
                self._finish(request_id, RequestStatus.FAILED, f"datasite error: {exc}")
            finally:
                runtime.current_request = None

    async def _ensure_kernel(self, runtime: SessionRuntime) -> KernelHandle:
        async with runtime.starting:
            if runtime.kernel is not None and await runtime.kernel.is_alive():
                return runtime.kernel
            if runtime.kernel is not None:
                await self._shutdown_kernel(runtime)
            cwd = self.config.scratch_dir / runtime.session_id
            cwd.mkdir(parents=True, exist_ok=True)
            env = {
                SITE_ENV: self.config.name,
                DATASETS_ENV: str(self.config.datasets_dir),
                **(self.kernel_api.kernel_env(runtime.session_id) if self.kernel_api else {}),
            }
            runtime.kernel = await self.kernels.start(runtime.session_id, cwd, env)
            runtime.workdir = Path(getattr(runtime.kernel, "workdir", cwd))
            runtime.kernel_uid = getattr(runtime.kernel, "uid", None)
            self.store.set_kernel_pid(runtime.session_id, runtime.kernel.pid)
            return runtime.kernel

    async def _run(self, runtime: SessionRuntime, user: User, request_id: int) -> None:
        request = self.store.get_request(request_id)
        if request.status != RequestStatus.QUEUED.value:  # interrupted or taken meanwhile
            return
        try:
            kernel = await self._ensure_kernel(runtime)
        except Exception as exc:
            self._finish(request_id, RequestStatus.FAILED, f"could not start a kernel: {exc}")
            return
        # Only if still queued (and, with replicas, still this replica's session).
        started = self.store.start_request(
            request_id, self.replicas.id if self.replicas.shared else None
        )
        if started is None:
            return
        self._publish_request(started)
        limits = self.config.limits
        produced = {"outputs": 0, "bytes": 0}

        async def on_output(item: OutputItem) -> None:
            # The cap is checked before anything is stored: past it nothing more is kept.
            produced["outputs"] += 1
            produced["bytes"] += len(item.canonical_bytes())
            if produced["outputs"] > limits.max_outputs_per_request:
                raise OutputLimitExceeded(f"more than {limits.max_outputs_per_request} outputs")
            if produced["bytes"] > limits.max_output_bytes_per_request:
                raise OutputLimitExceeded(
                    f"more than {limits.max_output_bytes_per_request} bytes of output"
                )
            self._on_output(request, item)

        watchdog = self._watchdog(user, request, kernel)
        try:
            if not await self._hand_over_pushes(runtime, request, kernel, on_output):
                return
            result = await watchdog.guard(kernel.execute(request.code, on_output))
        except (KernelDied, CellStopped) as exc:
            await self._shutdown_kernel(runtime)
            died = f"{exc}; the next request starts a new kernel"
            self._finish(
                request_id, RequestStatus.FAILED, watchdog.message() if watchdog.fired else died
            )
            return
        except OutputLimitExceeded as exc:
            # A flood may ignore interrupts; stopping the kernel is the one sure way.
            await self._shutdown_kernel(runtime)
            self.store.audit(
                "datasite", "request.cut_off", f"request:{request_id}", reason=str(exc)
            )
            self._finish(
                request_id,
                RequestStatus.FAILED,
                f"output cut off: the cell produced {exc}, over this datasite's limit; "
                "the outputs before the limit are kept and checked, the kernel was stopped "
                "and the next request starts a new kernel",
            )
            return
        self._finish_ran(request, result.status, watchdog)

    def _finish_ran(self, request: Request, status: str, watchdog: CellWatchdog) -> None:
        """The end of a cell that ran: by its reply's status, or the time limit's message."""
        if watchdog.fired:
            self._finish(request.id, RequestStatus.FAILED, watchdog.message())
        elif status == "ok":
            self._finish(request.id, RequestStatus.COMPLETED)
        elif status == "aborted":
            self._finish(request.id, RequestStatus.INTERRUPTED, "execution was aborted")
        else:
            errors = [o for o in self.store.outputs_of(request.id) if o.msg_type == "error"]
            content = errors[-1].item.content if errors else {}
            self._release_error_facts(request, content)
            self._finish(request.id, RequestStatus.ERROR, error_summary(content, request.code))

    def _release_error_facts(self, request: Request, content: dict[str, Any]) -> None:
        """The datasite's own output for a cell that raised: the type and the cell's lines.

        Written from a known exception name, line numbers and the submitted code
        (:mod:`remote_kernel.checks.errors`), checked by the filter (origin "error",
        released by policy unless the scan finds something); the kernel's error
        output, with the message, stays held.
        """
        item = error_release_item(error_facts(content, request.code), request.code)
        output = self.store.add_output(request.id, item, origin="error")
        self._check_and_store(output, request.user_id)

    def _watchdog(self, user: User, request: Request, kernel: KernelHandle) -> CellWatchdog:
        """The cell's wall-clock limit (policy); interrupting for it is audited."""
        seconds = self.policy.cell_seconds(user.name, user.role, request.code)

        async def interrupt() -> None:
            self.store.audit(
                "datasite", "request.time_limit", f"request:{request.id}", seconds=seconds
            )
            await kernel.interrupt()

        return CellWatchdog(seconds, interrupt, self.config.limits.interrupt_grace_seconds)

    async def _hand_over_pushes(
        self,
        runtime: SessionRuntime,
        request: Request,
        kernel: KernelHandle,
        on_output: Callable[[OutputItem], Any],
    ) -> bool:
        """Give the request's pushed objects to its kernel; False if the kernel refused them.

        The server writes the stored bytes to the kernel's scratch directory and
        asks the kernel to load them: unpickling happens only in the researcher's
        kernel (invariant 3). What the loading prints is an output like any other.
        """
        if request.id not in runtime.with_pushes:
            return True
        runtime.with_pushes.discard(request.id)
        pushes = self.store.pushes_of(request.id)
        if not pushes:
            return True
        if not getattr(kernel, "shares_files", True):  # a gateway's: via the kernel API
            names = [p.name for p in pushes]
            snippet = (
                "import remote_kernel.researcher.values as _rk_values\n"
                f"_rk_values.fetch_pushes({request.id}, {json.dumps(names)}, "
                "get_ipython().user_ns)\ndel _rk_values\n"
            )
            return await self._pushes_loaded(
                request, pushes, await kernel.execute(snippet, on_output)
            )
        workdir = runtime.workdir or self.config.scratch_dir / runtime.session_id
        folder = workdir / f".rk-push-{request.id}"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        owner = runtime.kernel_uid
        if owner is not None:  # a sandboxed kernel runs as its own user
            os.chown(folder, owner, owner)
        paths = {}
        try:
            for push in pushes:
                path = folder / f"{push.name}.pkl"
                path.write_bytes(push.data)
                if owner is not None:
                    os.chown(path, owner, owner)
                # Relative to the kernel's working directory: a sandboxed kernel sees its
                # workdir bound in, not the server's absolute path to it.
                paths[push.name] = str(path.relative_to(workdir))
            snippet = (
                "import remote_kernel.researcher.values as _rk_values\n"
                f"_rk_values.receive_pushes({json.dumps(paths)}, get_ipython().user_ns)\n"
                "del _rk_values\n"
            )
            result = await kernel.execute(snippet, on_output)
        finally:
            for path_text in paths.values():
                (workdir / path_text).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
        return await self._pushes_loaded(request, pushes, result)

    async def _pushes_loaded(self, request: Request, pushes: list[Any], result: Any) -> bool:
        """True if the kernel loaded the pushes; else the request ends with why."""
        if result.status == "ok":
            return True
        errors = [o for o in self.store.outputs_of(request.id) if o.msg_type == "error"]
        content = errors[-1].item.content if errors else {}
        names = ", ".join(p.name for p in pushes)
        summary = error_summary(content, "")
        self._finish(
            request.id,
            RequestStatus.ERROR,
            f"the datasite kernel could not load the pushed objects ({names}): {summary}; "
            "the cell did not run",
        )
        return False

    def _finish(self, request_id: int, status: RequestStatus, message: str = "") -> None:
        with contextlib.suppress(NotFound):
            self._publish_request(self.store.set_request_status(request_id, status, message))

    # --- the output path -----------------------------------------------------------------
    def _on_output(self, request: Request, item: OutputItem) -> None:
        # 1. The exact bytes are durable before anything else happens to them.
        output = self.store.add_output(request.id, item)
        # 2-4. Check the stored bytes, store the verdict, tell the owner what it allows.
        self._check_and_store(output, request.user_id)

    def _check_and_store(
        self, output: Output, user_id: int | None = None, query_findings: tuple[Finding, ...] = ()
    ) -> None:
        if user_id is None:
            user_id = self.store.get_request(output.request_id).user_id
        context = CheckContext(
            researcher=self.store.user_name(user_id),
            origin=output.origin,
            query_findings=query_findings,
        )
        decision = self.filter.check(output.item, context)
        output = self.store.apply_filter_decision(output.id, decision, self.filter.name)
        self._publish_output(output, user_id)
        if output.origin == "kernel" and output.state == OutputState.PENDING.value:
            self._offer_variant(output, context.researcher, user_id)

    def _offer_variant(self, output: Output, researcher: str, user_id: int) -> None:
        """For a held kernel table of counts with failing cells: a suppressed variant.

        The datasite writes it (:func:`~remote_kernel.checks.kernel_tables.suppressed_variant`:
        the table's labels and numbers only, failing cells blank, under the researcher's
        thresholds), stores it as its own output linked to the original (audited with
        its hash), and checks it like any output. Nobody but reviewers learns of it
        before a reviewer releases it.
        """
        thresholds = self.policy.for_researcher(researcher)
        try:
            variant = suppressed_variant(output.item, thresholds)
        except Exception:  # researcher-made input: no variant, the original is reviewed as is
            log.exception("could not build a suppressed variant of output %s", output.id)
            return
        if variant is not None:
            row = self.store.add_variant(output, variant.item, "suppressed", variant.summary)
            self._check_and_store(row, user_id)

    async def run_query(
        self, session_id: str, sql: str, extra: tuple[Finding, ...] = ()
    ) -> dict[str, Any]:
        """``rk.query`` from a kernel: run it here, record the table as an output, check it.

        The table is released on the datasite's own evidence (cell counts,
        dominance, ...), never on anything the kernel said; the kernel gets the
        true result back for further work, and whatever it then prints is an
        ordinary kernel output. ``extra``: the datasite's own notes for the reviewer
        (e.g. the DP answer an exact query was asked from), added to the evidence.
        """
        request = self.running_request(session_id)
        thresholds = self.policy.for_researcher(self.store.user_name(request.user_id))
        size = len(sql.encode())
        if size > self.config.limits.max_code_bytes:
            raise TooLarge(f"query is {size} bytes, over this datasite's limit")
        try:
            outcome = await asyncio.to_thread(
                sqltier.run_query, sql, self.private_tables(), thresholds
            )
        except sqltier.QueryRejected as exc:
            raise InputError(str(exc)) from None
        shown = outcome.released if outcome.released is not None else outcome.result
        findings = tuple(outcome.findings) or (
            Finding("sound-tier", outcome.verdict, outcome.summary),
        )
        findings += extra
        output = self.record_datasite_output(request, query_output_item(sql, shown), findings)
        return {
            "output_id": output.id,
            "summary": output.summary,
            "result": json.loads(outcome.result.to_json(orient="split", index=False)),
        }

    def running_request(self, session_id: str) -> Request:
        """The request a session's kernel is running (what ``rk.query`` belongs to)."""
        runtime = self.runtimes.get(session_id)
        request_id = runtime.current_request if runtime else None
        if request_id is None:
            raise InputError("rk.query works only while a remote cell is running")
        return self.store.get_request(request_id)

    def record_datasite_output(
        self, request: Request, item: OutputItem, findings: tuple[Finding, ...]
    ) -> Output:
        """A table the datasite computed itself (exact or DP tier), as an output of the
        running cell: stored, then checked with the datasite's own findings as evidence."""
        output = self.store.add_output(request.id, item, origin="query")
        self._check_and_store(output, request.user_id, findings)
        return self.store.get_output(output.id)

    def record_refusal(self, session_id: str, message: str) -> None:
        """A refused ``rk.query``, said to the researcher at once by the datasite.

        The kernel raises the refusal too, but what a kernel prints is held for a
        person. This message is the datasite's own, made from the query text, the
        schema, the policy and the researcher's budget -- never from private values
        (a failure while running on private data has a fixed message) -- so it is
        released at once, like a table of the sound tier.
        """
        try:
            request = self.running_request(session_id)
        except InputError:
            return
        text = f"rk.query refused at {self.config.name}: {message}"
        item = OutputItem(
            "display_data",
            {
                "data": {"text/plain": text},
                "metadata": {"remote_kernel": {"made_by": "datasite", "kind": "query-refusal"}},
                "transient": {},
            },
        )
        finding = Finding("query-refusal", Verdict.RELEASE, "the datasite's own refusal message")
        self.record_datasite_output(request, item, (finding,))

    def review(self, reviewer: User, output_id: int, approve: bool, comment: str) -> Output:
        if reviewer.role_enum is not Role.REVIEWER:
            raise PermissionDenied("only reviewers can approve or deny outputs")
        if not approve and not comment.strip():
            raise InputError("a denial needs a comment that tells the researcher why")
        output = self.store.review_output(
            output_id, reviewer, approve, comment, self.policy.required_reviews
        )
        if output.state != OutputState.PENDING.value:  # a first vote of several changes nothing
            self._publish_output(output)
        return output

    def _publish_request(self, request: Request, announce: bool = True) -> None:
        name = self.store.user_name(request.user_id)
        event = {"type": "request", "request": request_view(request, Role.RESEARCHER, name)}
        self.events.publish(request.user_id, event)
        if announce:
            self.replicas.announce("r", request.id, request.user_id)

    def _publish_output(
        self, output: Output, user_id: int | None = None, announce: bool = True
    ) -> None:
        """Tell the researcher what the output's state allows: a variant only once released
        (then under its original's id, replacing the placeholder)."""
        if output.parent_id is not None and output.state != OutputState.RELEASED.value:
            return
        if user_id is None:
            user_id = self.store.get_request(output.request_id).user_id
        event = {"type": "output", "output": output_view(output, Role.RESEARCHER)}
        self.events.publish(user_id, event)
        if announce:
            self.replicas.announce("o", output.id, user_id)

    # --- queries -------------------------------------------------------------------------
    def requests_for(self, user: User, status: str | None = None) -> list[Request]:
        if status is not None and status not in {s.value for s in RequestStatus}:
            known = ", ".join(s.value for s in RequestStatus)
            raise InputError(f"unknown status {status!r} (known: {known})")
        if user.role_enum is Role.RESEARCHER:
            return self.store.list_requests(user_id=user.id, status=status)
        return self.store.list_requests(status=status)

    def dp_of(self, researcher_id: int) -> dict[str, Any]:
        """A researcher's DP spending and released DP answers here, for reviewers
        (:func:`~remote_kernel.datasite.views.dp_view`)."""
        lines = self.store.budgets(self.store.user_name(researcher_id))
        answers = self.store.released_datasite_outputs(researcher_id, DP_MIME, DP_ANSWERS_SHOWN)
        return dp_view(lines, answers)

    def votes_of(self, outputs: list[Output]) -> Votes:
        """How the reviews of ``outputs`` stand under this site's policy (one query)."""
        return Votes(self.policy.required_reviews, self.store.votes_of([o.id for o in outputs]))

    def pending_for_review(self, user: User) -> tuple[list[Output], Votes]:
        """The outputs waiting for ``user``'s review, oldest first, and their votes so far.

        A reviewer's queue leaves out the outputs they already voted on (under the
        two-person rule those wait for another reviewer); admins see every one.
        """
        if user.role_enum is Role.RESEARCHER:
            raise PermissionDenied("only reviewers and admins see the review queue")
        outputs = self.store.pending_outputs()
        votes = self.votes_of(outputs)
        if user.role_enum is Role.REVIEWER:
            outputs = [o for o in outputs if not votes.voted(o.id, user.name)]
        return outputs, votes


MAX_PUSHES = 32


def parse_pushes(raw: Any, limit: int) -> tuple[NewPush, ...]:
    """Validate pushed objects: ``[{"name": "model", "type": "...", "data": base64}]``.

    Only names, sizes and base64 are checked: the bytes are opaque to the server.
    """
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_PUSHES:
        raise InputError(f"'push' must be a list of at most {MAX_PUSHES} objects")
    pushes: list[NewPush] = []
    total = 0
    for entry in raw:
        if not isinstance(entry, dict):
            raise InputError("each push must be an object with 'name' and 'data'")
        name, data, type_name = entry.get("name"), entry.get("data"), entry.get("type", "")
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise InputError(f"push name {name!r} is not a Python variable name")
        if any(p.name == name for p in pushes):
            raise InputError(f"push name {name!r} appears twice")
        if not isinstance(type_name, str) or len(type_name) > 256:
            raise InputError("a push's 'type' must be a string of at most 256 characters")
        if not isinstance(data, str):
            raise InputError(f"push {name!r}: 'data' must be base64 text")
        try:
            decoded = base64.b64decode(data, validate=True)
        except (ValueError, binascii.Error):
            raise InputError(f"push {name!r}: 'data' is not valid base64") from None
        total += len(decoded)
        if total > limit:
            raise TooLarge(f"pushed objects are over this datasite's limit of {limit} bytes")
        pushes.append(NewPush(name, type_name, decoded))
    return tuple(pushes)


def query_output_item(sql: str, table: pd.DataFrame) -> OutputItem:
    """A datasite-made table as a display_data item: text, HTML and JSON of the same cells."""
    split = json.loads(table.to_json(orient="split", index=False))
    data = {
        "text/plain": table.to_string(index=False),
        "text/html": table.to_html(index=False, na_rep="suppressed"),
        QUERY_MIME: {"sql": sql, "columns": split["columns"], "data": split["data"]},
    }
    return OutputItem("display_data", {"data": data, "metadata": {}, "transient": {}})


def _is_our_kernel(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"ipykernel_launcher" in cmdline
