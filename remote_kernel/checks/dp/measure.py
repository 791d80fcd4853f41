"""The OpenDP measurement of a DP query, built from public facts only and cached.

A measurement is a function of the query, the declared metadata, the row stage's
*schema*, the public key set and (epsilon, delta) -- never of the private rows. So
it is built over a zero-row frame with the row stage's schema (OpenDP's polars
plans embed their input: building over the private rows would serialize them
hundreds of times) and cached under those public facts; the private rows meet the
measurement only when a release invokes it through a fresh ``Context``.

Why a cache and our own scale search: OpenDP's ``LazyFrameQuery.resolve`` finds the
noise scale by a binary search that builds ~1,100 measurements (~1.5 s per query
on this machine, whatever the data size). With pure epsilon every mechanism here
(Laplace sums, the exponential mechanism of quantiles) has a privacy loss of
(sensitivity / scale), so one measurement at scale 1 gives the loss ``e1`` and the
scale ``e1 / epsilon`` -- then OpenDP's own privacy map checks the result (nudged
up if float rounding lands a hair above epsilon). Anything else (delta > 0, a
check that does not pass) falls back to OpenDP's ``resolve``. OpenDP remains the
only noise source and the only judge of what a measurement spends.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp
import pandas as pd
import polars as pl
from opendp.accuracy import summarize_polars_measurement
from opendp.measurements import make_private_lazyframe
from opendp.mod import OpenDPException

from remote_kernel.checks.dp.bounds import Interval
from remote_kernel.checks.dp.metadata import DPMetadata
from remote_kernel.checks.dp.shape import DPAggregate

dp.enable_features("contrib")

#: Candidates a quantile is chosen from: this many points spanning the declared bounds.
QUANTILE_CANDIDATES = 201
#: Compiled measurements kept (each a few kB of OpenDP objects).
CACHE_SIZE = 256
#: Relative steps by which a computed scale is raised until OpenDP's map is within epsilon.
_NUDGES = (0.0, 1e-12, 1e-9, 1e-6, 1e-3)


@dataclass(frozen=True)
class Compiled:
    """A resolved measurement and its accuracy summaries (at alpha and alpha / 2)."""

    measurement: Any
    summary: pd.DataFrame
    half_summary: pd.DataFrame


@dataclass(frozen=True)
class Spec:
    """Everything a measurement depends on; all of it public (hashable: the cache key)."""

    row_sql: str
    schema: tuple[tuple[str, str], ...]
    aggregates: tuple[tuple[int, str, float | None], ...]  # position, kind, quantile
    bounds: tuple[tuple[int, Interval], ...]
    by: tuple[str, ...]
    keys: tuple[tuple[Any, ...], ...] | None  # public key rows, None: thresholded / no keys
    max_rows: int
    max_groups: int
    contributions: int
    epsilon: float
    delta: float
    confidence: float


_cache: OrderedDict[Spec, Compiled] = OrderedDict()
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every compiled measurement (benchmarks time the cold path with it)."""
    with _cache_lock:
        _cache.clear()
        _contexts.clear()


def compiled(spec: Spec, rows: pl.DataFrame, keys: pl.DataFrame | None) -> Compiled:
    """The measurement for ``spec`` (``rows`` gives only its schema), from the cache if seen."""
    with _cache_lock:
        hit = _cache.get(spec)
        if hit is not None:
            _cache.move_to_end(spec)
            return hit
    made = _compile(spec, rows.clear(), keys)
    with _cache_lock:
        _cache[spec] = made
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return made


_contexts: OrderedDict[tuple[Any, ...], Any] = OrderedDict()


def _schema_context(spec: Spec, empty: pl.DataFrame) -> Any:
    """A Context over zero rows of the schema, shared by queries with the same loss and
    margins: queries are only built and resolved through it, never released, so it is
    never spent (building one costs ~30 ms: OpenDP searches its composition's scale)."""
    key = (
        spec.schema, spec.by, spec.keys is None, spec.max_rows, spec.max_groups,
        spec.contributions, spec.epsilon, spec.delta,
    )  # fmt: skip
    with _cache_lock:
        context = _contexts.get(key)
        if context is not None:
            _contexts.move_to_end(key)
            return context
    context = make_context(empty, spec)
    with _cache_lock:
        _contexts[key] = context
        while len(_contexts) > CACHE_SIZE:
            _contexts.popitem(last=False)
    return context


def _compile(spec: Spec, empty: pl.DataFrame, keys: pl.DataFrame | None) -> Compiled:
    context = _schema_context(spec, empty)
    bounds = dict(spec.bounds)
    expressions = [e for a in spec.aggregates for e in _expressions(*a, bounds.get(a[0]))]
    plan = context.query()
    by = list(spec.by)
    if not by:
        query = plan.select(*expressions)
    elif keys is None:
        expressions.append(dp.len(signed=True).alias("__dp_len"))  # thresholded on
        query = plan.group_by(by).agg(*expressions)
    else:
        query = plan.group_by(by).agg(*expressions).with_keys(keys.lazy())
    measurement = resolve(query)
    alpha = 1.0 - spec.confidence
    summary = summarize_polars_measurement(measurement, alpha).to_pandas()
    half = summarize_polars_measurement(measurement, alpha / 2).to_pandas()
    return Compiled(measurement, summary, half)


