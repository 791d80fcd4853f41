"""What a DP query returns: the noisy table, what it cost, and error bars a person reads."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class DPAnswer:
    """A released DP answer.

    ``table`` has the columns of the SQL result (keys, then noisy aggregates, in
    the select list's order). ``error`` has the same shape: for each aggregate cell
    the half-width of an interval that holds the value the exact query would give
    on the clipped data with probability ``confidence`` (NaN where OpenDP gives no
    accuracy, as for quantiles), and the key values in the key columns.
    ``epsilon`` and ``delta`` are what the release spent (OpenDP's privacy map of
    the measurement, at most what was asked for).
    """

    table: pd.DataFrame
    error: pd.DataFrame
    epsilon: float
    delta: float
    confidence: float
    #: OpenDP's summary of the mechanisms: column, aggregate, distribution, scale, accuracy.
    mechanisms: pd.DataFrame
    #: The result columns that are group keys (the others are aggregates).
    keys: tuple[str, ...] = ()
    #: Facts the researcher should know (bounds used for clipping, how keys were chosen ...).
    notes: tuple[str, ...] = field(default=())

    def error_bars(self) -> pd.DataFrame:
        """``table`` with each aggregate cell written as "57.3 ± 4.1 at 95%"."""
        shown = self.table.copy()
        level = f"{self.confidence * 100:g}%"
        for column in self.aggregate_columns:
            shown[column] = [
                _with_error(value, error, level)
                for value, error in zip(self.table[column], self.error[column], strict=True)
            ]
        return shown

    @property
    def aggregate_columns(self) -> list[str]:
        return [c for c in self.table.columns if c not in self.keys]

    @property
    def key_columns(self) -> list[str]:
        return list(self.keys)


def _with_error(value: float, error: float, level: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no estimate (too few rows)"
    shown = f"{value:.4g}"
    if error is None or (isinstance(error, float) and math.isnan(error)):
        return f"{shown} (no error bar)"
    if math.isinf(error):
        return f"{shown} ± unbounded at {level}"
    return f"{shown} ± {error:.2g} at {level}"
