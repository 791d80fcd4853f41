"""The aggregate query language both sides speak (``rk.query``, ``rk.crosstab``).

May live here: parsing SQL with DuckDB's own parser, the shape rules of what may
be asked, building crosstab queries, and running a checked query in a locked-down
in-memory DuckDB on tables a caller hands in. The researcher's kernel runs a query
on the mock with it (so a query the datasite would refuse fails there first); the
datasite's sound tier (:mod:`remote_kernel.checks.sqltier`) adds evidence and rules.

May not: hold or load private data, compute disclosure evidence, or import any
other part of the package but ``protocol`` (import-linter contract).
"""
