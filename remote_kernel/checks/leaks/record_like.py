"""The record-like rule (``record-like-table``): rows of a dataset that were not proven private.

Mock, perturbed or synthetic rows carry a dataset's values in its layout
without matching a private row; a person decides whether such a table may
leave (see the package docstring).
"""

from __future__ import annotations

import numpy as np

from remote_kernel.checks.leaks.dataset import DatasetIndex
from remote_kernel.checks.leaks.lookup import KeyTable
from remote_kernel.checks.leaks.records import Result
from remote_kernel.checks.leaks.tokens import Tokens
from remote_kernel.checks.leaks.tunables import (
    MAX_LOCATIONS,
    RECORD_LIKE_FRACTION,
    RECORD_LIKE_MIN_NAMES,
    RECORD_LIKE_MIN_ROWS,
    RECORD_LIKE_MIN_VALUES,
    STAT_LABELS,
)

_STAT_TABLE: KeyTable | None = None


def _stat_table() -> KeyTable:
    """Row labels of statistics tables, built on first use (most outputs never need it)."""
    global _STAT_TABLE
    if _STAT_TABLE is None:
        labels = sorted(STAT_LABELS)
        _STAT_TABLE = KeyTable.from_strings(labels, np.arange(len(labels)))
    return _STAT_TABLE


def record_like(
    ds: DatasetIndex, tokens: Tokens, token_pos: np.ndarray, hit_units: np.ndarray
) -> Result | None:
    """Record-like units of ``tokens`` for ``ds``, when there are enough of them under a
    header naming enough of its columns; None otherwise."""
    n_cols = len(ds.columns)
    need_values = min(n_cols, RECORD_LIKE_MIN_VALUES)
    n_units = len(tokens.boundaries) + 1
    per_unit = np.bincount(hit_units, minlength=n_units)
    if int((per_unit >= need_values).sum()) < RECORD_LIKE_MIN_ROWS:
        return None
    # Count numbers per candidate unit from a prefix sum over the tokens.
    heads = tokens.first_tokens()
    ends = np.append(heads[1:], len(tokens))
    numeric_prefix = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.cumsum(tokens.numeric(), out=numeric_prefix[1:])
    candidates = np.flatnonzero(per_unit >= need_values)
    numbers = numeric_prefix[ends[candidates]] - numeric_prefix[heads[candidates]]
    stat_label = np.zeros(len(candidates), dtype=bool)
    stat_label[_stat_table().find(tokens.hashes[heads[candidates]])[0]] = True
    hits = per_unit[candidates]
    like_units = candidates[
        (hits >= RECORD_LIKE_FRACTION * np.maximum(numbers, hits)) & ~stat_label
    ]
    if len(like_units) < RECORD_LIKE_MIN_ROWS:
        return None
    names = _names_mentioned(ds, tokens)
    if names < min(n_cols, RECORD_LIKE_MIN_NAMES):
        return None
    first_hit = np.searchsorted(hit_units, like_units[:MAX_LOCATIONS])
    return Result(
        count=len(like_units),
        lines=[int(p) for p in token_pos[first_hit]],
        detail={"values": need_values, "names": names},
    )


def _names_mentioned(ds: DatasetIndex, tokens: Tokens) -> int:
    """How many of the dataset's column names the text holds (a header naming them)."""
    found: set[int] = set()
    for _, _, labels in ds.column_names.lookup(tokens):
        found.update(int(label) for label in np.unique(labels))
    return len(found)
