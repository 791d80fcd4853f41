"""Joins in the DP tier: two datasets of one site, joined on a declared privacy unit.

Why only this join. A join's sensitivity is unbounded in general: one patient's
row can match any number of rows of the other table. It is bounded when every
joined row belongs to exactly one person -- both datasets declare an ``id``
privacy unit of the same ``name`` (their ids identify the same people) and the
query joins ON those id columns -- and when each person's joined rows are then
truncated to ``K = k_left * k_right`` (the product of the declared maxima) before
aggregation. Removing one person then removes at most K rows of the joined frame
and changes no other person's rows, so the joined frame has the privacy unit
``{id, max_contributions: K}`` and the single-table engine does the rest: its row
stage truncates each id to K rows (:func:`.rows.row_sql`), and OpenDP's noise is
calibrated to K contributions. Anything else -- a join without declared units,
on other columns, outer/cross/natural joins, three tables -- is refused with a
message saying what to declare.

How. The query is rewritten to one flat query over a *joined dataset* (named
``<left>_join_<right>``): column references are renamed to the joined frame's
columns (a column both tables have becomes ``<dataset>__<column>``), and the
owner's metadata of both datasets is merged under those names. The joined frame
is computed in querylang's locked-down DuckDB, errors never quoting values.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from remote_kernel.checks.dp.metadata import DPMetadata, PrivacyUnit
from remote_kernel.checks.dp.rows import plain
from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.querylang import (
    deserialize_sql,
    open_connection,
    quote_identifier,
    serialize_sql,
)
from remote_kernel.querylang.engine import refusing_errors
from remote_kernel.querylang.parse import walk_nodes

WHAT_TO_DECLARE = (
    "The DP tier joins two datasets only over a declared privacy unit: the data owner "
    "declares privacy_unit: {id: <column>, max_contributions: <n>, name: <unit>} for both "
    "(the same name), and the query joins them ON <left>.<id> = <right>.<id> (or USING)."
)


@dataclass(frozen=True)
class Side:
    dataset: str
    qualifiers: frozenset[str]
    columns: tuple[str, ...]
    unit: PrivacyUnit


@dataclass(frozen=True)
class JoinedQuery:
    """The rewritten single-dataset query and what it runs on."""

    sql: str
    dataset: str
    frame: pd.DataFrame
    metadata: DPMetadata
    names: list[str]  # the original query's result column names
    note: str


def datasets_of(sql: str) -> list[str]:
    """The datasets a DP query reads (one, or two for a join), from DuckDB's parse."""
    try:
        table = serialize_sql(sql)["statements"][0]["node"]["from_table"]
    except (KeyError, IndexError, TypeError):
        return []
    if table.get("type") == "JOIN":
        sides = [table.get("left") or {}, table.get("right") or {}]
        return [str(s.get("table_name")) for s in sides if s.get("type") == "BASE_TABLE"]
    return [str(table["table_name"])] if table.get("table_name") else []


def is_join(sql: str) -> bool:
    try:
        node = serialize_sql(sql)["statements"][0]["node"]
    except (KeyError, IndexError, TypeError):
        return False
    return (node.get("from_table") or {}).get("type") == "JOIN"


def rewrite_join(
    sql: str,
    tables: Mapping[str, pd.DataFrame],
    metadata: DPMetadata | Mapping[str, DPMetadata],
) -> JoinedQuery:
    """The join as a query over one joined dataset, or :class:`QueryRejected` saying why."""
    document = serialize_sql(sql)
    node = document["statements"][0]["node"]
    table = node["from_table"]
    if table.get("join_type") != "INNER" or table.get("ref_type") != "REGULAR":
        raise QueryRejected(f"only an inner JOIN ... ON / USING is supported. {WHAT_TO_DECLARE}")
    left, right = (_side(table.get(s) or {}, tables, metadata) for s in ("left", "right"))
    if left.dataset == right.dataset:
        raise QueryRejected(f"join two different datasets. {WHAT_TO_DECLARE}")
    if left.unit.name != right.unit.name:
        raise QueryRejected(
            f"{left.dataset}'s privacy unit is {left.unit.name!r} and {right.dataset}'s is "
            f"{right.unit.name!r}: the ids may identify different people. {WHAT_TO_DECLARE}"
        )
    _check_condition(table, left, right)
    types = {str(plain(tables[s.dataset])[str(s.unit.id_column)].dtype) for s in (left, right)}
    if len(types) != 1:  # a cast could make two people's ids equal
        raise QueryRejected(
            f"the id columns of {left.dataset} and {right.dataset} have different types "
            f"({' and '.join(sorted(types))}); the data owner stores them alike."
        )
    renames = _renames(left, right)
    for found in list(walk_nodes(node)):
        if found.get("class") == "COLUMN_REF":
            found["column_names"] = [_joined_name(found["column_names"], left, right, renames)]
    joined = f"{left.dataset}_join_{right.dataset}"
    single = serialize_sql(f"SELECT 1 FROM {quote_identifier(joined)}")  # noqa: S608 (quoted)
    node["from_table"] = single["statements"][0]["node"]["from_table"]
    merged = _merged_metadata(left, right, renames, metadata)
    contributions = merged.privacy_unit.max_contributions
    return JoinedQuery(
        sql=deserialize_sql(document),
        dataset=joined,
        frame=_joined_frame(left, right, renames, tables),
        metadata=merged,
        names=_names(sql, tables, left, right),
        note=(
            f"{left.dataset} joined with {right.dataset} on their {left.unit.name} ids; each "
            f"{left.unit.name} counts with at most {contributions} joined rows (more are left out)"
        ),
    )


