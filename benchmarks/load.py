"""Simulated researchers against datasite replicas behind a load balancer.

    python benchmarks/load.py --replicas 2 --store postgresql --researchers 50 --cells 20 \
        [--kill-replica] [--json]

Builds a throwaway PostgreSQL cluster (tests/postgres.py: initdb, loopback), one
datasite on it, ``--replicas`` copies of its directory each served by
``remote-kernel datasite serve --insecure-release-all`` (outputs released without
review, as in roundtrip.py: the server's own path is what is measured), and nginx in
front (tests/nginx.py: the config docs/operators.md gives). Each simulated researcher
is a thread with the researcher client (REST + websocket through nginx): one warm-up
cell starts its kernel, then ``--cells`` cells one after another, each timed from
submission until it is finished and its output released at the client.

``--kill-replica``: a third of the way through, the first replica's server is killed
with SIGKILL (its kernels are orphaned, as in a crash); its researchers' clients
reconnect through nginx to the survivor, which takes the dead replica's sessions over.

Printed: throughput, p50/p99 latency, each replica's share of the cells and its own
CPU (the server process, not its kernels) per cell it ran, and the accounting read
from the store afterwards: an acknowledged cell is *lost* if it is not in the store or
never reached a final state; *duplicated* if it was started more than once. The last
line is ``load: N submitted, N completed, N lost, p50 X ms, p99 Y ms, server CPU per
cell Z ms``. On a 2-core machine the kernels, this load generator, nginx and
PostgreSQL share the cores with the servers: read the CPU per cell, not wall-clock
scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from roundtrip import Server, free_port, log  # noqa: E402

CODE = "1 + 1"
FINISHED = {"completed", "error", "failed", "interrupted"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (not its children): the server's own work."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_site(root: Path, store: str, researchers: int, replicas: int) -> tuple[list[Path], dict]:
    from remote_kernel.datasite.config import DatasiteConfig, ReplicaSettings
    from remote_kernel.datasite.datasets import add_dataset, synthetic_heart
    from remote_kernel.datasite.store import Store
    from remote_kernel.protocol.models import Role

    config = DatasiteConfig.create(root / "r0" / "bench", "bench", store=store)
    config.replicas = ReplicaSettings(lease_seconds=10.0, heartbeat_seconds=1.0, poll_seconds=1.0)
    config.limits.ws_message_burst = 1000
    config.auth.max_failed_logins = 100000
    config.save()
    source = root / "heart.csv"
    synthetic_heart(300, seed=0).to_csv(source, index=False)
    add_dataset(config, "heart", source, seed=0)
    db = Store(config.database_url)
    try:
        tokens = {f"r{i}": db.create_user(f"r{i}", Role.RESEARCHER)[1] for i in range(researchers)}
    finally:
        db.close()
    directories = [config.directory]
    for i in range(1, replicas):
        copy = root / f"r{i}" / "bench"
        shutil.copytree(config.directory, copy)
        directories.append(copy)
    return directories, tokens


class Researchers:
    """The simulated researchers: one thread and one client each."""

    def __init__(self, url: str, tokens: dict[str, str], cells: int) -> None:
        self.url, self.tokens, self.cells = url, tokens, cells
        self.lock = threading.Lock()
        self.warm = threading.Barrier(len(tokens) + 1)
        self.acknowledged: dict[int, str] = {}
        self.latencies: list[float] = []
        self.completed_seen = 0
        self.unacknowledged = 0
        self.submitted_count = 0

    def run(self, name: str) -> None:
        from remote_kernel.protocol.errors import RemoteKernelError
        from remote_kernel.researcher.client import Datasite

        client = Datasite(self.url, self.tokens[name])
        try:
            client.run(CODE, timeout=120).wait(180)  # starts the kernel: not measured
        except (RemoteKernelError, TimeoutError) as exc:
            log(f"{name}: warm-up failed: {exc}")
        self.warm.wait()
        done = 0
        while done < self.cells:
            began = time.perf_counter()
            try:
                request = client.run(CODE, timeout=30)
            except RemoteKernelError:
                with self.lock:
                    self.unacknowledged += 1
                time.sleep(0.5)
                continue
            with self.lock:
                self.acknowledged[request.id] = name
                self.submitted_count += 1
            done += 1
            try:
                request.wait(120)
            except TimeoutError:
                continue
            if request.status == "completed" and [o.state for o in request.outputs] == ["released"]:
                with self.lock:
                    self.latencies.append(time.perf_counter() - began)
                    self.completed_seen += 1
        client.close()


def account(url: str, acknowledged: dict[int, str], grace: float = 90.0) -> dict[str, Any]:
    """What the store says about every acknowledged cell (after a grace period)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    deadline = time.monotonic() + grace
    try:
        while True:
            with engine.connect() as conn:
                status = dict(conn.execute(sa.text("SELECT id, status FROM requests")).all())
                audit = conn.execute(
                    sa.text("SELECT target, detail FROM audit WHERE action = 'request.status'")
                ).all()
            if all(status.get(i) in FINISHED for i in acknowledged) or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        engine.dispose()
    starts: Counter[int] = Counter()
    by_replica: Counter[str] = Counter()
    for target, detail in audit:
        if isinstance(detail, str):
            detail = json.loads(detail)
        if detail.get("status") == "running":
            request_id = int(target.split(":")[1])
            starts[request_id] += 1
            if request_id in acknowledged:
                by_replica[detail.get("replica", "?")] += 1
    final = Counter(status.get(i, "missing") for i in acknowledged)
    return {
        "statuses": dict(final),
        "lost": sum(1 for i in acknowledged if status.get(i) not in FINISHED),
        "duplicated": sum(1 for i in acknowledged if starts[i] > 1),
        "started_by_replica": dict(by_replica),
    }


