"""Output-filter benchmark: the leak index and scan at scale, and the sound tier vs pandas.

    python benchmarks/filter.py [--rows 1000000] [--text-mb 10] [--cells 100000] [--json]

Lines, each with its target and PASS/MISS:

* index build: :meth:`remote_kernel.checks.leaks.PrivateIndex.build` on a private table
  of ``--rows`` rows x 14 heart-shaped columns (generated with numpy by
  :func:`remote_kernel.datasite.datasets.synthetic_heart`); wall time (target <= 5 s) and
  peak memory allocated during the build (tracemalloc, which numpy reports to),
  plus the bytes the index keeps.
* text scan: :meth:`~remote_kernel.checks.leaks.PrivateIndex.scan_text` on a ``--text-mb``
  MB output made of aggregate-looking tables (``to_string`` of means, standard
  deviations and counts, many of them equal to private values) and prose;
  throughput in MB/s (target >= 50 MB/s). A second line scans the same size of
  *private records* (the worst case: every window is a candidate), for honesty.
* HTML scan: :meth:`~remote_kernel.checks.leaks.PrivateIndex.scan_item` on a display_data
  item whose text/html is ``to_html`` of a ``--cells``-cell aggregate-looking table
  (tag stripping included); reported against the same 50 MB/s.
* sound tier: :func:`remote_kernel.checks.sqltier.run_query` (query + per-cell evidence in
  DuckDB) against a plain pandas groupby computing the same aggregates, on the same
  private table; target <= 2x. Skipped, saying so, when the module is not there.

Timings are the best of ``--repeat`` runs after one warm-up (the run least
disturbed by other processes); the median is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.checks.leaks import PrivateIndex
from remote_kernel.checks.policy import DatasetPolicy
from remote_kernel.datasite.datasets import synthetic_heart
from remote_kernel.protocol.models import OutputItem, Verdict

INDEX_TARGET_S = 5.0
SCAN_TARGET_MBS = 50.0
SOUND_TIER_TARGET_RATIO = 2.0
PROSE = (
    "Patients with exercise induced angina had a higher mean ST depression than those "
    "without, and the difference persisted after adjusting for age and sex. Cholesterol "
    "did not differ materially between diagnosis groups. "
)


@dataclass
class Line:
    name: str
    measured: str
    target: str
    ok: bool | None  # None: reported only

    @property
    def status(self) -> str:
        return "info" if self.ok is None else ("PASS" if self.ok else "MISS")


def best_time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any, float]:
    """Best and median wall time of ``repeat`` runs after one warm-up, and the last result.

    The best run is the one least disturbed by other processes on the machine;
    the median is printed next to it so the spread is visible.
    """
    fn()  # warm-up: first-touch page faults and lazy caches are not the steady state
    times: list[float] = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result, statistics.median(times)


def aggregate_text(target_bytes: int, seed: int = 0) -> str:
    """Aggregate-looking output: grouped means/std/counts tables and prose, ``target_bytes``."""
    rng = np.random.default_rng(seed)
    parts: list[str] = []
    size = 0
    while size < target_bytes:
        groups = pd.MultiIndex.from_product(
            [[0.0, 1.0], [1.0, 2.0, 3.0, 4.0], [0, 1, 2, 3, 4]], names=["sex", "cp", "num"]
        )
        table = pd.DataFrame(
            {
                "n": rng.integers(10, 600, len(groups)),
                "age_mean": rng.normal(54, 3, len(groups)),
                "age_std": rng.normal(9, 1, len(groups)),
                "chol_mean": rng.normal(245, 20, len(groups)),
                "chol_median": rng.integers(180, 300, len(groups)).astype(float),
                "thalach_mean": rng.normal(150, 10, len(groups)),
                "oldpeak_mean": rng.gamma(2, 0.5, len(groups)).round(2),
            },
            index=groups,
        )
        text = table.to_string() + "\n\n" + PROSE * 4 + "\n\n"
        parts.append(text)
        size += len(text.encode())
    return "".join(parts)[:target_bytes]


def records_text(frame: pd.DataFrame, target_bytes: int) -> str:
    parts: list[str] = []
    size = 0
    start = 0
    while size < target_bytes:
        text = frame.iloc[start : start + 2000].to_string() + "\n"
        parts.append(text)
        size += len(text.encode())
        start += 2000
    return "".join(parts)[:target_bytes]


def html_item(cells: int, seed: int = 1) -> OutputItem:
    rng = np.random.default_rng(seed)
    n_cols = 10
    n_rows = cells // n_cols
    table = pd.DataFrame(
        {
            f"stat_{c}": rng.normal(100, 30, n_rows).round(4)
            if c % 2
            else rng.integers(10, 900, n_rows)
            for c in range(n_cols)
        }
    )
    markup = table.to_html()
    return OutputItem(
        "display_data",
        {"data": {"text/html": markup, "text/plain": "<table>"}, "metadata": {}},
    )


def bench_index(frame: pd.DataFrame, repeat: int) -> tuple[list[Line], PrivateIndex]:
    policies = {"heart": DatasetPolicy()}
    seconds, index, median = best_time(
        lambda: PrivateIndex.build({"heart": frame}, policies), repeat
    )
    tracemalloc.start()
    PrivateIndex.build({"heart": frame}, policies)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows, cols = frame.shape
    frame_mb = frame.memory_usage(index=False).sum() / 1e6
    return [
        Line(
            f"index build, {rows:,} rows x {cols} columns",
            f"{seconds:.2f} s (median {median:.2f} s)",
            f"<= {INDEX_TARGET_S:.0f} s",
            seconds <= INDEX_TARGET_S,
        ),
        Line(
            "index build peak memory (tracemalloc)",
            f"{peak / 1e6:.0f} MB (the table itself: {frame_mb:.0f} MB)",
            "reported",
            None,
        ),
        Line("index kept in memory", f"{index.stats['bytes'] / 1e6:.0f} MB", "reported", None),
    ], index


def bench_scan(index: PrivateIndex, name: str, text: str, repeat: int, target: bool) -> Line:
    megabytes = len(text.encode()) / 1e6
    seconds, findings, median = best_time(lambda: index.scan_text(text), repeat)
    rate = megabytes / seconds
    verdicts = sorted({f.check for f in findings}) or ["no findings"]
    return Line(
        f"{name} ({megabytes:.1f} MB; {', '.join(verdicts)})",
        f"{rate:.0f} MB/s ({seconds * 1000:.0f} ms; median {megabytes / median:.0f} MB/s)",
        f">= {SCAN_TARGET_MBS:.0f} MB/s" if target else "reported",
        rate >= SCAN_TARGET_MBS if target else None,
    )


def bench_html(index: PrivateIndex, cells: int, repeat: int) -> Line:
    item = html_item(cells)
    megabytes = len(item.content["data"]["text/html"].encode()) / 1e6
    seconds, findings, median = best_time(lambda: index.scan_item(item), repeat)
    rate = megabytes / seconds
    blocked = any(f.verdict is Verdict.BLOCK for f in findings)
    return Line(
        f"HTML table scan, {cells:,} cells ({megabytes:.1f} MB{', BLOCKED' if blocked else ''})",
        f"{rate:.0f} MB/s ({seconds * 1000:.0f} ms, {cells / seconds / 1e6:.1f} M cells/s; "
        f"median {megabytes / median:.0f} MB/s)",
        f">= {SCAN_TARGET_MBS:.0f} MB/s",
        rate >= SCAN_TARGET_MBS,
    )


# --- sound tier: query + evidence vs plain pandas ------------------------------------------------
# Owned with remote_kernel/checks/sqltier/: if run_query's signature changes, change this function.


def bench_sound_tier(frame: pd.DataFrame, repeat: int) -> list[Line]:
    """DuckDB query with per-cell evidence (sqltier.run_query) against a pandas groupby."""
    try:
        from remote_kernel.checks import sqltier
        from remote_kernel.checks.policy import Thresholds
    except ImportError:
        print("sqltier: not available", file=sys.stderr)
        return [Line("sound tier query + evidence vs pandas", "sqltier: not available", "-", None)]
    run_query = getattr(sqltier, "run_query", None)
    if run_query is None:
        print("sqltier: not available", file=sys.stderr)
        return [Line("sound tier query + evidence vs pandas", "sqltier: not available", "-", None)]
    sql = "SELECT sex, num, COUNT(*) AS n, AVG(chol) AS chol FROM heart GROUP BY sex, num"
    tables = {"heart": frame}
    thresholds = Thresholds()

    def pandas_groupby() -> pd.DataFrame:
        return frame.groupby(["sex", "num"]).agg(n=("chol", "size"), chol=("chol", "mean"))

    ours, outcome, _ = best_time(lambda: run_query(sql, tables, thresholds), repeat)
    plain, _, _ = best_time(pandas_groupby, repeat)
    ratio = ours / plain
    verdict = getattr(getattr(outcome, "verdict", None), "value", "?")
    return [
        Line(
            f"sound tier: run_query vs pandas groupby ({len(frame):,} rows; verdict {verdict})",
            f"{ratio:.2f}x ({ours * 1000:.0f} ms vs {plain * 1000:.0f} ms)",
            f"<= {SOUND_TIER_TARGET_RATIO:.0f}x",
            ratio <= SOUND_TIER_TARGET_RATIO,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--text-mb", type=float, default=10.0)
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the lines as JSON too")
    args = parser.parse_args(argv)

    frame = synthetic_heart(args.rows, seed=0)
    lines, index = bench_index(frame, args.repeat)
    text_bytes = int(args.text_mb * 1e6)
    lines.append(
        bench_scan(
            index,
            "text scan, aggregate tables + prose",
            aggregate_text(text_bytes),
            args.repeat,
            True,
        )
    )
    lines.append(
        bench_scan(
            index,
            "text scan, private records (worst case)",
            records_text(frame, text_bytes),
            1,
            False,
        )
    )
    lines.append(bench_html(index, args.cells, args.repeat))
    lines += bench_sound_tier(frame, args.repeat)

    where = f"{platform.python_version()}, {platform.machine()}"
    print(f"# remote_kernel output filter benchmark ({where})")
    width = max(len(line.name) for line in lines)
    mwidth = max(len(line.measured) for line in lines)
    print(f"{'what':<{width}}  {'measured':<{mwidth}}  {'target':<14}  status")
    for line in lines:
        print(f"{line.name:<{width}}  {line.measured:<{mwidth}}  {line.target:<14}  {line.status}")
    if args.json:
        print(json.dumps([line.__dict__ | {"status": line.status} for line in lines], indent=2))
    return 0 if all(line.ok is not False for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
