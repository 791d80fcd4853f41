"""The queries behind ``rk.crosstab``, and turning their long result into a wide table.

The builder only writes SQL text (every name quoted); the query it writes goes
through the same shape check as any other, so a crosstab can ask nothing a
hand-written query could not.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from remote_kernel.protocol.errors import QueryRejected


def quote_identifier(name: str) -> str:
    """A DuckDB identifier in double quotes, with embedded quotes doubled."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise QueryRejected(f"invalid column or dataset name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


#: ``aggfunc`` names -> the SQL aggregate; only those whose risk the cell rules measure.
CROSSTAB_AGGFUNCS = {"count": "count", "sum": "sum", "mean": "avg", "avg": "avg"}


def crosstab_sql(
    dataset: str,
    index: str | Sequence[str],
    columns: str | Sequence[str] | None = None,
    values: str | None = None,
    aggfunc: str = "count",
) -> str:
    """The aggregate query behind ``rk.crosstab``: a long table, one row per cell.

    ``index`` and ``columns`` are grouping columns (a name or a list); with
    ``aggfunc="count"`` the cell is COUNT(*) (or COUNT(values) when ``values`` is
    given), with "sum"/"mean" it is SUM/AVG(values). Cells are returned in long form
    (keys..., value) so each can be checked and suppressed on its own; pivot the
    released table to wide form with :func:`to_wide`.
    """

    def as_list(value: str | Sequence[str] | None) -> list[str]:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return [str(v) for v in value]

    keys = as_list(index) + as_list(columns)
    if not keys:
        raise QueryRejected("crosstab needs at least one index column")
    if len({k.lower() for k in keys}) != len(keys):
        raise QueryRejected("crosstab index and columns must be different columns")
    function = CROSSTAB_AGGFUNCS.get(str(aggfunc).lower())
    if function is None:
        raise QueryRejected(
            f"aggfunc {aggfunc!r} is not available: use 'count', 'sum' or 'mean' (other "
            f"aggregates reveal individual values)"
        )
    if function != "count" and values is None:
        raise QueryRejected(f"aggfunc {aggfunc!r} needs values=<a numeric column>")
    if values is None:
        expression, label = "COUNT(*)", "n"
    else:
        label = f"{'mean' if function == 'avg' else function}_{values}"
        expression = f"{function.upper()}({quote_identifier(values)})"
    taken = {k.lower() for k in keys} | ({values.lower()} if values else set())
    while label.lower() in taken:
        label = f"{label}_"
    key_list = ", ".join(quote_identifier(k) for k in keys)
    return (  # every name is quoted by quote_identifier: no injection
        f"SELECT {key_list}, {expression} AS {quote_identifier(label)} "  # noqa: S608
        f"FROM {quote_identifier(dataset)} GROUP BY {key_list} ORDER BY {key_list}"
    )


def to_wide(
    table: pd.DataFrame, index: str | Sequence[str], columns: str | Sequence[str]
) -> pd.DataFrame:
    """Pivot a released long crosstab into the familiar wide form (blanks stay blank)."""
    index_list = [index] if isinstance(index, str) else list(index)
    column_list = [columns] if isinstance(columns, str) else list(columns)
    value = [c for c in table.columns if c not in (*index_list, *column_list)]
    if len(value) != 1:
        raise ValueError("to_wide needs a table with exactly one value column")
    return table.pivot_table(
        index=index_list, columns=column_list, values=value[0], aggfunc="first", dropna=False
    )
