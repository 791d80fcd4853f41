"""The sound auto-release tier: aggregate queries the datasite runs and checks itself.

A table computed in the researcher's kernel can never be released automatically:
researcher code could have computed it from anything and called it "counts". A
*declarative* query is different. The kernel only asks; the datasite parses the
SQL (DuckDB's own parser, through ``json_serialize_sql``: no second parser to
disagree with the one that runs it), accepts only the shape

    SELECT <group keys>, <COUNT/SUM/AVG of a column>...
    FROM <one dataset> [WHERE ...] [GROUP BY <keys>] [ORDER BY ...] [LIMIT ...]

runs it in an in-memory DuckDB that sees only the site's datasets and cannot read
or write files, and -- in the same query -- computes each cell's evidence from the
private rows: its row count, its contributor count per aggregate, the sum, the
smallest and largest value, and the largest absolute contributions. The rules in
:mod:`remote_kernel.checks.rules` then decide, cell by cell, under the researcher's
:class:`~remote_kernel.checks.policy.Thresholds`. Nothing the researcher supplied is
used as evidence.

What this tier does *not* protect against (documented for reviewers and admins):

* Differencing. Two queries whose row sets differ by one person ("WHERE age > 50"
  and "WHERE age > 50 AND chol <> 233") each pass every cell rule, and their
  difference is that person's value. Computed group keys (``GROUP BY age > 50 AND
  chol <> 233``) do the same as a WHERE. Today the policy's ``allow_where=False``
  (the ``strict`` preset) sends every query with a WHERE clause *or a computed
  group key* to a person; only plain-column GROUP BY queries over the whole
  dataset auto-release there. With ``allow_where=True`` (``acro``, ``opensafely``)
  differencing across queries is not detected: no query history is kept.
* Secondary suppression. ``failing_cells="suppress"`` blanks failing cells and
  nothing else; a total from another query (or a margin) can give a blanked value
  back. The findings say so.
* The decision itself as a channel. With ``allow_where=True`` the verdict answers
  yes/no questions: ``GROUP BY pid = 'P1' AND chol > 200`` is held (a cell of one)
  or released (no such cell) depending on one person's value. Under
  ``allow_where=False`` such queries are always held, with a summary that depends
  on the query text only.
* Failing as a channel is closed: every row-level expression runs under DuckDB's
  ``TRY`` (:mod:`remote_kernel.querylang.guard`), so a cast or overflow that fails
  only for one patient's value makes that row NULL and the query is answered and
  judged as usual. A failure ``TRY`` cannot absorb (out of memory) is not refused
  at once either: the query is held for a person with a fixed note
  (:func:`failed_outcome`), as any held answer is.

The query language itself (parsing, the shape check, the locked-down DuckDB,
crosstab queries) is :mod:`remote_kernel.querylang`, shared with the researcher's
side. Here: :mod:`~remote_kernel.checks.sqltier.evidence` (the evidence columns
spliced into the query), :mod:`~remote_kernel.checks.sqltier.cells` and
:mod:`~remote_kernel.checks.sqltier.table_rules` (the rules applied to them),
:mod:`~remote_kernel.checks.sqltier.judge` and
:mod:`~remote_kernel.checks.sqltier.release` (what may leave).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from remote_kernel.checks.policy import Thresholds
from remote_kernel.checks.sqltier.evidence import evidence_query
from remote_kernel.checks.sqltier.judge import judge
from remote_kernel.checks.sqltier.outcome import QueryOutcome
from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.protocol.models import Finding, Verdict
from remote_kernel.querylang import (
    EVIDENCE_PREFIX,
    PrivateRunFailed,
    check_on_tables,
    check_query,
    crosstab_sql,
    open_connection,
    run_checked,
    run_on_tables,
    to_wide,
)

# QueryRejected, crosstab_sql, to_wide ...: the datasite and the tests import them from here.
__all__ = [
    "EVIDENCE_PREFIX",
    "QueryOutcome",
    "QueryRejected",
    "check_query",
    "crosstab_sql",
    "failed_outcome",
    "judge",
    "open_connection",
    "run_query",
    "to_wide",
]


def run_query(
    sql: str,
    tables: Mapping[str, pd.DataFrame],
    thresholds: Thresholds | None,
) -> QueryOutcome:
    """Check, run and judge one aggregate query (see the module docstring).

    ``thresholds=None`` is mock mode: the researcher's own mock data, so the query
    is checked (a query the datasite would refuse fails here too) and run, and the
    result is returned without disclosure checks
    (:func:`remote_kernel.querylang.run_on_tables`).
    """
    if thresholds is None:
        result = run_on_tables(sql, tables)
        finding = Finding("mock", Verdict.RELEASE, "run on mock data: no disclosure checks apply")
        return QueryOutcome(sql, result, result, Verdict.RELEASE, [finding], "mock data")
    parsed = check_on_tables(sql, tables)
    evidence_sql, evidence = evidence_query(parsed, max(thresholds.dominance_n, 2))
    try:
        frame = run_checked(parsed, tables, evidence_sql, private=True)
    except PrivateRunFailed:
        return failed_outcome(sql)
    return judge(parsed, frame, evidence, thresholds)


#: The reviewer's note on a query that failed on the private rows (fixed: DuckDB's
#: message could quote a value).
FAILED_NOTE = (
    "the query passed every check and ran on zero rows, then failed while running on "
    "the private rows (a failure TRY cannot absorb, e.g. out of memory). Whether a query "
    "fails can depend on one patient, so the researcher is not told at once: the output "
    "is held with no table; deny it (or release this note) after looking at the query"
)


def failed_outcome(sql: str) -> QueryOutcome:
    """A query that failed on private rows, held for a person like any held answer.

    Refusing it at once would tell the researcher, for free, that some row made it fail.
    The kernel gets an empty table (it runs inside the datasite); the reviewer gets a
    fixed note; the researcher sees a held output, as for a query whose cells failed.
    """
    finding = Finding("query-failed", Verdict.REVIEW, FAILED_NOTE)
    return QueryOutcome(sql, pd.DataFrame(), None, Verdict.REVIEW, [finding], "held for review")
