"""Running a checked query: bound on zero rows first, then run under ``TRY``.

Both sides run every checked query this way (the mock in the researcher's kernel, the
private data at the datasite), so they agree on what a query means:

1. The query as written runs on the tables' zero-row copies. Every error that does not
   depend on the rows -- binding, types, a constant that fails -- is raised here, and
   its message quotes only the query and the schema. The result's column names are
   taken from this run (what the researcher wrote, not the rewritten text).
2. The same query with its row-level expressions under ``TRY``
   (:mod:`remote_kernel.querylang.guard`) runs on the rows: a value that fails for
   some row is NULL there, so whether a query fails does not depend on the rows. What
   can still fail (out of memory) raises :class:`PrivateRunFailed` on private data.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from remote_kernel.querylang.engine import (
    SHAPE_ADVICE,
    open_connection,
    plain,
    refusing_errors,
)
from remote_kernel.querylang.guard import guarded_sql
from remote_kernel.querylang.parsed import ParsedQuery


def bound_names(sql: str, tables: Mapping[str, pd.DataFrame]) -> list[str]:
    """The query's column names from a run on zero rows (errors quote schema only)."""
    con = open_connection({name: plain(frame).iloc[:0] for name, frame in tables.items()})
    try:
        with refusing_errors(private=False, advice=SHAPE_ADVICE, on="zero rows"):
            cursor = con.execute(sql)
            return [str(column[0]) for column in cursor.description or []]
    finally:
        con.close()


def run_checked(
    parsed: ParsedQuery, tables: Mapping[str, pd.DataFrame], sql: str, *, private: bool
) -> pd.DataFrame:
    """Run ``sql`` (the checked query, or a tree derived from it) on its one dataset.

    Only the dataset the query names is registered, so whatever ``sql`` says it can
    see no other table; the connection is closed whatever happens.
    """
    visible = {parsed.dataset: tables[parsed.dataset]}
    names = bound_names(sql, visible)
    con = open_connection(visible)
    try:
        with refusing_errors(private=private, advice=SHAPE_ADVICE):
            result = con.execute(guarded_sql(sql)).df()
    finally:
        con.close()
    result.columns = pd.Index(names)
    return result
