"""From OpenDP's noisy frame to the table the SQL would return, with error bars.

Everything here is post-processing of released values (it cannot weaken the
guarantee): counts are floored at 0, a mean is the centre plus the noisy centred
sum over the noisy count, clamped to the declared bounds, and ORDER BY / LIMIT
are applied to the noisy table.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd
import polars as pl

from remote_kernel.checks.dp.answer import DPAnswer
from remote_kernel.checks.dp.rows import key_name
from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.querylang.clauses import resolve_reference
from remote_kernel.querylang.parse import canonical

if TYPE_CHECKING:
    from remote_kernel.checks.dp.engine import DPPlan
    from remote_kernel.checks.dp.shape import DPAggregate


def assemble(plan: DPPlan, noisy: pl.DataFrame, epsilon: float, delta: float) -> DPAnswer:
    """The released table in the select list's order, its error bars and its notes."""
    keys = plan.query.skeleton.keys
    by = [key_name(i) for i in range(len(keys))]
    frame = noisy.sort(by, nulls_last=True).to_pandas() if by else noisy.to_pandas()
    accuracy = dict(zip(plan.summary["column"], plan.summary["accuracy"], strict=True))
    half = dict(zip(plan.half_summary["column"], plan.half_summary["accuracy"], strict=True))
    table: dict[str, Any] = {}
    error: dict[str, Any] = {}
    shown_keys = []
    for index, key in enumerate(keys):
        if key.select_position is not None:
            name = plan.names[key.select_position]
            table[name] = error[name] = frame[key_name(index)].tolist()
            shown_keys.append((key.select_position, name))
    for aggregate in plan.query.aggregates:
        name = plan.names[aggregate.position]
        values, errors = _aggregate(aggregate, frame, plan.bounds, accuracy, half)
        table[name], error[name] = values, errors
    order = [plan.names[p] for p in range(len(plan.names)) if plan.names[p] in table]
    result = pd.DataFrame(table, columns=order)
    errors = pd.DataFrame(error, columns=order)
    result, errors = _order_and_limit(plan, result, errors)
    return DPAnswer(
        table=result.reset_index(drop=True),
        error=errors.reset_index(drop=True),
        epsilon=epsilon,
        delta=delta,
        confidence=plan.confidence,
        mechanisms=plan.summary,
        keys=tuple(name for _, name in sorted(shown_keys)),
        notes=plan.notes,
    )


def _aggregate(
    aggregate: DPAggregate,
    frame: pd.DataFrame,
    bounds: dict[int, tuple[float, float]],
    accuracy: dict[str, float],
    half: dict[str, float],
) -> tuple[list[float], list[float]]:
    value, count = f"__dp_v{aggregate.position}", f"__dp_n{aggregate.position}"
    rows = len(frame)
    if aggregate.kind == "count":
        return [max(float(v), 0.0) for v in frame[count]], [float(accuracy[count])] * rows
    if aggregate.kind == "sum":
        return [float(v) for v in frame[value]], [float(accuracy[value])] * rows
    if aggregate.kind == "quantile":
        return [float(v) for v in frame[value]], [math.nan] * rows
    low, high = bounds[aggregate.position]
    means = [
        _mean(s, n, low, high, half[value], half[count])
        for s, n in zip(frame[value], frame[count], strict=True)
    ]
    return [m[0] for m in means], [m[1] for m in means]


def _mean(
    centred_sum: float, count: float, low: float, high: float, sum_error: float, count_error: float
) -> tuple[float, float]:
    """Mean = centre + S/N, and the half-width of the interval holding it when both S and N
    are within their (1 - alpha/2) accuracy: the corners of S/N over those intervals."""
    centre = (low + high) / 2
    if count < 1:
        return math.nan, math.nan
    estimate = min(max(centre + centred_sum / count, low), high)
    if count - count_error <= 0:
        return estimate, math.inf
    corners = [
        centre + s / n
        for s in (centred_sum - sum_error, centred_sum + sum_error)
        for n in (count - count_error, count + count_error)
    ]
    lowest, highest = max(min(corners), low), min(max(corners), high)
    return estimate, max(estimate - lowest, highest - estimate, 0.0)


def _order_and_limit(
    plan: DPPlan, table: pd.DataFrame, errors: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ORDER BY result columns (names, aliases, positions) and LIMIT / OFFSET, on noisy values."""
    node = plan.query.node
    items = node.get("select_list") or []
    forms = [canonical(item, plan.query.qualifiers) for item in items]
    for modifier in node.get("modifiers") or []:
        if modifier["type"] == "ORDER_MODIFIER":
            columns, ascending = [], []
            for order in modifier.get("orders") or []:
                position = resolve_reference(
                    order["expression"], forms, plan.query.skeleton.aliases,
                    plan.query.qualifiers, [],
                )  # fmt: skip
                if position is None or plan.names[position] not in table:
                    raise QueryRejected(
                        "ORDER BY in the DP tier: order by columns of the result (their "
                        "names, aliases or positions 1, 2, ...)."
                    )
                columns.append(plan.names[position])
                ascending.append(order.get("type") != "DESCENDING")
            index = table.sort_values(columns, ascending=ascending, kind="stable").index
            table, errors = table.loc[index], errors.loc[index]
        elif modifier["type"] == "LIMIT_MODIFIER":
            start = _constant(modifier.get("offset"), 0)
            stop = _constant(modifier.get("limit"), None)
            end = None if stop is None else start + stop
            table, errors = table.iloc[start:end], errors.iloc[start:end]
    return table, errors


def _constant(node: Any, default: int | None) -> int | None:
    if not node:
        return default
    literal = node.get("literal") or {}
    return int(literal.get("text", literal.get("value", default)))
