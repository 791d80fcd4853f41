"""The row-level part of a DP query, run in querylang's locked-down DuckDB.

For each private row that passes WHERE, one output row: the group-key values
and each aggregate's input (``CASE WHEN <filter> THEN <argument> END``). This map
and filter is row-wise -- the shape check admits no aggregate, window or
subquery in it -- so one person's rows change at most their own output rows:
its stability is 1 and OpenDP's guarantee over the derived frame is a guarantee
over the dataset. With an ``id`` privacy unit, each person's rows are truncated
to ``max_contributions`` here, chosen by the rows' own values only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pandas as pd
import polars as pl

from remote_kernel.checks.dp.metadata import DPMetadata
from remote_kernel.checks.dp.shape import DPAggregate, DPQuery
from remote_kernel.querylang import (
    deserialize_sql,
    open_connection,
    quote_identifier,
    serialize_sql,
)
from remote_kernel.querylang.engine import plain, refusing_errors

__all__ = ["plain"]  # join.py, keys.py and engine.py take it from here (querylang's own)


def key_name(index: int) -> str:
    return f"__dp_k{index}"


def value_name(aggregate: DPAggregate) -> str:
    return f"__dp_v{aggregate.position}"


def valid_name(aggregate: DPAggregate) -> str:
    return f"__dp_n{aggregate.position}"


def expression_sql(node: Mapping[str, Any]) -> str:
    """One expression printed back to SQL by DuckDB (no second printer)."""
    document = serialize_sql("SELECT 1")
    item = copy.deepcopy(dict(node))
    item["alias"] = ""
    document["statements"][0]["node"]["select_list"] = [item]
    text = deserialize_sql(document)
    return text[len("SELECT ") :] if text.upper().startswith("SELECT ") else text


def from_clause(query: DPQuery) -> str:
    table = query.node.get("from_table") or {}
    alias = table.get("alias")
    text = quote_identifier(query.dataset)
    return f"{text} AS {quote_identifier(alias)}" if alias else text


def tried(node: Mapping[str, Any], cast: str | None = None) -> str:
    """An expression that is NULL where it fails on a row, never an error.

    Whether a query fails on the private rows must not depend on them: a cast that
    fails only for one patient would otherwise refuse the query -- for free, before
    any budget is charged -- exactly when that patient exists. Under ``TRY`` the
    failing row's value is NULL (counted in no group, adding nothing), which is a
    function of that row alone, so the row stage stays a row-wise map.
    """
    text = expression_sql(node)
    return f"TRY(CAST(({text}) AS {cast}))" if cast else f"TRY({text})"


def _guarded(aggregate: DPAggregate, expression: str) -> str:
    if aggregate.condition is None:
        return expression
    return f"CASE WHEN {tried(aggregate.condition)} THEN ({expression}) END"


def aggregate_columns(aggregate: DPAggregate, centre: float | None) -> list[str]:
    """The select items carrying one aggregate's input (value and/or 'counts' indicator)."""
    argument = "TRUE" if aggregate.argument is None else tried(aggregate.argument, "DOUBLE")
    columns = []
    if aggregate.kind in ("count", "avg"):
        present = "TRUE" if aggregate.argument is None else f"{argument} IS NOT NULL"
        condition = "TRUE" if aggregate.condition is None else tried(aggregate.condition)
        indicator = f"CAST(COALESCE({condition} AND {present}, FALSE) AS BIGINT)"
        columns.append(f"{indicator} AS {valid_name(aggregate)}")
    if aggregate.kind != "count":
        value = _guarded(aggregate, argument)
        if centre is not None:
            value = f"({value}) - {centre!r}"
        columns.append(f"{value} AS {value_name(aggregate)}")
    return columns


def row_sql(query: DPQuery, metadata: DPMetadata, centres: Mapping[int, float]) -> str:
    """The row-level query: keys and aggregate inputs per row, WHERE applied."""
    items = [
        f"{tried(key.expression)} AS {key_name(i)}" for i, key in enumerate(query.skeleton.keys)
    ]
    for aggregate in query.aggregates:
        items.extend(aggregate_columns(aggregate, centres.get(aggregate.position)))
    where = query.node.get("where_clause")
    unit = metadata.privacy_unit
    if not unit.is_row:
        items.append(f"{quote_identifier(unit.id_column or '')} AS __dp_id")
    # Only checked parse-tree expressions printed by DuckDB, quoted names and our own names.
    sql = f"SELECT {', '.join(items)} FROM {from_clause(query)}"  # noqa: S608
    if where is not None:
        sql += f" WHERE {tried(where)}"
    if unit.is_row:
        return sql
    # Keep at most max_contributions rows per person, chosen by the rows' own values.
    names = ", ".join(item.rsplit(" AS ", 1)[1] for item in items[:-1])
    return (
        f"SELECT * EXCLUDE (__dp_rank, __dp_id) FROM (SELECT *, row_number() OVER "  # noqa: S608
        f"(PARTITION BY __dp_id ORDER BY {names}) AS __dp_rank FROM ({sql})) "
        f"WHERE __dp_rank <= {unit.max_contributions}"
    )


def run_rows(sql: str, dataset: str, frame: pd.DataFrame, *, private: bool) -> pl.DataFrame:
    """Run generated SQL on one table; errors never quote private values."""
    con = open_connection({dataset: plain(frame)})
    try:
        with refusing_errors(private=private):
            table = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    return pl.from_arrow(table, rechunk=False)  # type: ignore[return-value]


def output_names(query: DPQuery, frame: pd.DataFrame) -> list[str]:
    """The column names DuckDB gives the query's result, from a run on zero rows (schema only)."""
    empty = plain(frame).iloc[:0]
    con = open_connection({query.dataset: empty})
    try:
        with refusing_errors(private=True):  # zero rows: only bind errors can happen
            cursor = con.execute(query.sql)
        return [str(column[0]) for column in cursor.description or []]
    finally:
        con.close()
