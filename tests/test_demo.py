"""``remote-kernel demo`` starts, its notebook runs end to end, and it stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import nbformat
import pytest
from nbclient import NotebookClient

from remote_kernel.config import DatasiteConfig
from remote_kernel.store import Store

from .conftest import free_port


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(url)


def pids_with(fragment: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                state = (entry / "stat").read_text().split()[2]
            except OSError:
                continue
            if fragment.encode() in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


def approve_everything(url: str, token: str, stop: threading.Event) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    while not stop.is_set():
        try:
            for item in httpx.get(f"{url}/api/reviews", headers=headers).json():
                httpx.post(
                    f"{url}/api/outputs/{item['id']}/review",
                    headers=headers,
                    json={"decision": "approve"},
                )
        except httpx.TransportError:
            pass
        stop.wait(0.3)


@pytest.mark.timeout(300)
def test_demo_starts_runs_its_notebook_and_stops_cleanly(tmp_path: Path) -> None:
    port, lab_port = free_port(), free_port()
    directory = tmp_path / "demo"
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "remote_kernel.cli",
            "demo",
            "--dir",
            str(directory),
            "--port",
            str(port),
            "--lab-port",
            str(lab_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/api/health")
        assert httpx.get(url + "/api/health").json()["name"] == "cleveland"
        wait_http(f"http://127.0.0.1:{lab_port}/lab")
        assert (directory / "quickstart.ipynb").exists()

        import json

        tokens = json.loads((directory / "demo-tokens.json").read_text())
        stop = threading.Event()
        reviewer = threading.Thread(target=approve_everything, args=(url, tokens["bob"], stop))
        reviewer.start()
        try:
            notebook = nbformat.read(directory / "quickstart.ipynb", as_version=4)
            env_cache = str(tmp_path / "cache")
            os.environ["XDG_CACHE_HOME"] = env_cache
            NotebookClient(
                notebook,
                timeout=240,
                kernel_name="python3",
                resources={"metadata": {"path": str(tmp_path)}},
            ).execute()
        finally:
            stop.set()
            reviewer.join()
        remote_cell = notebook.cells[3]
        texts = json.dumps(remote_cell.outputs)
        assert "mock" in texts and "released by bob" in texts  # placeholder replaced in place
        assert "count" in json.dumps(notebook.cells[6].outputs)  # describe() of private ages

        store = Store(DatasiteConfig.load(directory).database_url)
        kernel_pids = [s.kernel_pid for s in store.open_sessions_with_kernels()]
        store.close()
        assert kernel_pids and all(pid for pid in kernel_pids)
        assert pids_with(f"--port={lab_port}")
    finally:
        demo.send_signal(signal.SIGTERM)
        output, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, output
    assert "remote-kernel review approve" in output
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (
        pids_with(f"--port={lab_port}") or any(Path(f"/proc/{p}").exists() for p in kernel_pids)
    ):
        time.sleep(0.2)
    assert not pids_with(f"--port={lab_port}"), "JupyterLab left behind"
    assert not any(pids_with_pid(p) for p in kernel_pids), "datasite kernel left behind"


def pids_with_pid(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().split()[2]) != "Z"
    except OSError:
        return False
