"""The sound auto-release tier: aggregate queries the datasite runs and checks itself.

A table computed in the researcher's kernel can never be released automatically:
researcher code could have computed it from anything and called it "counts". A
*declarative* query is different. The kernel only asks; the datasite parses the
SQL (DuckDB's own parser, through ``json_serialize_sql``: no second parser to
disagree with the one that runs it), accepts only the shape

    SELECT <group keys>, <COUNT/SUM/AVG of a column>...
    FROM <one dataset> [WHERE ...] [GROUP BY <keys>] [ORDER BY ...] [LIMIT ...]

runs it in an in-memory DuckDB that sees only the site's datasets and cannot read
or write files, and -- in the same query -- computes each cell's evidence from the
private rows: its row count, its contributor count per aggregate, the sum, the
smallest and largest value, and the largest absolute contributions. The rules in
:mod:`remote_kernel.checks.rules` then decide, cell by cell, under the researcher's
:class:`~remote_kernel.checks.policy.Thresholds`. Nothing the researcher supplied is
used as evidence.

What this tier does *not* protect against (documented for reviewers and admins):

* Differencing. Two queries whose row sets differ by one person ("WHERE age > 50"
  and "WHERE age > 50 AND chol <> 233") each pass every cell rule, and their
  difference is that person's value. Computed group keys (``GROUP BY age > 50 AND
  chol <> 233``) do the same as a WHERE. Today the policy's ``allow_where=False``
  (the ``strict`` preset) sends every query with a WHERE clause *or a computed
  group key* to a person; only plain-column GROUP BY queries over the whole
  dataset auto-release there. With ``allow_where=True`` (``acro``, ``opensafely``)
  differencing across queries is not detected: no query history is kept.
* Secondary suppression. ``failing_cells="suppress"`` blanks failing cells and
  nothing else; a total from another query (or a margin) can give a blanked value
  back. The findings say so.
* The decision itself as a channel. With ``allow_where=True`` the verdict answers
  yes/no questions: ``GROUP BY pid = 'P1' AND chol > 200`` is held (a cell of one)
  or released (no such cell) depending on one person's value. Under
  ``allow_where=False`` such queries are always held, with a summary that depends
  on the query text only. Errors raised while a query runs on the private data are
  reported with a fixed message (DuckDB's can quote values), but *whether* it
  failed is still one bit.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from remote_kernel.checks import rules
from remote_kernel.checks.policy import Thresholds
from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.protocol.models import Finding, Verdict

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

#: Scalar functions refused anywhere: they change the number of rows (UNNEST), read
#: state that is not the dataset, raise with a message of the query's choosing
#: (``error``), or make the running time depend on the data (``sleep_ms``).
REFUSED_FUNCTIONS = frozenset(
    {
        "unnest",
        "generate_subscripts",
        "getvariable",
        "current_setting",
        "current_query",
        "query",
        "query_table",
        "error",
        "sleep_ms",
        "nextval",
        "currval",
    }
)

#: Expression node classes a WHERE clause or a group key may contain.
_EXPRESSION_CLASSES = frozenset(
    {
        "COLUMN_REF",
        "CONSTANT",
        "FUNCTION",
        "OPERATOR",
        "COMPARISON",
        "CONJUNCTION",
        "CASE",
        "CAST",
        "BETWEEN",
        "COLLATE",
        "TYPE",
    }
)

_CLASS_MESSAGES = {
    "SUBQUERY": "subqueries (SELECT inside the query) are not allowed: they can read other "
    "rows or tables outside the checked aggregate; write one flat aggregate query",
    "WINDOW": "window functions (... OVER (...)) are not allowed: they compute values per row "
    "and can return individual rows' values; use GROUP BY aggregates",
    "STAR": "SELECT * (or COLUMNS(...), t.*) is not allowed: it returns raw rows; select group "
    "keys and COUNT/SUM/AVG aggregates",
    "PARAMETER": "query parameters ($1, ?) are not supported; write the values into the query",
    "POSITIONAL_REFERENCE": "#n column references are not supported; name the columns",
    "LAMBDA": "lambda expressions are not supported in aggregate queries",
}

#: Prefix of the evidence columns the datasite adds to the select list.
EVIDENCE_PREFIX = "__rk_"

_WHAT_TO_DO = (
    "Write an aggregate query: SELECT <group keys>, COUNT(*), COUNT(col), SUM(col) or "
    "AVG(col) FROM <dataset> GROUP BY <group keys>."
)


# --- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Aggregate:
    """One allowed aggregate in the select list."""

    position: int  # index in the select list (= column of the result)
    function: str  # "count_star" | "count" | "sum" | "avg"
    column: str | None  # the argument's column name; None for COUNT(*)
    argument: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    text: str = ""

    @property
    def is_count(self) -> bool:
        return self.function in ("count_star", "count")


@dataclass(frozen=True)
class GroupKey:
    """One GROUP BY expression and where the result shows it."""

    expression: dict[str, Any] = field(compare=False, repr=False)
    #: Index of the select item that shows this key, or None if it is not selected.
    select_position: int | None
    #: False for a plain column reference; True for an expression (a band, a CASE ...),
    #: which can carve out a subset just as a WHERE clause can.
    computed: bool
    text: str


@dataclass(frozen=True)
class ParsedQuery:
    """A query that passed :func:`check_query`, with the parts the evidence needs."""

    sql: str
    dataset: str
    #: The full ``json_serialize_sql`` document (statements[0] is the query).
    document: dict[str, Any] = field(compare=False, repr=False)
    select_count: int
    keys: tuple[GroupKey, ...]
    aggregates: tuple[Aggregate, ...]
    #: Select aliases (lower-cased) -> select position.
    aliases: Mapping[str, int]
    #: GROUP BY names resolved as select aliases (must not also be dataset columns).
    alias_group_refs: tuple[str, ...]
    has_where: bool
    has_group_by: bool
    has_order_by: bool
    has_limit: bool
    #: Select positions of the aggregates ORDER BY uses (row order depends on their values).
    order_aggregates: tuple[int, ...] = ()

    @property
    def orders_by_aggregate(self) -> bool:
        return bool(self.order_aggregates)

    @property
    def node(self) -> dict[str, Any]:
        return self.document["statements"][0]["node"]

    @property
    def computed_keys(self) -> tuple[GroupKey, ...]:
        return tuple(key for key in self.keys if key.computed)


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


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


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


def _text(sql: str, node: Mapping[str, Any]) -> str:
    """The researcher's own text for a node (DuckDB records byte offsets)."""
    start, length = node.get("query_location"), node.get("query_location_length")
    raw = sql.encode()
    if isinstance(start, int) and isinstance(length, int) and 0 <= start < len(raw) and length:
        return raw[start : start + length].decode(errors="replace")
    return node.get("alias") or node.get("function_name") or node.get("class", "expression")


