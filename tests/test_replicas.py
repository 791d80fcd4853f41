"""Two ``datasite serve`` replicas on one PostgreSQL behind a real nginx.

Everything is real: an initdb'd PostgreSQL (tests/postgres.py), two server processes
started by the CLI (each with its own copy of the datasite directory, as on two
machines), Debian's nginx on loopback with the config docs/operators.md gives, real
kernels, the researcher client. What is checked:

* cells submitted through the balancer complete and reach the researcher, and a cell
  submitted on one replica for a session another replica owns runs on the owner;
* a reviewer's decision on one replica reaches a researcher's websocket on the other
  (in under the client's 5-second REST fallback, so through LISTEN/NOTIFY);
* kill -9 of one replica under load: every acknowledged submission, decision and
  budget charge is in the store exactly once, nothing stays queued or running, the
  other replica took the dead one's sessions, clients reconnected by themselves, and
  the audit chain verifies;
* a second server on a SQLite store is refused with a clear message.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from remote_kernel.datasite.config import DatasiteConfig, ReplicaSettings
from remote_kernel.datasite.core import RESTART_MESSAGE
from remote_kernel.datasite.store import Store
from remote_kernel.protocol.errors import RemoteKernelError
from remote_kernel.protocol.models import Role
from remote_kernel.researcher.client import Datasite

from .conftest import DP_POLICY, RunningDatasite, free_port, make_datasite
from .nginx import SKIP_REASON, Balancer, nginx_available
from .postgres import PostgresCluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not nginx_available(), reason=SKIP_REASON),
]

POLICY = DP_POLICY
DP_CELL = (
    'rk.query("SELECT sex, COUNT(*) AS n FROM heart WHERE age > 50 GROUP BY sex", epsilon=0.01)'
)
FINISHED = {"completed", "error", "failed", "interrupted"}
RESEARCHERS = [f"r{i}" for i in range(6)]


def make_replicas(tmp: Path, url: str, count: int = 2) -> list[RunningDatasite]:
    """A datasite on ``url`` and ``count`` server directories for it (copies of one)."""
    (tmp / "r0").mkdir(parents=True)
    first = make_datasite(tmp / "r0", store=url)
    config = DatasiteConfig.load(first.directory)
    # Short leases so that a death is noticed within seconds (defaults: 15 s and 3 s).
    config.replicas = ReplicaSettings(lease_seconds=6.0, heartbeat_seconds=1.0, poll_seconds=1.0)
    config.save()
    (first.directory / "policy.yaml").write_text(POLICY)
    store = Store(url)
    for name in RESEARCHERS:
        _, first.tokens[name] = store.create_user(name, Role.RESEARCHER)
        store.set_budget(name, "heart", 10.0)
    store.close()
    sites = [first]
    for i in range(1, count):
        directory = tmp / f"r{i}" / first.name
        shutil.copytree(first.directory, directory)
        sites.append(RunningDatasite(directory, first.name, free_port(), first.tokens))
    return sites


@pytest.fixture
def replicated(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> Iterator[tuple[list[RunningDatasite], Balancer, str]]:
    url = postgres_cluster.new_database()
    sites = make_replicas(tmp_path, url)
    balancer = Balancer([site.port for site in sites])
    try:
        for site in sites:
            site.start()
        balancer.start()
        yield sites, balancer, url
    finally:
        balancer.stop()
        for site in sites:
            site.stop()


def rows(url: str, sql: str) -> list[Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)))
    finally:
        engine.dispose()


def replica_of(url: str, site: RunningDatasite) -> str:
    assert site.process is not None
    (row,) = rows(url, f"SELECT id FROM replicas WHERE pid = {site.process.pid}")
    return str(row.id)


def started_by(url: str, request_id: int) -> list[str]:
    """The replicas that started ``request_id`` (from the audit log: one, or none)."""
    found = rows(
        url,
        "SELECT detail FROM audit WHERE action = 'request.status' "
        f"AND target = 'request:{request_id}'",
    )
    return [
        d.detail["replica"]
        for d in found
        if isinstance(d.detail, dict) and d.detail.get("status") == "running"
    ]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def approve(base: str, token: str, output_id: int) -> httpx.Response:
    return httpx.post(
        f"{base}/api/outputs/{output_id}/review",
        json={"decision": "approve"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_cells_and_decisions_cross_replicas(
    replicated: tuple[list[RunningDatasite], Balancer, str],
) -> None:
    (a, b), balancer, url = replicated
    # Through the balancer: the cell completes and its outputs reach the researcher.
    through = Datasite(balancer.url, a.tokens["carol"])
    request = through.run("print(6 * 7)", timeout=30)
    request.wait(60, until="finished")
    assert request.status == "completed", request.message
    assert [o.state for o in request.outputs] == ["pending"]

    # alice's channel is on replica a, so a owns her session; a decision on b reaches her.
    alice = Datasite(a.url, a.tokens["alice"])
    held = alice.run("print(40 + 2)", timeout=30)
    held.wait(60, until="finished")
    assert held.status == "completed" and started_by(url, held.id) == [replica_of(url, a)]
    (output,) = held.outputs
    assert approve(b.url, a.tokens["bob"], output.id).status_code == 200
    began = time.monotonic()
    held.wait(4.5)  # the client's REST fallback polls only after 5 s: this is the event
    assert time.monotonic() - began < 4.5
    assert held.outputs[0].state == "released" and "42" in held.outputs[0].text

    # A cell submitted on b for alice's session runs on a, its owner, and reaches her.
    posted = httpx.post(
        f"{b.url}/api/sessions/{alice.session_id}/requests",
        json={"code": "x = 1\nx + 1"},
        headers=a.headers("alice"),
        timeout=10,
    )
    assert posted.status_code in (200, 201), posted.text
    request_id = posted.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = alice._requests.get(request_id)
        if seen is not None and seen.finished:
            break
        time.sleep(0.1)
    assert seen is not None and seen.status == "completed", seen
    assert started_by(url, request_id) == [replica_of(url, a)]
    # An interrupt sent to b reaches the kernel on a.
    sleeping = alice.run("import time\ntime.sleep(120)", timeout=30)
    deadline = time.monotonic() + 60
    while alice.request(sleeping.id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    interrupted = httpx.post(
        f"{b.url}/api/sessions/{alice.session_id}/interrupt", headers=a.headers("alice"), timeout=10
    )
    assert interrupted.is_success, interrupted.text
    sleeping.wait(20, until="finished")
    assert sleeping.status == "error", sleeping.message
    # Closing the session through b reaches a, which shuts the kernel down.
    session = f"'{alice.session_id}'"
    (row,) = rows(url, f"SELECT kernel_pid FROM sessions WHERE id = {session}")
    assert row.kernel_pid is not None
    closed = httpx.delete(
        f"{b.url}/api/sessions/{alice.session_id}", headers=a.headers("alice"), timeout=10
    )
    assert closed.is_success, closed.text
    deadline = time.monotonic() + 20
    while rows(url, f"SELECT kernel_pid FROM sessions WHERE id = {session}")[0].kernel_pid:
        assert time.monotonic() < deadline, "the owner did not shut the kernel down"
        time.sleep(0.2)
    for client in (alice, through):
        client.close()


class Load:
    """Researchers and a reviewer through the balancer; what each was told."""

    def __init__(self, balancer: Balancer, tokens: dict[str, str]) -> None:
        self.balancer = balancer
        self.tokens = tokens
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acknowledged: dict[int, tuple[str, str, float]] = {}  # id -> (who, code, when)
        self.unacknowledged = 0
        self.decisions: set[int] = set()
        self.errors: list[str] = []

    def researcher(self, name: str) -> None:
        client = Datasite(self.balancer.url, self.tokens[name])
        i = 0
        while not self.stop.is_set():
            code = DP_CELL if i % 3 == 2 else f"print({i} * 3)"
            i += 1
            try:
                request = client.run(code, timeout=15)
            except RemoteKernelError:
                with self.lock:
                    self.unacknowledged += 1
                time.sleep(0.3)
                continue
            with self.lock:
                self.acknowledged[request.id] = (name, code, time.monotonic())
            try:
                request.wait(30, until="finished")
            except TimeoutError:
                pass
        client.close()

    def reviewer(self) -> None:
        headers = {"Authorization": f"Bearer {self.tokens['bob']}"}
        while not self.stop.is_set():
            try:
                queue = httpx.get(f"{self.balancer.url}/api/reviews", headers=headers, timeout=10)
                pending = queue.json() if queue.status_code == 200 else []
                items = pending.get("outputs", []) if isinstance(pending, dict) else pending
                for output in items[:5]:
                    if approve(self.balancer.url, self.tokens["bob"], output["id"]).is_success:
                        with self.lock:
                            self.decisions.add(output["id"])
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)


@pytest.mark.timeout(600)
def test_kill_one_replica_under_load_loses_nothing(
    replicated: tuple[list[RunningDatasite], Balancer, str],
) -> None:
    (a, b), balancer, url = replicated
    # A client that only listens, whose channel the balancer put on replica a.
    watch = None
    for _ in range(6):
        candidate = Datasite(balancer.url, a.tokens["alice"])
        first = candidate.run("print('watching')", timeout=30)
        first.wait(60, until="finished")
        if started_by(url, first.id) == [replica_of(url, a)]:
            watch = candidate
            break
        candidate.close()
    assert watch is not None, "the balancer never put a channel on replica a"
    first_channel = watch._ws
    load = Load(balancer, a.tokens)
    threads = [threading.Thread(target=load.researcher, args=(n,)) for n in RESEARCHERS]
    threads.append(threading.Thread(target=load.reviewer))
    for thread in threads:
        thread.start()
    time.sleep(20)
    killed_replica = replica_of(url, a)
    orphans = [
        r.kernel_pid
        for r in rows(url, "SELECT kernel_pid FROM sessions WHERE kernel_pid IS NOT NULL "
                      f"AND replica = '{killed_replica}'")
    ]  # fmt: skip
    assert orphans, "replica a ran no kernels before it was killed"
    a.kill_server_only()  # kill -9 of the server alone: its kernels are orphans
    killed_at = time.monotonic()
    time.sleep(25)
    load.stop.set()
    for thread in threads:
        thread.join(timeout=60)
    # The listening client reopened its channel by itself (through nginx, to b), and
    # live events reach it there: a cell submitted for its session over REST on b.
    reader = watch._reader
    assert watch._ws is not first_channel and reader is not None and reader.is_alive()
    posted = httpx.post(
        f"{b.url}/api/sessions/{watch.session_id}/requests",
        json={"code": "print('after')"},
        headers=a.headers("alice"),
        timeout=10,
    ).json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        heard = watch._requests.get(posted["id"])
        if heard is not None and heard.finished:
            break
        time.sleep(0.1)
    assert heard is not None and heard.status == "completed", heard
    watch.close()

    # Everything acknowledged reaches an end, on the surviving replica.
    acknowledged = dict(load.acknowledged)
    assert len(acknowledged) >= 20, len(acknowledged)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = rows(url, "SELECT id, status, message, code FROM requests")
        by_id = {r.id: r for r in found}
        if all(by_id[i].status in FINISHED for i in acknowledged if i in by_id):
            break
        time.sleep(1)
    missing = [i for i in acknowledged if i not in by_id]
    assert not missing, f"acknowledged but not stored: {missing}"
    stuck = [r.id for r in found if r.status not in FINISHED]
    assert not stuck, f"still queued or running: {stuck}"
    # No request ran twice; interrupted ones say why.
    starts = Counter(
        int(r.target.split(":")[1])
        for r in rows(url, "SELECT target, detail FROM audit WHERE action = 'request.status'")
        if isinstance(r.detail, dict) and r.detail.get("status") == "running"
    )
    assert max(starts.values()) == 1, [i for i, n in starts.items() if n > 1]
    for r in found:
        if r.status == "interrupted":
            assert r.message == RESTART_MESSAGE, r.message
    # Each decision acknowledged is one review; each released output one release.
    reviews = Counter(r.output_id for r in rows(url, "SELECT output_id FROM reviews"))
    assert load.decisions and all(reviews[o] == 1 for o in load.decisions)
    released = rows(url, "SELECT id, state FROM outputs WHERE id IN "
                    f"({','.join(map(str, load.decisions))})")  # fmt: skip
    assert all(r.state == "released" for r in released)
    # Budget: one charge per DP request that ran to the end, none twice, ledger agrees.
    charges = Counter(
        int(r.what.split()[0].split(":")[1]) for r in rows(url, "SELECT what FROM budget_charges")
    )
    assert charges and max(charges.values()) == 1
    completed_dp = {r.id for r in found if r.code == DP_CELL and r.status == "completed"}
    assert completed_dp <= set(charges)
    for line in rows(url, "SELECT b.epsilon_spent, SUM(c.epsilon) AS s FROM budgets b "
                     "JOIN budget_charges c ON c.budget_id = b.id GROUP BY b.id"):  # fmt: skip
        assert line.epsilon_spent == line.s
    # The survivor took the dead replica's sessions; clients came back by themselves.
    takeovers = rows(url, "SELECT detail FROM audit WHERE action = 'session.takeover'")
    assert any(t.detail.get("previous") == killed_replica for t in takeovers), takeovers
    survivor = replica_of(url, b)
    after = [i for i, (_, _, at) in acknowledged.items() if at > killed_at + 2]
    assert {acknowledged[i][0] for i in after} == set(RESEARCHERS)
    assert all(started_by(url, i) in ([survivor], []) for i in after)
    # The survivor ended the kernels the dead replica left (they hold private data).
    assert not [pid for pid in orphans if alive(pid)], orphans
    # One chain, verifiable with the admin's command.
    verify = subprocess.run(
        [sys.executable, "-m", "remote_kernel.cli", "datasite", "audit", "verify",
         str(b.directory)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0 and "audit log intact" in verify.stdout, verify.stdout


def test_a_second_server_on_a_sqlite_store_is_refused(tmp_path: Path) -> None:
    site = make_datasite(tmp_path)
    site.start()
    try:
        second = RunningDatasite(site.directory, site.name, free_port(), site.tokens)
        with pytest.raises(RuntimeError, match="SQLite supports one server process only"):
            second.start()
    finally:
        site.stop()
