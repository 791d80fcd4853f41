"""The DP tier's shape check: the exact tier's rules, with the aggregates DP can bound.

Everything outside the aggregates (one dataset, WHERE, GROUP BY keys, ORDER BY,
LIMIT, no joins, subqueries or windows) is checked by
:func:`remote_kernel.querylang.check_query` itself, on a *skeleton* of the query
in which each aggregate is replaced by ``COUNT(*)`` under the same alias. The
aggregates are checked here, because the DP tier accepts what the exact tier
must refuse: an expression as argument (bounded in :mod:`.bounds`), a
``FILTER (WHERE ...)``, and MEDIAN / QUANTILE (an exponential mechanism over a
public grid, never one person's value).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.querylang import ParsedQuery, check_query, deserialize_sql, serialize_sql
from remote_kernel.querylang.clauses import check_column_refs, check_expression
from remote_kernel.querylang.parse import function_name, is_aggregate_name, source_text

#: DuckDB's aggregate names -> the DP aggregate computing them.
DP_AGGREGATES = {
    "count_star": "count",
    "count": "count",
    "sum": "sum",
    "avg": "avg",
    "mean": "avg",
    "median": "quantile",
    "quantile": "quantile",
    "quantile_cont": "quantile",
    "quantile_disc": "quantile",
}

DP_WHAT_TO_DO = (
    "The DP tier answers COUNT(*), COUNT(x), SUM(x), AVG(x), MEDIAN(x) and QUANTILE_CONT(x, q) "
    "(x a column or an expression of bounded columns, optionally with FILTER (WHERE ...)), "
    "grouped by columns or expressions."
)


@dataclass(frozen=True)
class DPAggregate:
    """One aggregate of the select list, as the DP tier computes it."""

    position: int
    kind: str  # "count" | "sum" | "avg" | "quantile"
    argument: dict[str, Any] | None  # None for COUNT(*)
    condition: dict[str, Any] | None  # FILTER (WHERE ...)
    text: str
    quantile: float | None = None


@dataclass(frozen=True)
class DPQuery:
    """A query the DP tier accepts: the skeleton's parse plus the DP aggregates."""

    sql: str
    document: dict[str, Any]
    skeleton: ParsedQuery
    aggregates: tuple[DPAggregate, ...]
    qualifiers: frozenset[str]

    @property
    def node(self) -> dict[str, Any]:
        return self.document["statements"][0]["node"]

    @property
    def dataset(self) -> str:
        return self.skeleton.dataset


def check_dp_query(sql: str, columns: Mapping[str, Collection[str]]) -> DPQuery:
    """Accept an aggregate query for the DP tier, or raise :class:`QueryRejected` saying why."""
    document = serialize_sql(sql) if isinstance(sql, str) and sql.strip() else {}
    statements = document.get("statements") or []
    if document.get("error") or len(statements) != 1:
        check_query(sql, list(columns), columns)  # raises the exact tier's message
    node = statements[0]["node"]
    if node.get("type") != "SELECT_NODE":
        check_query(sql, list(columns), columns)
    items = node.get("select_list") or []
    aggregates = [_aggregate(sql, i, item) for i, item in enumerate(items) if _is_dp(item)]
    skeleton = check_query(deserialize_sql(_skeleton(document, aggregates)), list(columns), columns)
    qualifiers = _qualifiers(node, skeleton.dataset)
    known = columns.get(skeleton.dataset, ())
    for aggregate in aggregates:
        for part in (aggregate.argument, aggregate.condition):
            if part is not None:
                check_expression(sql, part, aggregate.text)
                check_column_refs({"expression": part}, qualifiers, {}, known)
    if not aggregates:
        raise QueryRejected(f"the query has no aggregate. {DP_WHAT_TO_DO}")
    return DPQuery(sql, document, skeleton, tuple(aggregates), qualifiers)


def _is_dp(item: Mapping[str, Any]) -> bool:
    """A select item that is an aggregate call (a DP one, or one refused with a DP message)."""
    if item.get("class") != "FUNCTION":
        return False
    name = function_name(item)
    if name in DP_AGGREGATES:
        return True
    if is_aggregate_name(name):
        raise QueryRejected(
            f"{name.upper()}(...) has no DP version here: "
            f"MIN, MAX, MODE and the like return one person's value, which noise cannot hide. "
            f"Ask for a high or low QUANTILE_CONT(x, 0.95) instead. {DP_WHAT_TO_DO}"
        )
    return False


def _aggregate(sql: str, position: int, item: dict[str, Any]) -> DPAggregate:
    name = function_name(item)
    text = source_text(sql, item)
    if item.get("distinct"):
        raise QueryRejected(
            f"{text}: DISTINCT inside an aggregate is not supported by the DP tier (one person "
            f"can change a distinct count in ways the noise is not calibrated for)."
        )
    if (item.get("order_bys") or {}).get("orders") or item.get("export_state"):
        raise QueryRejected(f"{text}: ORDER BY inside an aggregate is not allowed.")
    if item.get("schema") or item.get("catalog"):
        raise QueryRejected(f"{text}: call aggregates without a schema name.")
    arguments = [a["expression"] for a in item.get("arguments") or []]
    if any(a.get("name") for a in item.get("arguments") or []):
        raise QueryRejected(f"{text}: named arguments are not supported.")
    kind = DP_AGGREGATES[name]
    if name == "count_star" or (name == "count" and not arguments):
        return DPAggregate(position, "count", None, item.get("filter"), text)
    quantile = None
    if name in ("quantile", "quantile_cont", "quantile_disc"):
        if len(arguments) != 2:
            raise QueryRejected(f"{text}: write {name.upper()}(column, q) with q in (0, 1).")
        quantile = _fraction(text, arguments.pop())
    elif name == "median":
        quantile = 0.5
    if len(arguments) != 1:
        raise QueryRejected(f"{text}: {name.upper()} takes exactly one argument.")
    return DPAggregate(position, kind, arguments[0], item.get("filter"), text, quantile)


def _fraction(text: str, node: Mapping[str, Any]) -> float:
    literal = node.get("literal") or {}
    try:
        value = float(literal.get("text", literal.get("value")))
    except (TypeError, ValueError):
        value = -1.0
    if node.get("class") != "CONSTANT" or not 0.0 < value < 1.0:
        raise QueryRejected(f"{text}: the quantile must be one number between 0 and 1.")
    return value


def _skeleton(document: dict[str, Any], aggregates: list[DPAggregate]) -> dict[str, Any]:
    """The query with every DP aggregate replaced by COUNT(*) under the same alias."""
    skeleton = copy.deepcopy(document)
    count = serialize_sql("SELECT COUNT(*)")["statements"][0]["node"]["select_list"][0]
    items = skeleton["statements"][0]["node"]["select_list"]
    for aggregate in aggregates:
        replacement = copy.deepcopy(count)
        replacement["alias"] = items[aggregate.position].get("alias", "")
        items[aggregate.position] = replacement
    return skeleton


def _qualifiers(node: Mapping[str, Any], dataset: str) -> frozenset[str]:
    table = node.get("from_table") or {}
    names = {dataset.lower()}
    if table.get("alias"):
        names.add(str(table["alias"]).lower())
    return frozenset(names)