def _function_name(node: Mapping[str, Any]) -> str:
    return str(node.get("function_name", "")).lower()


def _is_aggregate_name(name: str) -> bool:
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


def _refuse_aggregate(name: str, text: str) -> QueryRejected:
    reason = REFUSED_AGGREGATES.get(name)
    if reason is None:
        reason = (
            "is not one of the aggregates whose disclosure risk the datasite can measure "
            "(COUNT, SUM, AVG)"
        )
        return QueryRejected(f"{text}: {name.upper()} {reason}. {_WHAT_TO_DO}")
    return QueryRejected(
        f"{text}: {name.upper()} {reason}, so it can never be released automatically. "
        f"Use COUNT(*), COUNT(col), SUM(col) or AVG(col) instead; a reviewer can be asked "
        f"about anything else."
    )


def _is_order_by_all(sql: str, expression: dict[str, Any]) -> bool:
    """``ORDER BY ALL``: DuckDB parses it as a ``COLUMNS(*)`` star with no place in the
    text (``ORDER BY COLUMNS(*)`` and ``ORDER BY *`` have one, and stay refused)."""
    location = expression.get("query_location")
    return (
        expression.get("class") == "STAR"
        and expression.get("columns") is True
        and not expression.get("relation_name")
        and not expression.get("expr")
        and not any(expression.get(k) for k in ("exclude_list", "replace_list", "rename_list"))
        and not expression.get("qualified_exclude_list")
        and not expression.get("query_location_length")
        and not (isinstance(location, int) and 0 <= location < len(sql.encode()))
    )


def _check_expression(sql: str, node: Any, where: str) -> None:
    """A WHERE clause, group key or ORDER BY item: row-wise expressions of columns only."""
    for child in _walk(node):
        cls = child.get("class")
        if cls is None:
            if child.get("type") in ("SUBQUERY", "SELECT_NODE", "SET_OPERATION_NODE"):
                raise QueryRejected(f"{where}: {_CLASS_MESSAGES['SUBQUERY']}")
            continue
        if cls not in _EXPRESSION_CLASSES:
            message = _CLASS_MESSAGES.get(cls, f"{cls.lower()} expressions are not supported")
            raise QueryRejected(f"{where}: {message}.")
        if cls == "FUNCTION":
            name = _function_name(child)
            text = _text(sql, child)
            if child.get("schema") or child.get("catalog"):
                raise QueryRejected(f"{where}: {text}: call functions without a schema name.")
            if _is_aggregate_name(name):
                if name in ALLOWED_AGGREGATES:
                    raise QueryRejected(
                        f"{where}: {text}: aggregates may appear only on their own in the "
                        f"select list (not inside other expressions, WHERE or GROUP BY). "
                        f"Select {name.upper()}(col) and transform the released table "
                        f"afterwards."
                    )
                raise _refuse_aggregate(name, text)
            if name in REFUSED_FUNCTIONS:
                raise QueryRejected(f"{where}: {text}: {name}() is not allowed here.")
            if child.get("filter") or child.get("distinct") or child.get("export_state"):
                raise QueryRejected(f"{where}: {text}: FILTER/DISTINCT are not allowed here.")