def make_context(data: pl.DataFrame, spec: Spec) -> Any:
    """A fresh OpenDP Context over ``data`` holding exactly (epsilon, delta) for one query."""
    if spec.delta > 0:
        loss = dp.loss_of(epsilon=spec.epsilon, delta=spec.delta)
    else:
        loss = dp.loss_of(epsilon=spec.epsilon)
    margins = [dp.polars.Margin(by=[], max_length=spec.max_rows)]
    if spec.by:
        groups = spec.max_groups if spec.keys is None else None
        margins.append(
            dp.polars.Margin(by=list(spec.by), max_length=spec.max_rows, max_groups=groups)
        )
    return dp.Context.compositor(
        data=data.lazy(),
        privacy_unit=dp.unit_of(contributions=spec.contributions),
        privacy_loss=loss,
        split_evenly_over=1,
        margins=margins,
    )


def resolve(query: Any) -> Any:
    """The query's measurement at exactly its epsilon: one scale computed, checked by OpenDP."""
    plan = object.__getattribute__(query, "polars_plan")
    inner = object.__getattribute__(query, "_query")
    input_domain, input_metric = inner._chain
    d_in, d_out = inner._d_in, inner._d_out
    if getattr(inner._output_measure.type, "origin", None) == "Approximate":
        return query.resolve()  # approximate DP (delta): OpenDP's two-parameter search

    def make(scale: float) -> Any:
        return make_private_lazyframe(
            input_domain=input_domain,
            input_metric=input_metric,
            output_measure=inner._output_measure,
            lazyframe=plan,
            global_scale=scale,
        )

    try:
        unit_loss = float(make(1.0).map(d_in))
        if not math.isfinite(unit_loss) or unit_loss <= 0:
            return query.resolve()
        for nudge in _NUDGES:
            measurement = make(unit_loss / d_out * (1.0 + nudge))
            if measurement.map(d_in) <= d_out:
                return measurement
    except OpenDPException:
        pass
    return query.resolve()


def _expressions(
    position: int, kind: str, fraction: float | None, bounds: Interval | None
) -> list[pl.Expr]:
    """OpenDP expressions for one aggregate (a mean is a centred sum and a count)."""
    count = pl.col(f"__dp_n{position}").dp.sum((0, 1)).alias(f"__dp_n{position}")
    if kind == "count":
        return [count]
    assert bounds is not None
    low, high = bounds
    value = pl.col(f"__dp_v{position}")
    if kind == "sum":
        clip = (min(low, 0.0), max(high, 0.0))
        return [value.fill_null(0.0).dp.sum(clip).alias(f"__dp_v{position}")]
    if kind == "avg":
        half = (high - low) / 2
        return [value.fill_null(0.0).dp.sum((-half, half)).alias(f"__dp_v{position}"), count]
    candidates = candidates_for(low, high)
    quantile = value.drop_nulls().dp.quantile(fraction, candidates)
    return [quantile.alias(f"__dp_v{position}")]


def candidates_for(low: float, high: float) -> list[float]:
    """A public grid over the bounds: whole numbers when few, else evenly spaced points."""
    if high - low <= QUANTILE_CANDIDATES and float(low).is_integer():
        return [float(v) for v in range(int(low), math.floor(high) + 1)]
    step = (high - low) / (QUANTILE_CANDIDATES - 1)
    return [low + i * step for i in range(QUANTILE_CANDIDATES)] if step > 0 else [low]


def spec_for(
    *,
    row_sql: str,
    rows: pl.DataFrame,
    aggregates: tuple[DPAggregate, ...],
    bounds: Mapping[int, Interval],
    by: list[str],
    keys: pl.DataFrame | None,
    metadata: DPMetadata,
    loss: tuple[float, float, float],
) -> Spec:
    """The cache key of a query's measurement (``loss`` is epsilon, delta, confidence)."""
    epsilon, delta, confidence = loss
    return Spec(
        row_sql=row_sql,
        schema=tuple((name, str(dtype)) for name, dtype in rows.schema.items()),
        aggregates=tuple((a.position, a.kind, a.quantile) for a in aggregates),
        bounds=tuple(sorted(bounds.items())),
        by=tuple(by),
        keys=None if keys is None else (tuple(map(str, keys.dtypes)), *keys.rows()),
        max_rows=metadata.max_rows,
        max_groups=metadata.max_groups,
        contributions=metadata.privacy_unit.max_contributions,
        epsilon=float(epsilon),
        delta=float(delta),
        confidence=float(confidence),
    )
