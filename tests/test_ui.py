"""The JupyterLab UI suite (Galata + Playwright in Debian's Chromium), run from pytest.

``ui-tests/`` starts real datasites and a real JupyterLab with the installed
extension (``servers.py``) and drives them in headless Chromium: tag a cell,
run it remotely, approve and deny in the Pending outputs panel, reopen a
notebook, two-reviewer release. This test fails with Playwright's output when
any of that fails. It is skipped only when ``REMOTE_KERNEL_UI_TESTS=skip``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
UI_TESTS = ROOT / "ui-tests"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def _stop_leftovers() -> None:
    """Servers Playwright could not stop (it was killed, or timed out)."""
    pids = UI_TESTS / ".servers" / "pids.json"
    if not pids.exists():
        return
    for pid in json.loads(pids.read_text()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


@pytest.mark.timeout(900)
def test_jupyterlab_ui_suite() -> None:
    if os.environ.get("REMOTE_KERNEL_UI_TESTS") == "skip":
        pytest.skip("REMOTE_KERNEL_UI_TESTS=skip")
    assert Path(CHROMIUM).exists(), (
        f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set CHROMIUM), "
        "or REMOTE_KERNEL_UI_TESTS=skip to skip the UI suite"
    )
    jlpm = shutil.which("jlpm")
    assert jlpm, "jlpm (from jupyterlab) is not on PATH"
    # TMPDIR is left alone: the datasites inherit it, their kernels' IPC socket paths
    # must fit in AF_UNIX's 108 bytes (a pytest tmp_path does not), and a sandboxed
    # kernel user must be able to enter it (a private mkdtemp directory is not).
    env = {
        **os.environ,
        "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
        "PYTHON": sys.executable,
        "REMOTE_KERNEL_UI_PORT": str(free_port()),
        "CHROMIUM": CHROMIUM,
        "CI": "1",
    }
    if not (UI_TESTS / "node_modules" / "@jupyterlab" / "galata").exists():
        install = subprocess.run(
            [jlpm, "install"], cwd=UI_TESTS, env=env, capture_output=True, text=True, timeout=600
        )
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    try:
        run = subprocess.run(
            [jlpm, "playwright", "test"],
            cwd=UI_TESTS,
            env=env,
            capture_output=True,
            text=True,
            timeout=840,
        )
    finally:
        _stop_leftovers()
    report = "\n".join(
        line
        for line in run.stdout.splitlines()
        if not line.startswith("[WebServer]") and "dbus" not in line
    )
    assert run.returncode == 0, f"Galata suite failed:\n{report[-12000:]}\n{run.stderr[-3000:]}"
    assert " passed" in report and " failed" not in report, report[-3000:]