def _check_aggregate(sql: str, position: int, node: Mapping[str, Any]) -> Aggregate:
    name = _function_name(node)
    text = _text(sql, node)
    if node.get("schema") or node.get("catalog"):
        raise QueryRejected(f"{text}: call aggregates without a schema name.")
    if node.get("distinct"):
        raise QueryRejected(
            f"{text}: DISTINCT inside an aggregate is not allowed: COUNT(DISTINCT col) counts "
            f"values, not people, and the cell rules cannot measure its risk. Use "
            f"GROUP BY col with COUNT(*) instead."
        )
    if node.get("filter") is not None:
        raise QueryRejected(
            f"{text}: FILTER (WHERE ...) is not allowed: it makes a hidden subset of each "
            f"cell. Put the condition in GROUP BY (as a key) or in WHERE."
        )
    if (node.get("order_bys") or {}).get("orders") or node.get("export_state"):
        raise QueryRejected(f"{text}: ORDER BY inside an aggregate is not allowed.")
    arguments = node.get("arguments") or []
    function = ALLOWED_AGGREGATES[name]
    if function == "count" and not arguments:
        function = "count_star"
    if function == "count_star":
        if arguments:
            raise QueryRejected(f"{text}: write COUNT(*) or COUNT(column).")
        return Aggregate(position, "count_star", None, None, text)
    if len(arguments) != 1 or arguments[0].get("name"):
        raise QueryRejected(f"{text}: {name.upper()} takes exactly one column.")
    argument = arguments[0]["expression"]
    if argument.get("class") != "COLUMN_REF" or not 1 <= len(argument["column_names"]) <= 2:
        raise QueryRejected(
            f"{text}: the argument of {name.upper()} must be a plain column name. An "
            f"expression (a CASE, a condition, arithmetic) can single out one row's value "
            f"inside a large cell, and the cell rules would not see it. Add a computed "
            f"column to the GROUP BY instead."
        )
    column = str(argument["column_names"][-1])
    return Aggregate(position, function, column, argument, text)


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
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRejected(f"the query is empty. {_WHAT_TO_DO}")
    document = serialize_sql(sql)
    if document.get("error"):
        message = str(document.get("error_message", "cannot parse"))
        if "Only SELECT statements" in message:
            raise QueryRejected(
                "only a single SELECT query is allowed: statements such as COPY, ATTACH, "
                "PRAGMA, SET, INSTALL/LOAD, CREATE, INSERT, UPDATE or DELETE could read or "
                f"change files and settings, or change the data. {_WHAT_TO_DO}"
            )
        raise QueryRejected(f"the query cannot be parsed: {message}")
    statements = document.get("statements") or []
    if len(statements) != 1:
        raise QueryRejected(
            f"send exactly one SELECT statement (this has {len(statements)}); run several "
            f"queries as separate calls."
        )
    node = statements[0]["node"]
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

    dataset, qualifiers = _check_from(node.get("from_table"), dataset_names)
    _forbid_anywhere(node, sql)

    where = node.get("where_clause")
    if where is not None:
        _check_expression(sql, where, "WHERE")

    # --- the select list -------------------------------------------------------------
    select_list: list[dict[str, Any]] = node.get("select_list") or []
    aliases: dict[str, int] = {}
    for position, item in enumerate(select_list):
        alias = str(item.get("alias") or "")
        if alias.lower().startswith(EVIDENCE_PREFIX):
            raise QueryRejected(f"column names starting with {EVIDENCE_PREFIX} are reserved.")
        if alias:
            aliases.setdefault(alias.lower(), position)
        if item.get("class") in ("STAR", "WINDOW", "SUBQUERY", "PARAMETER"):
            raise QueryRejected(f"{_CLASS_MESSAGES[item['class']]}.")
    forms = [canonical(item, qualifiers) for item in select_list]

    # --- GROUP BY --------------------------------------------------------------------
    group_expressions: list[dict[str, Any]] = node.get("group_expressions") or []
    group_sets = node.get("group_sets") or []
    handling = node.get("aggregate_handling", "STANDARD_HANDLING")
    if handling not in ("STANDARD_HANDLING", "FORCE_AGGREGATES"):
        raise QueryRejected(f"GROUP BY form {handling} is not supported.")
    if group_expressions and (
        len(group_sets) != 1 or sorted(group_sets[0]) != list(range(len(group_expressions)))
    ):
        raise QueryRejected(
            "ROLLUP, CUBE and GROUPING SETS are not allowed: subtotals next to cells let "
            "suppressed cells be worked out by subtraction. Send one GROUP BY per table."
        )

    keys: list[GroupKey] = []
    alias_refs: list[str] = []
    key_positions: set[int] = set()
    for expression in group_expressions:
        _check_expression(sql, expression, "GROUP BY")
        position = _resolve_reference(expression, forms, aliases, qualifiers, alias_refs)
        if position is not None:
            item = select_list[position]
            if _contains_aggregate(item):
                raise QueryRejected(
                    f"GROUP BY {_text(sql, expression)} refers to an aggregate; group by "
                    f"columns or expressions of columns."
                )
            shown: dict[str, Any] = item
        else:
            if expression.get("class") == "CONSTANT":
                raise QueryRejected(
                    f"GROUP BY {_text(sql, expression)}: grouping by a constant does nothing; "
                    f"group by columns (or by select-list positions 1, 2, ...)."
                )
            shown = expression
            form = canonical(expression, qualifiers)
            position = next((i for i, f in enumerate(forms) if f == form), None)
        computed = shown.get("class") != "COLUMN_REF"
        keys.append(GroupKey(shown, position, computed, _text(sql, shown)))
        if position is not None:
            key_positions.add(position)
    if handling == "FORCE_AGGREGATES":  # GROUP BY ALL: every non-aggregate item is a key
        for position, item in enumerate(select_list):
            if item.get("class") == "CONSTANT" or _contains_aggregate(item):
                continue
            _check_expression(sql, item, "GROUP BY ALL")
            computed = item.get("class") != "COLUMN_REF"
            keys.append(GroupKey(item, position, computed, _text(sql, item)))
            key_positions.add(position)
    has_group_by = bool(group_expressions) or handling == "FORCE_AGGREGATES"

    aggregates: list[Aggregate] = []
    for position, item in enumerate(select_list):
        cls = item.get("class")
        name = _function_name(item) if cls == "FUNCTION" else ""
        text = _text(sql, item)
        if cls == "FUNCTION" and name in ALLOWED_AGGREGATES:
            aggregates.append(_check_aggregate(sql, position, item))
            continue
        if cls == "FUNCTION" and _is_aggregate_name(name):
            raise _refuse_aggregate(name, text)
        if position in key_positions or cls == "CONSTANT":
            _check_expression(sql, item, "SELECT")
            continue
        if _contains_aggregate(item):
            _check_expression(sql, item, "SELECT")  # names the aggregate and says why
        raise QueryRejected(
            f"{text} is neither a GROUP BY key nor an aggregate: it would return each row's "
            f"own value. Add it to GROUP BY (the cell counts will then be checked) or "
            f"aggregate it with COUNT/SUM/AVG. {_WHAT_TO_DO}"
        )
    if not aggregates and not keys:
        raise QueryRejected(f"the query returns no aggregate. {_WHAT_TO_DO}")

    # --- ORDER BY / LIMIT ------------------------------------------------------------
    has_order_by = has_limit = False
    order_aggregates: list[int] = []
    aggregate_positions = {a.position for a in aggregates}
    key_forms = [canonical(k.expression, qualifiers) for k in keys]
    for modifier in node.get("modifiers") or []:
        if modifier["type"] == "ORDER_MODIFIER":
            has_order_by = True
            for order in modifier.get("orders") or []:
                expression = order["expression"]
                if _is_order_by_all(sql, expression):
                    # Every result column, left to right: the aggregates among them too.
                    order_aggregates.extend(sorted(aggregate_positions))
                    continue
                position = _resolve_reference(expression, forms, aliases, qualifiers, [])
                if position is None and canonical(expression, qualifiers) in key_forms:
                    _check_expression(sql, expression, "ORDER BY")
                    continue
                if position is None:
                    raise QueryRejected(
                        f"ORDER BY {_text(sql, expression)}: order only by columns of the "
                        f"result (their names, aliases or positions 1, 2, ...)."
                    )
                if position in aggregate_positions:
                    order_aggregates.append(position)
        else:
            has_limit = True
            for part in ("limit", "offset"):
                value = modifier.get(part)
                if value is not None and value.get("class") != "CONSTANT":
                    raise QueryRejected("LIMIT and OFFSET must be plain numbers.")

    parsed = ParsedQuery(
        sql=sql,
        dataset=dataset,
        document=document,
        select_count=len(select_list),
        keys=tuple(keys),
        aggregates=tuple(aggregates),
        aliases=aliases,
        alias_group_refs=tuple(alias_refs),
        has_where=where is not None,
        has_group_by=has_group_by,
        has_order_by=has_order_by,
        has_limit=has_limit,
        order_aggregates=tuple(order_aggregates),
    )
    if columns is not None:
        _check_columns(parsed, columns.get(dataset, ()))
        _check_column_refs(node, qualifiers, aliases, columns.get(dataset, ()))
    return parsed


