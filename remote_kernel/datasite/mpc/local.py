"""A data site's own part of a pooled query: its vectors, from its private tables.

The query runs exactly as the exact tier runs it (the checked parse, the evidence
columns of :mod:`remote_kernel.checks.sqltier.evidence`, the locked-down DuckDB of
:mod:`remote_kernel.querylang`); the result is then laid out over the *public* key
domain (:mod:`.plan`). Rows whose key is not in the domain count in no cell, so
which keys this site has is never shared, only numbers in public positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.checks.sqltier.evidence import evidence_query
from remote_kernel.datasite.mpc.party import BIG
from remote_kernel.datasite.mpc.plan import TOP_N, Plan, key_cells
from remote_kernel.querylang import ParsedQuery, run_checked


def normalize_key(value: Any) -> Any:
    """One spelling per key value, so JSON's ``1`` and the table's ``1.0`` meet."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_ | int | np.integer | float | np.floating):
        number = float(value)
        return int(number) if number.is_integer() else number
    return str(value)


def local_vector(
    parsed: ParsedQuery,
    tables: Mapping[str, pd.DataFrame],
    domain: list[list[Any]],
    plan: Plan,
) -> list[float]:
    """This site's numbers in the plan's order (zeros for keys it does not have)."""
    evidence_sql, evidence = evidence_query(parsed, TOP_N)
    frame = run_checked(parsed, tables, evidence_sql, private=True)
    keys = [frame[column].tolist() for column in evidence.keys]
    rows = {
        tuple(normalize_key(v) for v in combo): i for i, combo in enumerate(zip(*keys, strict=True))
    }
    if not evidence.keys:
        rows = {(): 0} if len(frame) else {}
    vector = [0.0] * len(plan.layout)
    for num in plan.numeric:
        for c in range(plan.cells):
            vector[num["min"] + c], vector[num["max"] + c] = BIG, -BIG
    for c, combo in enumerate(key_cells(domain)):
        row = rows.get(tuple(normalize_key(v) for v in combo))
        if row is not None:
            _fill(vector, plan, parsed, evidence, frame.iloc[row], c)
    return vector


def _number(value: Any) -> float:
    number = float(value) if value is not None else math.nan
    return 0.0 if math.isnan(number) else number


def _fill(
    vector: list[float], plan: Plan, parsed: ParsedQuery, evidence: Any, row: Any, c: int
) -> None:
    vector[plan.counts[0] + c] = _number(row[evidence.cell_size])
    for aggregate, entry in zip(parsed.aggregates, plan.aggregates, strict=True):
        if "contributors" in entry:
            vector[entry["contributors"] + c] = _number(
                row[evidence.contributors[aggregate.position]]
            )
        if "numeric" not in entry:
            continue
        num, measured = plan.numeric[entry["numeric"]], evidence.numeric[aggregate.position]
        vector[num["total"] + c] = _number(row[measured["total"]])
        for j, column in enumerate(measured["top"]):
            vector[num["top"] + c * TOP_N + j] = abs(_number(row[column]))
        low, high = row[measured["min"]], row[measured["max"]]
        if not pd.isna(low):
            vector[num["min"] + c] = max(-BIG, min(BIG, float(low)))
            vector[num["max"] + c] = max(-BIG, min(BIG, float(high)))
            vector[num["negative"] + c] = 1.0 if float(low) < 0 else 0.0
