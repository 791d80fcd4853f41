"""Every row-level expression of a checked query under DuckDB's ``TRY``.

Whether a query *fails* must not depend on the private rows. A cast, an overflow or
an index that fails only for some patient's value
(``WHERE CAST(CASE WHEN age = 29 THEN 'x' ELSE '1' END AS INTEGER) = 1``) would
otherwise refuse the query exactly when such a patient exists: a membership oracle,
answered at once and for free. Under ``TRY`` the failing row's value is NULL -- a
function of that row alone -- so the query is answered either way, and the row is
simply not counted where the expression failed (as ``WHERE age <> 29`` would), which
the cell rules judge like any other answer.

The rewrite is mechanical, on DuckDB's own parse tree: each maximal sub-expression
that aggregates nothing (in WHERE, the select list, GROUP BY and ORDER BY, and the
arguments of aggregates) and is more than a column or a constant is wrapped in
``TRY``. Equal expressions are wrapped equally, so GROUP BY and ORDER BY still match
their select items. The mock runs the same rewritten query, so both sides agree.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from typing import Any

from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.querylang.clauses import contains_aggregate
from remote_kernel.querylang.parse import canonical, deserialize_sql, serialize_sql

#: Leaves that cannot fail on a row (a column read, a literal), and TRY itself.
_SAFE_CLASSES = frozenset({"COLUMN_REF", "CONSTANT", "STAR"})
_TRY = "OPERATOR_TRY"


def _is_expression(node: Any) -> bool:
    return isinstance(node, dict) and "class" in node and "type" in node


def _wrapped(node: dict[str, Any]) -> dict[str, Any]:
    """``TRY(node)``, the alias moved to the wrapper (so column names by alias survive)."""
    inner = {**node, "alias": ""}
    return {
        "class": "OPERATOR",
        "type": _TRY,
        "alias": node.get("alias", ""),
        "query_location": node.get("query_location", 0),
        "query_location_length": 0,
        "children": [inner],
    }


def guard_expression(node: Any) -> Any:
    """``node`` with every maximal aggregate-free sub-expression under TRY."""
    if not _is_expression(node):
        return _guard_parts(node)
    if node["class"] in _SAFE_CLASSES or node.get("type") == _TRY:
        return node
    if not contains_aggregate(node):
        return _wrapped(node)
    return {key: _guard_parts(value) for key, value in node.items()}


def _guard_parts(value: Any) -> Any:
    """Descend through the non-expression parts of a tree (argument lists, CASE arms)."""
    if _is_expression(value):
        return guard_expression(value)
    if isinstance(value, dict):
        return {key: _guard_parts(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_guard_parts(item) for item in value]
    return value


def guard_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """A SELECT node with WHERE, select items, GROUP BY and ORDER BY guarded."""
    guarded = copy.deepcopy(dict(node))
    if guarded.get("where_clause") is not None:
        guarded["where_clause"] = guard_expression(guarded["where_clause"])
    guarded["select_list"] = [guard_expression(i) for i in guarded.get("select_list") or []]
    guarded["group_expressions"] = [
        guard_expression(g) for g in guarded.get("group_expressions") or []
    ]
    for modifier in guarded.get("modifiers") or []:
        if modifier.get("type") == "ORDER_MODIFIER":
            for order in modifier.get("orders") or []:
                order["expression"] = guard_expression(order["expression"])
    return guarded


@functools.lru_cache(maxsize=256)
def guarded_sql(sql: str) -> str:
    """``sql`` (one checked SELECT) with its row-level expressions under TRY.

    Printed by DuckDB and parsed back to prove the printed text is the guarded tree
    (~8 ms for an evidence query on this machine; cached, as a pure function of the text).
    """
    document = serialize_sql(sql)
    statements = document.get("statements") or []
    if document.get("error") or len(statements) != 1:
        raise QueryRejected("the query could not be prepared safely; simplify it.")
    node = guard_node(statements[0]["node"])
    if canonical(node) == canonical(statements[0]["node"]):
        return sql
    statements[0]["node"] = node
    text = deserialize_sql(document)
    again = serialize_sql(text).get("statements") or [{}]
    if canonical(again[0].get("node")) != canonical(node):
        raise QueryRejected(
            "the query could not be prepared safely (DuckDB prints it differently from how "
            "it parsed it); simplify it."
        )
    return text
