"""The wall-clock limit of a cell: interrupt it when its time is up, stop the kernel if it
does not listen.

A runaway cell (an endless loop, a join that explodes) would otherwise hold its
session's queue and a CPU forever. The limit comes from the policy
(:meth:`remote_kernel.checks.policy.Policy.cell_seconds`): per researcher, per role,
and lower for cells that name a dataset with a limit of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def duration_text(seconds: float) -> str:
    """``90`` -> "1 min 30 s", ``1800`` -> "30 min", ``5`` -> "5 s"."""
    whole = round(seconds)
    minutes, rest = divmod(whole, 60)
    if not minutes:
        return f"{rest} s"
    return f"{minutes} min" + (f" {rest} s" if rest else "")


class CellStopped(Exception):
    """The cell did not stop when interrupted; its kernel must go."""


class CellWatchdog:
    """Runs a cell's execution under its wall-clock limit (see :meth:`guard`).

    ``fired`` and :meth:`message` tell the caller what happened, so that the request
    ends with a message the researcher can act on (not a bare KeyboardInterrupt).
    """

    def __init__(
        self,
        seconds: float,
        interrupt: Callable[[], Awaitable[None]],
        grace: float = 10.0,
    ) -> None:
        self.seconds = seconds
        self.grace = grace
        self.fired = False
        self.stopped_kernel = False
        self._interrupt = interrupt

    async def guard(self, execution: Awaitable[T]) -> T:
        """The execution's result; past the limit, interrupt; past the grace, give up.

        Raises :class:`CellStopped` when the cell ignored the interrupt (the execution
        was cancelled; the caller stops the kernel). If the caller itself is cancelled
        (the session closes), the execution is cancelled with it.
        """
        task = asyncio.ensure_future(execution)
        try:
            if await self._finished(task, self.seconds):
                return task.result()
            self.fired = True
            try:
                await self._interrupt()
            except Exception:  # a kernel that cannot be interrupted is stopped below
                log.exception("interrupting a cell over its time limit failed")
            if await self._finished(task, self.grace):
                return task.result()
            self.stopped_kernel = True
            raise CellStopped(self.message())
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    @staticmethod
    async def _finished(task: asyncio.Future[T], seconds: float) -> bool:
        if seconds <= 0:  # no limit
            await asyncio.wait({task})
            return True
        done, _ = await asyncio.wait({task}, timeout=seconds)
        return bool(done)

    def message(self) -> str:
        limit = duration_text(self.seconds)
        head = f"stopped after {limit}: this datasite's time limit for one cell is {limit}"
        if self.stopped_kernel:
            return (
                f"{head}; the cell did not stop when interrupted, so its kernel was stopped "
                "and the next request starts a new kernel"
            )
        return f"{head}; the cell was interrupted (the kernel and its variables are kept)"
