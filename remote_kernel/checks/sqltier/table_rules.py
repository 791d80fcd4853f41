"""Rules about the whole table, which suppressing cells cannot fix.

Each rule adds a finding for the reviewer and a content-free phrase for the
summary. Rules that depend only on the query text (a WHERE clause, a computed
group key under ``allow_where=False``) keep their phrases apart: when one applies,
the summary says only those, so it cannot depend on the private data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from remote_kernel.checks import rules
from remote_kernel.checks.policy import Thresholds
from remote_kernel.checks.sqltier.cells import Table
from remote_kernel.protocol.models import Finding, Verdict


@dataclass
class _TableFindings:
    """Table-level findings, and the summary phrases they contribute."""

    findings: list[Finding] = field(default_factory=list)
    #: Phrases that depend on the query text only (WHERE, computed keys).
    filter_parts: list[str] = field(default_factory=list)
    #: Phrases that depend on the data.
    summary_parts: list[str] = field(default_factory=list)

    def summary(self) -> tuple[list[str], bool]:
        """The phrases the summary may show, and whether they are fixed by the query text.

        Otherwise "held: WHERE" vs "held: WHERE, 1 cell below 10" would answer a
        yes/no question about a person (GROUP BY pid = 'P1' AND chol > 200).
        """
        return self.filter_parts or self.summary_parts, bool(self.filter_parts)


def table_findings(table: Table, failing: np.ndarray, t: Thresholds) -> _TableFindings:
    """Every table-level rule, in the order the findings list them."""
    found = _TableFindings()
    _filter_rules(table, t, found)
    _level_rule(table, t, found)
    _zero_rules(table, t, found)
    _order_rule(table, failing, t, found)
    return found


def _filter_rules(table: Table, t: Thresholds, found: _TableFindings) -> None:
    """WHERE and computed group keys carve out subsets, which differencing exploits."""
    parsed = table.parsed
    if parsed.has_where and not t.allow_where:
        found.findings.append(
            Finding(
                "where-clause",
                Verdict.REVIEW,
                "The query filters rows (WHERE). Two filtered queries whose row sets differ "
                "by one person can be subtracted to reveal that person's values, even when "
                "every cell is large; this policy sends filtered queries to a person.",
                "WHERE clause",
            )
        )
        found.filter_parts.append("WHERE clause needs review")
    computed = [k for k in parsed.keys if k.computed]
    if computed and not t.allow_where:
        found.findings.append(
            Finding(
                "computed-group-key",
                Verdict.REVIEW,
                "Grouping by a computed expression carves out subsets just as WHERE does "
                "(GROUP BY age > 50 AND chol <> 233 isolates one person by differencing); "
                "this policy sends such queries to a person.",
                "GROUP BY " + ", ".join(k.text for k in computed),
            )
        )
        found.filter_parts.append("computed group key needs review")


def _level_rule(table: Table, t: Thresholds, found: _TableFindings) -> None:
    """A group key with very many distinct values is close to an identifier."""
    rows = len(table.result)
    for i, key in enumerate(table.parsed.keys):
        levels = int(table.keys_all.iloc[:, i].nunique(dropna=False)) if rows else 0
        if rules.too_many_levels([levels], t.max_levels)[0]:
            found.findings.append(
                Finding(
                    "too-many-levels",
                    Verdict.REVIEW,
                    f"{key.text} has {levels} distinct values in the table; the policy allows "
                    f"{t.max_levels} (a key with very many levels is close to an identifier)",
                    f"column {table.keys_all.columns[i]}",
                )
            )
            found.summary_parts.append(f"a group key with more than {t.max_levels} levels")


def _zero_rules(table: Table, t: Thresholds, found: _TableFindings) -> None:
    """Zeros a GROUP BY table shows by leaving rows out, or by being empty.

    Under suppression a missing row may equally be a small group left out, so there
    the missing rows say nothing and only ``failing_cells="review"`` checks them.
    """
    parsed, keys_all, rows = table.parsed, table.keys_all, len(table.result)
    zeros_visible = t.zeros == "review" and t.failing_cells == "review"
    if zeros_visible and len(parsed.keys) > 1 and not parsed.has_limit and rows:
        possible = 1
        for i in range(len(parsed.keys)):
            possible *= int(keys_all.iloc[:, i].nunique(dropna=False))
        distinct = len(keys_all.drop_duplicates())
        if possible > distinct:
            found.findings.append(
                Finding(
                    "zeros",
                    Verdict.REVIEW,
                    f"{possible - distinct} of the {possible} combinations of the group keys "
                    f"do not occur: their absence from the table is a zero cell (ACRO flags "
                    f"zeros), which says something about everyone in that combination",
                    "GROUP BY " + ", ".join(k.text for k in parsed.keys),
                )
            )
            found.summary_parts.append("zero cells (missing combinations of the keys)")
    if zeros_visible and not rows and parsed.keys:
        # An empty grouped table is a zero: "nobody has these values".
        found.findings.append(
            Finding(
                "zeros",
                Verdict.REVIEW,
                "the query matched no rows: an empty table says that nobody has these values, "
                "which is a zero cell (ACRO flags zeros)",
            )
        )
        found.summary_parts.append("no rows (a zero)")


def _order_rule(table: Table, failing: np.ndarray, t: Thresholds, found: _TableFindings) -> None:
    """ORDER BY an altered aggregate with LIMIT: which rows survive depends on true values."""
    mode, aggregates = t.failing_cells, table.aggregates
    ordered = [j for j, a in enumerate(aggregates) if a.position in table.parsed.order_aggregates]
    order_altered = any(
        failing[:, j].any() or (mode == "redact_round" and aggregates[j].is_count) for j in ordered
    )
    if mode != "review" and order_altered and table.parsed.has_limit:
        found.findings.append(
            Finding(
                "order-reveals-suppressed",
                Verdict.REVIEW,
                "The query orders by an aggregate and keeps only the first rows (LIMIT); which "
                "rows survive depends on values that would be suppressed or rounded.",
                "ORDER BY ... LIMIT",
            )
        )
        found.summary_parts.append("ORDER BY with LIMIT over suppressed values")
