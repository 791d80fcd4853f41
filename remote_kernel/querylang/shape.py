"""The shape rule: what may be asked.

:func:`check_query` accepts only

    SELECT <group keys>, <COUNT/SUM/AVG of a column>...
    FROM <one dataset> [WHERE ...] [GROUP BY <keys>] [ORDER BY ...] [LIMIT ...]

and returns a :class:`~remote_kernel.querylang.parsed.ParsedQuery` saying where
the group keys and aggregates are, which is all the datasite needs to add its
evidence. The checks run in a fixed
order (statement, FROM, the whole tree, WHERE, select list, GROUP BY, aggregates,
ORDER BY / LIMIT, column names), so a query with several problems always gets the
same first message.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.querylang.clauses import (
    CLASS_MESSAGES,
    WHAT_TO_DO,
    check_column_refs,
    check_expression,
    check_from,
    forbid_anywhere,
)
from remote_kernel.querylang.parse import canonical, serialize_sql
from remote_kernel.querylang.parsed import ParsedQuery
from remote_kernel.querylang.select_list import (
    Select,
    group_keys,
    order_and_limit,
    select_aggregates,
)

#: Prefix of the evidence columns the datasite adds to the select list.
EVIDENCE_PREFIX = "__rk_"


def check_query(
    sql: str,
    dataset_names: Collection[str],
    columns: Mapping[str, Collection[str]] | None = None,
) -> ParsedQuery:
    """Accept only a single aggregate SELECT over one dataset; say why otherwise.

    Parsing is DuckDB's (``json_serialize_sql``), so what is checked is what runs.
    The select list may hold only GROUP BY keys (columns or expressions of columns,
    e.g. ``FLOOR(age / 10) * 10`` for age bands), constants, and COUNT(*),
    COUNT(col), SUM(col), AVG(col)/MEAN(col) with a plain column argument. No joins,
    subqueries, CTEs, set operations, table functions, SAMPLE, QUALIFY, HAVING,
    window functions, DISTINCT, ROLLUP/CUBE/GROUPING SETS. WHERE, ORDER BY and
    LIMIT are accepted (WHERE is recorded: the policy may send it to review).

    ``columns`` (dataset -> column names), when given, also checks that aggregate
    arguments are real columns (not select aliases, which DuckDB would otherwise
    resolve to an expression) and that no alias used in GROUP BY hides a column.
    """
    document = _parse_one_select(sql)
    node = document["statements"][0]["node"]
    _check_statement_form(node)
    dataset, qualifiers = check_from(node.get("from_table"), dataset_names)
    forbid_anywhere(node, sql)
    where = node.get("where_clause")
    if where is not None:
        check_expression(sql, where, "WHERE")
    select = _select_list(sql, node, qualifiers)
    grouping = group_keys(select, node)
    aggregates = select_aggregates(select, grouping.positions)
    if not aggregates and not grouping.keys:
        raise QueryRejected(f"the query returns no aggregate. {WHAT_TO_DO}")
    ordering = order_and_limit(select, node, grouping.keys, aggregates)
    parsed = ParsedQuery(
        sql=sql,
        dataset=dataset,
        document=document,
        select_count=len(select.items),
        keys=tuple(grouping.keys),
        aggregates=tuple(aggregates),
        aliases=select.aliases,
        alias_group_refs=tuple(grouping.alias_refs),
        has_where=where is not None,
        has_group_by=grouping.has_group_by,
        has_order_by=ordering.has_order_by,
        has_limit=ordering.has_limit,
        order_aggregates=tuple(ordering.order_aggregates),
    )
    if columns is not None:
        _check_columns(parsed, columns.get(dataset, ()))
        check_column_refs(node, qualifiers, select.aliases, columns.get(dataset, ()))
    return parsed


def _parse_one_select(sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of exactly one SELECT statement.

    Anything else (COPY, ATTACH, SET, INSERT, ...) is refused here, before any of it
    is looked at: those statements could read or change files, settings or data.
    """
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRejected(f"the query is empty. {WHAT_TO_DO}")
    document = serialize_sql(sql)
    if document.get("error"):
        message = str(document.get("error_message", "cannot parse"))
        if "Only SELECT statements" in message:
            raise QueryRejected(
                "only a single SELECT query is allowed: statements such as COPY, ATTACH, "
                "PRAGMA, SET, INSTALL/LOAD, CREATE, INSERT, UPDATE or DELETE could read or "
                f"change files and settings, or change the data. {WHAT_TO_DO}"
            )
        raise QueryRejected(f"the query cannot be parsed: {message}")
    statements = document.get("statements") or []
    if len(statements) != 1:
        raise QueryRejected(
            f"send exactly one SELECT statement (this has {len(statements)}); run several "
            f"queries as separate calls."
        )
    return document


