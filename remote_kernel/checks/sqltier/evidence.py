"""The evidence query: the researcher's query with per-cell evidence spliced in.

The evidence is computed by the same query, in the same pass over the private
rows, under the same WHERE and GROUP BY: the researcher's select items stay first
and untouched, and reserved columns (``__rk_...``) follow with each cell's row
count, every group key, and per aggregated column its contributor count, sum,
minimum, maximum and largest absolute values. The splice is done on DuckDB's own
parse tree and printed back by DuckDB, then parsed again to prove it is the tree
that was checked.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.querylang import (
    EVIDENCE_PREFIX,
    ParsedQuery,
    canonical,
    deserialize_sql,
    serialize_sql,
)

_PLACEHOLDER = f"{EVIDENCE_PREFIX}arg"


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
    """A template tree with the placeholder column replaced by the aggregate's argument."""
    if isinstance(node, dict):
        if node.get("class") == "COLUMN_REF" and node.get("column_names") == [placeholder]:
            return copy.deepcopy(dict(replacement))
        return {k: _substitute(v, placeholder, replacement) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, placeholder, replacement) for v in node]
    return node


@dataclass
class Evidence:
    """Where each piece of evidence lands in the result (column aliases)."""

    cell_size: str
    keys: list[str]  # one column per group key (a select column or an added one)
    contributors: dict[int, str]  # aggregate position -> column
    numeric: dict[int, dict[str, Any]]  # aggregate position -> {"total","min","max","top"}


@dataclass
class _Added:
    """The evidence items appended after the researcher's own, in order."""

    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, item: dict[str, Any], alias: str) -> str:
        """Append a copy of ``item`` under the reserved ``alias``; returns the alias."""
        item = copy.deepcopy(item)
        item["alias"] = alias
        self.items.append(item)
        return alias


def evidence_query(parsed: ParsedQuery, top_n: int) -> tuple[str, Evidence]:
    """The researcher's query with the evidence columns spliced into its select list."""
    document = copy.deepcopy(parsed.document)
    node = document["statements"][0]["node"]
    select_list: list[dict[str, Any]] = node["select_list"]
    # The researcher's items stay first and untouched (result columns 0..k-1); the
    # evidence follows under reserved names.
    added = _Added()
    (count_star,) = _template_items("SELECT count_star()")
    cell_size = added.add(count_star, f"{EVIDENCE_PREFIX}cells")
    key_columns = [
        added.add(key.expression, f"{EVIDENCE_PREFIX}key{index}")
        for index, key in enumerate(parsed.keys)
    ]
    contributors, numeric = _aggregate_evidence(parsed, added, cell_size, top_n)
    node["select_list"] = select_list + added.items
    sql = deserialize_sql(document)
    _verify_round_trip(sql, node)
    return sql, Evidence(cell_size, key_columns, contributors, numeric)


def _numeric_template(top_n: int) -> list[dict[str, Any]]:
    """count, sum, min, max and the ``top_n`` largest absolute values of the placeholder."""
    value = f"CAST({_PLACEHOLDER} AS DOUBLE)"
    return _template_items(
        f"SELECT count({_PLACEHOLDER}), sum({value}), min({value}), max({value}), "
        + ", ".join(f"max(abs({value}), {top_n})[{j}]" for j in range(1, top_n + 1))
    )


def _aggregate_evidence(
    parsed: ParsedQuery, added: _Added, cell_size: str, top_n: int
) -> tuple[dict[int, str], dict[int, dict[str, Any]]]:
    """Contributor counts for every aggregate, and value evidence for SUM and AVG.

    COUNT(*) counts rows, so its contributors are the cell size. Aggregates of the
    same column share their evidence (SUM(chol) and AVG(chol)).
    """
    numeric_template = _numeric_template(top_n)
    contributors: dict[int, str] = {}
    numeric: dict[int, dict[str, Any]] = {}
    counted: dict[str, str] = {}
    measured: dict[str, dict[str, Any]] = {}
    for aggregate in parsed.aggregates:
        if aggregate.function == "count_star":
            contributors[aggregate.position] = cell_size
            continue
        assert aggregate.argument is not None
        signature = json.dumps(canonical(aggregate.argument), sort_keys=True)
        items = [_substitute(t, _PLACEHOLDER, aggregate.argument) for t in numeric_template]
        tag = f"{EVIDENCE_PREFIX}a{aggregate.position}"
        if signature not in counted:
            counted[signature] = added.add(items[0], f"{tag}_n")
        contributors[aggregate.position] = counted[signature]
        if aggregate.function == "count":
            continue
        if signature not in measured:
            measured[signature] = {
                "total": added.add(items[1], f"{tag}_sum"),
                "min": added.add(items[2], f"{tag}_min"),
                "max": added.add(items[3], f"{tag}_max"),
                "top": [added.add(item, f"{tag}_top{j}") for j, item in enumerate(items[4:])],
            }
        numeric[aggregate.position] = measured[signature]
    return contributors, numeric


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
