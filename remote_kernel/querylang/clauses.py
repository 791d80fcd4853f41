"""Checks of single clauses and expressions of a query's parse tree, with their messages.

Each function looks at one part of the tree (the FROM item, a WHERE clause or a
group key, a GROUP BY / ORDER BY reference) and either returns what it found or
raises :class:`QueryRejected` with a message that says why and what to write
instead. :func:`remote_kernel.querylang.shape.check_query` calls them in order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.querylang.parse import (
    ALLOWED_AGGREGATES,
    REFUSED_AGGREGATES,
    canonical,
    function_name,
    is_aggregate_name,
    source_text,
    walk_nodes,
)

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

CLASS_MESSAGES = {
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

WHAT_TO_DO = (
    "Write an aggregate query: SELECT <group keys>, COUNT(*), COUNT(col), SUM(col) or "
    "AVG(col) FROM <dataset> GROUP BY <group keys>."
)


def refuse_aggregate(name: str, text: str) -> QueryRejected:
    """The error for an aggregate outside COUNT/SUM/AVG, saying what it would reveal."""
    reason = REFUSED_AGGREGATES.get(name)
    if reason is None:
        reason = (
            "is not one of the aggregates whose disclosure risk the datasite can measure "
            "(COUNT, SUM, AVG)"
        )
        return QueryRejected(f"{text}: {name.upper()} {reason}. {WHAT_TO_DO}")
    return QueryRejected(
        f"{text}: {name.upper()} {reason}, so it can never be released automatically. "
        f"Use COUNT(*), COUNT(col), SUM(col) or AVG(col) instead; a reviewer can be asked "
        f"about anything else."
    )


def is_order_by_all(sql: str, expression: dict[str, Any]) -> bool:
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


def check_expression(sql: str, node: Any, where: str) -> None:
    """A WHERE clause, group key or ORDER BY item: row-wise expressions of columns only."""
    for child in walk_nodes(node):
        cls = child.get("class")
        if cls is None:
            if child.get("type") in ("SUBQUERY", "SELECT_NODE", "SET_OPERATION_NODE"):
                raise QueryRejected(f"{where}: {CLASS_MESSAGES['SUBQUERY']}")
            continue
        if cls not in _EXPRESSION_CLASSES:
            message = CLASS_MESSAGES.get(cls, f"{cls.lower()} expressions are not supported")
            raise QueryRejected(f"{where}: {message}.")
        if cls == "FUNCTION":
            _check_function_call(sql, child, where)


def _check_function_call(sql: str, node: Mapping[str, Any], where: str) -> None:
    """A function inside an expression: a plain scalar function, never an aggregate
    (an aggregate inside an expression escapes the per-cell evidence)."""
    name = function_name(node)
    text = source_text(sql, node)
    if node.get("schema") or node.get("catalog"):
        raise QueryRejected(f"{where}: {text}: call functions without a schema name.")
    if is_aggregate_name(name):
        if name in ALLOWED_AGGREGATES:
            raise QueryRejected(
                f"{where}: {text}: aggregates may appear only on their own in the "
                f"select list (not inside other expressions, WHERE or GROUP BY). "
                f"Select {name.upper()}(col) and transform the released table "
                f"afterwards."
            )
        raise refuse_aggregate(name, text)
    if name in REFUSED_FUNCTIONS:
        raise QueryRejected(f"{where}: {text}: {name}() is not allowed here.")
    if node.get("filter") or node.get("distinct") or node.get("export_state"):
        raise QueryRejected(f"{where}: {text}: FILTER/DISTINCT are not allowed here.")


def check_from(table: Any, dataset_names: Collection[str]) -> tuple[str, frozenset[str]]:
    """FROM names exactly one of the site's datasets: returns its name as the site
    spells it and the qualifiers (name, alias) that may prefix its columns."""
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
        raise QueryRejected(f"FROM (SELECT ...): {CLASS_MESSAGES['SUBQUERY']}.")
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


def forbid_anywhere(node: Mapping[str, Any], sql: str) -> None:
    """No nested query, window, star or parameter anywhere in the tree, whatever the clause
    (``ORDER BY ALL``, which DuckDB writes as a star, is no star)."""
    order_by_all = {
        id(order["expression"])
        for modifier in node.get("modifiers") or []
        if modifier.get("type") == "ORDER_MODIFIER"
        for order in modifier.get("orders") or []
        if is_order_by_all(sql, order.get("expression") or {})
    }
    children = [v for k, v in node.items() if k != "from_table"]
    for child in walk_nodes(children):
        if id(child) in order_by_all:
            continue
        cls = child.get("class")
        if cls in CLASS_MESSAGES:
            raise QueryRejected(f"{CLASS_MESSAGES[cls]}.")
        if child.get("type") in ("SELECT_NODE", "SET_OPERATION_NODE", "CTE_NODE"):
            raise QueryRejected(f"{CLASS_MESSAGES['SUBQUERY']}.")


def contains_aggregate(node: Any) -> bool:
    """Whether an expression aggregates anything (an aggregate call or a window)."""
    return any(
        child.get("class") == "FUNCTION" and is_aggregate_name(function_name(child))
        for child in walk_nodes(node)
    ) or any(child.get("class") == "WINDOW" for child in walk_nodes(node))


def resolve_reference(
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


def check_column_refs(
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
    for child in walk_nodes([v for k, v in node.items() if k != "from_table"]):
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