def _check_from(table: Any, dataset_names: Collection[str]) -> tuple[str, frozenset[str]]:
    names = {str(n).lower(): str(n) for n in dataset_names}
    known = ", ".join(sorted(names.values())) or "none"
    kind = (table or {}).get("type")
    if kind == "EMPTY" or table is None:
        raise QueryRejected(f"the query needs FROM <dataset> (datasets here: {known}).")
    if kind == "JOIN":
        raise QueryRejected(
            "joins (and comma-separated FROM lists) are not allowed: the cell rules are "
            "about the rows of one dataset. Query one dataset at a time."
        )
    if kind == "TABLE_FUNCTION":
        raise QueryRejected(
            "table functions (read_csv, read_parquet, glob, range, ...) are not allowed: "
            f"queries may read only this datasite's datasets ({known})."
        )
    if kind == "SUBQUERY":
        raise QueryRejected(f"FROM (SELECT ...): {_CLASS_MESSAGES['SUBQUERY']}.")
    if kind != "BASE_TABLE":
        raise QueryRejected(f"FROM must name one dataset ({known}); {kind} is not allowed.")
    if table.get("sample") is not None:
        raise QueryRejected("TABLESAMPLE / USING SAMPLE is not allowed.")
    if table.get("at_clause") is not None:
        raise QueryRejected("AT (time travel) clauses are not allowed.")
    if table.get("schema_name") or table.get("catalog_name"):
        raise QueryRejected(f"name the dataset without a schema or catalog ({known}).")
    if table.get("column_name_alias"):
        raise QueryRejected("renaming a dataset's columns in FROM is not supported.")
    name = str(table.get("table_name", ""))
    if name.lower() not in names:
        raise QueryRejected(f"unknown dataset {name!r}: queries may read only {known}.")
    qualifiers = {name.lower()}
    if table.get("alias"):
        qualifiers.add(str(table["alias"]).lower())
    return names[name.lower()], frozenset(qualifiers)


def _forbid_anywhere(node: Mapping[str, Any], sql: str) -> None:
    """No nested query, window, star or parameter anywhere in the tree, whatever the clause
    (``ORDER BY ALL``, which DuckDB writes as a star, is no star)."""
    order_by_all = {
        id(order["expression"])
        for modifier in node.get("modifiers") or []
        if modifier.get("type") == "ORDER_MODIFIER"
        for order in modifier.get("orders") or []
        if _is_order_by_all(sql, order.get("expression") or {})
    }
    children = [v for k, v in node.items() if k != "from_table"]
    for child in _walk(children):
        if id(child) in order_by_all:
            continue
        cls = child.get("class")
        if cls in _CLASS_MESSAGES:
            raise QueryRejected(f"{_CLASS_MESSAGES[cls]}.")
        if child.get("type") in ("SELECT_NODE", "SET_OPERATION_NODE", "CTE_NODE"):
            raise QueryRejected(f"{_CLASS_MESSAGES['SUBQUERY']}.")


def _contains_aggregate(node: Any) -> bool:
    return any(
        child.get("class") == "FUNCTION" and _is_aggregate_name(_function_name(child))
        for child in _walk(node)
    ) or any(child.get("class") == "WINDOW" for child in _walk(node))


def _resolve_reference(
    expression: Mapping[str, Any],
    forms: Sequence[Any],
    aliases: Mapping[str, int],
    qualifiers: Collection[str],
    alias_refs: list[str],
) -> int | None:
    """Which select item a GROUP BY / ORDER BY expression stands for, if any.

    Positions (``GROUP BY 1``) and aliases (``GROUP BY band``) refer to select items;
    otherwise an item that is the same expression. A name that is both a select
    item's own column and an alias resolves to the column, as DuckDB's binder does.
    """
    cls = expression.get("class")
    if cls == "CONSTANT":
        literal = expression.get("literal") or {}
        if literal.get("kind") in ("INTEGER", "BIGINT", "HUGEINT", "SMALLINT", "TINYINT"):
            index = int(literal.get("text", literal.get("value", 0))) - 1
            if not 0 <= index < len(forms):
                raise QueryRejected(f"position {index + 1} is not a column of the select list.")
            return index
        return None
    form = canonical(expression, qualifiers)
    for index, item_form in enumerate(forms):
        if item_form == form:
            return index
    if cls == "COLUMN_REF" and len(expression.get("column_names", [])) == 1:
        name = str(expression["column_names"][0]).lower()
        if name in aliases:
            alias_refs.append(name)
            return aliases[name]
    return None


def _check_column_refs(
    node: Mapping[str, Any],
    qualifiers: Collection[str],
    aliases: Mapping[str, int],
    columns: Collection[str],
) -> None:
    """Every name must be a column of the dataset (or a select alias).

    In DuckDB a bare table name is a struct of the whole row: ``GROUP BY heart``
    would group by entire records and show them as keys.
    """
    known = {str(c).lower() for c in columns}
    for child in _walk([v for k, v in node.items() if k != "from_table"]):
        if child.get("class") != "COLUMN_REF":
            continue
        names = [str(n).lower() for n in child.get("column_names", [])]
        if len(names) >= 2 and names[0] in qualifiers and names[1] in known:
            continue
        if names and (names[0] in known or (len(names) == 1 and names[0] in aliases)):
            continue
        shown = ".".join(child.get("column_names", []))
        raise QueryRejected(
            f"{shown!r} is not a column of this dataset; its columns are "
            f"{', '.join(sorted(known))}. (A table name on its own stands for whole rows, "
            f"which cannot be released.)"
        )


def _check_columns(parsed: ParsedQuery, columns: Collection[str]) -> None:
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


# --- running -------------------------------------------------------------------------------


_database_lock = threading.Lock()
_database_connection: duckdb.DuckDBPyConnection | None = None


def _database() -> duckdb.DuckDBPyConnection:
    """The process's one in-memory DuckDB, locked down before any query sees it.

    Replacement scans of Python variables are switched off (otherwise ``FROM x``
    would read any DataFrame named ``x`` in the caller's frames), extensions are
    not auto-installed or auto-loaded, external access (files, network, ATTACH,
    COPY, extensions) is disabled, and the configuration is locked so that no
    query can switch any of it back on. All are global settings, inherited by every
    cursor. The database holds no tables: each query's cursor registers its own.
    """
    global _database_connection
    with _database_lock:
        if _database_connection is None:
            con = duckdb.connect(":memory:")
            for setting in (
                "python_enable_replacements = false",
                "autoinstall_known_extensions = false",
                "autoload_known_extensions = false",
                "enable_external_access = false",
                "lock_configuration = true",
            ):
                con.execute(f"SET GLOBAL {setting}")
            _database_connection = con
        return _database_connection


