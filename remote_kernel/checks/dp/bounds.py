"""Bounds of an aggregate's input by interval arithmetic over the owner's declared bounds.

The sensitivity of ``SUM(expr)`` is what one person can move it by, so it follows
the expression: ``chol * 1000000`` with chol declared in [100, 600] is bounded by
[1e8, 6e8]; a CASE by the hull of its branches. OpenDP clips every value to the
interval computed here, so a row outside it (data that breaks the declaration,
or an expression we bound too tightly) cannot move the answer by more than the
noise was calibrated for. Anything this module cannot bound is refused with a
message; nothing the query says about itself is trusted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from remote_kernel.checks.dp.metadata import DPMetadata
from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.querylang.parse import function_name, source_text

Interval = tuple[float, float]
#: An expression that is always NULL (a CASE branch with no value): no interval.
EMPTY: None = None

_BOOLEAN_CLASSES = frozenset({"COMPARISON", "CONJUNCTION", "BETWEEN"})
_BOOLEAN_OPERATORS = frozenset(
    {"OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL", "COMPARE_IN", "COMPARE_NOT_IN"}
)
_NUMERIC_CASTS = frozenset(
    "TINYINT SMALLINT INTEGER INT BIGINT HUGEINT UTINYINT USMALLINT UINTEGER UBIGINT "
    "FLOAT REAL DOUBLE DECIMAL NUMERIC INT1 INT2 INT4 INT8 FLOAT4 FLOAT8 BOOLEAN BOOL".split()
)
_INTEGER_CASTS = frozenset(
    "TINYINT SMALLINT INTEGER INT BIGINT HUGEINT INT1 INT2 INT4 INT8".split()
)


def is_boolean(node: Mapping[str, Any]) -> bool:
    """Whether an expression's value is a truth value (so its values are {false, true})."""
    cls = node.get("class")
    return cls in _BOOLEAN_CLASSES or (cls == "OPERATOR" and node.get("type") in _BOOLEAN_OPERATORS)


class Bounder:
    """Interval arithmetic over one query's expressions, with the owner's declarations."""

    def __init__(self, sql: str, metadata: DPMetadata, boolean_columns: frozenset[str]):
        self.sql = sql
        self.metadata = metadata
        self.boolean_columns = boolean_columns

    def bounds(self, node: Mapping[str, Any]) -> Interval:
        """The interval every value of ``node`` lies in (NULLs aside); refused if unknown."""
        interval = self._interval(node)
        if interval is EMPTY:
            raise QueryRejected(f"{self._text(node)} is always NULL: there is nothing to add up.")
        if not all(math.isfinite(end) for end in interval):
            raise self._refuse(node, "its range overflows floating point")
        return interval

    def _text(self, node: Mapping[str, Any]) -> str:
        return source_text(self.sql, node)

    def _refuse(self, node: Mapping[str, Any], why: str) -> QueryRejected:
        return QueryRejected(
            f"the DP tier cannot bound {self._text(node)}: {why}. Inside an aggregate use "
            f"columns with declared bounds, numbers, + - * / ABS LEAST GREATEST ROUND FLOOR "
            f"CEIL, CASE and conditions; the data owner declares bounds in the dataset's DP "
            f"metadata (bounds: {{column: [low, high]}})."
        )

    def _interval(self, node: Mapping[str, Any]) -> Interval | None:
        cls = node.get("class")
        if is_boolean(node):
            return (0.0, 1.0)
        handler = _HANDLERS.get(str(cls))
        if handler is None:
            raise self._refuse(node, f"{str(cls).lower()} expressions have no known range")
        return handler(self, node)

    def _column(self, node: Mapping[str, Any]) -> Interval:
        name = str(node["column_names"][-1])
        declared = self.metadata.bounds_of(name)
        if declared is not None:
            return declared
        if name.lower() in self.boolean_columns:
            return (0.0, 1.0)
        raise self._refuse(node, f"no bounds are declared for column {name!r}")

    def _constant(self, node: Mapping[str, Any]) -> Interval | None:
        literal = node.get("literal") or {}
        kind = literal.get("kind")
        if kind == "NULL_LITERAL":
            return EMPTY
        if kind == "BOOLEAN":
            value = 1.0 if str(literal.get("text", literal.get("value"))).lower() == "true" else 0.0
            return (value, value)
        try:
            value = float(literal.get("text", literal.get("value")))
        except (TypeError, ValueError):
            raise self._refuse(node, "it is not a number") from None
        if not math.isfinite(value):
            raise self._refuse(node, "it is not a finite number")
        return (value, value)

    def _case(self, node: Mapping[str, Any]) -> Interval | None:
        branches = [check["then_expr"] for check in node.get("case_checks") or []]
        branches.append(node.get("else_expr") or {"class": "CONSTANT", "literal": {}})
        return hull(*(self._interval_or_null(b) for b in branches))

    def _interval_or_null(self, node: Mapping[str, Any]) -> Interval | None:
        if node.get("class") == "CONSTANT" and not (node.get("literal") or {}).get("kind"):
            return EMPTY  # CASE without ELSE
        return self._interval(node)

    def _cast(self, node: Mapping[str, Any]) -> Interval | None:
        target = str((node.get("type_expr") or {}).get("type_name", "")).upper()
        if target not in _NUMERIC_CASTS:
            raise self._refuse(node, f"a cast to {target or 'that type'} has no numeric range")
        inner = self._interval(node["child"])
        if inner is EMPTY or target not in _INTEGER_CASTS:
            return inner
        return (float(math.floor(inner[0])), float(math.ceil(inner[1])))

    def _function(self, node: Mapping[str, Any]) -> Interval | None:
        name = function_name(node)
        arguments = [self._interval(a["expression"]) for a in node.get("arguments") or []]
        rule = _FUNCTIONS.get(name)
        if rule is None:
            raise self._refuse(node, f"{name}() has no range rule here")
        if any(a is EMPTY for a in arguments) and name not in ("coalesce", "least", "greatest"):
            return EMPTY
        try:
            return rule(*arguments)
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise self._refuse(node, str(exc) or "the operands do not fit") from None

    def _operator(self, node: Mapping[str, Any]) -> Interval | None:
        if node.get("type") == "OPERATOR_COALESCE":
            return hull(*(self._interval(child) for child in node.get("children") or []))
        raise self._refuse(node, f"the operator {node.get('type')} has no range rule here")


