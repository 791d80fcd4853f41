"""Sandboxed kernels, tested from real remote cells.

The cells below are researcher code at a real datasite. They report what they
could do as JSON on stdout; that output is held for review like any other, so the
test reads it with the reviewer's token. Where this machine cannot make network
namespaces the isolation tests are skipped, and the test that runs instead checks
that the datasite says so loudly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.researcher.client import Datasite

from .conftest import RunningDatasite, make_datasite, run_and_view

PROBE = r"""
import json, os, socket
report = {"uid": os.getuid(), "cwd": os.getcwd(), "rows": len(rk.data("heart"))}
def attempt(name, action):
    try:
        action()
        report[name] = "ok"
    except Exception as exc:
        report[name] = type(exc).__name__
def connect(host, port):
    with socket.create_connection((host, port), timeout=3):
        pass
attempt("own_port", lambda: connect("127.0.0.1", PORT))
attempt("outside", lambda: connect("1.1.1.1", 443))
attempt("dns", lambda: socket.getaddrinfo("example.org", 443))
for name, path in PATHS.items():
    attempt(name, lambda path=path: open(path, "rb").read(1))
attempt("list_site", lambda: os.listdir(SITE))
attempt("host_tmp", lambda: open(HOST_TMP).read())
open("/tmp/rk-note-from-a-kernel", "w").write("hello")
report["tmp_listing"] = sorted(os.listdir("/tmp"))
attempt("write_site", lambda: open(os.path.join(SITE, "planted"), "w").write("x"))
print(json.dumps(report))
"""


def sandbox_of(site: RunningDatasite) -> dict[str, Any]:
    return httpx.get(site.url + "/api/health").json()["sandbox"]


def stdout(views: list[dict[str, Any]]) -> str:
    return "".join(v["content"].get("text", "") for v in views if v["msg_type"] == "stream")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    """One sandboxed site with small limits; a second site's directory next to it."""
    tmp = tmp_path_factory.mktemp("sandbox")
    site = make_datasite(tmp, max_outputs_per_request=50, max_output_bytes_per_request=300_000)
    config = DatasiteConfig.load(site.directory)
    config.kernels.memory_limit_mb = 2048
    config.kernels.cpu_time_seconds = 12
    config.save()
    make_datasite(tmp, name="hungary")  # another site on the same machine
    site.start()
    yield site
    site.stop()


@pytest.fixture
def isolated(limited: RunningDatasite) -> RunningDatasite:
    status = sandbox_of(limited)
    if not status["network_isolated"]:
        pytest.skip(f"no network namespace on this machine: {status['warnings']}")
    return limited


def test_health_says_what_the_sandbox_is(limited: RunningDatasite) -> None:
    status = sandbox_of(limited)
    assert status["memory_limit_mb"] == 2048 and status["cpu_time_seconds"] == 12
    if status["mode"] == "none":  # never silently: the warning is there for everyone
        assert status["warnings"] and "WITHOUT a sandbox" in status["warnings"][0]
        log = (limited.log_path or Path()).read_text()
        assert "SANDBOX:" in log
    else:
        assert status["mode"] == "namespace" and status["network_isolated"]
        assert status["separate_user"] == (os.geteuid() == 0)