def open_connection(tables: Mapping[str, pd.DataFrame]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that sees only ``tables`` and can touch nothing else.

    A cursor on the locked-down process database (see :func:`_database`: external
    access disabled, configuration locked -- ``read_csv('/etc/passwd')``, ``COPY ...
    TO`` and ``SET enable_external_access=true`` all fail), with ``tables``
    registered as zero-copy views. Registered views are private to the cursor, so
    concurrent queries do not see each other's tables, and a fresh cursor per query
    costs microseconds where a fresh database costs ~30 ms. DuckDB cannot write
    through a registered DataFrame view; DDL could replace a view, which is why only
    a checked single SELECT is ever executed.
    """
    database = _database()
    with _database_lock:
        con = database.cursor()
    try:
        for name, frame in tables.items():
            con.register(str(name), frame)
    except Exception:
        con.close()
        raise
    return con


@dataclass
class QueryOutcome:
    """What the datasite did with one query.

    ``result`` is the true aggregate (for the datasite and reviewers; it also goes
    back to the kernel, which lives inside the datasite). ``released`` is what may
    leave: the result itself, a suppressed/rounded copy, or None when a person must
    decide. ``findings`` are for reviewers; ``summary`` is content-free and safe to
    show the researcher.
    """

    sql: str
    result: pd.DataFrame
    released: pd.DataFrame | None
    verdict: Verdict
    findings: list[Finding]
    summary: str


@functools.lru_cache(maxsize=32)
def _template_json(sql: str) -> str:
    document = serialize_sql(sql)
    if document.get("error"):  # pragma: no cover - our own templates
        raise RuntimeError(document.get("error_message"))
    return json.dumps(document["statements"][0]["node"]["select_list"])


def _template_items(sql: str) -> list[dict[str, Any]]:
    """Parse trees of our own evidence expressions (parsed once, copied per use)."""
    return json.loads(_template_json(sql))


def _substitute(node: Any, placeholder: str, replacement: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        if node.get("class") == "COLUMN_REF" and node.get("column_names") == [placeholder]:
            return copy.deepcopy(dict(replacement))
        return {k: _substitute(v, placeholder, replacement) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, placeholder, replacement) for v in node]
    return node


@dataclass
class _Evidence:
    """Where each piece of evidence lands in the result (column aliases)."""

    cell_size: str
    keys: list[str]  # one column per group key (a select column or an added one)
    contributors: dict[int, str]  # aggregate position -> column
    numeric: dict[int, dict[str, Any]]  # aggregate position -> {"total","min","max","top"}


def _evidence_query(parsed: ParsedQuery, top_n: int) -> tuple[str, _Evidence]:
    """The researcher's query with the evidence columns spliced into its select list."""
    document = copy.deepcopy(parsed.document)
    node = document["statements"][0]["node"]
    select_list: list[dict[str, Any]] = node["select_list"]
    # The researcher's items stay first and untouched (result columns 0..k-1); the
    # evidence follows under reserved names.
    added: list[dict[str, Any]] = []

    def add(item: dict[str, Any], alias: str) -> str:
        item = copy.deepcopy(item)
        item["alias"] = alias
        added.append(item)
        return alias

    placeholder = f"{EVIDENCE_PREFIX}arg"
    (count_star,) = _template_items("SELECT count_star()")
    cell_size = add(count_star, f"{EVIDENCE_PREFIX}cells")
    key_columns = [
        add(key.expression, f"{EVIDENCE_PREFIX}key{index}") for index, key in enumerate(parsed.keys)
    ]
    numeric_template = _template_items(
        f"SELECT count({placeholder}), sum(CAST({placeholder} AS DOUBLE)), "
        f"min(CAST({placeholder} AS DOUBLE)), max(CAST({placeholder} AS DOUBLE)), "
        + ", ".join(
            f"max(abs(CAST({placeholder} AS DOUBLE)), {top_n})[{j}]" for j in range(1, top_n + 1)
        )
    )
    contributors: dict[int, str] = {}
    numeric: dict[int, dict[str, Any]] = {}
    # Aggregates of the same column share their evidence (SUM(chol) and AVG(chol)).
    counted: dict[str, str] = {}
    measured: dict[str, dict[str, Any]] = {}
    for aggregate in parsed.aggregates:
        if aggregate.function == "count_star":
            contributors[aggregate.position] = cell_size
            continue
        assert aggregate.argument is not None
        signature = json.dumps(canonical(aggregate.argument), sort_keys=True)
        items = [_substitute(t, placeholder, aggregate.argument) for t in numeric_template]
        tag = f"{EVIDENCE_PREFIX}a{aggregate.position}"
        if signature not in counted:
            counted[signature] = add(items[0], f"{tag}_n")
        contributors[aggregate.position] = counted[signature]
        if aggregate.function == "count":
            continue
        if signature not in measured:
            measured[signature] = {
                "total": add(items[1], f"{tag}_sum"),
                "min": add(items[2], f"{tag}_min"),
                "max": add(items[3], f"{tag}_max"),
                "top": [add(item, f"{tag}_top{j}") for j, item in enumerate(items[4:])],
            }
        numeric[aggregate.position] = measured[signature]
    node["select_list"] = select_list + added
    sql = deserialize_sql(document)
    _verify_round_trip(sql, node)
    return sql, _Evidence(cell_size, key_columns, contributors, numeric)


def _verify_round_trip(sql: str, node: Mapping[str, Any]) -> None:
    """The SQL DuckDB printed must parse back to the tree that was checked."""
    reparsed = serialize_sql(sql)
    statements = reparsed.get("statements") or []
    if reparsed.get("error") or len(statements) != 1:
        raise QueryRejected("the query could not be prepared safely; simplify it.")
    if canonical(statements[0]["node"]) != canonical(node):
        raise QueryRejected(
            "the query could not be prepared safely (DuckDB prints it differently from how "
            "it parsed it); simplify it."
        )


#: Errors raised while binding the query, before any row is read: their messages
#: quote only the query and the schema, so the researcher may read them.
_BIND_TIME_ERRORS = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)


def _execute(con: duckdb.DuckDBPyConnection, sql: str, private: bool) -> pd.DataFrame:
    """Run the query; turn DuckDB's errors into QueryRejected without leaking data.

    An error raised while the query *runs* can quote the private data: a failed
    cast names the value ("Could not convert string 'P00017'..."), ``error(x)``
    raises with any text the query likes. On private data only bind-time errors
    are relayed; any other failure gets a fixed message.
    """
    try:
        return con.execute(sql).df()
    except _BIND_TIME_ERRORS as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QueryRejected(
            f"DuckDB refused the query: {first}. Every selected column must be a GROUP BY "
            f"key or an aggregate (COUNT/SUM/AVG) of a numeric column."
        ) from None
    except duckdb.Error as exc:
        if not private:
            raise QueryRejected(f"the query failed on the mock data: {exc}") from None
        raise QueryRejected(
            "the query failed while running on the private data (for example a conversion "
            "or a pattern that fails on some row). The datasite does not pass the error on, "
            "because it can quote private values; run the query on the mock to find the "
            "problem."
        ) from None


def _check_numeric(parsed: ParsedQuery, frame: pd.DataFrame) -> None:
    by_lower = {str(c).lower(): c for c in frame.columns}
    for aggregate in parsed.aggregates:
        if aggregate.function in ("sum", "avg") and aggregate.column is not None:
            column = by_lower.get(aggregate.column.lower())
            if column is None:
                continue
            dtype = frame[column].dtype
            if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
                raise QueryRejected(
                    f"{aggregate.text}: {aggregate.function.upper()} needs a numeric column; "
                    f"{aggregate.column} is {dtype}. Count its values with GROUP BY instead."
                )


