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

from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.store import Store

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


def free_port_run(count: int) -> int:
    """A first port such that it and the next ``count - 1`` are free now."""
    import socket

    for _ in range(50):
        base = free_port()
        try:
            for offset in range(count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free ports")


def wait_file(path: Path, process: subprocess.Popen[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.stdout.read() if process.stdout else ""
            raise RuntimeError(f"the demo did not come up:\n{output}")
        time.sleep(0.2)


def start_demo(directory: Path, port: int, lab_port: int) -> subprocess.Popen[str]:
    """``remote-kernel demo`` in ``directory`` (no browser), its output in a pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "remote_kernel.cli", "demo", "--dir", str(directory),
         "--port", str(port), "--lab-port", str(lab_port), "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.timeout(600)
def test_demo_starts_runs_its_notebook_and_stops_cleanly(tmp_path: Path) -> None:
    import json

    from remote_kernel.cli.demo import SITES

    port, lab_port = free_port_run(4), free_port()
    directory = tmp_path / "demo"
    demo = start_demo(directory, port, lab_port)
    kernel_pids: list[int] = []
    try:
        wait_file(directory / "demo.json", demo)
        info = json.loads((directory / "demo.json").read_text())
        assert sorted(info["sites"]) == sorted(SITES)
        for name, url in info["sites"].items():
            assert httpx.get(url + "/api/health").json()["name"] == name
        wait_http(f"http://127.0.0.1:{lab_port}/lab")
        # JupyterLab's root is the notebooks folder, never the datasites' private files.
        (lab_pid,) = pids_with(f"--port={lab_port}")
        cmdline = Path(f"/proc/{lab_pid}/cmdline").read_bytes().decode()
        assert f"--ServerApp.root_dir={directory / 'notebooks'}" in cmdline

        tokens = json.loads((directory / "demo-tokens.json").read_text())
        stop = threading.Event()
        reviewers = [
            threading.Thread(target=approve_everything, args=(url, tokens[name]["bob"], stop))
            for name, url in info["sites"].items()
        ]
        for reviewer in reviewers:
            reviewer.start()
        notebook = nbformat.read(info["notebook"], as_version=4)
        os.environ["XDG_CACHE_HOME"] = str(tmp_path / "cache")
        os.environ["REMOTE_KERNEL_CONNECTIONS"] = info["connections"]
        try:
            NotebookClient(
                notebook,
                timeout=300,
                kernel_name="python3",
                resources={"metadata": {"path": str(tmp_path)}},
            ).execute()
        finally:
            stop.set()
            for reviewer in reviewers:
                reviewer.join()
        outputs = {cell.id: json.dumps(cell.get("outputs", [])) for cell in notebook.cells}
        assert all(site in outputs["heart-01"] for site in SITES)  # connected to all four
        assert "released" in outputs["heart-08"]  # the demographic tables came back
        for site in SITES:
            assert site in outputs["heart-08"]
        assert "image/png" in outputs["heart-09"]  # plotted side by side
        assert "odds ratio" in outputs["heart-17"]  # the pooled estimate
        # the DP section: noisy tables with error bars at every site, and what they cost
        assert "at 95%" in outputs["a33b65c7"] or "at 95%" in outputs["d53abdcf"]
        budget = outputs["heart-dp-budget"]
        assert all(site in budget for site in SITES) and "epsilon_spent" in budget

        for site in SITES:
            store = Store(DatasiteConfig.load(directory / "sites" / site).database_url)
            kernel_pids += [s.kernel_pid for s in store.open_sessions_with_kernels()]
            store.close()
        assert len(kernel_pids) >= 4 and all(kernel_pids)
    finally:
        demo.send_signal(signal.SIGTERM)
        output, _ = demo.communicate(timeout=120)
    assert demo.returncode == 0, output
    assert "four hospitals" in output and "remote-kernel review approve" in output
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        pids_with(f"--port={lab_port}") or any(pids_with_pid(p) for p in kernel_pids)
    ):
        time.sleep(0.2)
    assert not pids_with(f"--port={lab_port}"), "JupyterLab left behind"
    assert not any(pids_with_pid(p) for p in kernel_pids), "datasite kernel left behind"
    assert not any(pids_with(str(directory / "sites" / site)) for site in SITES), "server left"


def pids_with_pid(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().split()[2]) != "Z"
    except OSError:
        return False


# --- supervision: a datasite that dies is restarted; JupyterLab and the others stay up -----------
def site_server_pid(directory: Path, site: str) -> int:
    (pid,) = [
        p
        for p in pids_with(f"serve {directory / 'sites' / site} ")
        if "datasite" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
    ]
    return pid


def answers(url: str) -> bool:
    try:
        return httpx.get(url + "/api/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.timeout(300)
def test_a_killed_datasite_is_restarted_and_takes_nothing_down(tmp_path: Path) -> None:
    import json

    port, lab_port = free_port_run(4), free_port()
    directory = tmp_path / "demo"
    demo = start_demo(directory, port, lab_port)
    try:
        wait_file(directory / "demo.json", demo)
        sites = json.loads((directory / "demo.json").read_text())["sites"]
        (lab_pid,) = pids_with(f"--port={lab_port}")
        killed = site_server_pid(directory, "cleveland")
        os.kill(killed, signal.SIGKILL)
        killed_at = time.monotonic()
        while answers(sites["cleveland"]) and time.monotonic() - killed_at < 5:
            time.sleep(0.05)  # it was the server that answered: now it does not
        while not answers(sites["cleveland"]):
            assert time.monotonic() - killed_at < 15, "cleveland was not restarted within 15 s"
            assert demo.poll() is None, "the demo stopped when a datasite died"
            time.sleep(0.2)
        assert site_server_pid(directory, "cleveland") != killed
        # Nothing else went down with it: the demo, JupyterLab, the other three sites.
        assert demo.poll() is None
        assert pids_with_pid(lab_pid)
        assert httpx.get(f"http://127.0.0.1:{lab_port}/api/status", timeout=5).status_code in (
            200,
            403,
        )
        for name, url in sites.items():
            assert httpx.get(url + "/api/health").json()["name"] == name
        # The restarted site is the same datasite: the researcher's token still works there.
        tokens = json.loads((directory / "demo-tokens.json").read_text())
        headers = {"Authorization": f"Bearer {tokens['cleveland']['alice']}"}
        datasets = httpx.get(sites["cleveland"] + "/api/datasets", headers=headers).json()
        assert [d["name"] for d in datasets] == ["heart"]
    finally:
        demo.send_signal(signal.SIGTERM)
        output, _ = demo.communicate(timeout=120)
    assert demo.returncode == 0, output
    assert "cleveland stopped (exit code -9, SIGKILL); restarting in 2 s" in output, output
    assert f"cleveland restarted: answering again at {sites['cleveland']}" in output, output
    assert "remote_kernel demo stopped" in output
    assert "--- " in (directory / "logs" / "cleveland.log").read_text()
    assert not pids_with(f"--port={lab_port}"), "JupyterLab left behind"
    assert not any(pids_with(str(directory / "sites" / site)) for site in sites), "server left"


def test_restart_delays_double_up_to_thirty_seconds() -> None:
    from remote_kernel.cli.demo import restart_delay

    assert [restart_delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


@pytest.mark.timeout(120)
def test_a_site_that_keeps_failing_is_given_up_and_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site that cannot start (here: its directory is gone) is restarted a few times, quickly
    failing each time, then left stopped, with a line saying so; the others are untouched."""
    from remote_kernel.cli import demo as demo_module

    monkeypatch.setattr(demo_module, "MAX_BACKOFF", 0.1)
    broken = demo_module.DemoSite("cleveland", tmp_path / "no-such-site", free_port())
    said: list[str] = []
    supervisor = demo_module.Supervisor([broken], tmp_path, said.append)
    demo_module.start_site(broken, tmp_path)
    deadline = time.monotonic() + 90
    while "cleveland" not in supervisor.given_up:
        assert time.monotonic() < deadline, said
        supervisor.poll()
        time.sleep(0.1)
    restarts = [line for line in said if "restarting in 0.1 s" in line]
    assert len(restarts) == demo_module.GIVE_UP_AFTER - 1, said
    assert all(line.startswith("cleveland stopped (exit code 2)") for line in restarts), said
    assert said[-1].startswith(
        f"cleveland stopped (exit code 2) {demo_module.GIVE_UP_AFTER} times in a row"
    )
    assert "not restarting it" in said[-1]
    supervisor.poll()  # given up: never started again
    assert broken.process is not None and broken.process.poll() is not None
    log = (tmp_path / "cleveland.log").read_text()
    assert log.count("restarted by the demo") == demo_module.GIVE_UP_AFTER - 1
    assert "given up by the demo" in log
