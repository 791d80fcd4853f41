"""The parts of an accepted query: where its group keys and aggregates are.

Produced by :func:`remote_kernel.querylang.shape.check_query`; the datasite's sound
tier reads it to splice its evidence into the query and to judge the cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
