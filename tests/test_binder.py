"""binder/start: the four demo datasites come up, then it execs the given command.

repo2docker needs Docker, so this runs the start script directly in the test
environment (remote_kernel installed, as postBuild does in the image) with a
temporary HOME, as Binder would before starting Jupyter.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
START = ROOT / "binder" / "start"
SITES = {"cleveland", "hungary", "switzerland", "va-long-beach"}

pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash"),
    pytest.mark.skipif(shutil.which("setsid") is None, reason="needs setsid (util-linux)"),
    pytest.mark.skipif(
        "demo.json" not in (ROOT / "remote_kernel" / "cli" / "demo.py").read_text(encoding="utf-8"),
        reason="this remote-kernel demo does not write demo.json, which binder/start waits for",
    ),
]


def free_port_block(count: int = 4) -> int:
    """A first port such that it and the next count-1 ports are free on 127.0.0.1."""
    for _ in range(200):
        base = random.randint(20000, 60000)
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free block of ports")


def stop_demo(pid_file: Path) -> None:
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # the demo stops its datasites and their kernels
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # setsid made the demo its own process group


@pytest.mark.timeout(150)
def test_start_waits_for_four_sites_and_exports_connections(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    demo_dir = home / "demo"
    port = free_port_block()
    env = {
        **os.environ,
        "HOME": str(home),
        "REMOTE_KERNEL_DEMO_PORT": str(port),
        "REMOTE_KERNEL_DEMO_WAIT": "80",
        "REMOTE_KERNEL_DEMO_OFFLINE": "1",  # no download attempt from a test
        # remote-kernel from this interpreter's environment, as postBuild installs it
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("REMOTE_KERNEL_CONNECTIONS", None)
    probe = (
        "import json, os; "
        "print('EXPORTED=' + json.dumps(os.environ.get('REMOTE_KERNEL_CONNECTIONS')))"
    )
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", str(START), sys.executable, "-c", probe],
            env=env, cwd=home, capture_output=True, text=True, timeout=110,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        log = (demo_dir / "demo.log").read_text() if (demo_dir / "demo.log").exists() else ""
        report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}\ndemo.log:\n{log[-3000:]}"
        assert done.returncode == 0, report
        assert "datasites not ready" not in done.stderr, report

        # It waited: every site said it was up before the command ran, and still answers.
        for site in SITES:
            assert f"remote_kernel demo: {site} is up" in done.stdout, report
        info = json.loads((demo_dir / "demo.json").read_text())
        assert set(info["sites"]) == SITES
        for url in info["sites"].values():
            assert httpx.get(url + "/api/health", timeout=5).status_code == 200

        # The command ran last, with the demo's connections exported.
        exported = json.loads(done.stdout.split("EXPORTED=", 1)[1].splitlines()[0])
        assert exported == str(demo_dir / "connections.json") == info["connections"]
        saved = Path(exported).read_text()
        assert all(f'"{site}"' in saved for site in SITES), saved
        assert (demo_dir / "notebooks" / "heart-disease.ipynb").exists()
        assert elapsed < 90, f"binder/start took {elapsed:.0f} s"
    finally:
        stop_demo(demo_dir / "demo.pid")
