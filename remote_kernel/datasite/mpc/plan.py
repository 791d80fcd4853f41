"""What every party shares, in which order: the layout of a pooled query's input vector.

The layout follows from the query and the key domain alone (both public and the
same at every party), so the helper, which has no data, shares zeros of exactly the
same shape, and every party declares each position with the same ``integral`` flag.

Per cell of the key domain (the cartesian product of the keys' public values):
its row count; per aggregate its contributor count; per SUM/AVG the sum, the
``TOP_N`` largest absolute contributions, whether any value is negative, and the
smallest and largest value (for N-K dominance, p-percent, negative values and
all-values-the-same on the *pooled* cell, as the exact tier checks them per site).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from remote_kernel.querylang import ParsedQuery

#: Largest contributions each site shares per SUM/AVG cell; a policy with
#: ``dominance_n`` above it cannot take part.
TOP_N = 3


@dataclass
class Plan:
    """Offsets of every block in the flat vector, and what each position holds."""

    cells: int
    layout: list[str] = field(default_factory=list)  # "count" | "value" per position
    counts: list[int] = field(default_factory=list)  # blocks checked against min_cell_count
    numeric: list[dict[str, int]] = field(default_factory=list)
    aggregates: list[dict[str, Any]] = field(default_factory=list)

    def block(self, kind: str, width: int = 1) -> int:
        start = len(self.layout)
        self.layout += [kind] * (self.cells * width)
        return start

    def to_json(self) -> dict[str, Any]:
        return {
            "cells": self.cells,
            "counts": self.counts,
            "numeric": self.numeric,
            "aggregates": self.aggregates,
        }


def key_cells(domain: list[list[Any]]) -> list[tuple[Any, ...]]:
    """Every combination of the keys' public values, in a fixed order."""
    return list(itertools.product(*domain))


def build_plan(parsed: ParsedQuery, cells: int) -> Plan:
    """The layout of ``parsed`` over ``cells`` key combinations."""
    plan = Plan(cells)
    rows = plan.block("count")
    plan.counts.append(rows)
    for aggregate in parsed.aggregates:
        entry: dict[str, Any] = {"kind": aggregate.function, "rows": rows}
        if aggregate.function != "count_star":
            entry["contributors"] = entry["value"] = plan.block("count")
            plan.counts.append(entry["contributors"])
        if aggregate.function in ("sum", "avg"):
            numeric = {
                "total": plan.block("value"),
                "top": plan.block("value", TOP_N),
                "top_n": TOP_N,
                "negative": plan.block("count"),
                "min": plan.block("value"),
                "max": plan.block("value"),
            }
            entry["numeric"] = len(plan.numeric)
            plan.numeric.append(numeric)
            entry["total"] = entry["value"] = numeric["total"]
        plan.aggregates.append(entry)
    return plan