def _side(
    table: Mapping[str, Any],
    tables: Mapping[str, pd.DataFrame],
    metadata: DPMetadata | Mapping[str, DPMetadata],
) -> Side:
    if table.get("type") != "BASE_TABLE" or table.get("schema_name") or table.get("sample"):
        raise QueryRejected(f"a DP join joins two datasets by name. {WHAT_TO_DECLARE}")
    name = str(table["table_name"])
    dataset = next((d for d in tables if d.lower() == name.lower()), None)
    if dataset is None:
        raise QueryRejected(f"there is no dataset {name!r} (available: {', '.join(tables)}).")
    declared = metadata.get(dataset) if isinstance(metadata, Mapping) else None
    if declared is None:
        raise QueryRejected(f"{dataset!r} has no DP metadata here. {WHAT_TO_DECLARE}")
    if declared.privacy_unit.is_row:
        raise QueryRejected(
            f"{dataset!r} declares no privacy unit with an id column (each row counts as a "
            f"person, so its rows cannot be matched to people). {WHAT_TO_DECLARE}"
        )
    qualifiers = {dataset.lower(), name.lower()}
    if table.get("alias"):
        qualifiers.add(str(table["alias"]).lower())
    columns = tuple(str(c) for c in tables[dataset].columns)
    return Side(dataset, frozenset(qualifiers), columns, declared.privacy_unit)


def _check_condition(table: Mapping[str, Any], left: Side, right: Side) -> None:
    """The join condition must be exactly: left id = right id."""
    ids = {left.dataset: str(left.unit.id_column), right.dataset: str(right.unit.id_column)}
    using = [str(c).lower() for c in table.get("using_columns") or []]
    if using:
        if using == [ids[left.dataset].lower()] == [ids[right.dataset].lower()]:
            return
        raise QueryRejected(f"USING ({', '.join(using)}) is not the id of both. {WHAT_TO_DECLARE}")
    condition = table.get("condition") or {}
    if condition.get("type") == "COMPARE_EQUAL":
        sides = [condition.get("left") or {}, condition.get("right") or {}]
        owners = [_owner(s, left, right) for s in sides]
        if sorted(o.dataset for o in owners if o) == sorted(ids) and all(
            o and str(s["column_names"][-1]).lower() == ids[o.dataset].lower()
            for s, o in zip(sides, owners, strict=True)
        ):
            return
    raise QueryRejected(
        f"the join condition must be {left.dataset}.{ids[left.dataset]} = "
        f"{right.dataset}.{ids[right.dataset]}, the declared ids. {WHAT_TO_DECLARE}"
    )


def _owner(node: Mapping[str, Any], left: Side, right: Side) -> Side | None:
    """Which side a column reference belongs to (None when it is not a plain column of one)."""
    if node.get("class") != "COLUMN_REF":
        return None
    names = [str(n) for n in node["column_names"]]
    if len(names) == 2:
        return next((s for s in (left, right) if names[0].lower() in s.qualifiers), None)
    owners = [s for s in (left, right) if names[-1].lower() in map(str.lower, s.columns)]
    return owners[0] if len(owners) == 1 else None


def _renames(left: Side, right: Side) -> dict[tuple[str, str], str]:
    """(dataset, lower column) -> the joined frame's column name."""
    lower = [{c.lower() for c in s.columns} for s in (left, right)]
    shared = lower[0] & lower[1]
    renames = {}
    for side in (left, right):
        for column in side.columns:
            clash = column.lower() in shared
            renames[(side.dataset, column.lower())] = (
                f"{side.dataset}__{column}" if clash else column
            )
    return renames