def run_query(
    sql: str,
    tables: Mapping[str, pd.DataFrame],
    thresholds: Thresholds | None,
) -> QueryOutcome:
    """Check, run and judge one aggregate query (see the module docstring).

    ``thresholds=None`` is mock mode: the researcher's own mock data, so the query
    is checked (a query the datasite would refuse fails here too) and run, and the
    result is returned without disclosure checks.
    """
    columns = {name: [str(c) for c in frame.columns] for name, frame in tables.items()}
    parsed = check_query(sql, list(tables), columns)
    _check_numeric(parsed, tables[parsed.dataset])
    con = open_connection({parsed.dataset: tables[parsed.dataset]})
    try:
        if thresholds is None:
            result = _execute(con, sql, private=False)
            finding = Finding(
                "mock", Verdict.RELEASE, "run on mock data: no disclosure checks apply"
            )
            return QueryOutcome(sql, result, result, Verdict.RELEASE, [finding], "mock data")
        top_n = max(thresholds.dominance_n, 2)
        evidence_sql, evidence = _evidence_query(parsed, top_n)
        frame = _execute(con, evidence_sql, private=True)
    finally:
        con.close()
    return judge(parsed, frame, evidence, thresholds)


# --- judging -------------------------------------------------------------------------------


@dataclass
class _Failure:
    """A failing-cell check: mask over (rows x aggregates) and how to describe it."""

    check: str
    mask: np.ndarray
    review_message: Callable[[int, int], str]  # for reviewers (may quote evidence)
    release_message: str  # for a released table: no evidence values
    noun: str  # for the summary: "cells below 10"


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)


