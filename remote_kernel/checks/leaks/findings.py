"""Findings for one dataset in one text, worded for the reviewer without private values.

Messages say where (lines), how many, and how strong the evidence is (bits
against the bits that rule out chance), never which values matched: the
finding itself leaves the datasite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from remote_kernel.checks.leaks.dataset import DatasetIndex
from remote_kernel.checks.leaks.record_like import record_like
from remote_kernel.checks.leaks.records import Result, match_records
from remote_kernel.checks.leaks.tokens import Tokens
from remote_kernel.checks.leaks.tunables import MAX_LOCATIONS
from remote_kernel.protocol.models import Finding, Verdict


@dataclass
class Hits:
    """Where one check fired for one dataset, collected before it becomes one Finding."""

    lines: list[int] = field(default_factory=list)
    count: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def where(self) -> str:
        lines = sorted(set(self.lines))[:MAX_LOCATIONS]
        more = ", ..." if len(set(self.lines)) > MAX_LOCATIONS else ""
        label = "line" if len(lines) == 1 else "lines"
        return f"{label} {', '.join(map(str, lines))}{more}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def dataset_findings(
    ds: DatasetIndex,
    tokens: Tokens,
    positions: np.ndarray,
    labels: np.ndarray,
    where: str,
) -> list[Finding]:
    """Records of ``ds`` (proven or suspected) and record-like tables in one text, given the
    tokens that are values of any dataset (``positions``) and their value ids."""
    mine = ds.is_value[labels]
    token_pos, hit_vids = positions[mine], labels[mine]
    if len(token_pos) == 0:
        return []
    hit_units = tokens.units_of(token_pos)
    findings = []
    proven, suspected = match_records(ds, token_pos, hit_vids, hit_units)
    if proven is not None:
        findings.append(_record_message(ds, tokens, proven, where, proven=True))
        return findings  # blocked; the rest would only repeat it
    if suspected is not None:
        findings.append(_record_message(ds, tokens, suspected, where, proven=False))
    like = record_like(ds, tokens, token_pos, hit_units)
    if like is not None:
        findings.append(_record_like_message(ds, tokens, like, where))
    return findings


def _record_message(
    ds: DatasetIndex, tokens: Tokens, result: Result, where: str, proven: bool
) -> Finding:
    hits = Hits([tokens.line_of(p) for p in result.lines], result.count)
    best = result.detail
    if ds.qi_declared:
        coverage = "all its quasi-identifier columns among them"
    elif best["full"]:
        coverage = "all of its non-missing columns"
    else:
        coverage = "a subset of its columns"
    strength = (
        f"{best['bits']:.0f} bits of evidence where {best['needed']:.0f} rule out chance"
        if best["full"]
        else f"{best['bits']:.0f} bits of evidence from its high-cardinality columns where "
        f"{best['needed']:.0f} rule out chance"
    )
    lines = _plural(hits.count, "line")
    capped = "at least " if best.get("capped") else ""
    if proven:
        return Finding(
            "leak-record",
            Verdict.BLOCK,
            f"private records of dataset {ds.name!r} in {capped}{lines} of the {where} "
            f"({hits.where()}): the strongest matches one private row on {best['columns']} of "
            f"{len(ds.columns)} columns ({coverage}) with {strength}",
            location=f"{where} {hits.where()}",
        )
    return Finding(
        "leak-record-suspected",
        Verdict.REVIEW,
        f"possible private records of dataset {ds.name!r} in {lines} of the {where} "
        f"({hits.where()}): the strongest matches one private row on {best['columns']} of "
        f"{len(ds.columns)} columns ({coverage}), {strength}; too little to block, "
        "worth a reviewer's look",
        location=f"{where} {hits.where()}",
    )


def _record_like_message(ds: DatasetIndex, tokens: Tokens, like: Result, where: str) -> Finding:
    hits = Hits([tokens.line_of(p) for p in like.lines], like.count)
    return Finding(
        "record-like-table",
        Verdict.REVIEW,
        f"the {where} looks like records of dataset {ds.name!r}: {hits.count} rows "
        f"carry {like.detail['values']}+ values each from its columns under a header "
        f"naming {like.detail['names']} of them ({hits.where()}); no row was proven "
        "to be a private record, but rows of a dataset (mock, perturbed, synthetic "
        "or real) need a person's look",
        location=f"{where} {hits.where()}",
    )
