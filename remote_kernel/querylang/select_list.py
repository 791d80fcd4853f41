"""The select list, GROUP BY and ORDER BY of a query: which items are keys, which aggregates.

Every select item must be a group key, a constant or an allowed aggregate of a
plain column; GROUP BY and ORDER BY may refer to select items by position, alias
or the same expression. These steps run inside
:func:`remote_kernel.querylang.shape.check_query`, in its order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.querylang.clauses import (
    WHAT_TO_DO,
    check_expression,
    contains_aggregate,
    is_order_by_all,
    refuse_aggregate,
    resolve_reference,
)
from remote_kernel.querylang.parse import (
    ALLOWED_AGGREGATES,
    canonical,
    function_name,
    is_aggregate_name,
    source_text,
)
from remote_kernel.querylang.parsed import Aggregate, GroupKey


@dataclass(frozen=True)
class Select:
    """The select list as GROUP BY and ORDER BY see it: items, canonical forms, aliases."""

    sql: str
    items: list[dict[str, Any]]
    forms: list[Any]
    aliases: dict[str, int]
    qualifiers: frozenset[str]

    def resolve(self, expression: Mapping[str, Any], alias_refs: list[str]) -> int | None:
        """The select position a GROUP BY / ORDER BY expression refers to, if any."""
        return resolve_reference(expression, self.forms, self.aliases, self.qualifiers, alias_refs)


@dataclass
class _Grouping:
    """The group keys found so far, and which select items show them."""

    keys: list[GroupKey] = field(default_factory=list)
    alias_refs: list[str] = field(default_factory=list)
    positions: set[int] = field(default_factory=set)
    has_group_by: bool = False

    def add(self, key: GroupKey) -> None:
        self.keys.append(key)
        if key.select_position is not None:
            self.positions.add(key.select_position)


@dataclass
class _Ordering:
    """What ORDER BY and LIMIT do to the result's rows."""

    has_order_by: bool = False
    has_limit: bool = False
    order_aggregates: list[int] = field(default_factory=list)


def _check_group_form(node: Mapping[str, Any], expressions: list[dict[str, Any]]) -> str:
    """Plain GROUP BY (or GROUP BY ALL) only: returns DuckDB's aggregate handling.

    ROLLUP / CUBE / GROUPING SETS put subtotals next to cells, and a suppressed cell
    is then a subtraction away.
    """
    group_sets = node.get("group_sets") or []
    handling = node.get("aggregate_handling", "STANDARD_HANDLING")
    if handling not in ("STANDARD_HANDLING", "FORCE_AGGREGATES"):
        raise QueryRejected(f"GROUP BY form {handling} is not supported.")
    if expressions and (
        len(group_sets) != 1 or sorted(group_sets[0]) != list(range(len(expressions)))
    ):
        raise QueryRejected(
            "ROLLUP, CUBE and GROUPING SETS are not allowed: subtotals next to cells let "
            "suppressed cells be worked out by subtraction. Send one GROUP BY per table."
        )
    return str(handling)


def group_keys(select: Select, node: Mapping[str, Any]) -> _Grouping:
    """Every group key, as the select item that shows it or as its own expression.

    A key the result does not show still splits the rows into cells, so it is
    recorded too (the evidence adds it as a column). ``GROUP BY ALL`` makes every
    non-aggregate, non-constant select item a key.
    """
    expressions: list[dict[str, Any]] = node.get("group_expressions") or []
    handling = _check_group_form(node, expressions)
    grouping = _Grouping()
    for expression in expressions:
        check_expression(select.sql, expression, "GROUP BY")
        position = select.resolve(expression, grouping.alias_refs)
        shown, position = _shown_key(select, expression, position)
        computed = shown.get("class") != "COLUMN_REF"
        grouping.add(GroupKey(shown, position, computed, source_text(select.sql, shown)))
    if handling == "FORCE_AGGREGATES":  # GROUP BY ALL: every non-aggregate item is a key
        for position, item in enumerate(select.items):
            if item.get("class") == "CONSTANT" or contains_aggregate(item):
                continue
            check_expression(select.sql, item, "GROUP BY ALL")
            computed = item.get("class") != "COLUMN_REF"
            grouping.add(GroupKey(item, position, computed, source_text(select.sql, item)))
    grouping.has_group_by = bool(expressions) or handling == "FORCE_AGGREGATES"
    return grouping


