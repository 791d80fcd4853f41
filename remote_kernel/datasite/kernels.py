"""Researcher kernels at the datasite, behind one small interface.

The rest of the server only knows :class:`KernelProvider` and
:class:`KernelHandle`; :class:`LocalKernelProvider` starts real ipykernels
with jupyter_client on this machine. A Jupyter Enterprise Gateway (or a
sandboxed launcher) can replace it by implementing the same two classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import queue
import shutil
import signal
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager

from remote_kernel.datasite import sandbox
from remote_kernel.datasite.config import KernelSettings
from remote_kernel.protocol.errors import RemoteKernelError, Unavailable
from remote_kernel.protocol.models import OUTPUT_MSG_TYPES, OutputItem

log = logging.getLogger("remote_kernel.datasite.kernels")

#: Where datasites on one machine claim kernel uids (one lock file per uid in use).
UID_LOCK_DIR_ENV = "REMOTE_KERNEL_UID_LOCKS"
DEFAULT_UID_LOCK_DIR = "/run/remote-kernel-uids"
#: How many uids past ``kernels.sandbox_uid_base`` a datasite may use.
UID_RANGE = 10000

#: The launcher runs as a script (stdlib only), not as ``-m``: no package imports.
SANDBOX_SCRIPT = str(Path(sandbox.__file__).resolve())

#: Run silently in every new kernel: ``rk`` is there, as in the researcher's notebook,
#: and each cell's last value travels with its output (see values.attach_values).
KERNEL_SETUP_CODE = (
    "import remote_kernel as rk\nimport remote_kernel\n"
    "import remote_kernel.researcher.values as _rk_values\n"
    "_rk_values.attach_values(get_ipython())\ndel _rk_values\n"
)

#: The only server environment variables a researcher kernel inherits.
INHERITED_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "MPLBACKEND",
    }
)

OutputCallback = Callable[[OutputItem], Awaitable[None]]


def uids_of_processes() -> set[int]:
    """The uids processes on this machine run as (owners of /proc/<pid>; empty elsewhere)."""
    uids = set()
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    uids.add(entry.stat().st_uid)
    return uids


class KernelDied(RemoteKernelError, RuntimeError):
    """The kernel process ended while running a request."""


class SandboxUnavailable(Unavailable, RuntimeError):
    """``kernels.sandbox: namespace`` was asked for, but this machine cannot do it."""


@dataclass
class ExecutionResult:
    status: str  # "ok", "error" or "aborted" (the execute_reply status)
    execution_count: int | None = None


class KernelHandle(Protocol):
    """One running researcher kernel."""

    last_activity: float

    @property
    def pid(self) -> int | None: ...

    async def execute(self, code: str, on_output: OutputCallback) -> ExecutionResult: ...
    async def interrupt(self) -> None: ...
    async def restart(self) -> None: ...
    async def shutdown(self) -> None: ...
    async def is_alive(self) -> bool: ...


class KernelProvider(Protocol):
    """Starts kernels for researcher sessions."""

    async def start(self, session_id: str, cwd: Path, env: dict[str, str]) -> KernelHandle: ...


class LocalKernel:
    """A real ipykernel on this machine, driven by jupyter_client's async API."""

    #: Whether the kernel sees the datasite's files (pushes are handed over in its workdir);
    #: a gateway's kernels do not (:mod:`remote_kernel.datasite.gateway`).
    shares_files = True

    def __init__(
        self,
        manager: AsyncKernelManager,
        startup_timeout: float,
        workdir: Path,
        uid: int | None = None,
        settings: KernelSettings | None = None,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.manager = manager
        self.client: Any = None
        self.startup_timeout = startup_timeout
        self.last_activity = time.monotonic()
        self._lock = asyncio.Lock()
        #: The kernel's working directory (pushes are handed over there) and its uid
        #: (None: the server's own user).
        self.workdir = workdir
        self.uid = uid
        self.settings = settings or KernelSettings()
        self._on_shutdown = on_shutdown

    def death_reason(self) -> str:
        """Why the kernel process ended, as far as its exit status tells."""
        process = getattr(self.manager.provisioner, "process", None)
        code = getattr(process, "returncode", None) if process is not None else None
        if code is None and process is not None:
            with contextlib.suppress(Exception):
                code = process.poll()
        limits = self.settings
        if code == -signal.SIGXCPU or (code == -signal.SIGKILL and limits.cpu_time_seconds):
            if limits.cpu_time_seconds:
                return (
                    f"the kernel was stopped: it used up its CPU time limit of "
                    f"{limits.cpu_time_seconds} s"
                )
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else ""
            memory = (
                f" (its memory limit is {limits.memory_limit_mb} MiB)"
                if limits.memory_limit_mb
                else ""
            )
            return f"the kernel died ({name or code}) while running this cell{memory}"
        return "the kernel died while running this cell"

    @property
    def pid(self) -> int | None:
        provisioner = self.manager.provisioner
        process = getattr(provisioner, "process", None)
        return getattr(process, "pid", None)

    async def _connect(self) -> None:
        if self.client is not None:
            self.client.stop_channels()
        self.client = self.manager.client()
        self.client.start_channels()
        await self.client.wait_for_ready(timeout=self.startup_timeout)
        await self._run_setup()

    async def _run_setup(self) -> None:
        msg_id = self.client.execute(KERNEL_SETUP_CODE, silent=True, store_history=False)
        while True:
            reply = await self.client.get_shell_msg(timeout=self.startup_timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"kernel setup failed: {reply['content'].get('evalue')}")
        await self._drain_iopub_until_idle(msg_id)

    async def _drain_iopub_until_idle(self, msg_id: str) -> None:
        while True:
            msg = await self.client.get_iopub_msg(timeout=self.startup_timeout)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                return

    async def execute(self, code: str, on_output: OutputCallback) -> ExecutionResult:
        async with self._lock:
            self.last_activity = time.monotonic()
            try:
                return await self._execute(code, on_output)
            finally:
                self.last_activity = time.monotonic()

    async def _execute(self, code: str, on_output: OutputCallback) -> ExecutionResult:
        msg_id = self.client.execute(
            code, store_history=True, allow_stdin=False, stop_on_error=False
        )
        while True:
            try:
                msg = await self.client.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                if not await self.manager.is_alive():
                    raise KernelDied(self.death_reason()) from None
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            msg_type = msg["msg_type"]
            if msg_type in OUTPUT_MSG_TYPES:
                await on_output(OutputItem(msg_type, msg["content"], msg.get("metadata") or {}))
            elif msg_type == "status" and msg["content"]["execution_state"] == "idle":
                break
        while True:
            try:
                reply = await self.client.get_shell_msg(timeout=5)
            except queue.Empty:
                if not await self.manager.is_alive():
                    raise KernelDied(self.death_reason()) from None
                continue
            if reply["parent_header"].get("msg_id") == msg_id:
                content = reply["content"]
                return ExecutionResult(
                    content.get("status", "error"), content.get("execution_count")
                )

    async def interrupt(self) -> None:
        await self.manager.interrupt_kernel()

    async def restart(self) -> None:
        await self.manager.restart_kernel(now=True)
        await self._connect()

    async def shutdown(self) -> None:
        try:
            if self.client is not None:
                self.client.stop_channels()
            await self.manager.shutdown_kernel(now=True)  # also removes the connection file
        finally:
            if self._on_shutdown is not None:
                self._on_shutdown()
                self._on_shutdown = None

    async def is_alive(self) -> bool:
        return bool(await self.manager.is_alive())


class LocalKernelProvider:
    """Starts ipykernels with the datasite server's own Python, in their sandbox.

    See :mod:`remote_kernel.datasite.sandbox` for what the sandbox is. ``settings.sandbox``:
    ``namespace`` refuses to start without a network namespace; ``auto`` uses one
    when this machine allows it and otherwise warns loudly (log and /api/health);
    ``none`` runs kernels with the server's network and user (resource limits only).
    """

    def __init__(
        self,
        runtime_dir: Path,
        startup_timeout: float = 60.0,
        settings: KernelSettings | None = None,
        datasets: dict[str, Path] | None = None,
        site: str = "datasite",
    ) -> None:
        self.runtime_dir = runtime_dir
        self.startup_timeout = startup_timeout
        self.settings = settings or KernelSettings(sandbox="none", memory_limit_mb=0)
        self.datasets = datasets or {}
        self.site = site
        self._uids: dict[str, int] = {}
        self._uid_locks: dict[str, Any] = {}
        #: Paths in /tmp a sandboxed kernel still needs (the kernel API's socket directory).
        self.keep_paths: list[Path] = []
        self._sandbox_root: Path | None = None
        self.status = self._decide()
        for warning in self.status.warnings:
            log.warning("SANDBOX: %s", warning)

    def _decide(self) -> sandbox.SandboxStatus:
        settings = self.settings
        as_root = os.geteuid() == 0
        common = {
            "memory_limit_mb": settings.memory_limit_mb,
            "cpu_time_seconds": settings.cpu_time_seconds,
        }
        if settings.sandbox == "none":
            return sandbox.SandboxStatus(
                "none", False, False, warnings=[NO_SANDBOX_WARNING + " (kernels.sandbox: none)"],
                **common,
            )  # fmt: skip
        problem = sandbox.namespace_works(as_root)
        if problem is not None:
            if settings.sandbox == "namespace":
                raise SandboxUnavailable(
                    f"kernels.sandbox is 'namespace' but {problem}; run the server as root "
                    "or where user namespaces are allowed, or set kernels.sandbox: auto"
                )
            return sandbox.SandboxStatus(
                "none", False, False, warnings=[f"{NO_SANDBOX_WARNING} ({problem})"], **common
            )
        warnings = []
        if not as_root:
            warnings.append(
                "the server does not run as root, so kernels run as the server's own user "
                "(in a network namespace): they can read whatever that user can, including "
                "the datasite directory"
            )
        return sandbox.SandboxStatus("namespace", True, as_root, warnings=warnings, **common)

    def sandbox_root(self) -> Path:
        """A fresh ``0711`` root-owned directory outside the datasite directory."""
        if self._sandbox_root is None:
            base = Path(self.settings.sandbox_dir or tempfile.gettempdir())
            # Named after this datasite directory: what a killed server left behind
            # (kernel scratch files) is removed at the next start, and only that.
            digest = hashlib.sha256(str(self.runtime_dir.resolve()).encode()).hexdigest()[:12]
            prefix = f"rk-sandbox-{self.site}-{digest}-"
            for stale in base.glob(prefix + "*"):
                info = stale.lstat()
                if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
                    shutil.rmtree(stale, ignore_errors=True)
            root = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
            os.chmod(root, 0o711)  # noqa: S103 (enter, not list: each kernel's dir is 0700)
            self._sandbox_root = root
        return self._sandbox_root

    def close(self) -> None:
        if self._sandbox_root is not None:
            shutil.rmtree(self._sandbox_root, ignore_errors=True)
            self._sandbox_root = None

    def _allocate_uid(self, key: str) -> int:
        """A uid no other kernel on this machine has, held until :meth:`_release_uid`.

        Kernels with one uid can read each other's open files (``/proc/<pid>/fd``),
        so two datasites on one machine must never hand out the same uid, whatever
        their ``sandbox_uid_base``. Each uid in use is claimed with an exclusive
        ``flock`` on a file in a machine-wide directory (released by the kernel or by
        the death of the server that held it), and a uid some process still runs as
        (a kernel a killed server left behind) is skipped too.
        """
        folder = Path(os.environ.get(UID_LOCK_DIR_ENV, DEFAULT_UID_LOCK_DIR))
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        used = set(self._uids.values())
        running = uids_of_processes()
        base = self.settings.sandbox_uid_base
        for uid in range(base, base + UID_RANGE):
            if uid in used or uid in running:
                continue
            # Stays open while the kernel runs: the open file is the claim.
            lock = open(folder / f"{uid}.lock", "a")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            self._uids[key], self._uid_locks[key] = uid, lock
            return uid
        raise RuntimeError(f"no free kernel uid in {base}..{base + UID_RANGE - 1}")

    def _release_uid(self, key: str) -> None:
        self._uids.pop(key, None)
        lock = self._uid_locks.pop(key, None)
        if lock is not None:
            lock.close()  # closing the file drops the flock

    async def start(self, session_id: str, cwd: Path, env: dict[str, str]) -> LocalKernel:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runtime_dir, 0o700)
        # Short: Unix socket paths (the ipc channels) must stay under 108 bytes.
        tag = uuid.uuid4().hex[:12]
        kernel_env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV}
        kernel_env.update(env)
        launcher = [sys.executable, "-I", SANDBOX_SCRIPT]
        launcher += ["--memory-mb", str(self.settings.memory_limit_mb)]
        launcher += ["--cpu-seconds", str(self.settings.cpu_time_seconds)]
        if self.status.separate_user:
            place = self._own_user_place(tag, launcher, kernel_env)
        else:
            connection_file = self.runtime_dir / f"kernel-{session_id}-{tag}.json"
            place = _KernelPlace(cwd, connection_file)
        manager = self._manager(place, tag, launcher)
        try:
            await manager.start_kernel(cwd=str(place.workdir), env=kernel_env)
        except Exception:
            if place.release:
                place.release()
            raise
        kernel = LocalKernel(
            manager,
            self.startup_timeout,
            place.workdir,
            place.uid,
            self.settings,
            on_shutdown=place.release,
        )
        try:
            await kernel._connect()
        except Exception:
            await kernel.shutdown()
            raise
        return kernel

    def _own_user_place(self, tag: str, launcher: list[str], env: dict[str, str]) -> _KernelPlace:
        """A uid, a 0700 working directory and launcher flags for a kernel of its own user.

        Adds to ``launcher`` (datasets handed over as open files, the uid to drop to,
        the paths the kernel must still see) and to ``env`` (home and temp in its own
        directory). The place's ``release`` gives the uid back and removes the directories.
        """
        uid = self._allocate_uid(tag)
        workdir = self.sandbox_root() / tag
        workdir.mkdir(mode=0o700)
        os.chown(workdir, uid, uid)
        connection_file = workdir / "kernel.json"
        for name, path in sorted(self.datasets.items()):
            launcher += ["--dataset", f"{name}={path}"]
        launcher += ["--uid", str(uid), "--gid", str(uid), "--give", str(connection_file)]
        staging = self.sandbox_root() / f"stage-{tag}"
        staging.mkdir(mode=0o700)
        launcher += ["--staging", str(staging)]
        for path in python_paths():
            launcher += ["--expose", path]
        launcher += ["--private-tmp", str(self.settings.private_tmp_mb)]
        # The Python itself may live under /tmp (a virtualenv, an editable checkout):
        # it is bound back into the kernel's private /tmp like its working directory.
        for path in (workdir, *self.keep_paths, *python_paths()):
            launcher += ["--keep", str(path)]
        env.update(HOME=str(workdir), TMPDIR=str(workdir), IPYTHONDIR=str(workdir / ".ipython"))

        def release() -> None:
            self._release_uid(tag)
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)

        return _KernelPlace(workdir, connection_file, uid, release)

    def _manager(self, place: _KernelPlace, tag: str, launcher: list[str]) -> AsyncKernelManager:
        """A kernel manager pinned to this Python, started through the sandbox launcher."""
        manager = AsyncKernelManager(connection_file=str(place.connection_file))
        prefix: list[str] = []
        if self.status.network_isolated:
            # No network in the kernel: its channels are Unix sockets (ipc), not TCP.
            manager.transport = "ipc"
            # (in a short path: Unix socket paths must stay under 108 bytes)
            base = place.workdir if place.uid is not None else self.sandbox_root()
            manager.ip = str(base / f"ipc-{tag}")
            prefix = sandbox.unshare_prefix(os.geteuid() == 0)
        # Pin the kernel to this Python rather than whatever "python3" spec is installed.
        manager._kernel_spec = KernelSpec(
            argv=[
                *prefix,
                *launcher,
                "--",
                sys.executable,
                "-m",
                "ipykernel_launcher",
                "-f",
                "{connection_file}",
            ],
            display_name="remote_kernel datasite kernel",
            language="python",
        )
        return manager


@dataclass
class _KernelPlace:
    """Where one kernel runs: its working directory, connection file, uid, and clean-up."""

    workdir: Path
    connection_file: Path
    uid: int | None = None
    release: Callable[[], None] | None = None


def python_paths() -> list[str]:
    """What a kernel running as another user must be able to reach: this Python."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).parent)}
    paths.update(p for p in sys.path if p and Path(p).is_dir())
    return sorted(paths)


NO_SANDBOX_WARNING = (
    "researcher kernels run WITHOUT a sandbox: they can reach the network and read "
    "what the datasite server's user can, including the datasite database"
)
