"""Researcher kernels at the datasite, behind one small interface.

The rest of the server only knows :class:`KernelProvider` and
:class:`KernelHandle`; :class:`LocalKernelProvider` starts real ipykernels
with jupyter_client on this machine. A Jupyter Enterprise Gateway (or a
sandboxed launcher) can replace it by implementing the same two classes.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager

from .models import OUTPUT_MSG_TYPES, OutputItem

#: Run silently in every new kernel: ``rk`` is there, as in the researcher's notebook,
#: and each cell's last value travels with its output (see values.attach_values).
KERNEL_SETUP_CODE = (
    "import remote_kernel as rk\nimport remote_kernel\n"
    "import remote_kernel.values as _rk_values\n"
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


class KernelDied(RuntimeError):
    """The kernel process ended while running a request."""


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

    def __init__(self, manager: AsyncKernelManager, startup_timeout: float) -> None:
        self.manager = manager
        self.client: Any = None
        self.startup_timeout = startup_timeout
        self.last_activity = time.monotonic()
        self._lock = asyncio.Lock()

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
                    raise KernelDied("the kernel died while running this cell") from None
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
                    raise KernelDied("the kernel died while running this cell") from None
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
        if self.client is not None:
            self.client.stop_channels()
        await self.manager.shutdown_kernel(now=True)  # also removes the connection file

    async def is_alive(self) -> bool:
        return bool(await self.manager.is_alive())


class LocalKernelProvider:
    """Starts ipykernels with the datasite server's own Python."""

    def __init__(self, runtime_dir: Path, startup_timeout: float = 60.0) -> None:
        self.runtime_dir = runtime_dir
        self.startup_timeout = startup_timeout

    async def start(self, session_id: str, cwd: Path, env: dict[str, str]) -> LocalKernel:
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runtime_dir, 0o700)
        manager = AsyncKernelManager(
            # A new file per start: a restarted session must never reuse old ports.
            connection_file=str(
                self.runtime_dir / f"kernel-{session_id}-{uuid.uuid4().hex[:8]}.json"
            )
        )
        # Pin the kernel to this Python rather than whatever "python3" spec is installed.
        manager._kernel_spec = KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="remote_kernel datasite kernel",
            language="python",
        )
        kernel_env = {k: v for k, v in os.environ.items() if k in INHERITED_ENV}
        kernel_env.update(env)
        await manager.start_kernel(cwd=str(cwd), env=kernel_env)
        kernel = LocalKernel(manager, self.startup_timeout)
        try:
            await kernel._connect()
        except Exception:
            await kernel.shutdown()
            raise
        return kernel
