"""The DP aggregation: one OpenDP measurement per query, released through its own Context.

:func:`plan_dp_query` does everything that does not draw noise -- the shape check,
bounds, public keys, the row-level DuckDB stage, and the OpenDP measurement with
its accuracy summary (:mod:`.measure`: built from public facts only, cached);
:meth:`DPPlan.release` draws the noise once, through a fresh ``Context`` holding
exactly the plan's epsilon. :func:`dp_query` is the two in one call.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.ipc
from opendp.mod import OpenDPException

from remote_kernel.checks.dp.answer import DPAnswer
from remote_kernel.checks.dp.bounds import Bounder, Interval
from remote_kernel.checks.dp.join import is_join, rewrite_join
from remote_kernel.checks.dp.keys import KeysNotPublic, public_keys
from remote_kernel.checks.dp.measure import Spec, compiled, spec_for
from remote_kernel.checks.dp.metadata import DPMetadata
from remote_kernel.checks.dp.rows import key_name, output_names, plain, row_sql, run_rows
from remote_kernel.checks.dp.shape import DPQuery, check_dp_query
from remote_kernel.checks.dp.tables import assemble
from remote_kernel.protocol.errors import InputError, QueryRejected


@dataclass
class DPPlan:
    """A checked DP query with its OpenDP measurement, ready to release."""

    query: DPQuery
    metadata: DPMetadata
    spec: Spec
    rows: pl.DataFrame
    measurement: Any  # opendp Measurement
    summary: pd.DataFrame  # accuracy at 1 - confidence
    half_summary: pd.DataFrame  # accuracy at (1 - confidence) / 2, for means
    bounds: Mapping[int, Interval]
    names: list[str]
    notes: tuple[str, ...]

    @property
    def epsilon(self) -> float:
        return self.spec.epsilon

    @property
    def delta(self) -> float:
        return self.spec.delta

    @property
    def confidence(self) -> float:
        return self.spec.confidence

    @property
    def public_keys(self) -> bool:
        """Whether the key set is public (else OpenDP selected the groups by thresholding)."""
        return self.spec.keys is not None or not self.spec.by

    @property
    def spent(self) -> tuple[float, float]:
        """(epsilon, delta) one release spends: OpenDP's privacy map of the measurement."""
        loss = self.measurement.map(self.spec.contributions)
        return (float(loss[0]), float(loss[1])) if isinstance(loss, tuple) else (float(loss), 0.0)

    def release(self) -> DPAnswer:
        """Draw the noise once (OpenDP's samplers only) and assemble the answer.

        The measurement is invoked on the rows directly: what OpenDP's ``Context``
        would add is a budget check, and the plan has checked the measurement's
        privacy map against exactly (epsilon, delta); budgets across queries are the
        datasite's ledger's (a ``Context`` cannot survive a restart).
        """
        try:
            noisy = invoke(self.measurement, self.rows)
        except Exception:  # it ran on the private rows: its text could quote them
            raise QueryRejected(
                "the DP release failed while running on the private data; nothing was "
                "released. The datasite does not pass the error on, because it could quote "
                "private values."
            ) from None
        epsilon, delta = self.spent
        return assemble(self, noisy, epsilon, delta)


def invoke(measurement: Any, rows: pl.DataFrame) -> pl.DataFrame:
    """Run the measurement on the rows, handed to OpenDP as a memory-mapped Arrow file.

    OpenDP's polars measurements take a LazyFrame and serialize it to cross into
    Rust; an in-memory frame is serialized *with its data* (~1 s for a million rows
    here), a scan of a file as its path (the data is then read by Rust, ~0.1 s). The
    file lives in a private temporary directory for the duration of the call.
    """
    with tempfile.TemporaryDirectory(prefix="rk-dp-") as folder:
        path = os.path.join(folder, "rows.arrow")
        table = rows.to_arrow()  # zero-copy; written chunk by chunk (no rechunking)
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return measurement(pl.scan_ipc(path, memory_map=True)).collect()