def replica_ids(url: str) -> dict[int, str]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT pid, id FROM replicas")).all())
    finally:
        engine.dispose()


def kill_first_replica(
    servers: list[Server], load: Researchers, after: int, cpu_after: dict[int, float]
) -> None:
    """SIGKILL replica 0 (the server alone) once ``after`` cells are submitted; its CPU
    is read just before."""
    while load.submitted_count < after:
        time.sleep(0.05)
    victim = servers[0].process
    assert victim is not None
    cpu_after[victim.pid] = cpu_seconds(victim.pid)
    victim.kill()
    victim.wait()
    log(f"killed replica 0 (pid {victim.pid}) after {load.submitted_count} cells")
    servers[0].process = None


def summarize(
    args: argparse.Namespace,
    url: str,
    load: Researchers,
    pids: dict[int, Any],
    cpu_before: dict[int, float],
    cpu_after: dict[int, float],
    elapsed: float,
) -> tuple[dict[str, Any], str]:
    """The run's figures (from the store and /proc) and the issue's one-line summary."""
    names = replica_ids(url)
    result = account(url, load.acknowledged)
    per_replica = []
    for pid in pids:
        cells = result["started_by_replica"].get(names.get(pid, "?"), 0)
        cpu = cpu_after[pid] - cpu_before[pid]
        per_replica.append(
            {"pid": pid, "cells": cells, "cpu_s": round(cpu, 3),
             "cpu_ms_per_cell": round(1000 * cpu / cells, 2) if cells else None}
        )  # fmt: skip
    latencies = sorted(load.latencies)
    p50 = 1000 * statistics.median(latencies) if latencies else float("nan")
    p99 = (
        1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies
        else float("nan")
    )
    completed = result["statuses"].get("completed", 0)
    total_cpu = sum(r["cpu_s"] for r in per_replica)
    cpu_per_cell = 1000 * total_cpu / completed if completed else float("nan")
    report = {
        "replicas": args.replicas, "store": args.store, "researchers": args.researchers,
        "cells": args.cells, "kill_replica": args.kill_replica, "cores": os.cpu_count(),
        "elapsed_s": round(elapsed, 2), "throughput_cells_per_s": round(completed / elapsed, 2),
        "submitted": len(load.acknowledged), "unacknowledged_sends": load.unacknowledged,
        **result, "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
        "per_replica": per_replica, "server_cpu_ms_per_cell": round(cpu_per_cell, 2),
    }  # fmt: skip
    line = (
        f"load: {len(load.acknowledged)} submitted, {completed} completed, "
        f"{result['lost']} lost, p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
        f"server CPU per cell {cpu_per_cell:.1f} ms"
    )
    return report, line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--researchers", type=int, default=50)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--kill-replica", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.store == "sqlite" and args.replicas > 1:
        parser.error("a SQLite store serves one replica only: use --store postgresql")
    if args.kill_replica and args.replicas < 2:
        parser.error("--kill-replica needs at least two replicas")

    from tests.nginx import Balancer
    from tests.postgres import PostgresCluster, find_bin_dir

    root = Path(tempfile.mkdtemp(prefix="rk-load-"))
    cluster = None
    servers: list[Server] = []
    balancer = None
    try:
        if args.store == "postgresql":
            bin_dir = find_bin_dir()
            if bin_dir is None:
                parser.error("no PostgreSQL server binaries (Debian's postgresql package)")
            cluster = PostgresCluster(bin_dir)
            cluster.start()
            url = cluster.new_database()
        else:
            url = f"sqlite:///{root / 'datasite.db'}"
        directories, tokens = make_site(root, url, args.researchers, args.replicas)
        for i, directory in enumerate(directories):
            server = Server(directory, free_port(), root / f"server-{i}.log")
            server.start()
            servers.append(server)
        balancer = Balancer([s.port for s in servers])
        balancer.start()
        log(f"{args.replicas} replica(s) behind nginx at {balancer.url}; starting kernels")
        load = Researchers(balancer.url, tokens, args.cells)
        threads = [threading.Thread(target=load.run, args=(n,), daemon=True) for n in tokens]
        for thread in threads:
            thread.start()
        load.warm.wait()
        pids = {s.process.pid: s for s in servers if s.process is not None}
        cpu_before = {pid: cpu_seconds(pid) for pid in pids}
        cpu_after: dict[int, float] = {}
        began = time.perf_counter()
        log(f"kernels up; {args.researchers} researchers x {args.cells} cells")
        total = args.researchers * args.cells
        if args.kill_replica:
            kill_first_replica(servers, load, total // 3, cpu_after)
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        for pid in pids:
            if pid not in cpu_after:
                cpu_after[pid] = cpu_seconds(pid)
        report, line = summarize(args, url, load, pids, cpu_before, cpu_after, elapsed)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            for key, value in report.items():
                print(f"{key:>24}: {value}")
        print(line)
        result = report
        return 0 if result["lost"] == 0 and result["duplicated"] == 0 else 1
    finally:
        if balancer is not None:
            balancer.stop()
        for server in servers:
            server.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
