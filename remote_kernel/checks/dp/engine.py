"""The DP aggregation: one OpenDP measurement per query, released through its own Context.

:func:`plan_dp_query` does everything that does not draw noise -- the shape check,
bounds, public keys, the row-level DuckDB stage, building and resolving the
OpenDP measurement, and its accuracy summary; :meth:`DPPlan.release` draws the
noise once, through a fresh ``Context`` holding exactly the plan's epsilon.
:func:`dp_query` is the two in one call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp
import pandas as pd
import polars as pl
from opendp.accuracy import summarize_polars_measurement

from remote_kernel.checks.dp.answer import DPAnswer
from remote_kernel.checks.dp.bounds import Bounder, Interval
from remote_kernel.checks.dp.keys import KeysNotPublic, public_keys
from remote_kernel.checks.dp.metadata import DPMetadata
from remote_kernel.checks.dp.rows import key_name, output_names, row_sql, run_rows
from remote_kernel.checks.dp.shape import DPAggregate, DPQuery, check_dp_query
from remote_kernel.checks.dp.tables import assemble
from remote_kernel.protocol.errors import InputError, QueryRejected

dp.enable_features("contrib")

#: Candidates a quantile is chosen from: this many points spanning the declared bounds.
QUANTILE_CANDIDATES = 201


@dataclass
class DPPlan:
    """A checked DP query with its OpenDP measurement, ready to release."""

    query: DPQuery
    metadata: DPMetadata
    epsilon: float
    delta: float
    confidence: float
    rows: pl.DataFrame
    measurement: Any  # opendp Measurement
    summary: pd.DataFrame  # accuracy at 1 - confidence
    half_summary: pd.DataFrame  # accuracy at (1 - confidence) / 2, for means
    bounds: Mapping[int, Interval]
    names: list[str]
    notes: tuple[str, ...]
    #: Whether the key set is public (else OpenDP selected the groups by thresholding).
    public_keys: bool = True

    @property
    def spent(self) -> tuple[float, float]:
        """(epsilon, delta) one release spends: OpenDP's privacy map of the measurement."""
        loss = self.measurement.map(self.metadata.privacy_unit.max_contributions)
        return (float(loss[0]), float(loss[1])) if isinstance(loss, tuple) else (float(loss), 0.0)

    def release(self) -> DPAnswer:
        """Draw the noise once (OpenDP's samplers only) and assemble the answer."""
        context = _context(
            self.rows, self.metadata, self.epsilon, self.delta, self._by(), self.public_keys
        )
        noisy = context(self.measurement).collect()
        epsilon, delta = self.spent
        return assemble(self, noisy, epsilon, delta)

    def _by(self) -> list[str]:
        return [key_name(i) for i in range(len(self.query.skeleton.keys))]