def test_a_remote_cell_reaches_no_network_and_no_datasite_files(isolated: RunningDatasite) -> None:
    site = isolated
    other = site.directory.parent / "hungary"
    paths = {
        "database": site.directory / "datasite.db",
        "config": site.directory / "datasite.yaml",
        "private_by_path": site.directory / "datasets" / "heart" / "private.parquet",
        "other_site_db": other / "datasite.db",
        "other_site_data": other / "datasets" / "heart" / "private.parquet",
        "server_log": site.log_path,
    }
    assert all(Path(p).exists() for p in paths.values())  # they are there, as root sees
    handle, host_tmp = tempfile.mkstemp(dir="/tmp", prefix="rk-host-file-")
    os.write(handle, b"another program's temporary file")
    os.close(handle)
    os.chmod(host_tmp, 0o644)  # readable by anyone who can see it
    code = (
        PROBE.replace("HOST_TMP", repr(host_tmp))
        .replace("PORT", str(site.port))
        .replace("PATHS", repr({k: str(v) for k, v in paths.items()}))
        .replace("SITE", repr(str(site.directory)))
    )
    client = Datasite(site.url, site.tokens["alice"])
    request, views = run_and_view(site, client, code)
    client.close()
    assert request.status == "completed", request.message
    report = json.loads(stdout(views))
    assert report["rows"] > 100  # its own site's private table is readable, as rk.data
    for name in ("own_port", "outside", "dns"):
        assert report[name] in {"OSError", "gaierror", "TimeoutError"}, (name, report)
    assert report["own_port"] == "OSError"  # unreachable at once, not a timeout
    for name in (*paths, "list_site", "write_site"):
        assert report[name] in {"PermissionError", "FileNotFoundError"}, (name, report)
    assert not (site.directory / "planted").exists()
    # Its /tmp is its own: the host's files are not there, and its notes stay there.
    os.unlink(host_tmp)
    assert report["host_tmp"] == "FileNotFoundError", report
    assert not Path("/tmp/rk-note-from-a-kernel").exists()
    # Only the way to its own dir and the kernel API, its note, and (when this Python lives
    # under /tmp, as in a virtualenv there) the Python installation itself.
    from remote_kernel.datasite.kernels import python_paths

    python_dirs = {
        Path(p).resolve().relative_to("/tmp").parts[0]
        for p in python_paths()
        if Path(p).resolve().is_relative_to("/tmp")
    }
    listing = [n for n in report["tmp_listing"] if n not in python_dirs]
    assert len(listing) == 3, listing
    assert all(n.startswith(("rk-kapi-", "rk-sandbox-", "rk-note-")) for n in listing), listing
    assert not report["cwd"].startswith(str(site.directory))
    if os.geteuid() == 0:
        assert report["uid"] != 0


def test_a_memory_hog_is_stopped_and_reported(isolated: RunningDatasite) -> None:
    client = Datasite(isolated.url, isolated.tokens["alice"])
    request, _ = run_and_view(isolated, client, "hog = bytearray(3 * 1024**3)\nhog[-1] = 1")
    assert request.status == "error"
    assert request.message.startswith("MemoryError at line 1")
    after, views = run_and_view(isolated, client, "print('still here')")  # the kernel survived
    assert after.status == "completed" and stdout(views) == "still here\n"
    client.close()


def test_cpu_time_limit_stops_a_busy_loop(isolated: RunningDatasite) -> None:
    client = Datasite(isolated.url, isolated.tokens["alice"])
    request, _ = run_and_view(isolated, client, "while True:\n    pass")
    assert request.status == "failed"
    assert "CPU time limit of 12 s" in request.message
    assert "new kernel" in request.message
    after, views = run_and_view(isolated, client, "print(6 * 7)")
    assert after.status == "completed" and stdout(views) == "42\n"
    client.close()


def test_an_output_flood_is_cut_off_with_a_message(limited: RunningDatasite) -> None:
    client = Datasite(limited.url, limited.tokens["alice"])
    flood = "from IPython.display import display\nfor i in range(10**6):\n    display(i)"
    request, views = run_and_view(limited, client, flood)
    assert request.status == "failed"
    assert request.message.startswith("output cut off: the cell produced more than 50 outputs")
    assert len(views) == 50  # what came before the limit is kept (and checked), no more
    assert all(v["state"] in {"pending", "blocked"} for v in views)

    big = "for i in range(100):\n    print('y' * 10_000, flush=True)"
    request, views = run_and_view(limited, client, big)
    assert request.status == "failed"
    assert "more than 300000 bytes of output" in request.message
    assert sum(len(v["content"].get("text", "")) for v in views) <= 300_000

    after, views = run_and_view(limited, client, "print('fine')")
    assert after.status == "completed" and stdout(views) == "fine\n"
    store = limited.store()
    cut = [e for e in store.audit_entries() if e.action == "request.cut_off"]
    assert len(cut) == 2 and store.verify_audit() == []
    store.close()
    client.close()


def serve_without_unshare(site: RunningDatasite, mode: str) -> subprocess.Popen[bytes]:
    """The server on a machine where ``unshare`` cannot be found (as in some containers)."""
    config = DatasiteConfig.load(site.directory)
    config.kernels.sandbox = mode
    config.save()
    site.log_path = site.directory.parent / f"{site.name}-{mode}.log"
    return subprocess.Popen(
        [sys.executable, "-m", "remote_kernel.cli", "datasite", "serve", str(site.directory),
         "--port", str(site.port)],
        stdout=open(site.log_path, "wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PATH": str(site.directory.parent / "no-tools")},
    )  # fmt: skip


