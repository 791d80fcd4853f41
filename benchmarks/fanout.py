"""Fan-out: wall time of one trivial released cell at 1, 2, 4 and 8 datasites.

    python benchmarks/fanout.py [--sites 1,2,4,8] [--runs 20] [--warmup 3] [--json]

Baseline: the same cell at 1 site. Each datasite is served by
``remote-kernel datasite serve DIR --insecure-release-all`` (releases without
review; for benchmarks only) on 127.0.0.1, and the researcher's process calls
``rk.run_everywhere("1+1", sites).wait()``: submit to every site at once, each
runs it in its own kernel, the outputs are checked and released, and the
client has every site's result.

Target: the median at 4 sites stays under 1.5 x the median at 1 site. On a
2-core machine 8 sites means 8 servers and 8 kernels sharing 2 cores, so the
8-site ratio is reported but has no target.

On one machine every site's server and kernel share its cores, which real
hospitals do not. So the benchmark also measures the CPU one cell costs (the
datasite server, its kernel and the researcher's process, from /proc) and prints
the *CPU floor*, the ratio the cores alone force:
max(1-site median, n x CPU per cell / cores) / 1-site median. A measured ratio
near the floor means the fan-out itself adds no waiting; when the floor is over
1.5 the target cannot be met on this machine whatever the code does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from roundtrip import Server, free_port, log, make_datasite, summarize

TARGET_RATIO_AT_4 = 1.5
CODE = "1+1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def tree_cpu_seconds(root_pid: int) -> float:
    """User+system CPU of a process and all its descendants (Linux /proc); 0 elsewhere."""
    proc = Path("/proc")
    if not proc.is_dir():
        return 0.0
    stats: dict[int, tuple[int, float]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    total, frontier = 0.0, [root_pid]
    while frontier:
        pid = frontier.pop()
        total += stats.get(pid, (0, 0.0))[1]
        frontier.extend(child for child, (parent, _) in stats.items() if parent == pid)
    return total


def one_fanout(sites: list[Any]) -> None:
    import remote_kernel as rk

    result = rk.run_everywhere(CODE, sites).wait(timeout=60)
    values = result.values()
    if values != {site.name: 2 for site in sites}:
        raise RuntimeError(f"unexpected values {values!r}: {result!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="1,2,4,8", help="site counts to measure")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.sites.split(",")} | {1})

    from remote_kernel.researcher.client import Datasite

    results: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rk-fanout-") as tmp:
        root = Path(tmp)
        servers: list[Server] = []
        clients: list[Datasite] = []
        try:
            for index in range(max(counts)):
                folder = root / f"site-{index}"
                folder.mkdir()
                directory, token = make_datasite(folder)
                server = Server(directory, free_port(), folder / "server.log")
                server.start()
                servers.append(server)
                clients.append(
                    Datasite(server.url, token, f"site-{index}", cache_dir=root / "cache")
                )
            log(f"started {len(servers)} datasites")
            for count in counts:
                chosen = clients[:count]
                one_fanout(chosen)  # starts the kernels: never a sample
                for _ in range(args.warmup):
                    one_fanout(chosen)
                samples = []
                pids = [server.process.pid for server in servers[:count] if server.process]
                cpu_before = sum(map(tree_cpu_seconds, pids)) + time.process_time()
                for _ in range(args.runs):
                    start = time.perf_counter()
                    one_fanout(chosen)
                    samples.append(time.perf_counter() - start)
                cpu = sum(map(tree_cpu_seconds, pids)) + time.process_time() - cpu_before
                results[count] = summarize(samples)
                results[count]["cpu_ms_per_site"] = cpu / args.runs / count * 1000
                log(f"{count} site(s): median {results[count]['median_ms']:.1f} ms")
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    client.close(end_session=True)
            for server in servers:
                server.stop()

    base = results[1]["median_ms"]
    cores = os.cpu_count() or 1
    cpu_per_cell = results[1]["cpu_ms_per_site"]
    for count, stats in results.items():
        stats["ratio_to_1_site"] = stats["median_ms"] / base
        stats["cpu_floor_ratio"] = max(base, count * cpu_per_cell / cores) / base
    passed = 4 not in results or results[4]["ratio_to_1_site"] < TARGET_RATIO_AT_4
    report = {
        "baseline": "the same cell at 1 site",
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "results": {str(k): v for k, v in results.items()},
        "target": f"ratio at 4 sites < {TARGET_RATIO_AT_4}",
        "cores": cores,
        "passed": passed,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{'sites':>5} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} "
            f"{'CPU ms/site':>11} {'ratio':>6} {'CPU floor':>9}"
        )
        for count, stats in results.items():
            print(
                f"{count:>5} {stats['median_ms']:>10.1f} {stats['p90_ms']:>8.1f} "
                f"{stats['min_ms']:>8.1f} {stats['cpu_ms_per_site']:>11.1f} "
                f"{stats['ratio_to_1_site']:>6.2f} {stats['cpu_floor_ratio']:>9.2f}"
            )
        print(f"CPU floor: the ratio {cores} core(s) force when every site's server and "
              "kernel run on this machine")  # fmt: skip
        print(f"baseline: {report['baseline']}; target: {report['target']}: "
              f"{'met' if passed else 'NOT met'}")  # fmt: skip
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
