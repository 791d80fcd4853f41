"""Judging one evidence query's result: cell rules, table rules, then what may leave."""

from __future__ import annotations

import numpy as np
import pandas as pd

from remote_kernel.checks import rules
from remote_kernel.checks.policy import Thresholds
from remote_kernel.checks.sqltier.cells import (
    cell_evidence,
    find_failures,
    primary_failure,
    table_view,
)
from remote_kernel.checks.sqltier.evidence import Evidence
from remote_kernel.checks.sqltier.outcome import QueryOutcome
from remote_kernel.checks.sqltier.release import hold_or_release, release_altered
from remote_kernel.checks.sqltier.table_rules import table_findings
from remote_kernel.querylang import ParsedQuery


def judge(
    parsed: ParsedQuery, frame: pd.DataFrame, evidence: Evidence, thresholds: Thresholds
) -> QueryOutcome:
    """Apply the cell and table rules to the evidence and decide what may be released.

    A table-level finding cannot be fixed by blanking cells, so it sends the whole
    table to a person whatever ``failing_cells`` says; otherwise ``review`` holds
    any failing cell and ``suppress`` / ``redact_round`` release an altered copy.
    """
    t = thresholds
    table = table_view(parsed, frame, evidence)
    failures = find_failures(table, cell_evidence(table, frame, evidence, t), t)
    failing = np.zeros(table.shape, dtype=bool)
    for failure in failures:
        failing |= failure.mask
    # A row's key values say "this combination exists"; with no aggregate in the
    # select list, that is all the row says, and it must be a large group too.
    small_groups = (
        rules.small_cells(table.cell_size, t.min_cell_count) if not table.aggregates else None
    )
    found = table_findings(table, failing, t)
    primary = primary_failure(failures, table.shape)
    if t.failing_cells == "review" or found.findings:
        parts, fixed = found.summary()
        return hold_or_release(
            table, failures, primary, small_groups, found.findings, parts, fixed, t
        )
    return release_altered(table, failures, primary, small_groups, t)