def _joined_name(
    names: list[str], left: Side, right: Side, renames: Mapping[tuple[str, str], str]
) -> str:
    column = str(names[-1])
    if len(names) == 2:
        side = next((s for s in (left, right) if str(names[0]).lower() in s.qualifiers), None)
        if side is None:
            raise QueryRejected(f"{'.'.join(names)}: {names[0]!r} is neither joined dataset.")
        candidates = [side]
    elif len(names) == 1:
        candidates = [s for s in (left, right) if column.lower() in map(str.lower, s.columns)]
    else:
        raise QueryRejected(f"{'.'.join(names)}: write <dataset or alias>.<column>.")
    if (
        not candidates
        or (side_column := renames.get((candidates[0].dataset, column.lower()))) is None
    ):
        raise QueryRejected(f"{'.'.join(names)} is not a column of the joined datasets.")
    if len(candidates) == 2:
        if column.lower() == str(left.unit.id_column).lower() == str(right.unit.id_column).lower():
            return side_column  # the join key: equal on both sides
        raise QueryRejected(
            f"{column!r} is a column of both {left.dataset} and {right.dataset}: "
            f"write {left.dataset}.{column} or {right.dataset}.{column}."
        )
    return side_column


def _merged_metadata(
    left: Side,
    right: Side,
    renames: Mapping[tuple[str, str], str],
    metadata: DPMetadata | Mapping[str, DPMetadata],
) -> DPMetadata:
    assert isinstance(metadata, Mapping)
    bounds: dict[str, tuple[float, float]] = {}
    categories: dict[str, tuple[Any, ...]] = {}
    for side in (left, right):
        declared = metadata[side.dataset]
        for column, pair in declared.bounds.items():
            if (side.dataset, column.lower()) in renames:
                bounds[renames[(side.dataset, column.lower())]] = pair
        for column, values in declared.public_categories.items():
            if (side.dataset, column.lower()) in renames:
                categories[renames[(side.dataset, column.lower())]] = values
    first, second = metadata[left.dataset], metadata[right.dataset]
    contributions = left.unit.max_contributions * right.unit.max_contributions
    unit = PrivacyUnit(
        renames[(left.dataset, str(left.unit.id_column).lower())], contributions, left.unit.name
    )
    return DPMetadata(
        bounds=bounds,
        public_categories=categories,
        privacy_unit=unit,
        max_rows=min(first.max_rows, second.max_rows) * contributions,
        max_groups=max(first.max_groups, second.max_groups),
    )


#: The last joined frames, per (left frame, right frame, join): a warm join answers
#: the next query on it without joining again (frames are held weakly; the datasite's
#: private tables live as long as the process).
_JOINS_KEPT = 2
_joins: dict[tuple[Any, ...], tuple[Any, Any, pd.DataFrame]] = {}
_joins_lock = threading.Lock()


def _joined_frame(
    left: Side,
    right: Side,
    renames: Mapping[tuple[str, str], str],
    tables: Mapping[str, pd.DataFrame],
) -> pd.DataFrame:
    """The joined frame, from the cache when the same two frames were joined the same way."""
    frames = (tables[left.dataset], tables[right.dataset])
    key = (id(frames[0]), id(frames[1]), left, right)
    with _joins_lock:
        kept = _joins.get(key)
    if kept is not None and kept[0]() is frames[0] and kept[1]() is frames[1]:
        return kept[2]
    joined = _join(left, right, renames, tables)
    with _joins_lock:
        _joins[key] = (weakref.ref(frames[0]), weakref.ref(frames[1]), joined)
        while len(_joins) > _JOINS_KEPT:
            del _joins[next(iter(_joins))]
    return joined


def _join(
    left: Side,
    right: Side,
    renames: Mapping[tuple[str, str], str],
    tables: Mapping[str, pd.DataFrame],
) -> pd.DataFrame:
    """Every matching pair of rows, columns renamed; errors say nothing about the values."""
    items = [
        f"{alias}.{quote_identifier(column)} AS "
        f"{quote_identifier(renames[(side.dataset, column.lower())])}"
        for alias, side in (("l", left), ("r", right))
        for column in side.columns
    ]
    on = (
        f"l.{quote_identifier(str(left.unit.id_column))} = "
        f"r.{quote_identifier(str(right.unit.id_column))}"
    )
    # Only dataset and column names (quoted) and the declared id columns.
    sql = (
        f"SELECT {', '.join(items)} FROM {quote_identifier(left.dataset)} AS l "  # noqa: S608
        f"JOIN {quote_identifier(right.dataset)} AS r ON {on}"
    )
    con = open_connection({side.dataset: plain(tables[side.dataset]) for side in (left, right)})
    try:
        with refusing_errors(private=True):
            return con.execute(sql).df()
    finally:
        con.close()


def _names(sql: str, tables: Mapping[str, pd.DataFrame], left: Side, right: Side) -> list[str]:
    """The original query's column names, from a run on zero rows (schema only)."""
    empty = {side.dataset: plain(tables[side.dataset]).iloc[:0] for side in (left, right)}
    con = open_connection(empty)
    try:
        with refusing_errors(private=True):
            cursor = con.execute(sql)
        return [str(column[0]) for column in cursor.description or []]
    finally:
        con.close()
