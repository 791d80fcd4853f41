"""What leaves: the whole result, a suppressed or rounded copy, or nothing until a person decides.

``failing_cells="review"`` (or any table-level finding) means all or nothing:
:func:`hold_or_release`. ``suppress`` and ``redact_round`` release an altered
copy: :func:`release_altered`. Findings attached to a released table may reach
the researcher, so they never carry evidence values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from remote_kernel.checks import rules
from remote_kernel.checks.policy import Thresholds
from remote_kernel.checks.sqltier.cells import Failure, Table
from remote_kernel.checks.sqltier.outcome import QueryOutcome
from remote_kernel.protocol.models import Finding, Verdict


def hold_or_release(
    table: Table,
    failures: list[Failure],
    primary: np.ndarray,
    small_groups: np.ndarray | None,
    table_findings: list[Finding],
    summary_parts: list[str],
    summary_fixed: bool,
    t: Thresholds,
) -> QueryOutcome:
    """``failing_cells="review"`` (or a table-level problem): all pass, or a person decides.

    With ``summary_fixed`` the summary is ``summary_parts`` alone, which depend only on
    the query text; the cell findings still go to the reviewer in full.
    """
    cell_findings, parts = _held_cells(table, failures, primary, small_groups, t)
    findings = list(table_findings) + cell_findings
    parts = summary_parts if summary_fixed else parts + summary_parts
    result = table.result
    if findings:
        summary = "held for review: " + ", ".join(parts)
        return QueryOutcome(table.parsed.sql, result, None, Verdict.REVIEW, findings, summary)
    cells = len(result) * max(len(table.parsed.aggregates), 1)
    passed = Finding(
        "sound-tier",
        Verdict.RELEASE,
        f"all {cells} cell(s) passed: at least {t.min_cell_count} contributors, "
        f"{'zeros, ' if t.zeros == 'review' else ''}N-K dominance ({t.dominance_n}, "
        f"{t.dominance_k:.0%}), p-percent ({t.p_ratio:.0%}), at most {t.max_levels} levels "
        f"per group key",
    )
    summary = f"released by policy: {cells} cell(s) passed"
    return QueryOutcome(table.parsed.sql, result, result.copy(), Verdict.RELEASE, [passed], summary)


def _held_cells(
    table: Table,
    failures: list[Failure],
    primary: np.ndarray,
    small_groups: np.ndarray | None,
    t: Thresholds,
) -> tuple[list[Finding], list[str]]:
    """One finding per failing cell (under its first rule, naming the others) and
    per group too small to show, with the summary's counts of each."""
    findings: list[Finding] = []
    parts: list[str] = []
    for index, failure in enumerate(failures):
        mask = primary == index

        def message(i: int, j: int, failure: Failure = failure) -> str:
            also = [f.check for f in failures if f is not failure and f.mask[i, j]]
            text = failure.review_message(i, j)
            return f"{text} (also fails: {', '.join(also)})" if also else text

        findings += rules.mask_findings(
            mask,
            check=failure.check,
            verdict=Verdict.REVIEW,
            message=message,
            keys=table.keys_all,
            columns=table.agg_names,
        )
        if mask.any():
            parts.append(f"{int(mask.sum())} cell(s) {failure.noun}")
    if small_groups is not None and small_groups.any():
        cell_size = table.cell_size
        findings += rules.mask_findings(
            small_groups,
            check="small-cells",
            verdict=Verdict.REVIEW,
            message=lambda i, j: (
                f"the group has {cell_size[i]:g} rows; the policy needs at least "
                f"{t.min_cell_count} before its key values can be shown"
            ),
            keys=table.keys_all,
        )
        parts.append(f"{int(small_groups.sum())} group(s) below {t.min_cell_count}")
    return findings, parts


def release_altered(
    table: Table,
    failures: list[Failure],
    primary: np.ndarray,
    small_groups: np.ndarray | None,
    t: Thresholds,
) -> QueryOutcome:
    """``suppress`` / ``redact_round``: blank (and round) cells, leave out small groups.

    A group whose row count is below the threshold is left out entirely rather than
    shown with blank cells: its key values alone would say that such people exist
    (GROUP BY an identifier would otherwise list every identifier). The findings
    written here may reach the researcher, so they name only rows and key values
    that stay in the released table, no evidence values, and never how many groups
    were left out (that would tell whether a filtered-out person exists).
    """
    redact = t.failing_cells == "redact_round"
    drop_below = t.redact_at_or_below + 1 if redact else t.min_cell_count
    with np.errstate(invalid="ignore"):
        drop = ~(table.cell_size >= drop_below)
    if small_groups is not None:
        drop |= small_groups
    keep = ~drop
    released = table.result.loc[keep].reset_index(drop=True)
    blank, reasons = _blank_cells(primary[keep], failures, table, redact, t)
    _write_released(released, table, blank, reasons, redact, t)
    ordered = [
        j for j, a in enumerate(table.aggregates) if a.position in table.parsed.order_aggregates
    ]
    reordered = any(blank[:, j].any() or (redact and table.aggregates[j].is_count) for j in ordered)
    if reordered:
        released, blank, reasons = _sort_by_released(released, blank, reasons)
    findings = rules.mask_findings(
        blank,
        check="suppressed",
        verdict=Verdict.RELEASE,
        message=lambda i, j: str(reasons[i, j] or "suppressed"),
        keys=released[table.shown_keys] if table.shown_keys else None,
        columns=table.agg_names,
    )
    findings += _suppression_notes(reordered, redact, t)
    summary = _altered_summary(int(blank.sum()), redact, t)
    return QueryOutcome(
        table.parsed.sql, table.result, released, Verdict.RELEASE, findings, summary
    )


