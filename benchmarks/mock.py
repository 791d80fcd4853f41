"""Time and peak memory to fit and sample a mock at each fidelity level.

    python benchmarks/mock.py [--rows 1000000] [--columns 20] [--json]

The private table is generated (no real data): ``--rows`` rows of ``--columns``
columns in a fixed mix of kinds, like a clinical extract: continuous
measurements (some correlated), whole numbers (ages, counts), codes with a
few levels, text categories with a long tail of rare values, a date, and a
few missing values throughout.

For each level (schema, marginal, joint) the benchmark times, on their own:
``fit`` (learning the model), ``sample`` (drawing as many mock rows as the
private table has) and ``no-copy`` (hashing both tables and redrawing mock
rows equal to a private row), and their total, after a warm-up on 20,000
rows; then, in a second run of the same work under ``tracemalloc``, the
peak of Python-tracked memory (numpy and pandas buffers included).

Baseline: ``df.sample(n=rows, replace=True)``, a bootstrap of the private
rows. It is the cheapest way to get "rows like these" and exactly what a mock
must not be (every row is a private row); the ratio says what fitting a
model and keeping the mock away from private rows cost over copying.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from remote_kernel.mocks.generate import FIDELITIES, drop_private_copies, fit_mock

BASELINE_NAME = "pandas df.sample(n=rows, replace=True) (bootstrap: copies private rows)"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def private_table(rows: int, columns: int, seed: int = 0) -> pd.DataFrame:
    """A generated table of ``columns`` columns cycling through eight kinds of clinical column."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(rows)
    data: dict[str, Any] = {}
    for i in range(columns):
        kind = i % 8
        name = f"c{i:02d}"
        if kind == 0:
            data[name] = np.round(120 + 15 * (0.7 * base + 0.7 * rng.standard_normal(rows)), 1)
        elif kind == 1:
            data[name] = np.round(np.exp(rng.normal(5, 0.4, rows)) + 10 * base, 2)
        elif kind == 2:
            data[name] = np.clip(np.round(55 + 10 * base + 5 * rng.standard_normal(rows)), 18, 99)
            data[name] = data[name].astype("int64")
        elif kind == 3:
            data[name] = (rng.random(rows) < 0.3 + 0.1 * (base > 0)).astype("int64")
        elif kind == 4:
            data[name] = rng.choice([1.0, 2.0, 3.0, 4.0], rows, p=[0.1, 0.2, 0.3, 0.4])
        elif kind == 5:
            common = rng.choice(["north", "south", "east", "west"], rows)
            rare = np.array([f"ward-{j}" for j in rng.integers(0, rows // 4, rows)])
            data[name] = np.where(rng.random(rows) < 0.02, rare, common).astype(object)
        elif kind == 6:
            days = rng.integers(0, 3650, rows)
            data[name] = pd.Timestamp("2015-01-01") + pd.to_timedelta(days, "D")
        else:
            data[name] = np.round(rng.gamma(1.5, 1.0, rows) + 0.3 * base, 3)
    frame = pd.DataFrame(data)
    for name in list(frame.columns)[::3]:
        if frame[name].dtype == float:
            frame.loc[rng.random(rows) < 0.03, name] = np.nan
    return frame


def timed(step: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = step()
    return result, time.perf_counter() - start


def run_level(private: pd.DataFrame, fidelity: str, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    model, fit_s = timed(lambda: fit_mock(private, fidelity, seed=seed))
    mock, sample_s = timed(lambda: model.sample(len(private), rng))
    clean, copy_s = timed(lambda: drop_private_copies(mock, private, model, rng))
    assert len(clean) > 0.99 * len(private)
    return {
        "fit_s": fit_s,
        "sample_s": sample_s,
        "no_copy_s": copy_s,
        "total_s": fit_s + sample_s + copy_s,
    }


def peak_memory(step: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    log(f"generating {args.rows:,} x {args.columns} private table")
    private = private_table(args.rows, args.columns, args.seed)
    log(f"  {private.memory_usage(deep=True).sum() / 2**20:.0f} MiB in pandas")

    warmup = private.head(min(len(private), 20_000))
    for fidelity in FIDELITIES:  # first calls (imports, caches) are not what we measure
        run_level(warmup, fidelity, args.seed)
    results: dict[str, dict[str, float]] = {}
    _, baseline_s = timed(lambda: private.sample(n=len(private), replace=True, random_state=0))
    baseline_mib = peak_memory(lambda: private.sample(n=len(private), replace=True, random_state=0))
    results["baseline"] = {"total_s": baseline_s, "peak_mib": baseline_mib}
    for fidelity in FIDELITIES:
        log(f"{fidelity}: timing")
        results[fidelity] = run_level(private, fidelity, args.seed)
        log(f"{fidelity}: memory")
        results[fidelity]["peak_mib"] = peak_memory(
            lambda f=fidelity: run_level(private, f, args.seed)
        )

    if args.json:
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "columns": args.columns,
                    "baseline": BASELINE_NAME,
                    "python": platform.python_version(),
                    "results": results,
                },
                indent=2,
            )
        )
        return 0
    schema_s = results["schema"]["total_s"]
    print(
        f"mock of {args.rows:,} rows x {args.columns} columns (python {platform.python_version()})"
    )
    print(f"baseline: {BASELINE_NAME}")
    print()
    print(
        f"{'level':<9} {'fit s':>7} {'sample s':>9} {'no-copy s':>10} {'total s':>8} "
        f"{'peak MiB':>9} {'x baseline':>11} {'x schema':>9}"
    )
    for level, r in results.items():
        if level == "baseline":
            print(
                f"{'baseline':<9} {'':>7} {'':>9} {'':>10} {r['total_s']:>8.2f} "
                f"{r['peak_mib']:>9.0f} {1.0:>11.1f} {r['total_s'] / schema_s:>9.2f}"
            )
            continue
        print(
            f"{level:<9} {r['fit_s']:>7.2f} {r['sample_s']:>9.2f} {r['no_copy_s']:>10.2f} "
            f"{r['total_s']:>8.2f} {r['peak_mib']:>9.0f} {r['total_s'] / baseline_s:>11.1f} "
            f"{r['total_s'] / schema_s:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