def judge(
    parsed: ParsedQuery, frame: pd.DataFrame, evidence: _Evidence, thresholds: Thresholds
) -> QueryOutcome:
    """Apply the cell and table rules to the evidence and decide what may be released."""
    t = thresholds
    result = frame.iloc[:, : parsed.select_count].copy()
    rows = len(result)
    names = [str(c) for c in result.columns]
    aggregates = list(parsed.aggregates)
    agg_names = [names[a.position] for a in aggregates]
    keys_all = pd.DataFrame(
        {
            (names[k.select_position] if k.select_position is not None else k.text): frame[
                evidence.keys[i]
            ].to_numpy()
            for i, k in enumerate(parsed.keys)
        }
    )
    shown_keys = [names[k.select_position] for k in parsed.keys if k.select_position is not None]
    cell_size = _column(frame, evidence.cell_size)

    # --- per-cell evidence -----------------------------------------------------------
    shape = (rows, len(aggregates))
    contributors = np.zeros(shape)
    small = np.zeros(shape, dtype=bool)
    zero = np.zeros(shape, dtype=bool)
    negative = np.zeros(shape, dtype=bool)
    dominated = np.zeros(shape, dtype=bool)
    p_fail = np.zeros(shape, dtype=bool)
    same = np.zeros(shape, dtype=bool)
    evidence_text: dict[tuple[int, int], str] = {}
    for j, aggregate in enumerate(aggregates):
        n = _column(frame, evidence.contributors[aggregate.position])
        contributors[:, j] = n
        small[:, j] = rules.small_cells(n, t.min_cell_count)
        numbers = evidence.numeric.get(aggregate.position)
        if numbers is None:  # COUNT(*) / COUNT(col): the value is the contributor count
            if t.zeros == "review":
                zero[:, j] = rules.zeros(n)
            continue
        total = _column(frame, numbers["total"])
        low, high = _column(frame, numbers["min"]), _column(frame, numbers["max"])
        top = np.column_stack([_column(frame, c) for c in numbers["top"]])
        with np.errstate(invalid="ignore"):
            neg = low < 0
        negative[:, j] = neg
        dominated[:, j] = rules.nk_dominance(top, total, t.dominance_n, t.dominance_k) & ~neg
        p_fail[:, j] = rules.p_percent(top, total, t.p_ratio) & ~neg
        if t.zeros == "review":
            with np.errstate(invalid="ignore"):
                zero[:, j] = (n > 0) & (total == 0) & ~neg
            same[:, j] = rules.all_values_same(low, high, n) & ~zero[:, j]
        for i in np.flatnonzero(dominated[:, j] | p_fail[:, j]):
            share = top[i, : t.dominance_n].sum() / total[i] if total[i] else float("nan")
            evidence_text[(int(i), j)] = (
                f"total {total[i]:g}; the largest {t.dominance_n} contributions make "
                f"{share:.0%} of it; the rest after the top two is "
                f"{total[i] - top[i, 0] - top[i, 1]:g} against a largest of {top[i, 0]:g}"
            )

    def contributors_text(i: int, j: int) -> str:
        what = "row(s)" if aggregates[j].function == "count_star" else "non-missing value(s)"
        return (
            f"{agg_names[j]} is computed from {contributors[i, j]:g} {what}; the policy needs "
            f"at least {t.min_cell_count} (small cells let people who know some members "
            f"learn about the others)"
        )

    failures = [
        _Failure(
            "small-cells",
            small,
            contributors_text,
            f"suppressed: fewer than {t.min_cell_count} contributors",
            f"below {t.min_cell_count}",
        ),
        _Failure(
            "zeros",
            zero,
            lambda i, j: (
                f"{agg_names[j]} is zero: it says something about every member of the group "
                f"(ACRO flags zeros)"
            ),
            "suppressed: zero cell",
            "that are zero",
        ),
        _Failure(
            "negative-values",
            negative,
            lambda i, j: (
                f"{agg_names[j]}: the column has negative values in this cell, so dominance "
                f"and p-percent cannot be assessed; a person must judge it"
            ),
            "suppressed: negative values (dominance cannot be assessed)",
            "with negative values",
        ),
        _Failure(
            "nk-dominance",
            dominated,
            lambda i, j: (
                f"{agg_names[j]}: the {t.dominance_n} largest contributors hold more than "
                f"{t.dominance_k:.0%} of the total ({evidence_text.get((i, j), '')}); each "
                f"could estimate the other's value"
            ),
            "suppressed: dominated by its largest contributors (N-K rule)",
            "dominated (N-K)",
        ),
        _Failure(
            "p-percent",
            p_fail,
            lambda i, j: (
                f"{agg_names[j]}: without its two largest contributions, less than "
                f"{t.p_ratio:.0%} of the largest is left ({evidence_text.get((i, j), '')}); "
                f"the second largest could estimate the largest"
            ),
            "suppressed: p-percent rule",
            "failing p-percent",
        ),
        _Failure(
            "all-values-same",
            same,
            lambda i, j: (
                f"{agg_names[j]}: every contributor has the same value, so the cell reveals "
                f"each member's value"
            ),
            "suppressed: all contributors have the same value",
            "with all values the same",
        ),
    ]
    failing = np.zeros(shape, dtype=bool)
    for failure in failures:
        failing |= failure.mask

    # --- groups too small to be shown at all --------------------------------------------
    # A row's key values say "this combination exists"; with no aggregate in the
    # select list, that is all the row says, and it must be a large group too.
    small_groups = rules.small_cells(cell_size, t.min_cell_count) if not aggregates else None

    # --- table-level rules (never fixed by suppression) -----------------------------------
    table: list[Finding] = []
    summary_parts: list[str] = []
    # Reasons that depend on the query text only. When one applies, the summary gives
    # only these: otherwise "held: WHERE" vs "held: WHERE, 1 cell below 10" would
    # answer a yes/no question about a person (GROUP BY pid = 'P1' AND chol > 200).
    filter_parts: list[str] = []
    if parsed.has_where and not t.allow_where:
        table.append(
            Finding(
                "where-clause",
                Verdict.REVIEW,
                "The query filters rows (WHERE). Two filtered queries whose row sets differ "
                "by one person can be subtracted to reveal that person's values, even when "
                "every cell is large; this policy sends filtered queries to a person.",
                "WHERE clause",
            )
        )
        filter_parts.append("WHERE clause needs review")
    computed = [k for k in parsed.keys if k.computed]
    if computed and not t.allow_where:
        table.append(
            Finding(
                "computed-group-key",
                Verdict.REVIEW,
                "Grouping by a computed expression carves out subsets just as WHERE does "
                "(GROUP BY age > 50 AND chol <> 233 isolates one person by differencing); "
                "this policy sends such queries to a person.",
                "GROUP BY " + ", ".join(k.text for k in computed),
            )
        )
        filter_parts.append("computed group key needs review")
    for i, key in enumerate(parsed.keys):
        levels = int(keys_all.iloc[:, i].nunique(dropna=False)) if rows else 0
        if rules.too_many_levels([levels], t.max_levels)[0]:
            table.append(
                Finding(
                    "too-many-levels",
                    Verdict.REVIEW,
                    f"{key.text} has {levels} distinct values in the table; the policy allows "
                    f"{t.max_levels} (a key with very many levels is close to an identifier)",
                    f"column {keys_all.columns[i]}",
                )
            )
            summary_parts.append(f"a group key with more than {t.max_levels} levels")
    # Zeros a GROUP BY table shows by leaving rows out. Under suppression a missing
    # row may equally be a small group left out, so there they say nothing.
    mode = t.failing_cells
    zeros_visible = t.zeros == "review" and mode == "review"
    if zeros_visible and len(parsed.keys) > 1 and not parsed.has_limit and rows:
        possible = 1
        for i in range(len(parsed.keys)):
            possible *= int(keys_all.iloc[:, i].nunique(dropna=False))
        distinct = len(keys_all.drop_duplicates())
        if possible > distinct:
            table.append(
                Finding(
                    "zeros",
                    Verdict.REVIEW,
                    f"{possible - distinct} of the {possible} combinations of the group keys "
                    f"do not occur: their absence from the table is a zero cell (ACRO flags "
                    f"zeros), which says something about everyone in that combination",
                    "GROUP BY " + ", ".join(k.text for k in parsed.keys),
                )
            )
            summary_parts.append("zero cells (missing combinations of the keys)")

    if zeros_visible and not rows and parsed.keys:
        # An empty grouped table is a zero: "nobody has these values".
        table.append(
            Finding(
                "zeros",
                Verdict.REVIEW,
                "the query matched no rows: an empty table says that nobody has these values, "
                "which is a zero cell (ACRO flags zeros)",
            )
        )
        summary_parts.append("no rows (a zero)")
    ordered = [j for j, a in enumerate(aggregates) if a.position in parsed.order_aggregates]
    order_altered = any(
        failing[:, j].any() or (mode == "redact_round" and aggregates[j].is_count) for j in ordered
    )
    if mode != "review" and order_altered and parsed.has_limit:
        table.append(
            Finding(
                "order-reveals-suppressed",
                Verdict.REVIEW,
                "The query orders by an aggregate and keeps only the first rows (LIMIT); which "
                "rows survive depends on values that would be suppressed or rounded.",
                "ORDER BY ... LIMIT",
            )
        )
        summary_parts.append("ORDER BY with LIMIT over suppressed values")

    # --- decide -----------------------------------------------------------------------
    # Each failing cell is reported once, under its first failing rule (small cells
    # first): a count of 0 and a count of 3 then read the same in the summary, so the
    # summary does not tell the researcher which one it was.
    primary = np.full(shape, -1)
    for index in range(len(failures) - 1, -1, -1):
        primary[failures[index].mask] = index
    if mode == "review" or table:
        return _hold_or_release(
            parsed, result, failures, primary, keys_all, agg_names, small_groups, cell_size,
            table, filter_parts or summary_parts, bool(filter_parts), t,
        )  # fmt: skip
    return _release_altered(
        parsed, result, aggregates, agg_names, shown_keys, cell_size, failures, primary,
        small_groups, t,
    )  # fmt: skip


def _hold_or_release(
    parsed: ParsedQuery,
    result: pd.DataFrame,
    failures: list[_Failure],
    primary: np.ndarray,
    keys_all: pd.DataFrame,
    agg_names: list[str],
    small_groups: np.ndarray | None,
    cell_size: np.ndarray,
    table: list[Finding],
    summary_parts: list[str],
    summary_fixed: bool,
    t: Thresholds,
) -> QueryOutcome:
    """``failing_cells="review"`` (or a table-level problem): all pass, or a person decides.

    With ``summary_fixed`` the summary is ``summary_parts`` alone, which depend only on
    the query text; the cell findings still go to the reviewer in full.
    """
    findings = list(table)
    parts: list[str] = []
    for index, failure in enumerate(failures):
        mask = primary == index

        def message(i: int, j: int, failure: _Failure = failure) -> str:
            also = [f.check for f in failures if f is not failure and f.mask[i, j]]
            text = failure.review_message(i, j)
            return f"{text} (also fails: {', '.join(also)})" if also else text

        findings += rules.mask_findings(
            mask,
            check=failure.check,
            verdict=Verdict.REVIEW,
            message=message,
            keys=keys_all,
            columns=agg_names,
        )
        if mask.any():
            parts.append(f"{int(mask.sum())} cell(s) {failure.noun}")
    if small_groups is not None and small_groups.any():
        findings += rules.mask_findings(
            small_groups,
            check="small-cells",
            verdict=Verdict.REVIEW,
            message=lambda i, j: (
                f"the group has {cell_size[i]:g} rows; the policy needs at least "
                f"{t.min_cell_count} before its key values can be shown"
            ),
            keys=keys_all,
        )
        parts.append(f"{int(small_groups.sum())} group(s) below {t.min_cell_count}")
    parts = summary_parts if summary_fixed else parts + summary_parts
    if findings:
        summary = "held for review: " + ", ".join(parts)
        return QueryOutcome(parsed.sql, result, None, Verdict.REVIEW, findings, summary)
    cells = len(result) * max(len(parsed.aggregates), 1)
    passed = Finding(
        "sound-tier",
        Verdict.RELEASE,
        f"all {cells} cell(s) passed: at least {t.min_cell_count} contributors, "
        f"{'zeros, ' if t.zeros == 'review' else ''}N-K dominance ({t.dominance_n}, "
        f"{t.dominance_k:.0%}), p-percent ({t.p_ratio:.0%}), at most {t.max_levels} levels "
        f"per group key",
    )
    summary = f"released by policy: {cells} cell(s) passed"
    return QueryOutcome(parsed.sql, result, result.copy(), Verdict.RELEASE, [passed], summary)


