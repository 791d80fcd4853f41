"""``add-dataset --dp FILE``: the owner's DP metadata, checked, then put in ``policy.yaml``.

The DP tier reads a dataset's metadata from ``policy.yaml`` (``datasets.<name>.dp``,
:mod:`remote_kernel.checks.dp.metadata`). An owner adding a dataset can give it in a
file of its own instead of editing the policy by hand: it is parsed with the same
parser and checked against the new table's columns before anything is written, so a
typo in a column name is refused while nothing has changed yet.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from remote_kernel.checks.dp.metadata import parse_metadata
from remote_kernel.checks.policy import POLICY_FILE
from remote_kernel.protocol.errors import DatasetError


def read_declaration(path: str | Path) -> dict[str, Any]:
    """The ``dp:`` mapping in ``path`` (YAML; the mapping itself or ``{dp: ...}``), parsed."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f"cannot read the DP metadata file {path}: {exc}") from None
    if isinstance(raw, Mapping) and set(raw) == {"dp"}:
        raw = raw["dp"]
    if not isinstance(raw, Mapping):
        raise DatasetError(f"{path}: expected a mapping (bounds, public_categories, privacy_unit)")
    parse_metadata(raw, where=str(path))  # raises DPMetadataError naming the entry
    return dict(raw)


def check_columns(raw: Mapping[str, Any], columns: Iterable[str], where: str) -> None:
    """Every column the declaration names is a column of the table."""
    metadata = parse_metadata(raw, where=where)
    known = {str(c) for c in columns}
    named = {*metadata.bounds, *metadata.public_categories}
    if metadata.privacy_unit.id_column:
        named.add(metadata.privacy_unit.id_column)
    unknown = sorted(str(c) for c in named if str(c) not in known)
    if unknown:
        raise DatasetError(
            f"{where} names columns the table does not have: {', '.join(unknown)} "
            f"(its columns: {', '.join(sorted(known))})"
        )


def check_not_declared(directory: Path, name: str) -> None:
    """Refuse to overwrite a ``dp:`` section the owner already wrote in ``policy.yaml``."""
    policy = _load(directory)
    if isinstance(policy.get("datasets"), Mapping) and "dp" in (policy["datasets"].get(name) or {}):
        raise DatasetError(
            f"{POLICY_FILE} already declares DP metadata for {name!r}: edit it there"
        )


def write_declaration(directory: Path, name: str, raw: Mapping[str, Any]) -> Path | None:
    """Put ``raw`` under ``datasets.<name>.dp`` in ``policy.yaml``; the backup path if any.

    A policy written by hand may hold comments, which a YAML round trip drops: the
    file as it was is kept beside it as ``policy.yaml.bak``.
    """
    path = directory / POLICY_FILE
    policy = _load(directory)
    backup = None
    if path.exists() and "#" in path.read_text():
        backup = path.with_name(POLICY_FILE + ".bak")
        shutil.copyfile(path, backup)
    datasets = policy.setdefault("datasets", {})
    datasets.setdefault(name, {})["dp"] = dict(raw)
    tmp = path.with_name(POLICY_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(policy, sort_keys=False))
    tmp.replace(path)
    return backup


def _load(directory: Path) -> dict[str, Any]:
    path = directory / POLICY_FILE
    if not path.exists():
        return {}
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise DatasetError(f"{path} is not a mapping")
    return loaded
