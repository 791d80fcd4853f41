"""What the data owner declares about a dataset for the DP tier, never derived from its rows.

Bounds of numeric columns, public category sets, the privacy unit and the size
limits OpenDP needs are *public* facts the owner states (in ``datasite.yaml`` or
``policy.yaml``, a ``dp:`` section per dataset). Reading any of them from the
private table would itself leak: the observed maximum of ``age`` is one patient's
age. Values outside declared bounds are clipped; rows whose group key is not in a
declared category set are counted in no group.

The YAML-like form :func:`parse_metadata` reads::

    privacy_unit: row                 # or {id: patient_id, max_contributions: 3, name: patient}
    max_rows: 100000                  # upper bound on the number of rows
    max_groups: 50                    # upper bound on the groups of a non-public key
    bounds: {age: [20, 80], chol: [100, 600]}
    public_categories: {sex: [0, 1], cp: [1, 2, 3, 4]}

Two datasets of one site can be joined by the DP tier only when both declare an
``id`` privacy unit with the same ``name`` (default: the id column's name), which
says that their id columns identify the same people, and the query joins ON those
id columns (see :mod:`.join`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remote_kernel.protocol.errors import InputError

#: Used when the owner declares no ``max_rows``: generous, and public. OpenDP uses it
#: only to bound floating-point error in sums; it is not a row count of the data.
DEFAULT_MAX_ROWS = 1_000_000
#: Used when the owner declares no ``max_groups`` (keys selected by thresholding).
DEFAULT_MAX_GROUPS = 100

_KNOWN_KEYS = frozenset({"privacy_unit", "max_rows", "max_groups", "bounds", "public_categories"})


class DPMetadataError(InputError):
    """The DP metadata of a dataset is malformed; the message names the entry and the fix."""


@dataclass(frozen=True)
class PrivacyUnit:
    """Whom the guarantee protects: one row, or one person with up to ``max_contributions`` rows."""

    id_column: str | None = None
    max_contributions: int = 1
    #: Which people the ids identify: two datasets join only on units of the same name.
    name: str | None = None

    @property
    def is_row(self) -> bool:
        return self.id_column is None


@dataclass(frozen=True)
class DPMetadata:
    """The owner's declarations for one dataset (column names as the dataset spells them)."""

    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    public_categories: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    privacy_unit: PrivacyUnit = field(default_factory=PrivacyUnit)
    max_rows: int = DEFAULT_MAX_ROWS
    max_groups: int = DEFAULT_MAX_GROUPS

    def bounds_of(self, column: str) -> tuple[float, float] | None:
        return _lookup(self.bounds, column)

    def categories_of(self, column: str) -> tuple[Any, ...] | None:
        return _lookup(self.public_categories, column)


def _lookup(mapping: Mapping[str, Any], column: str) -> Any:
    """Column names compare case-insensitively, as in SQL."""
    lowered = column.lower()
    return next((v for k, v in mapping.items() if k.lower() == lowered), None)


def parse_metadata(raw: Mapping[str, Any] | None, where: str = "dp") -> DPMetadata:
    """The typed metadata from a YAML-like mapping; :class:`DPMetadataError` says what is wrong."""
    if raw is None:
        return DPMetadata()
    if not isinstance(raw, Mapping):
        raise DPMetadataError(f"{where}: expected a mapping of DP settings, got {_kind(raw)}.")
    unknown = sorted(set(map(str, raw)) - _KNOWN_KEYS)
    if unknown:
        raise DPMetadataError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_KNOWN_KEYS))}."
        )
    return DPMetadata(
        bounds=_parse_bounds(raw.get("bounds"), f"{where}.bounds"),
        public_categories=_parse_categories(
            raw.get("public_categories"), f"{where}.public_categories"
        ),
        privacy_unit=_parse_unit(raw.get("privacy_unit", "row"), f"{where}.privacy_unit"),
        max_rows=_positive_int(raw.get("max_rows", DEFAULT_MAX_ROWS), f"{where}.max_rows"),
        max_groups=_positive_int(raw.get("max_groups", DEFAULT_MAX_GROUPS), f"{where}.max_groups"),
    )


def _kind(value: Any) -> str:
    return type(value).__name__


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DPMetadataError(f"{where}: expected a finite number, got {value!r}.")
    return float(value)


def _parse_bounds(raw: Any, where: str) -> dict[str, tuple[float, float]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise DPMetadataError(f"{where}: expected {{column: [low, high]}}, got {_kind(raw)}.")
    bounds: dict[str, tuple[float, float]] = {}
    for column, pair in raw.items():
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DPMetadataError(f"{where}.{column}: expected [low, high], got {pair!r}.")
        low, high = (_number(v, f"{where}.{column}") for v in pair)
        if low > high:
            raise DPMetadataError(f"{where}.{column}: low {low:g} is above high {high:g}.")
        bounds[str(column)] = (low, high)
    return bounds


def _parse_categories(raw: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise DPMetadataError(f"{where}: expected {{column: [values]}}, got {_kind(raw)}.")
    categories: dict[str, tuple[Any, ...]] = {}
    for column, values in raw.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise DPMetadataError(f"{where}.{column}: expected a non-empty list of values.")
        for value in values:
            if value is None or isinstance(value, (Mapping, list, tuple)):
                raise DPMetadataError(f"{where}.{column}: {value!r} is not a category value.")
        if len(set(values)) != len(values):
            raise DPMetadataError(f"{where}.{column}: the values repeat.")
        categories[str(column)] = tuple(values)
    return categories


def _parse_unit(raw: Any, where: str) -> PrivacyUnit:
    if raw == "row":
        return PrivacyUnit()
    if not isinstance(raw, Mapping) or set(map(str, raw)) - {"id", "max_contributions", "name"}:
        raise DPMetadataError(
            f"{where}: write 'row' (each row is one person) or "
            f"{{id: <column>, max_contributions: <n>[, name: <unit>]}}; got {raw!r}."
        )
    column = raw.get("id")
    if not isinstance(column, str) or not column:
        raise DPMetadataError(f"{where}.id: name the column that identifies a person.")
    contributions = _positive_int(raw.get("max_contributions"), f"{where}.max_contributions")
    name = raw.get("name", column)
    if not isinstance(name, str) or not name.strip():
        raise DPMetadataError(f"{where}.name: name the unit (e.g. patient), got {name!r}.")
    return PrivacyUnit(column, contributions, name.strip().lower())


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DPMetadataError(f"{where}: expected a positive whole number, got {value!r}.")
    return value