def _check_statement_form(node: Mapping[str, Any]) -> None:
    """One flat SELECT: no set operation, CTE, DISTINCT, SAMPLE, QUALIFY or HAVING.

    Each of these either combines or hides rows in ways the per-cell evidence cannot
    account for; the messages say which and what to write instead.
    """
    if node.get("type") == "SET_OPERATION_NODE":
        raise QueryRejected(
            "UNION / INTERSECT / EXCEPT are not allowed: combining queries can line up or "
            "cancel out cells so that one person's row is isolated. Send separate queries."
        )
    if node.get("type") != "SELECT_NODE":
        raise QueryRejected(f"only a plain SELECT is allowed (got {node.get('type')}).")
    if (node.get("cte_map") or {}).get("map"):
        raise QueryRejected(
            "WITH (common table expressions) is not allowed: the datasite checks one flat "
            "aggregate over one dataset. Put the computation in the GROUP BY keys."
        )
    for modifier in node.get("modifiers") or []:
        kind = modifier.get("type")
        if kind == "DISTINCT_MODIFIER":
            raise QueryRejected(
                "SELECT DISTINCT is not allowed: it lists values without counting the people "
                "behind them. Use GROUP BY with COUNT(*) so each value's count can be checked."
            )
        if kind not in ("ORDER_MODIFIER", "LIMIT_MODIFIER", "LIMIT_PERCENT_MODIFIER"):
            raise QueryRejected(f"{kind} is not supported.")
    if node.get("sample") is not None:
        raise QueryRejected(
            "USING SAMPLE is not allowed: a random subset changes from query to query, and "
            "comparing runs can isolate people."
        )
    if node.get("qualify") is not None:
        raise QueryRejected("QUALIFY is not allowed: it filters rows by window functions.")
    if node.get("having") is not None:
        raise QueryRejected(
            "HAVING is not allowed: it hides cells depending on their values, which itself "
            "tells something about them. Filter the released table afterwards."
        )


def _select_list(sql: str, node: Mapping[str, Any], qualifiers: frozenset[str]) -> Select:
    """The select items with their aliases; reserved names and raw-row items refused.

    The evidence columns the datasite adds use :data:`EVIDENCE_PREFIX`, so a select
    alias may not start with it (it could pass itself off as evidence).
    """
    items: list[dict[str, Any]] = node.get("select_list") or []
    aliases: dict[str, int] = {}
    for position, item in enumerate(items):
        alias = str(item.get("alias") or "")
        if alias.lower().startswith(EVIDENCE_PREFIX):
            raise QueryRejected(f"column names starting with {EVIDENCE_PREFIX} are reserved.")
        if alias:
            aliases.setdefault(alias.lower(), position)
        if item.get("class") in ("STAR", "WINDOW", "SUBQUERY", "PARAMETER"):
            raise QueryRejected(f"{CLASS_MESSAGES[item['class']]}.")
    forms = [canonical(item, qualifiers) for item in items]
    return Select(sql, items, forms, aliases, qualifiers)


def _check_columns(parsed: ParsedQuery, columns: Collection[str]) -> None:
    """Aggregates take dataset columns, and no GROUP BY alias shadows one.

    DuckDB resolves such names differently from how the shape check read them, so
    the evidence would describe something other than what is released.
    """
    lower = {str(c).lower() for c in columns}
    for name in parsed.alias_group_refs:
        if name in lower:
            raise QueryRejected(
                f"the alias {name!r} is also a column of {parsed.dataset}; DuckDB would group "
                f"by the column, not the expression. Give the expression another name."
            )
    for aggregate in parsed.aggregates:
        if aggregate.column is not None and aggregate.column.lower() not in lower:
            raise QueryRejected(
                f"{aggregate.text}: {aggregate.column!r} is not a column of "
                f"{parsed.dataset}; aggregates take a dataset column, not an alias."
            )
