"""Parsing with DuckDB's own parser, and the names of aggregates.

The SQL is parsed by ``json_serialize_sql`` on a connection with no tables, so what
the shape rules check is exactly what DuckDB will run: there is no second parser
to disagree with it. The parse tree is plain JSON; the helpers here walk it,
compare expressions (:func:`canonical`) and print a modified tree back to SQL.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import duckdb

from remote_kernel.querylang.engine import open_connection

#: Aggregates whose value is a count, a sum or a mean of many people's values and
#: whose risk the rules can measure. Every other aggregate is refused.
ALLOWED_AGGREGATES: dict[str, str] = {
    "count_star": "count_star",
    "count": "count",
    "sum": "sum",
    "avg": "avg",
    "mean": "avg",
}

#: Why the common "unsafe" aggregates are refused, for the researcher's message.
_REVEALS_ONE_VALUE = (
    "returns one person's actual value (the smallest, the largest, the middle one, "
    "the most frequent, or simply one of them), however many rows the group has"
)
_REVEALS_VALUES = "returns the individual values themselves (a list or text of every row's value)"
_ONE_VALUE_AGGREGATES = """
    min max median quantile quantile_cont quantile_disc approx_quantile reservoir_quantile mode
    first last any_value arbitrary arg_max arg_min argmax argmin arg_max_null arg_min_null
    arg_max_nulls_last arg_min_nulls_last max_by min_by bit_and bit_or bool_and bool_or
""".split()
_VALUES_AGGREGATES = """
    list array_agg string_agg group_concat listagg histogram histogram_exact approx_top_k
    bitstring_agg json_group_array json_group_object variant_group_array variant_group_object lttb
""".split()
REFUSED_AGGREGATES: dict[str, str] = {
    **dict.fromkeys(_ONE_VALUE_AGGREGATES, _REVEALS_ONE_VALUE),
    **dict.fromkeys(_VALUES_AGGREGATES, _REVEALS_VALUES),
}

_parser_lock = threading.Lock()
_parser_connection: duckdb.DuckDBPyConnection | None = None


def _parser() -> duckdb.DuckDBPyConnection:
    """A locked-down connection with no tables, used only to parse and print SQL."""
    global _parser_connection
    if _parser_connection is None:
        _parser_connection = open_connection({})
    return _parser_connection


def serialize_sql(sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of ``sql`` as JSON (no binding: nothing is looked up or run)."""
    with _parser_lock:
        rows = _parser().execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
    return json.loads(rows[0][0])


def deserialize_sql(document: Mapping[str, Any]) -> str:
    """SQL text for a (modified) parse tree, printed by DuckDB itself."""
    with _parser_lock:
        rows = (
            _parser().execute("SELECT json_deserialize_sql(?)", [json.dumps(document)]).fetchall()
        )
    return str(rows[0][0])


def walk_nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every dict in a parse tree, the node itself first (the checks look at them all)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_nodes(value)


_VOLATILE_KEYS = frozenset({"query_location", "query_location_length", "alias"})


def canonical(node: Any, qualifiers: Collection[str] = ()) -> Any:
    """A parse-tree node without positions and aliases, with column names normalised.

    Two expressions with the same canonical form compute the same thing (``heart.sex``
    and ``SEX`` are both ``sex``), which is how select items are matched to GROUP BY
    keys.
    """
    if isinstance(node, dict):
        out = {k: canonical(v, qualifiers) for k, v in node.items() if k not in _VOLATILE_KEYS}
        if node.get("class") == "COLUMN_REF":
            names = [str(n).lower() for n in node.get("column_names", [])]
            if len(names) == 2 and names[0] in qualifiers:
                names = names[1:]
            out["column_names"] = names
        if node.get("class") == "FUNCTION" and "function_name" in out:
            out["function_name"] = str(out["function_name"]).lower()
        return out
    if isinstance(node, list):
        return [canonical(v, qualifiers) for v in node]
    return node


def source_text(sql: str, node: Mapping[str, Any]) -> str:
    """The researcher's own text for a node (DuckDB records byte offsets)."""
    start, length = node.get("query_location"), node.get("query_location_length")
    raw = sql.encode()
    if isinstance(start, int) and isinstance(length, int) and 0 <= start < len(raw) and length:
        return raw[start : start + length].decode(errors="replace")
    return node.get("alias") or node.get("function_name") or node.get("class", "expression")


def function_name(node: Mapping[str, Any]) -> str:
    return str(node.get("function_name", "")).lower()


def is_aggregate_name(name: str) -> bool:
    return name in ALLOWED_AGGREGATES or name in REFUSED_AGGREGATES or name in _aggregate_names()


_AGGREGATE_NAMES: frozenset[str] | None = None


def _aggregate_names() -> frozenset[str]:
    """Every aggregate DuckDB knows (for messages; the checks do not depend on it)."""
    global _AGGREGATE_NAMES
    if _AGGREGATE_NAMES is None:
        with _parser_lock:
            rows = (
                _parser()
                .execute(
                    "SELECT DISTINCT function_name FROM duckdb_functions() "
                    "WHERE function_type = 'aggregate'"
                )
                .fetchall()
            )
        _AGGREGATE_NAMES = frozenset(str(r[0]).lower() for r in rows)
    return _AGGREGATE_NAMES