def dp_query(
    sql: str,
    tables: Mapping[str, pd.DataFrame],
    metadata: DPMetadata | Mapping[str, DPMetadata],
    epsilon: float,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> DPAnswer:
    """Answer an aggregate query with differential privacy at ``(epsilon, delta)``."""
    return plan_dp_query(sql, tables, metadata, epsilon, delta, confidence).release()


def plan_dp_query(
    sql: str,
    tables: Mapping[str, pd.DataFrame],
    metadata: DPMetadata | Mapping[str, DPMetadata],
    epsilon: float,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> DPPlan:
    """Check the query and build its measurement; nothing is released and no noise drawn.

    ``metadata`` is the queried dataset's, or a mapping of each dataset's (needed for a
    join, :mod:`.join`). Every failure is a :class:`QueryRejected` or :class:`InputError`
    whose text is made from the query, the schema and the metadata: OpenDP's own messages
    come from building the measurement over zero rows, and anything unexpected gets a
    fixed message, so no error can carry a private value.
    """
    _check_loss(epsilon, delta, confidence)
    try:
        return _plan(sql, tables, metadata, (epsilon, delta, confidence))
    except (InputError, QueryRejected):
        raise
    except OpenDPException as exc:
        raise QueryRejected(
            f"OpenDP cannot calibrate this query: {_opendp_reason(exc)}. Try a larger epsilon, "
            f"tighter expressions or fewer aggregates."
        ) from None
    except Exception:
        raise QueryRejected(FIXED_FAILURE) from None


#: Said when something unexpected fails: its text could quote private values.
FIXED_FAILURE = (
    "the DP engine failed on this query; the datasite does not pass the error on, because it "
    "could quote private values. Run the query on the mock to check it."
)


def _opendp_reason(exc: OpenDPException) -> str:
    """OpenDP's message of a failure to build a measurement (over zero rows: no data)."""
    text = str(getattr(exc, "message", "") or exc).strip()
    return text.splitlines()[-1][:300] if text else type(exc).__name__


def _plan(
    sql: str,
    tables: Mapping[str, pd.DataFrame],
    metadata: DPMetadata | Mapping[str, DPMetadata],
    loss: tuple[float, float, float],
) -> DPPlan:
    epsilon, delta, _ = loss
    names: list[str] | None = None
    notes: tuple[str, ...] = ()
    if is_join(sql):
        joined = rewrite_join(sql, tables, metadata)
        sql, tables, metadata = joined.sql, {joined.dataset: joined.frame}, joined.metadata
        names, notes = joined.names, (joined.note,)
    columns = {name: [str(c) for c in frame.columns] for name, frame in tables.items()}
    query = check_dp_query(sql, columns)
    frame = plain(tables[query.dataset])
    metadata = _metadata_of(metadata, query.dataset)
    _check_select_items(query)
    bounds = _aggregate_bounds(query, metadata, frame)
    centres = {a.position: sum(bounds[a.position]) / 2 for a in query.aggregates if a.kind == "avg"}
    names = names or output_names(query, frame)
    keys, key_notes = _keys(query, metadata, frame, delta)
    stage = row_sql(query, metadata, centres)
    rows = run_rows(stage, query.dataset, frame, private=True)
    by = [key_name(i) for i in range(len(query.skeleton.keys))]
    spec = spec_for(
        row_sql=stage, rows=rows, aggregates=query.aggregates, bounds=bounds, by=by,
        keys=keys, metadata=metadata, loss=loss,
    )  # fmt: skip
    made = compiled(spec, rows, keys)
    notes += key_notes + tuple(_bounds_notes(query, bounds))
    plan = DPPlan(
        query, metadata, spec, rows, made.measurement, made.summary, made.half_summary,
        bounds, names, notes,
    )  # fmt: skip
    spent_epsilon, spent_delta = plan.spent
    if spent_epsilon > epsilon * (1 + 1e-9) or spent_delta > delta:  # OpenDP's map says no
        raise QueryRejected(f"the DP engine could not fit this query into epsilon={epsilon:g}.")
    return plan


def _metadata_of(metadata: DPMetadata | Mapping[str, DPMetadata], dataset: str) -> DPMetadata:
    if isinstance(metadata, DPMetadata):
        return metadata
    found = next((m for name, m in metadata.items() if name.lower() == dataset.lower()), None)
    if found is None:
        raise QueryRejected(f"{dataset!r} has no DP metadata, so DP queries on it are refused.")
    return found


#: Largest epsilon one query may spend: beyond it the noise is negligible (a count's
#: Laplace scale is below 0.1), so the answer is in effect exact -- ask the exact tier.
MAX_EPSILON = 10.0
#: Largest delta one query may spend: delta is the chance the guarantee fails outright
#: (with thresholded keys, that one person's key is shown), so it must be tiny.
MAX_DELTA = 1e-5


def _check_loss(epsilon: float, delta: float, confidence: float) -> None:
    number = (int, float)
    if (
        isinstance(epsilon, bool)
        or not isinstance(epsilon, number)
        or not math.isfinite(epsilon)
        or not 0 < epsilon <= MAX_EPSILON
    ):
        raise InputError(
            f"epsilon must be a positive number of at most {MAX_EPSILON:g}, got {epsilon!r}."
        )
    if isinstance(delta, bool) or not isinstance(delta, number) or not 0.0 <= delta <= MAX_DELTA:
        raise InputError(
            f"delta must be 0 or a small positive number up to {MAX_DELTA:g}, got {delta!r}."
        )
    if not isinstance(confidence, number) or not 0.5 <= confidence < 1.0:
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


def _bounds_notes(query: DPQuery, bounds: Mapping[int, Interval]) -> list[str]:
    return [
        f"{a.text}: values clipped to [{bounds[a.position][0]:g}, {bounds[a.position][1]:g}]"
        for a in query.aggregates
        if a.position in bounds
    ]
