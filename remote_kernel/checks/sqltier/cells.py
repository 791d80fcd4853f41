"""The cell rules: which cells of a result fail, read from the datasite's own evidence.

:func:`table_view` lines up the researcher's result with its evidence columns;
:func:`cell_evidence` applies :mod:`remote_kernel.checks.rules` to every
(row, aggregate) cell; :func:`find_failures` names each failing mask and says how to
describe it to a reviewer and, without evidence values, in a released table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.checks import rules
from remote_kernel.checks.policy import Thresholds
from remote_kernel.checks.sqltier.evidence import Evidence
from remote_kernel.querylang import Aggregate, ParsedQuery

#: The cell rules: each finding says something about the private numbers (is there a
#: cell of one? a dominated total?), so their names and counts go to reviewers only,
#: never into the summary a researcher sees before release (checks/filter.py).
CELL_CHECKS = frozenset(
    {"small-cells", "zeros", "negative-values", "nk-dominance", "p-percent", "all-values-same"}
)


@dataclass
class Failure:
    """A failing-cell check: mask over (rows x aggregates) and how to describe it."""

    check: str
    mask: np.ndarray
    review_message: Callable[[int, int], str]  # for reviewers (may quote evidence)
    release_message: str  # for a released table: no evidence values
    noun: str  # for the summary: "cells below 10"


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)


@dataclass
class Table:
    """The researcher's result next to its evidence, as the rules read it."""

    parsed: ParsedQuery
    #: The researcher's own columns (the evidence columns cut off).
    result: pd.DataFrame
    aggregates: list[Aggregate]
    #: The result's column name of each aggregate.
    agg_names: list[str]
    #: Every group key's value per row, selected or not (locates findings).
    keys_all: pd.DataFrame
    #: The result's columns that show a group key.
    shown_keys: list[str]
    #: Rows per cell (COUNT(*) evidence).
    cell_size: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.result), len(self.aggregates))


def table_view(parsed: ParsedQuery, frame: pd.DataFrame, evidence: Evidence) -> Table:
    """Split the evidence query's frame into the result and what the rules need."""
    result = frame.iloc[:, : parsed.select_count].copy()
    names = [str(c) for c in result.columns]
    aggregates = list(parsed.aggregates)
    keys_all = pd.DataFrame(
        {
            (names[k.select_position] if k.select_position is not None else k.text): frame[
                evidence.keys[i]
            ].to_numpy()
            for i, k in enumerate(parsed.keys)
        }
    )
    shown_keys = [names[k.select_position] for k in parsed.keys if k.select_position is not None]
    return Table(
        parsed=parsed,
        result=result,
        aggregates=aggregates,
        agg_names=[names[a.position] for a in aggregates],
        keys_all=keys_all,
        shown_keys=shown_keys,
        cell_size=_column(frame, evidence.cell_size),
    )