def _release_altered(
    parsed: ParsedQuery,
    result: pd.DataFrame,
    aggregates: list[Aggregate],
    agg_names: list[str],
    shown_keys: list[str],
    cell_size: np.ndarray,
    failures: list[_Failure],
    primary: np.ndarray,
    small_groups: np.ndarray | None,
    t: Thresholds,
) -> QueryOutcome:
    """``suppress`` / ``redact_round``: blank (and round) cells, leave out small groups.

    A group whose row count is below the threshold is left out entirely rather than
    shown with blank cells: its key values alone would say that such people exist
    (GROUP BY an identifier would otherwise list every identifier). The findings
    written here may reach the researcher, so they name only rows and key values
    that stay in the released table, no evidence values, and never how many groups
    were left out (that would tell whether a filtered-out person exists).
    """
    redact = t.failing_cells == "redact_round"
    drop_below = t.redact_at_or_below + 1 if redact else t.min_cell_count
    with np.errstate(invalid="ignore"):
        drop = ~(cell_size >= drop_below)
    if small_groups is not None:
        drop |= small_groups
    keep = ~drop
    released = result.loc[keep].reset_index(drop=True)
    primary = primary[keep]
    is_count = np.array([a.is_count for a in aggregates], dtype=bool)
    # Reasons shown for a blank cell; "small" and "zero" read the same on purpose.
    small_or_zero = f"fewer than {t.min_cell_count} contributors, or none"
    labels = {
        "small-cells": small_or_zero,
        "zeros": small_or_zero,
        "negative-values": "negative values (dominance cannot be assessed)",
        "nk-dominance": "dominated by its largest contributors (N-K rule)",
        "p-percent": "the largest contributor could be estimated (p-percent rule)",
        "all-values-same": "all contributors have the same value",
    }
    reasons = np.full(primary.shape, "", dtype=object)
    for index, failure in enumerate(failures):
        reasons[primary == index] = f"suppressed: {labels[failure.check]}"
    blank = primary >= 0
    if redact:  # counts are redacted and rounded instead; sums and means keep the cell rules
        blank[:, is_count] = False
        reasons[:, is_count] = ""
    for j, aggregate in enumerate(aggregates):
        values = pd.to_numeric(released.iloc[:, aggregate.position], errors="coerce")
        values = values.to_numpy(dtype=np.float64)
        if redact and aggregate.is_count:
            rounded = rules.redact_and_round(values, t.redact_at_or_below, t.round_to)
            redacted = np.isnan(rounded) & ~np.isnan(values)
            blank[:, j] |= redacted
            reasons[redacted, j] = f"redacted: {t.redact_at_or_below} or fewer"
            values = rounded
        if (redact and aggregate.is_count) or blank[:, j].any():
            released.isetitem(aggregate.position, np.where(blank[:, j], np.nan, values))
    ordered = [j for j, a in enumerate(aggregates) if a.position in parsed.order_aggregates]
    reordered = any(blank[:, j].any() or (redact and is_count[j]) for j in ordered)
    if reordered:
        # The requested order came from true values; order by what is released instead.
        names = released.columns
        positional = released.set_axis(range(len(names)), axis=1)
        positional = positional.sort_values(by=list(range(len(names))), na_position="last")
        permutation = positional.index.to_numpy()
        released = positional.set_axis(names, axis=1).reset_index(drop=True)
        blank, reasons = blank[permutation], reasons[permutation]

    findings = rules.mask_findings(
        blank,
        check="suppressed",
        verdict=Verdict.RELEASE,
        message=lambda i, j: str(reasons[i, j] or "suppressed"),
        keys=released[shown_keys] if shown_keys else None,
        columns=agg_names,
    )
    if reordered:
        findings.append(
            Finding(
                "suppressed",
                Verdict.RELEASE,
                "rows are sorted by their released values, not as the query asked: the "
                "requested order depended on suppressed or rounded values",
            )
        )
    if redact:
        rule = (
            f"counts are rounded to the nearest {t.round_to} and counts of "
            f"{t.redact_at_or_below} or fewer redacted (OpenSAFELY); groups of "
            f"{t.redact_at_or_below} or fewer rows are left out, if there are any"
        )
    else:
        rule = (
            f"cells failing the policy are blank; groups of fewer than {t.min_cell_count} "
            f"rows are left out, if there are any (their key values alone would reveal "
            f"that such people exist): a combination missing from the table has too few "
            f"rows, or none"
        )
    findings.append(Finding("suppression", Verdict.RELEASE, rule))
    findings.append(
        Finding(
            "suppression",
            Verdict.RELEASE,
            "No secondary suppression is done: a blank cell may still be worked out from "
            "totals or margins (another query, or other cells of this one). Ask a reviewer "
            "before publishing tables that add up.",
        )
    )
    suppressed = int(blank.sum())
    what = "redacted or suppressed" if redact else "suppressed"
    summary = f"released by policy: {suppressed} cell(s) {what}"
    if redact:
        summary += f", counts rounded to {t.round_to}"
    summary += "; small groups (if any) left out; no secondary suppression"
    return QueryOutcome(parsed.sql, result, released, Verdict.RELEASE, findings, summary)


# --- crosstab ------------------------------------------------------------------------------


def quote_identifier(name: str) -> str:
    """A DuckDB identifier in double quotes, with embedded quotes doubled."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise QueryRejected(f"invalid column or dataset name: {name!r}")
    return '"' + name.replace('"', '""') + '"'


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