_HANDLERS: dict[str, Callable[[Bounder, Mapping[str, Any]], Interval | None]] = {
    "COLUMN_REF": Bounder._column,
    "CONSTANT": Bounder._constant,
    "CASE": Bounder._case,
    "CAST": Bounder._cast,
    "FUNCTION": Bounder._function,
    "OPERATOR": Bounder._operator,
}


def hull(*intervals: Interval | None) -> Interval | None:
    """The smallest interval holding every given one (None where a part is always NULL)."""
    present = [i for i in intervals if i is not None]
    if not present:
        return EMPTY
    return (min(i[0] for i in present), max(i[1] for i in present))


def _add(a: Interval, b: Interval | None = None) -> Interval:
    if b is None:
        return a  # unary plus
    return (a[0] + b[0], a[1] + b[1])


def _subtract(a: Interval, b: Interval | None = None) -> Interval:
    if b is None:
        return (-a[1], -a[0])
    return (a[0] - b[1], a[1] - b[0])


def _multiply(a: Interval, b: Interval) -> Interval:
    products = [x * y for x in a for y in b]
    return (min(products), max(products))


def _divide(a: Interval, b: Interval) -> Interval:
    if b[0] <= 0.0 <= b[1]:
        raise ValueError("the divisor's range includes 0, so the quotient has no bound")
    return _multiply(a, (1.0 / b[1], 1.0 / b[0]))


def _absolute(a: Interval) -> Interval:
    if a[0] >= 0:
        return a
    if a[1] <= 0:
        return (-a[1], -a[0])
    return (0.0, max(-a[0], a[1]))


def _rounded(a: Interval, *digits: Interval) -> Interval:
    """FLOOR, CEIL and ROUND(x[, d]): out to the next multiple of 10^-d on both sides."""
    places = 0.0
    if digits:
        if digits[0][0] != digits[0][1]:
            raise ValueError("the number of decimal places must be a constant")
        places = digits[0][0]
    step = 10.0**-places
    return (math.floor(a[0] / step) * step, math.ceil(a[1] / step) * step)


def _least(*args: Interval | None) -> Interval | None:
    present = [a for a in args if a is not None]
    if not present:
        return EMPTY
    return (min(a[0] for a in present), min(a[1] for a in present))


def _greatest(*args: Interval | None) -> Interval | None:
    present = [a for a in args if a is not None]
    if not present:
        return EMPTY
    return (max(a[0] for a in present), max(a[1] for a in present))


_FUNCTIONS: dict[str, Callable[..., Interval | None]] = {
    "+": _add,
    "add": _add,
    "-": _subtract,
    "subtract": _subtract,
    "*": _multiply,
    "multiply": _multiply,
    "/": _divide,
    "divide": _divide,
    "abs": _absolute,
    "@": _absolute,
    "round": _rounded,
    "floor": _rounded,
    "ceil": _rounded,
    "ceiling": _rounded,
    "least": _least,
    "greatest": _greatest,
    "coalesce": hull,
}