def dp_query(
    sql: str,
    tables: Mapping[str, pd.DataFrame],
    metadata: DPMetadata,
    epsilon: float,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> DPAnswer:
    """Answer an aggregate query with differential privacy at ``(epsilon, delta)``."""
    return plan_dp_query(sql, tables, metadata, epsilon, delta, confidence).release()


def plan_dp_query(
    sql: str,
    tables: Mapping[str, pd.DataFrame],
    metadata: DPMetadata,
    epsilon: float,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> DPPlan:
    """Check the query and build its measurement; nothing is released and no noise drawn."""
    _check_loss(epsilon, delta, confidence)
    columns = {name: [str(c) for c in frame.columns] for name, frame in tables.items()}
    query = check_dp_query(sql, columns)
    frame = tables[query.dataset]
    _check_select_items(query)
    bounds = _aggregate_bounds(query, metadata, frame)
    centres = {a.position: sum(bounds[a.position]) / 2 for a in query.aggregates if a.kind == "avg"}
    names = output_names(query, frame)
    rows = run_rows(row_sql(query, metadata, centres), query.dataset, frame, private=True)
    keys, notes = _keys(query, metadata, frame, delta)
    by = [key_name(i) for i in range(len(query.skeleton.keys))]
    context = _context(rows, metadata, epsilon, delta, by, public=keys is not None)
    measurement = _measurement(context, query, bounds, by, keys)
    alpha = 1.0 - confidence
    summary = summarize_polars_measurement(measurement, alpha).to_pandas()
    half = summarize_polars_measurement(measurement, alpha / 2).to_pandas()
    notes += tuple(_bounds_notes(query, bounds))
    return DPPlan(
        query, metadata, epsilon, delta, confidence, rows, measurement, summary, half,
        bounds, names, notes, public_keys=keys is not None or not by,
    )  # fmt: skip


def _check_loss(epsilon: float, delta: float, confidence: float) -> None:
    if not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon <= 0:
        raise InputError(f"epsilon must be a positive number, got {epsilon!r}.")
    if not isinstance(delta, (int, float)) or not 0.0 <= delta < 1.0:
        raise InputError(f"delta must be 0 or a small positive number below 1, got {delta!r}.")
    if not 0.5 <= confidence < 1.0:
        raise InputError(f"confidence must be between 0.5 and 1, got {confidence!r}.")


def _check_select_items(query: DPQuery) -> None:
    """Every select item is a shown group key or a DP aggregate (a constant adds nothing)."""
    used = {a.position for a in query.aggregates}
    used |= {k.select_position for k in query.skeleton.keys if k.select_position is not None}
    for position in range(query.skeleton.select_count):
        if position not in used:
            raise QueryRejected(
                f"select item {position + 1} is a constant; the DP tier returns group keys and "
                f"aggregates only. Add constants to the released table afterwards."
            )


def _aggregate_bounds(
    query: DPQuery, metadata: DPMetadata, frame: pd.DataFrame
) -> dict[int, Interval]:
    """The clipping interval of every aggregate with a value (not COUNT)."""
    booleans = frozenset(
        str(c).lower() for c in frame.columns if pd.api.types.is_bool_dtype(frame[c].dtype)
    )
    bounder = Bounder(query.sql, metadata, booleans)
    bounds = {}
    for aggregate in query.aggregates:
        if aggregate.kind != "count" and aggregate.argument is not None:
            bounds[aggregate.position] = bounder.bounds(aggregate.argument)
    return bounds


def _keys(
    query: DPQuery, metadata: DPMetadata, frame: pd.DataFrame, delta: float
) -> tuple[pl.DataFrame | None, tuple[str, ...]]:
    """Public key set, or None for OpenDP's thresholded key release (delta > 0)."""
    try:
        keys = public_keys(query, metadata, frame)
    except KeysNotPublic as why:
        if delta <= 0:
            raise QueryRejected(
                f"{why}. Ask the data owner to declare its public categories (public_categories: "
                f"{{column: [values]}}) or bounds in the dataset's DP metadata, or pass delta > 0 "
                f"(e.g. 1e-6) to let the datasite release only groups large enough to be shown "
                f"with DP thresholding."
            ) from None
        return None, (
            f"group keys are not all public ({why}): groups were selected by DP thresholding "
            f"(at most {metadata.max_groups} groups; small groups are not shown)",
        )
    if keys is None:
        return None, ()
    return keys, (
        "group keys come from the declared metadata; rows whose key is NULL or outside the "
        "declared values are counted in no group",
    )


def _context(
    rows: pl.DataFrame,
    metadata: DPMetadata,
    epsilon: float,
    delta: float,
    by: list[str],
    public: bool = True,
) -> Any:
    """A fresh OpenDP Context holding exactly (epsilon, delta) for one query."""
    loss = dp.loss_of(epsilon=epsilon, delta=delta) if delta > 0 else dp.loss_of(epsilon=epsilon)
    margins = [dp.polars.Margin(by=[], max_length=metadata.max_rows)]
    if by:
        groups = None if public else metadata.max_groups
        margins.append(dp.polars.Margin(by=by, max_length=metadata.max_rows, max_groups=groups))
    return dp.Context.compositor(
        data=rows.lazy(),
        privacy_unit=dp.unit_of(contributions=metadata.privacy_unit.max_contributions),
        privacy_loss=loss,
        split_evenly_over=1,
        margins=margins,
    )


def _measurement(
    context: Any,
    query: DPQuery,
    bounds: Mapping[int, Interval],
    by: list[str],
    keys: pl.DataFrame | None,
) -> Any:
    """The OpenDP measurement of the whole query: every aggregate under one epsilon."""
    expressions = [e for a in query.aggregates for e in _expressions(a, bounds.get(a.position))]
    plan = context.query()
    if not by:
        return plan.select(*expressions).resolve()
    if keys is None:
        expressions.append(dp.len(signed=True).alias("__dp_len"))  # thresholded on
        return plan.group_by(by).agg(*expressions).resolve()
    return plan.group_by(by).agg(*expressions).with_keys(keys.lazy()).resolve()


def _expressions(aggregate: DPAggregate, bounds: Interval | None) -> list[pl.Expr]:
    """OpenDP expressions for one aggregate (a mean is a centred sum and a count)."""
    position = aggregate.position
    count = pl.col(f"__dp_n{position}").dp.sum((0, 1)).alias(f"__dp_n{position}")
    if aggregate.kind == "count":
        return [count]
    assert bounds is not None
    low, high = bounds
    value = pl.col(f"__dp_v{position}")
    if aggregate.kind == "sum":
        clip = (min(low, 0.0), max(high, 0.0))
        return [value.fill_null(0.0).dp.sum(clip).alias(f"__dp_v{position}")]
    if aggregate.kind == "avg":
        half = (high - low) / 2
        return [value.fill_null(0.0).dp.sum((-half, half)).alias(f"__dp_v{position}"), count]
    candidates = _candidates(low, high)
    quantile = value.drop_nulls().dp.quantile(aggregate.quantile, candidates)
    return [quantile.alias(f"__dp_v{position}")]


def _candidates(low: float, high: float) -> list[float]:
    """A public grid over the bounds: whole numbers when few, else evenly spaced points."""
    if high - low <= QUANTILE_CANDIDATES and float(low).is_integer():
        return [float(v) for v in range(int(low), math.floor(high) + 1)]
    step = (high - low) / (QUANTILE_CANDIDATES - 1)
    return [low + i * step for i in range(QUANTILE_CANDIDATES)] if step > 0 else [low]


def _bounds_notes(query: DPQuery, bounds: Mapping[int, Interval]) -> list[str]:
    return [
        f"{a.text}: values clipped to [{bounds[a.position][0]:g}, {bounds[a.position][1]:g}]"
        for a in query.aggregates
        if a.position in bounds
    ]
