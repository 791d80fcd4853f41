"""Fixtures: real datasites served by the real CLI on loopback ports.

Nothing of ours is faked: a datasite here is a directory made with the same
functions the CLI uses, served by ``remote-kernel datasite serve`` in a
subprocess, starting real ipykernels through jupyter_client.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.datasets import (
    HEART_COLUMNS,
    UCI_HEART_FILES,
    add_dataset,
    find_uci_heart_dir,
    synthetic_heart,
)
from remote_kernel.datasite.store import Store
from remote_kernel.protocol.models import Role

from .postgres import SKIP_REASON, PostgresCluster, find_bin_dir

#: Modules that start a browser, the whole demo or a crash loop (about 4 of the suite's
#: minutes): ``python -m pytest -q -m "not slow"`` leaves them out for everyday work.
SLOW_MODULES = frozenset({"test_ui", "test_crash_safety", "test_demo", "test_binder"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_finished(get: Callable[[str], dict], request_id: int, timeout: float = 120) -> dict:
    """Poll GET /api/requests/{id} (through ``get``) until the request has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = get(f"/api/requests/{request_id}")
        if view["status"] in {"completed", "error", "failed", "interrupted"}:
            return view
        time.sleep(0.2)
    raise TimeoutError(f"request {request_id} did not finish")


def heart_source(site: str, tmp: Path) -> tuple[Path, list[str] | None]:
    """The UCI file for ``site`` when present, else generated heart-shaped data."""
    uci = find_uci_heart_dir()
    if uci is not None:
        return uci / UCI_HEART_FILES[site], HEART_COLUMNS
    path = tmp / f"{site}-generated.csv"
    seed = sorted(UCI_HEART_FILES).index(site)
    synthetic_heart(300, seed=seed).to_csv(path, index=False)
    return path, None


@dataclass
class RunningDatasite:
    """A datasite directory and (when started) its server process."""

    directory: Path
    name: str
    port: int
    tokens: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def start(self, timeout: float = 30.0) -> None:
        self.log_path = self.directory.parent / f"{self.name}-server.log"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "remote_kernel.cli",
                "datasite",
                "serve",
                str(self.directory),
                "--port",
                str(self.port),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"datasite exited: {self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError(f"datasite did not start: {self.log_path.read_text()}")

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            if kill:
                os.killpg(self.process.pid, signal.SIGKILL)
            else:
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def kill_server_only(self) -> None:
        """SIGKILL the server process alone (its kernels are left as orphans, like a crash)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def store(self) -> Store:
        return Store(DatasiteConfig.load(self.directory).database_url)


#: A strict policy whose ``heart`` dataset declares DP metadata (the DP tier's tests).
DP_POLICY = """
preset: strict
datasets:
  heart:
    dp:
      bounds: {age: [20, 80], chol: [100, 600]}
      public_categories: {sex: [0, 1]}
"""


def with_dp(site: RunningDatasite, budgets: dict[str, float], policy: str = DP_POLICY) -> None:
    """Give ``site`` the DP policy and each user's ε on heart (before it is started)."""
    (site.directory / "policy.yaml").write_text(policy)
    store = site.store()
    try:
        for user, epsilon in budgets.items():
            store.set_budget(user, "heart", epsilon)
    finally:
        store.close()


def make_datasite(
    tmp: Path,
    name: str = "cleveland",
    extra_args: list[str] | None = None,
    store: str | None = None,
    **limits: int,
) -> RunningDatasite:
    """Create a datasite the way an admin does: init, add-dataset, add users.

    ``store``: a database URL for ``store:`` in datasite.yaml (default: SQLite in the
    directory), e.g. the ``store_url`` fixture's.
    """
    config = DatasiteConfig.create(tmp / name, name)
    config.db_url = store
    for key, value in limits.items():
        setattr(config.limits, key, value)
    config.kernels.cull_interval_seconds = 5
    # Tests send bad tokens on purpose, all from 127.0.0.1; throttling has its own test
    # (test_tokens_and_tls.py), which sets the real limits back.
    config.auth.max_failed_logins = 100000
    config.save()
    source, columns = heart_source(name, tmp)
    add_dataset(config, "heart", source, columns=columns, na_values=["?"], seed=0)
    store = Store(config.database_url)
    tokens = {}
    for user, role in (
        ("alice", Role.RESEARCHER),
        ("carol", Role.RESEARCHER),
        ("bob", Role.REVIEWER),
        ("admin", Role.ADMIN),
    ):
        _, tokens[user] = store.create_user(user, role)
    store.close()
    return RunningDatasite(config.directory, name, free_port(), tokens, extra_args=extra_args or [])


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the session (skips without the binaries)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get("REMOTE_KERNEL_REQUIRE_POSTGRES"):  # CI: a skip would hide a gap
            pytest.fail(SKIP_REASON)
        pytest.skip(SKIP_REASON)
    cluster = PostgresCluster(bin_dir)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'datasite.db'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database()


@pytest.fixture(scope="session")
def shared_datasite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    """One datasite for the tests that do not restart or break it."""
    site = make_datasite(tmp_path_factory.mktemp("shared"))
    site.start()
    yield site
    site.stop()


@pytest.fixture
def datasite(tmp_path: Path) -> Iterator[RunningDatasite]:
    """A fresh datasite of this test's own, for tests that restart or break it."""
    site = make_datasite(tmp_path)
    site.start()
    yield site
    site.stop()


@pytest.fixture
def private_heart(shared_datasite: RunningDatasite) -> pd.DataFrame:
    return pd.read_parquet(shared_datasite.directory / "datasets" / "heart" / "private.parquet")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocks are cached per test, never in the real user's cache; saved connections too."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("REMOTE_KERNEL_CONNECTIONS", str(tmp_path / "connections.json"))


def run_and_view(
    site: RunningDatasite, client: Any, code: str, timeout: float = 180
) -> tuple[Any, list[dict[str, Any]]]:
    """Run a cell until it finishes; the request and every output's full view (as bob)."""
    request = client.run(code)
    request.wait(timeout, until="finished")
    views = [
        httpx.get(f"{site.url}/api/outputs/{o.id}", headers=site.headers("bob")).json()
        for o in request.outputs
    ]
    return request, views
