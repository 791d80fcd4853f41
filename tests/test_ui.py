"""The JupyterLab UI suite (Galata + Playwright in Debian's Chromium), run from pytest.

``ui-tests/`` starts real datasites and a real JupyterLab with the installed
extension (``servers.py``) and drives them in headless Chromium: tag a cell,
run it remotely, approve and deny in the Pending outputs panel, reopen a
notebook, two-reviewer release. This test fails with Playwright's output when
any of that fails, and also when a server exited while the tests ran (with how
it ended, the end of its log and the processes running at that moment). It is
skipped only when ``REMOTE_KERNEL_UI_TESTS=skip``.

One run per checkout at a time: ``ui-tests/.servers`` is shared, so a second
run (another terminal, another agent) waits here for the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
UI_TESTS = ROOT / "ui-tests"
STATE = UI_TESTS / ".servers"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
LOCK_WAIT = 600.0


@contextlib.contextmanager
def ui_lock(run: str) -> Iterator[None]:
    """The lock ``servers.py`` also takes (same path): one UI run per checkout."""
    digest = hashlib.sha256(str(UI_TESTS).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"remote-kernel-ui-{digest}.lock", "a+") as handle:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    handle.seek(0)
                    pytest.fail(f"another UI run in this checkout holds the lock: {handle.read()}")
                time.sleep(1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"run {run}, pytest pid {os.getpid()}")
        handle.flush()
        yield


def _same_process(pid: int, start: int | None) -> bool:
    """Is ``pid`` still the process that was recorded (same start time)? Never guess."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return start is not None and int(stat[stat.rfind(")") + 2 :].split()[19]) == start


def _stop_leftovers(run: str) -> None:
    """Servers of *this* run that Playwright could not stop (it was killed, or timed out).

    Only processes servers.py recorded for this run, and only while their start
    time still matches: a pid from another run, or one the system has since given
    to another process, is never signalled.
    """
    with contextlib.suppress(OSError, ValueError):
        recorded = json.loads((STATE / "pids.json").read_text())
        if recorded.get("run") != run:
            return
        for entry in recorded.get("processes", []):
            if _same_process(entry["pid"], entry.get("start")):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(entry["pid"], signal.SIGKILL)


def _server_report(run: str) -> tuple[str, bool]:
    """How each server ended, and whether one exited while the tests ran."""
    try:
        exits = [e for e in json.loads((STATE / "exits.json").read_text()) if e["run"] == run]
    except (OSError, ValueError):
        exits = []
    unexpected = [e for e in exits if not e["expected"]]
    lines = ["servers:"]
    for entry in exits:
        when = "WHILE THE TESTS RAN" if not entry["expected"] else "when stopped"
        lines.append(
            f"  {entry['name']} (pid {entry['pid']}) {when}: {entry['reason']}, "
            f"noticed at {entry['noticed_at']}"
        )
    for entry in unexpected:
        lines.append(f"  processes at that moment: {entry.get('processes')}")
        if entry.get("log_tail"):
            lines.append(f"  end of {entry['log']}:")
            lines += [f"    {line}" for line in entry["log_tail"].splitlines()]
    if not unexpected:
        for log in sorted(STATE.glob("*-server.log")):
            tail = log.read_text(errors="replace").splitlines()[-15:]
            lines.append(f"  end of {log}:")
            lines += [f"    {line}" for line in tail]
    return "\n".join(lines), bool(unexpected)


@pytest.mark.timeout(1500)
def test_jupyterlab_ui_suite() -> None:
    if os.environ.get("REMOTE_KERNEL_UI_TESTS") == "skip":
        pytest.skip("REMOTE_KERNEL_UI_TESTS=skip")
    assert Path(CHROMIUM).exists(), (
        f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM), "
        "or REMOTE_KERNEL_UI_TESTS=skip to skip the UI suite"
    )
    jlpm = shutil.which("jlpm")
    assert jlpm, "jlpm (from jupyterlab) is not on PATH"
    run = f"{os.getpid()}-{time.time_ns()}"
    # TMPDIR is left alone: the datasites inherit it, their kernels' IPC socket paths
    # must fit in AF_UNIX's 108 bytes (a pytest tmp_path does not), and a sandboxed
    # kernel user must be able to enter it (a private mkdtemp directory is not).
    env = {
        **os.environ,
        "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
        "PYTHON": sys.executable,
        "REMOTE_KERNEL_UI_RUN": run,
        "REMOTE_KERNEL_UI_LOCK_HELD": run,
        "CHROMIUM": CHROMIUM,
        "CI": "1",
    }
    if not (UI_TESTS / "node_modules" / "@jupyterlab" / "galata").exists():
        install = subprocess.run(
            [jlpm, "install"], cwd=UI_TESTS, env=env, capture_output=True, text=True, timeout=600
        )
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    with ui_lock(run):
        env["REMOTE_KERNEL_UI_PORT"] = str(free_port())
        try:
            done = subprocess.run(
                [jlpm, "playwright", "test"],
                cwd=UI_TESTS,
                env=env,
                capture_output=True,
                text=True,
                timeout=840,
            )
        finally:
            _stop_leftovers(run)
        servers, a_server_died = _server_report(run)
    report = "\n".join(
        line
        for line in done.stdout.splitlines()
        if not line.startswith("[WebServer]") and "dbus" not in line
    )
    assert done.returncode == 0 and not a_server_died, (
        f"Galata suite failed:\n{report[-12000:]}\n{done.stderr[-3000:]}\n{servers}"
    )
    assert " passed" in report and " failed" not in report, report[-3000:]