def _blank_cells(
    primary: np.ndarray, failures: list[Failure], table: Table, redact: bool, t: Thresholds
) -> tuple[np.ndarray, np.ndarray]:
    """Which kept cells are blanked, and the reason each one shows.

    "small" and "zero" read the same on purpose: telling them apart would say
    whether anyone is in the cell. Under ``redact_round`` counts are redacted and
    rounded instead (:func:`_write_released`); sums and means keep the cell rules.
    """
    is_count = np.array([a.is_count for a in table.aggregates], dtype=bool)
    small_or_zero = f"fewer than {t.min_cell_count} contributors, or none"
    labels = {
        "small-cells": small_or_zero,
        "zeros": small_or_zero,
        "negative-values": "negative values (dominance cannot be assessed)",
        "nk-dominance": "dominated by its largest contributors (N-K rule)",
        "p-percent": "the largest contributor could be estimated (p-percent rule)",
        "all-values-same": "all contributors have the same value",
    }
    reasons = np.full(primary.shape, "", dtype=object)
    for index, failure in enumerate(failures):
        reasons[primary == index] = f"suppressed: {labels[failure.check]}"
    blank = primary >= 0
    if redact:
        blank[:, is_count] = False
        reasons[:, is_count] = ""
    return blank, reasons


def _write_released(
    released: pd.DataFrame,
    table: Table,
    blank: np.ndarray,
    reasons: np.ndarray,
    redact: bool,
    t: Thresholds,
) -> None:
    """Blank the failing cells of ``released`` in place; under ``redact_round`` also
    redact small counts and round the rest (marking the redacted ones blank)."""
    for j, aggregate in enumerate(table.aggregates):
        values = pd.to_numeric(released.iloc[:, aggregate.position], errors="coerce")
        values = values.to_numpy(dtype=np.float64)
        if redact and aggregate.is_count:
            rounded = rules.redact_and_round(values, t.redact_at_or_below, t.round_to)
            redacted = np.isnan(rounded) & ~np.isnan(values)
            blank[:, j] |= redacted
            reasons[redacted, j] = f"redacted: {t.redact_at_or_below} or fewer"
            values = rounded
        if (redact and aggregate.is_count) or blank[:, j].any():
            released.isetitem(aggregate.position, np.where(blank[:, j], np.nan, values))


def _sort_by_released(
    released: pd.DataFrame, blank: np.ndarray, reasons: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Rows sorted by the released values, every column left to right.

    The requested order came from true values: kept, it would rank suppressed or
    rounded cells by what they hide.
    """
    names = released.columns
    positional = released.set_axis(range(len(names)), axis=1)
    positional = positional.sort_values(by=list(range(len(names))), na_position="last")
    permutation = positional.index.to_numpy()
    released = positional.set_axis(names, axis=1).reset_index(drop=True)
    return released, blank[permutation], reasons[permutation]


def _suppression_notes(reordered: bool, redact: bool, t: Thresholds) -> list[Finding]:
    """What was done to the table as a whole, and what suppression does not do."""
    notes: list[Finding] = []
    if reordered:
        notes.append(
            Finding(
                "suppressed",
                Verdict.RELEASE,
                "rows are sorted by their released values, not as the query asked: the "
                "requested order depended on suppressed or rounded values",
            )
        )
    if redact:
        rule = (
            f"counts are rounded to the nearest {t.round_to} and counts of "
            f"{t.redact_at_or_below} or fewer redacted (OpenSAFELY); groups of "
            f"{t.redact_at_or_below} or fewer rows are left out, if there are any"
        )
    else:
        rule = (
            f"cells failing the policy are blank; groups of fewer than {t.min_cell_count} "
            f"rows are left out, if there are any (their key values alone would reveal "
            f"that such people exist): a combination missing from the table has too few "
            f"rows, or none"
        )
    notes.append(Finding("suppression", Verdict.RELEASE, rule))
    notes.append(
        Finding(
            "suppression",
            Verdict.RELEASE,
            "No secondary suppression is done: a blank cell may still be worked out from "
            "totals or margins (another query, or other cells of this one). Ask a reviewer "
            "before publishing tables that add up.",
        )
    )
    return notes


def _altered_summary(suppressed: int, redact: bool, t: Thresholds) -> str:
    """The researcher's summary: how many cells changed, never how many groups left."""
    what = "redacted or suppressed" if redact else "suppressed"
    summary = f"released by policy: {suppressed} cell(s) {what}"
    if redact:
        summary += f", counts rounded to {t.round_to}"
    return summary + "; small groups (if any) left out; no secondary suppression"