@dataclass
class _CellEvidence:
    """Per-cell evidence and rule outcomes, each an array of shape (rows, aggregates)."""

    shape: tuple[int, int]
    contributors: np.ndarray = field(init=False)
    small: np.ndarray = field(init=False)
    zero: np.ndarray = field(init=False)
    negative: np.ndarray = field(init=False)
    dominated: np.ndarray = field(init=False)
    p_fail: np.ndarray = field(init=False)
    same: np.ndarray = field(init=False)
    #: (row, aggregate) -> the numbers behind a dominance or p-percent failure.
    text: dict[tuple[int, int], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.contributors = np.zeros(self.shape)
        for name in ("small", "zero", "negative", "dominated", "p_fail", "same"):
            setattr(self, name, np.zeros(self.shape, dtype=bool))


def cell_evidence(
    table: Table, frame: pd.DataFrame, evidence: Evidence, t: Thresholds
) -> _CellEvidence:
    """Apply every cell rule to every (row, aggregate) cell.

    A count's value is its contributor count, so only the size rules apply to it;
    sums and means also get the value rules (:func:`_value_evidence`).
    """
    cells = _CellEvidence(table.shape)
    for j, aggregate in enumerate(table.aggregates):
        n = _column(frame, evidence.contributors[aggregate.position])
        cells.contributors[:, j] = n
        cells.small[:, j] = rules.small_cells(n, t.min_cell_count)
        numbers = evidence.numeric.get(aggregate.position)
        if numbers is None:  # COUNT(*) / COUNT(col): the value is the contributor count
            if t.zeros == "review":
                cells.zero[:, j] = rules.zeros(n)
            continue
        _value_evidence(cells, j, n, frame, numbers, t)
    return cells


def _value_evidence(
    cells: _CellEvidence,
    j: int,
    n: np.ndarray,
    frame: pd.DataFrame,
    numbers: dict[str, Any],
    t: Thresholds,
) -> None:
    """Dominance, p-percent, zeros and all-the-same for one SUM/AVG column.

    With a negative value in the cell the dominance rules are meaningless (the
    largest contributions no longer bound the others), so such a cell is marked
    negative and a person judges it instead.
    """
    total = _column(frame, numbers["total"])
    low, high = _column(frame, numbers["min"]), _column(frame, numbers["max"])
    top = np.column_stack([_column(frame, c) for c in numbers["top"]])
    with np.errstate(invalid="ignore"):
        neg = low < 0
    cells.negative[:, j] = neg
    cells.dominated[:, j] = rules.nk_dominance(top, total, t.dominance_n, t.dominance_k) & ~neg
    cells.p_fail[:, j] = rules.p_percent(top, total, t.p_ratio) & ~neg
    if t.zeros == "review":
        with np.errstate(invalid="ignore"):
            cells.zero[:, j] = (n > 0) & (total == 0) & ~neg
        cells.same[:, j] = rules.all_values_same(low, high, n) & ~cells.zero[:, j]
    for i in np.flatnonzero(cells.dominated[:, j] | cells.p_fail[:, j]):
        share = top[i, : t.dominance_n].sum() / total[i] if total[i] else float("nan")
        cells.text[(int(i), j)] = (
            f"total {total[i]:g}; the largest {t.dominance_n} contributions make "
            f"{share:.0%} of it; the rest after the top two is "
            f"{total[i] - top[i, 0] - top[i, 1]:g} against a largest of {top[i, 0]:g}"
        )


def find_failures(table: Table, cells: _CellEvidence, t: Thresholds) -> list[Failure]:
    """Every cell rule as a named failure, in the order findings report them.

    Small cells come first: a cell is reported under its first failing rule, so a
    zero and a small count read the same to the researcher.
    """
    return _count_failures(table, cells, t) + _value_failures(table, cells, t)


def _count_failures(table: Table, cells: _CellEvidence, t: Thresholds) -> list[Failure]:
    """Too few contributors, and zeros."""
    agg_names, aggregates = table.agg_names, table.aggregates

    def contributors_text(i: int, j: int) -> str:
        what = "row(s)" if aggregates[j].function == "count_star" else "non-missing value(s)"
        return (
            f"{agg_names[j]} is computed from {cells.contributors[i, j]:g} {what}; the policy "
            f"needs at least {t.min_cell_count} (small cells let people who know some members "
            f"learn about the others)"
        )

    return [
        Failure(
            "small-cells",
            cells.small,
            contributors_text,
            f"suppressed: fewer than {t.min_cell_count} contributors",
            f"below {t.min_cell_count}",
        ),
        Failure(
            "zeros",
            cells.zero,
            lambda i, j: (
                f"{agg_names[j]} is zero: it says something about every member of the group "
                f"(ACRO flags zeros)"
            ),
            "suppressed: zero cell",
            "that are zero",
        ),
    ]


def _value_failures(table: Table, cells: _CellEvidence, t: Thresholds) -> list[Failure]:
    """Negative values, N-K dominance, p-percent and all values the same (SUM/AVG only)."""
    agg_names, text = table.agg_names, cells.text
    return [
        Failure(
            "negative-values",
            cells.negative,
            lambda i, j: (
                f"{agg_names[j]}: the column has negative values in this cell, so dominance "
                f"and p-percent cannot be assessed; a person must judge it"
            ),
            "suppressed: negative values (dominance cannot be assessed)",
            "with negative values",
        ),
        Failure(
            "nk-dominance",
            cells.dominated,
            lambda i, j: (
                f"{agg_names[j]}: the {t.dominance_n} largest contributors hold more than "
                f"{t.dominance_k:.0%} of the total ({text.get((i, j), '')}); each "
                f"could estimate the other's value"
            ),
            "suppressed: dominated by its largest contributors (N-K rule)",
            "dominated (N-K)",
        ),
        Failure(
            "p-percent",
            cells.p_fail,
            lambda i, j: (
                f"{agg_names[j]}: without its two largest contributions, less than "
                f"{t.p_ratio:.0%} of the largest is left ({text.get((i, j), '')}); "
                f"the second largest could estimate the largest"
            ),
            "suppressed: p-percent rule",
            "failing p-percent",
        ),
        Failure(
            "all-values-same",
            cells.same,
            lambda i, j: (
                f"{agg_names[j]}: every contributor has the same value, so the cell reveals "
                f"each member's value"
            ),
            "suppressed: all contributors have the same value",
            "with all values the same",
        ),
    ]


def primary_failure(failures: list[Failure], shape: tuple[int, int]) -> np.ndarray:
    """Index of each cell's first failing rule (-1: passes).

    Each failing cell is reported once, under its first failing rule (small cells
    first): a count of 0 and a count of 3 then read the same in the summary, so the
    summary does not tell the researcher which one it was.
    """
    primary = np.full(shape, -1)
    for index in range(len(failures) - 1, -1, -1):
        primary[failures[index].mask] = index
    return primary
