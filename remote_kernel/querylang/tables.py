"""A query on tables the caller hands in: checked, then run, with no evidence.

This is the whole of what the researcher's kernel does with ``rk.query`` on the
mock, and the first half of what the datasite does on private data (its sound
tier then runs the query with evidence columns added and judges the cells).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from remote_kernel.querylang.checked import run_checked
from remote_kernel.querylang.engine import check_numeric
from remote_kernel.querylang.parsed import ParsedQuery
from remote_kernel.querylang.shape import check_query


def check_on_tables(sql: str, tables: Mapping[str, pd.DataFrame]) -> ParsedQuery:
    """The shape check with the tables' real column names and types.

    Knowing the columns catches aliases that hide a column and aggregates of an
    alias; knowing the types refuses SUM/AVG of text before anything runs.
    """
    columns = {name: [str(c) for c in frame.columns] for name, frame in tables.items()}
    parsed = check_query(sql, list(tables), columns)
    check_numeric(parsed, tables[parsed.dataset])
    return parsed


def run_on_tables(sql: str, tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Check ``sql`` and run it on ``tables`` (mock data): the result, no disclosure checks.

    A query the datasite would refuse fails here with the same message; DuckDB's
    errors are passed on in full, since the tables are not private.
    """
    parsed = check_on_tables(sql, tables)
    return run_checked(parsed, tables, sql, private=False)
