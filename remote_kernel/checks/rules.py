"""Statistical disclosure-control rules, as pure vectorised functions over cell evidence.

Each rule takes per-cell *evidence* (contributor counts, totals, the largest
contributions, ...) as numpy arrays and returns a boolean mask of the cells that
fail. Nothing here reads data or decides a verdict: the SQL tier
(:mod:`remote_kernel.checks.sqltier`) computes the evidence from the private data inside
the datasite and applies these masks; later checks (tables found in kernel
outputs) can reuse them on evidence computed with :func:`group_evidence`.

The rules and their defaults come from the field's practice:

* ACRO/SACRO (AI-SDC, "Automatic Checking of Research Outputs"): minimum cell
  count 10, zeros flagged, N-K dominance (N=2, K=90%), p-percent (p=10%), cells
  with negative values sent to a person, cells whose values are all the same.
* OpenSAFELY: statistics about 7 or fewer patients redacted, other counts rounded
  to the nearest 5.
* DataSHIELD: ``nfilter.tab`` (minimum non-zero cell count), ``levels.max``.

Keeping them pure makes them easy to test exhaustively (hypothesis) and keeps the
cost of a check at a few numpy passes over the cells, never over the rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from remote_kernel.protocol.models import Finding, Verdict

ArrayLike = npt.ArrayLike
Mask = npt.NDArray[np.bool_]

#: Findings written per check before the rest are summarised in one finding, so
#: that a GROUP BY on an identifier (a million failing cells) gives a reviewer
#: a readable list rather than a million lines.
DEFAULT_FINDING_LIMIT = 50


def _float(values: ArrayLike) -> npt.NDArray[np.float64]:
    return np.asarray(values, dtype=np.float64)


def small_cells(counts: ArrayLike, min_count: int) -> Mask:
    """Cells with fewer than ``min_count`` contributors (count < min_count).

    ACRO/SACRO's threshold rule (``agg_threshold``: ``count < THRESHOLD``, default
    10) and DataSHIELD's ``nfilter.tab``. A small cell lets anyone who knows some of
    its members learn about the others. A zero count is also "small" here, as in
    ACRO (an empty cell fails the threshold mask); :func:`zeros` reports it
    separately because its risk is different. A missing count (NaN) is treated as
    failing: deny by default.
    """
    counts = _float(counts)
    with np.errstate(invalid="ignore"):
        return ~(counts >= min_count)


def zeros(values: ArrayLike) -> Mask:
    """Cells whose value is exactly zero.

    ACRO/SACRO flag zero cells (``ZEROS_ARE_DISCLOSIVE``): a structural zero tells
    the reader something about *every* member of the group ("none of the women
    aged 30-39 has diagnosis 4"), which is group attribute disclosure even when the
    group is large. Whether a zero fails is the policy's choice
    (``Thresholds.zeros``).
    """
    return _float(values) == 0


def all_values_same(minimum: ArrayLike, maximum: ArrayLike, contributors: ArrayLike) -> Mask:
    """SUM/AVG cells where every contributor has the same value.

    ACRO's ``all-values-are-same`` check (``agg_values_are_same``): the mean of
    such a cell *is* every member's value. The zero case (all values 0) is the same
    disclosure and is included. Cells without contributors are not flagged here
    (:func:`small_cells` handles them).
    """
    minimum, maximum, contributors = _float(minimum), _float(maximum), _float(contributors)
    with np.errstate(invalid="ignore"):
        return (contributors > 0) & (minimum == maximum)


def _top_matrix(top: ArrayLike, cells: int) -> npt.NDArray[np.float64]:
    matrix = _float(top)
    if matrix.ndim == 1:
        matrix = matrix.reshape(cells, -1) if cells else matrix.reshape(0, 1)
    # Fewer contributors than columns: the missing contributions are zero.
    return np.nan_to_num(np.abs(matrix), nan=0.0)


def nk_dominance(
    top: ArrayLike,
    totals: ArrayLike,
    n: int,
    k: float,
    negative: ArrayLike | None = None,
) -> Mask:
    """Cells where the ``n`` largest contributions exceed ``k`` of the cell's total.

    ACRO/SACRO's N-K dominance rule (``agg_nk``: N=2, K=90%): if two people make
    up more than 90% of a sum, each of them can estimate the other's value
    closely. ``top`` is a (cells x m) matrix, m >= n, of the largest absolute
    contributions in each cell, largest first (missing entries count as 0);
    ``totals`` the cell sums. The rule is undefined when a cell has negative values
    (a total can be small while its contributions are large), so such cells
    (``negative``) are flagged, as ACRO does. Cells with a zero or missing total
    are not flagged here: :func:`zeros` and :func:`small_cells` cover them.
    """
    totals = _float(totals)
    matrix = _top_matrix(top, totals.shape[0])
    if matrix.shape[1] < n:
        raise ValueError(f"nk_dominance needs the top {n} values, got {matrix.shape[1]}")
    top_sum = matrix[:, :n].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, top_sum / np.where(totals > 0, totals, 1.0), 0.0)
        flagged = (totals > 0) & (share > k)
    if negative is not None:
        flagged |= np.asarray(negative, dtype=bool)
    return flagged


def p_percent(
    top: ArrayLike,
    totals: ArrayLike,
    p: float,
    negative: ArrayLike | None = None,
) -> Mask:
    """Cells where the second-largest contributor could estimate the largest within p%.

    ACRO/SACRO's p-ratio rule (``agg_p_percent``, p = 10%): the cell fails when
    ``total - top1 - top2 < p * top1``, i.e. what is left once the two largest
    contributions are removed is too small to hide the largest one from the second
    (who knows their own value). A cell with one contributor fails (top2 = 0).
    ``top`` holds at least the two largest absolute values per cell. Negative
    values make the rule undefined: those cells (``negative``) are flagged. Cells
    with a zero or missing total are left to :func:`zeros` / :func:`small_cells`.
    """
    totals = _float(totals)
    matrix = _top_matrix(top, totals.shape[0])
    if matrix.shape[1] < 2:
        matrix = np.hstack([matrix, np.zeros((matrix.shape[0], 2 - matrix.shape[1]))])
    top1, top2 = matrix[:, 0], matrix[:, 1]
    with np.errstate(invalid="ignore"):
        flagged = (totals > 0) & ((totals - top1 - top2) < p * top1)
    if negative is not None:
        flagged |= np.asarray(negative, dtype=bool)
    return flagged


def too_many_levels(levels: ArrayLike, max_levels: int) -> Mask:
    """Grouping columns with more than ``max_levels`` distinct values.

    DataSHIELD's ``levels.max`` (default 40): a grouping variable with very many
    levels is close to an identifier, and its table close to a list of records.
    """
    return _float(levels) > max_levels


def redact_and_round(
    counts: ArrayLike, redact_at_or_below: int, round_to: int
) -> npt.NDArray[np.float64]:
    """OpenSAFELY's small-number suppression: redact counts <= t, round the rest.

    OpenSAFELY's output checking guidance: any count of ``redact_at_or_below`` (7)
    or fewer is blanked (NaN) and every other count is rounded to the nearest
    multiple of ``round_to`` (5), halves rounding up, so that a count cannot be
    recovered by differencing two totals. If rounding would itself produce a value
    at or below the threshold (possible only when ``round_to`` is large relative to
    it, e.g. t=2, r=10: 3 -> 0), the count is blanked too, so a small number is
    never shown. Missing counts stay missing.
    """
    if round_to < 1:
        raise ValueError("round_to must be at least 1")
    counts = _float(counts)
    with np.errstate(invalid="ignore"):
        rounded = np.floor(counts / round_to + 0.5) * round_to
        keep = (counts > redact_at_or_below) & (rounded > redact_at_or_below)
    return np.where(keep, rounded, np.nan)


# --- evidence from rows, for checks that hold the rows themselves ---------------------------


def group_evidence(
    codes: ArrayLike, values: ArrayLike, groups: int, top_n: int = 2
) -> dict[str, npt.NDArray[np.float64]]:
    """Per-group evidence the rules need, computed from rows with numpy only.

    ``codes[i]`` is row i's group (0..groups-1, e.g. from :func:`pandas.factorize`),
    ``values[i]`` its value (NaN = missing, not a contributor). Returns
    ``count`` (contributors), ``total``, ``minimum``, ``maximum`` (NaN for empty
    groups) and ``top`` (groups x top_n largest absolute values, largest first,
    0-padded) -- the same evidence the SQL tier computes in DuckDB. Used by the
    property tests as the reference, and by checks that get rows rather than SQL.
    One sort of the rows; no Python loop over groups.
    """
    codes = np.asarray(codes, dtype=np.int64)
    values = _float(values)
    valid = ~np.isnan(values)
    c, v = codes[valid], values[valid]
    count = np.bincount(c, minlength=groups).astype(np.float64)[:groups]
    total = np.bincount(c, weights=v, minlength=groups)[:groups]
    minimum = np.full(groups, np.nan)
    maximum = np.full(groups, np.nan)
    top = np.zeros((groups, max(top_n, 0)))
    if v.size:
        order = np.lexsort((-np.abs(v), c))
        c_sorted, v_sorted = c[order], v[order]
        starts = np.flatnonzero(np.r_[True, c_sorted[1:] != c_sorted[:-1]])
        present = c_sorted[starts]
        by_value = np.lexsort((v, c))
        v_by_value = v[by_value]
        minimum[present] = np.minimum.reduceat(v_by_value, starts)
        maximum[present] = np.maximum.reduceat(v_by_value, starts)
        position = np.arange(c_sorted.size) - np.repeat(starts, np.diff(np.r_[starts, c.size]))
        take = position < top_n
        top[c_sorted[take], position[take]] = np.abs(v_sorted[take])
    return {"count": count, "total": total, "minimum": minimum, "maximum": maximum, "top": top}


# --- masks to findings ---------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A key value as a person reads it: 1.0 -> "1", NaN/None -> "NULL"."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "NULL"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def cell_location(
    row: int, keys: Mapping[str, Any] | None = None, column: str | None = None
) -> str:
    """``row 3 (sex=1, num=2), column n``: rows are 0-based positions in the table."""
    text = f"row {row}"
    if keys:
        text += " (" + ", ".join(f"{name}={format_value(v)}" for name, v in keys.items()) + ")"
    if column is not None:
        text += f", column {column}"
    return text


def mask_findings(
    mask: ArrayLike,
    *,
    check: str,
    verdict: Verdict,
    message: str | Callable[[int, int], str],
    keys: pd.DataFrame | None = None,
    columns: Sequence[str] | None = None,
    limit: int | None = DEFAULT_FINDING_LIMIT,
) -> list[Finding]:
    """One finding per flagged cell, located by row, key values and column.

    ``mask`` is either one flag per row (shape (rows,)) or one per cell (shape
    (rows, len(columns))). ``keys`` holds the rows' group-key values that may be
    named in locations (pass only keys the reader of the findings may see).
    ``message`` is a fixed text or ``message(row, column_index)``. After ``limit``
    findings the rest are summarised in one finding ("... and 9,950 more cells"),
    so a million failing cells stay readable; the summary keeps the full count.
    """
    flags = np.asarray(mask, dtype=bool)
    if flags.ndim == 1:
        flags = flags[:, None]
        names: list[str | None] = [None]
    else:
        names = list(columns) if columns is not None else [None] * flags.shape[1]
        if len(names) != flags.shape[1]:
            raise ValueError("columns must name every column of the mask")
    rows, cols = np.nonzero(flags)
    key_records = keys.reset_index(drop=True) if keys is not None and keys.shape[1] else None
    findings: list[Finding] = []
    for count, (row, col) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        if limit is not None and count >= limit:
            rest = len(rows) - limit
            findings.append(
                Finding(check, verdict, f"... and {rest:,} more cell(s) failing the same check")
            )
            break
        row_keys = key_records.iloc[row].to_dict() if key_records is not None else None
        text = message(row, col) if callable(message) else message
        findings.append(Finding(check, verdict, text, cell_location(row, row_keys, names[col])))
    return findings
