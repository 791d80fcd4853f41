"""The datasite's output policy: thresholds, presets, overrides, identifier columns.

Read from ``<datasite>/policy.yaml`` (optional; without it the ``strict``
preset applies). The reference page is ``docs/policy.md``. A policy is
resolved per researcher: preset, then the file's thresholds, then per-role
and then per-researcher overrides, so a vetted researcher can get a lower
threshold without changing anyone else's.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remote_kernel.checks.dp.metadata import DPMetadata, DPMetadataError, parse_metadata
from remote_kernel.protocol.errors import InputError

POLICY_FILE = "policy.yaml"


class PolicyError(InputError):
    """The policy file is not valid; the message names the bad key."""


@dataclass(frozen=True)
class Thresholds:
    """Numbers the rules use. Defaults are ACRO/SACRO's where they exist."""

    #: Cells (groups) with fewer contributing rows than this fail (ACRO: 10).
    min_cell_count: int = 10
    #: N-K dominance: the top ``dominance_n`` contributors may hold at most
    #: ``dominance_k`` of a cell's total (ACRO: N=2, K=90%).
    dominance_n: int = 2
    dominance_k: float = 0.9
    #: p-percent rule: the total minus the top two contributions must be at least
    #: ``p_ratio`` times the largest contribution (ACRO: 10%).
    p_ratio: float = 0.1
    #: What a zero count cell means: "review" (ACRO flags zeros) or "release".
    zeros: str = "review"
    #: Residual degrees of freedom a model needs (ACRO: 10).
    min_dof: int = 10
    #: What happens to a failing cell of an aggregate query: "review" (hold the
    #: whole table for a person), "suppress" (blank the cell, release the rest) or
    #: "redact_round" (OpenSAFELY: blank cells <= redact_at_or_below, round the
    #: other counts to the nearest round_to, release).
    failing_cells: str = "review"
    redact_at_or_below: int = 7
    round_to: int = 5
    #: Whether aggregate queries may filter rows (WHERE). Each filter makes a new
    #: subset, and two overlapping subsets can be differenced to isolate one person;
    #: ``strict`` therefore sends filtered queries to review.
    allow_where: bool = True
    #: Trust evidence computed inside the researcher's kernel (an ACRO summary in
    #: output metadata) enough to auto-release. Researcher code runs in that kernel
    #: and can forge anything there: only for vetted researchers. Default off.
    trust_kernel_evidence: bool = False
    #: Any single output larger than this is blocked.
    max_output_bytes: int = 1024 * 1024
    #: Categories a released table may have per grouping column (DataSHIELD levels.max).
    max_levels: int = 40
    #: Wall-clock seconds one cell may run before it is interrupted (0: no limit).
    max_cell_seconds: float = 1800

    def __post_init__(self) -> None:
        if self.zeros not in ("review", "release"):
            raise PolicyError("zeros must be 'review' or 'release'")
        if self.failing_cells not in ("review", "suppress", "redact_round"):
            raise PolicyError("failing_cells must be 'review', 'suppress' or 'redact_round'")
        if self.min_cell_count < 1 or self.dominance_n < 1 or self.round_to < 1:
            raise PolicyError("min_cell_count, dominance_n and round_to must be at least 1")
        if not 0 < self.dominance_k <= 1 or not 0 <= self.p_ratio <= 1:
            raise PolicyError("dominance_k must be in (0, 1] and p_ratio in [0, 1]")
        if isinstance(self.max_cell_seconds, bool) or not isinstance(
            self.max_cell_seconds, int | float
        ):
            raise PolicyError("max_cell_seconds must be a number of seconds (0: no limit)")
        if self.max_cell_seconds < 0:
            raise PolicyError("max_cell_seconds must be 0 (no limit) or more")


PRESETS: dict[str, Thresholds] = {
    # Only the sound tier auto-releases; filtered (WHERE) queries go to a person.
    "strict": Thresholds(allow_where=False),
    # ACRO/SACRO's defaults: threshold 10, zeros flagged, NK 2/90%, p 10%, dof 10.
    "acro": Thresholds(),
    # OpenSAFELY: redact counts of 7 or fewer, round the rest to the nearest 5.
    "opensafely": Thresholds(failing_cells="redact_round", min_cell_count=8, zeros="release"),
}


@dataclass(frozen=True)
class DatasetPolicy:
    """Per-dataset columns the leak detector treats specially."""

    #: Values of these columns (patient ids, names, dates of birth) may appear in
    #: no output at all.
    identifiers: tuple[str, ...] = ()
    #: A table row or text line matching a private record on these columns is a
    #: leaked record. Empty means: all columns.
    quasi_identifiers: tuple[str, ...] = ()
    #: A lower wall-clock limit for cells that name this dataset (None: the researcher's).
    max_cell_seconds: float | None = None
    #: What the DP tier may assume, declared by the owner (bounds, public categories, the
    #: privacy unit); None: no DP queries on this dataset. See docs/policy.md.
    dp: DPMetadata | None = None


