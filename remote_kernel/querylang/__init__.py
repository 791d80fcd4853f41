"""The aggregate query language both sides speak (``rk.query``, ``rk.crosstab``).

May live here: parsing SQL with DuckDB's own parser, the shape rules of what may
be asked, building crosstab queries, and running a checked query in a locked-down
in-memory DuckDB on tables a caller hands in. The researcher's kernel runs a query
on the mock with it (so a query the datasite would refuse fails there first); the
datasite's sound tier (:mod:`remote_kernel.checks.sqltier`) adds evidence and rules.

May not: hold or load private data, compute disclosure evidence, or import any
other part of the package but ``protocol`` (import-linter contract).

Modules, bottom up: :mod:`~remote_kernel.querylang.engine` (the locked-down
DuckDB and running a query in it), :mod:`~remote_kernel.querylang.parse` (DuckDB's
parse tree as JSON, names of aggregates), :mod:`~remote_kernel.querylang.parsed`
(:class:`ParsedQuery`, what an accepted query is made of),
:mod:`~remote_kernel.querylang.clauses` (checks of one clause or expression),
:mod:`~remote_kernel.querylang.select_list` (keys, aggregates, ordering),
:mod:`~remote_kernel.querylang.shape` (:func:`check_query`),
:mod:`~remote_kernel.querylang.guard` and :mod:`~remote_kernel.querylang.checked`
(every row-level expression under ``TRY``, so failing does not depend on the rows),
:mod:`~remote_kernel.querylang.tables` (check and run on tables handed in:
:func:`run_on_tables` is ``rk.query`` on the mock) and
:mod:`~remote_kernel.querylang.crosstab`.
"""

from remote_kernel.querylang.checked import run_checked
from remote_kernel.querylang.clauses import REFUSED_FUNCTIONS
from remote_kernel.querylang.crosstab import (
    CROSSTAB_AGGFUNCS,
    crosstab_sql,
    quote_identifier,
    to_wide,
)
from remote_kernel.querylang.engine import PrivateRunFailed, open_connection, plain
from remote_kernel.querylang.parse import (
    ALLOWED_AGGREGATES,
    REFUSED_AGGREGATES,
    canonical,
    deserialize_sql,
    serialize_sql,
)
from remote_kernel.querylang.parsed import Aggregate, GroupKey, ParsedQuery
from remote_kernel.querylang.shape import EVIDENCE_PREFIX, check_query
from remote_kernel.querylang.tables import check_on_tables, run_on_tables

__all__ = [
    "ALLOWED_AGGREGATES",
    "CROSSTAB_AGGFUNCS",
    "EVIDENCE_PREFIX",
    "REFUSED_AGGREGATES",
    "REFUSED_FUNCTIONS",
    "Aggregate",
    "GroupKey",
    "ParsedQuery",
    "PrivateRunFailed",
    "canonical",
    "check_on_tables",
    "check_query",
    "crosstab_sql",
    "deserialize_sql",
    "open_connection",
    "plain",
    "quote_identifier",
    "run_checked",
    "run_on_tables",
    "serialize_sql",
    "to_wide",
]