def test_without_namespaces_auto_warns_loudly_and_kernels_still_run(tmp_path: Path) -> None:
    site = make_datasite(tmp_path)
    process = serve_without_unshare(site, "auto")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status = httpx.get(site.url + "/api/health", timeout=2).json()["sandbox"]
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert status["mode"] == "none" and not status["network_isolated"]
        assert "WITHOUT a sandbox" in status["warnings"][0]
        assert "unshare" in status["warnings"][0]
        assert "SANDBOX: researcher kernels run WITHOUT a sandbox" in site.log_path.read_text()
        client = Datasite(site.url, site.tokens["alice"])
        request, views = run_and_view(site, client, "print(len(rk.data('heart')) > 100)")
        client.close()
        assert request.status == "completed" and stdout(views) == "True\n"  # tcp transport
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_without_namespaces_namespace_mode_refuses_to_start(tmp_path: Path) -> None:
    site = make_datasite(tmp_path)
    process = serve_without_unshare(site, "namespace")
    assert process.wait(timeout=60) == 2
    log = site.log_path.read_text()
    assert "error: kernels.sandbox is 'namespace' but the unshare command is not installed" in log


def test_kernel_uids_are_claimed_machine_wide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two datasites with the same ``sandbox_uid_base`` never hand out one uid twice (a
    kernel could read the other's open private files through /proc), a uid some process
    still runs as is skipped, and a released uid is free again."""
    from remote_kernel.datasite.config import KernelSettings
    from remote_kernel.datasite.kernels import LocalKernelProvider

    monkeypatch.setenv("REMOTE_KERNEL_UID_LOCKS", str(tmp_path / "locks"))
    base = 300000 + os.getpid() % 1000 * 10
    settings = KernelSettings(sandbox="none", memory_limit_mb=0, sandbox_uid_base=base)
    cleveland = LocalKernelProvider(tmp_path / "a", settings=settings)
    hungary = LocalKernelProvider(tmp_path / "b", settings=settings)
    first = cleveland._allocate_uid("k1")
    second = hungary._allocate_uid("k1")
    third = cleveland._allocate_uid("k2")
    assert len({first, second, third}) == 3 and first == base
    cleveland._release_uid("k1")
    assert hungary._allocate_uid("k2") == base  # free again once its kernel is gone
    if os.geteuid() == 0:  # a leftover process running as the next free uid
        leftover = subprocess.Popen(["sleep", "30"], user=base + 3, group=base + 3)
        try:
            time.sleep(0.2)
            assert cleveland._allocate_uid("k3") == base + 4
        finally:
            leftover.kill()
            leftover.wait()


def test_two_sites_on_one_machine_run_kernels_as_different_users(
    isolated: RunningDatasite, tmp_path: Path
) -> None:
    """Both sites left at the default uid base: the second site's kernel gets another
    uid, so it cannot look into the first site's kernel (its open private files)."""
    if os.geteuid() != 0:
        pytest.skip("kernels get a uid of their own only when the server runs as root")
    other = make_datasite(tmp_path, "hungary")
    other.start()
    first = Datasite(isolated.url, isolated.tokens["alice"])
    second = Datasite(other.url, other.tokens["alice"])
    try:
        probe = "import os, json\ndf = rk.data('heart')\n"
        probe += "print(json.dumps([os.getpid(), os.getuid()]))"
        request, views = run_and_view(isolated, first, probe)
        assert request.status == "completed", request.message
        pid, uid = json.loads(stdout(views))
        look = (
            "import os\n"
            f"try:\n    print(os.getuid(), sorted(os.listdir('/proc/{pid}/fd')))\n"
            "except OSError as exc:\n    print(os.getuid(), type(exc).__name__)"
        )
        request, views = run_and_view(other, second, look)
        assert request.status == "completed", request.message
        other_uid, result = stdout(views).split(" ", 1)
        assert int(other_uid) != uid
        assert result.strip() == "PermissionError"
    finally:
        first.close()
        second.close()
        other.stop()