def _shown_key(
    select: Select, expression: dict[str, Any], position: int | None
) -> tuple[dict[str, Any], int | None]:
    """The expression a GROUP BY item groups by, and the select position showing it.

    A reference (``GROUP BY 1``, an alias) groups by the select item it names, which
    must not be an aggregate; a constant groups by nothing and is refused.
    """
    if position is not None:
        item = select.items[position]
        if contains_aggregate(item):
            raise QueryRejected(
                f"GROUP BY {source_text(select.sql, expression)} refers to an aggregate; group by "
                f"columns or expressions of columns."
            )
        return item, position
    if expression.get("class") == "CONSTANT":
        raise QueryRejected(
            f"GROUP BY {source_text(select.sql, expression)}: grouping by a constant does nothing; "
            f"group by columns (or by select-list positions 1, 2, ...)."
        )
    form = canonical(expression, select.qualifiers)
    return expression, next((i for i, f in enumerate(select.forms) if f == form), None)


def select_aggregates(select: Select, key_positions: Collection[int]) -> list[Aggregate]:
    """The aggregates of the select list; every other item must be a key or a constant.

    An item that is neither would return each row's own value, which is exactly what
    the tier exists to prevent.
    """
    aggregates: list[Aggregate] = []
    for position, item in enumerate(select.items):
        cls = item.get("class")
        name = function_name(item) if cls == "FUNCTION" else ""
        text = source_text(select.sql, item)
        if cls == "FUNCTION" and name in ALLOWED_AGGREGATES:
            aggregates.append(_check_aggregate(select.sql, position, item))
            continue
        if cls == "FUNCTION" and is_aggregate_name(name):
            raise refuse_aggregate(name, text)
        if position in key_positions or cls == "CONSTANT":
            check_expression(select.sql, item, "SELECT")
            continue
        if contains_aggregate(item):
            check_expression(select.sql, item, "SELECT")  # names the aggregate and says why
        raise QueryRejected(
            f"{text} is neither a GROUP BY key nor an aggregate: it would return each row's "
            f"own value. Add it to GROUP BY (the cell counts will then be checked) or "
            f"aggregate it with COUNT/SUM/AVG. {WHAT_TO_DO}"
        )
    return aggregates


def _check_aggregate(sql: str, position: int, node: Mapping[str, Any]) -> Aggregate:
    """COUNT(*), or COUNT/SUM/AVG of one plain column with no DISTINCT, FILTER or ORDER.

    The evidence is computed per column; anything that changes which values an
    aggregate sees inside a cell would make the evidence describe other values.
    """
    name = function_name(node)
    text = source_text(sql, node)
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
    return _column_aggregate(text, name, function, position, arguments)


def _column_aggregate(
    text: str, name: str, function: str, position: int, arguments: list[dict[str, Any]]
) -> Aggregate:
    """COUNT/SUM/AVG of exactly one plain column (an expression could hide one row)."""
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


def order_and_limit(
    select: Select, node: Mapping[str, Any], keys: list[GroupKey], aggregates: list[Aggregate]
) -> _Ordering:
    """ORDER BY only columns of the result (or group keys); LIMIT/OFFSET only numbers.

    Ordering by an aggregate is allowed but recorded: when cells are suppressed or
    rounded, the order (and with LIMIT, which rows survive) depends on true values.
    """
    ordering = _Ordering()
    aggregate_positions = {a.position for a in aggregates}
    key_forms = [canonical(k.expression, select.qualifiers) for k in keys]
    for modifier in node.get("modifiers") or []:
        if modifier["type"] == "ORDER_MODIFIER":
            ordering.has_order_by = True
            for order in modifier.get("orders") or []:
                ordering.order_aggregates.extend(
                    _ordered_aggregates(select, order["expression"], key_forms, aggregate_positions)
                )
        else:
            ordering.has_limit = True
            for part in ("limit", "offset"):
                value = modifier.get(part)
                if value is not None and value.get("class") != "CONSTANT":
                    raise QueryRejected("LIMIT and OFFSET must be plain numbers.")
    return ordering


def _ordered_aggregates(
    select: Select,
    expression: dict[str, Any],
    key_forms: list[Any],
    aggregate_positions: set[int],
) -> list[int]:
    """The aggregate positions one ORDER BY item sorts by (none for a key)."""
    if is_order_by_all(select.sql, expression):
        # Every result column, left to right: the aggregates among them too.
        return sorted(aggregate_positions)
    position = select.resolve(expression, [])
    if position is None and canonical(expression, select.qualifiers) in key_forms:
        check_expression(select.sql, expression, "ORDER BY")
        return []
    if position is None:
        raise QueryRejected(
            f"ORDER BY {source_text(select.sql, expression)}: order only by columns of the "
            f"result (their names, aliases or positions 1, 2, ...)."
        )
    return [position] if position in aggregate_positions else []