@dataclass(frozen=True)
class Policy:
    preset: str = "strict"
    thresholds: Thresholds = field(default_factory=lambda: PRESETS["strict"])
    datasets: dict[str, DatasetPolicy] = field(default_factory=dict)
    role_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    researcher_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Approvals an output needs before it is released (OpenSAFELY's airlock: 2).
    #: With more than one, mixed votes make the output "conflicted".
    required_reviews: int = 1

    def for_researcher(self, name: str, role: str = "researcher") -> Thresholds:
        """The thresholds that apply to one researcher's outputs."""
        thresholds = self.thresholds
        for overrides in (self.role_overrides.get(role), self.researcher_overrides.get(name)):
            if overrides:
                thresholds = dataclasses.replace(thresholds, **overrides)
        return thresholds

    def dataset(self, name: str) -> DatasetPolicy:
        return self.datasets.get(name, DatasetPolicy())

    def cell_seconds(self, name: str, role: str, code: str) -> float:
        """How long one cell of this researcher may run (0: no limit).

        The researcher's ``max_cell_seconds`` (after role and researcher overrides),
        lowered by the limit of any dataset whose name the cell quotes
        (``rk.data("heart")``, ``FROM heart`` inside a quoted query). A cell that builds a
        name at run time escapes a dataset's limit but never the researcher's.
        """
        limit = self.for_researcher(name, role).max_cell_seconds
        for dataset, spec in self.datasets.items():
            if spec.max_cell_seconds and _quotes_name(code, dataset):
                limit = min(limit, spec.max_cell_seconds) if limit else spec.max_cell_seconds
        return limit


def _quotes_name(code: str, name: str) -> bool:
    """Whether ``name`` stands in the code as a quoted string or as a word inside one."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", code) is not None


THRESHOLD_KEYS = {f.name for f in dataclasses.fields(Thresholds)}


def _thresholds(base: Thresholds, raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a mapping of threshold names to values")
    unknown = set(raw) - THRESHOLD_KEYS
    if unknown:
        raise PolicyError(
            f"unknown key(s) in {where}: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(THRESHOLD_KEYS))})"
        )
    try:
        dataclasses.replace(base, **raw)  # validates types and ranges
    except TypeError as exc:
        raise PolicyError(f"{where}: {exc}") from None
    return dict(raw)


def _seconds(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise PolicyError(f"{where}.max_cell_seconds must be a positive number of seconds")
    return float(value)


def _dp_metadata(raw: Any, where: str) -> DPMetadata | None:
    if raw is None:
        return None
    try:
        return parse_metadata(raw, where)
    except DPMetadataError as exc:
        raise PolicyError(str(exc)) from None


def parse_policy(raw: Any) -> Policy:
    """Build a Policy from the YAML mapping; every mistake is a PolicyError."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise PolicyError("the policy file must be a mapping")
    known = {"preset", "thresholds", "datasets", "overrides", "required_reviews"}
    unknown = set(raw) - known
    if unknown:
        raise PolicyError(f"unknown top-level key(s): {', '.join(sorted(unknown))}")
    preset = raw.get("preset", "strict")
    if preset not in PRESETS:
        raise PolicyError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    base = PRESETS[preset]
    thresholds = dataclasses.replace(base, **_thresholds(base, raw.get("thresholds"), "thresholds"))
    datasets = {}
    for name, spec in (raw.get("datasets") or {}).items():
        spec = spec or {}
        bad = set(spec) - {"identifiers", "quasi_identifiers", "max_cell_seconds", "dp"}
        if bad:
            raise PolicyError(f"unknown key(s) for dataset {name!r}: {', '.join(sorted(bad))}")
        datasets[name] = DatasetPolicy(
            identifiers=tuple(spec.get("identifiers") or ()),
            quasi_identifiers=tuple(spec.get("quasi_identifiers") or ()),
            max_cell_seconds=_seconds(spec.get("max_cell_seconds"), f"datasets.{name}"),
            dp=_dp_metadata(spec.get("dp"), f"datasets.{name}.dp"),
        )
    overrides = raw.get("overrides") or {}
    roles = {
        role: _thresholds(thresholds, value, f"overrides.roles.{role}")
        for role, value in (overrides.get("roles") or {}).items()
    }
    researchers = {
        name: _thresholds(thresholds, value, f"overrides.researchers.{name}")
        for name, value in (overrides.get("researchers") or {}).items()
    }
    required_reviews = raw.get("required_reviews", 1)
    if isinstance(required_reviews, bool) or not isinstance(required_reviews, int):
        raise PolicyError("required_reviews must be a whole number (1, or 2 for two-person review)")
    if not 1 <= required_reviews <= 5:
        raise PolicyError("required_reviews must be between 1 and 5")
    return Policy(preset, thresholds, datasets, roles, researchers, required_reviews)


def load_policy(directory: str | Path) -> Policy:
    path = Path(directory) / POLICY_FILE
    if not path.exists():
        return Policy()
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path} is not valid YAML: {exc}") from None
    try:
        return parse_policy(raw)
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None
