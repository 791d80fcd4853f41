"""Public key sets for GROUP BY, computed from the owner's declarations only.

A group key's possible values are public when they follow from the metadata:
a condition (``num > 0 AS disease``) takes the values false and true; an
expression of columns with declared categories or bounds (``FLOOR(age / 10) * 10``)
takes the values DuckDB computes for it over a *public grid* -- the declared
categories, or points spanning the declared bounds -- never over the private
rows. With public keys, OpenDP releases every key (an empty group gets a noisy
zero) and no delta is needed. A private row whose key falls outside the set
(NULL, or a value the grid missed) is counted in no group: that costs accuracy,
never privacy. Keys that are not public are selected by OpenDP's thresholding
(delta > 0) or refused.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from remote_kernel.checks.dp.bounds import is_boolean
from remote_kernel.checks.dp.metadata import DPMetadata
from remote_kernel.checks.dp.rows import expression_sql, from_clause, key_name, plain, run_rows
from remote_kernel.checks.dp.shape import DPQuery
from remote_kernel.querylang.parse import walk_nodes

#: Largest public grid evaluated for one key, and largest released key set.
MAX_GRID_ROWS = 200_000
MAX_PUBLIC_GROUPS = 10_000
#: Points spanning a declared numeric range (plus every whole number in a short one).
GRID_POINTS = 2_001
MAX_WHOLE_NUMBERS = 5_000


class KeysNotPublic(Exception):
    """Why a key's values do not follow from the metadata (for the refusal message)."""


def public_keys(query: DPQuery, metadata: DPMetadata, frame: pd.DataFrame) -> pl.DataFrame | None:
    """Every combination of public key values (columns ``__dp_k<i>``); None without keys.

    Raises :class:`KeysNotPublic` naming the first key whose values are not public.
    """
    if not query.skeleton.keys:
        return None
    sets = [_key_values(query, metadata, frame, i) for i in range(len(query.skeleton.keys))]
    size = math.prod(len(values) for values in sets)
    if size > MAX_PUBLIC_GROUPS:
        raise KeysNotPublic(
            f"the declared values make {size} groups, more than {MAX_PUBLIC_GROUPS}; group by "
            f"coarser keys"
        )
    rows = list(itertools.product(*(values.to_list() for values in sets)))
    schema = {key_name(i): values.dtype for i, values in enumerate(sets)}
    return pl.DataFrame(rows, schema=schema, orient="row")


def _key_values(query: DPQuery, metadata: DPMetadata, frame: pd.DataFrame, index: int) -> pl.Series:
    key = query.skeleton.keys[index]
    if is_boolean(key.expression):
        return pl.Series(key_name(index), [False, True], dtype=pl.Boolean)
    columns = _referenced_columns(key.expression, frame)
    grids = {column: _grid(column, metadata, frame, key.text) for column in columns}
    size = math.prod(len(g) for g in grids.values())
    if size > MAX_GRID_ROWS:
        raise KeysNotPublic(f"the key {key.text} spans {size} combinations of declared values")
    grid = pd.DataFrame(list(itertools.product(*grids.values())), columns=list(grids))
    grid = grid.astype({c: plain(frame)[c].dtype for c in grids}) if len(grid) else grid
    # The key is a checked parse-tree expression printed by DuckDB, not the researcher's text.
    sql = (
        f"SELECT DISTINCT {expression_sql(key.expression)} AS {key_name(index)} "  # noqa: S608
        f"FROM {from_clause(query)}"
    )
    # The grid is public, but its column types are the private frame's: say nothing more
    # than a bind error, as for the private rows.
    values = run_rows(sql, query.dataset, grid, private=True)[key_name(index)].drop_nulls()
    return values.sort()


def _referenced_columns(expression: Mapping[str, Any], frame: pd.DataFrame) -> list[str]:
    by_lower = {str(c).lower(): str(c) for c in frame.columns}
    found: list[str] = []
    for node in walk_nodes(expression):
        if node.get("class") == "COLUMN_REF":
            column = by_lower[str(node["column_names"][-1]).lower()]
            if column not in found:
                found.append(column)
    return found


def _grid(column: str, metadata: DPMetadata, frame: pd.DataFrame, key: str) -> list[Any]:
    """Public values spanning a column: its declared categories or its declared range."""
    categories = metadata.categories_of(column)
    if categories is not None:
        return list(categories)
    dtype = plain(frame)[column].dtype
    if pd.api.types.is_bool_dtype(dtype):
        return [False, True]
    bounds = metadata.bounds_of(column)
    if bounds is None:
        raise KeysNotPublic(
            f"the key {key} uses column {column!r}, which has no declared public categories "
            f"or bounds"
        )
    low, high = bounds
    points = set(np.linspace(low, high, GRID_POINTS).tolist())
    if high - low <= MAX_WHOLE_NUMBERS:
        points |= {float(v) for v in range(math.ceil(low), math.floor(high) + 1)}
    if pd.api.types.is_integer_dtype(dtype):
        points = {p for p in points if float(p).is_integer()}
    return sorted(points)
