"""Shared vocabulary of the datasite: roles, states, verdicts and output items.

These are plain values with no I/O so that the store, the server, the filter,
the command line and the client all speak the same words.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


class Role(str, enum.Enum):
    """What a token may do at a datasite (invariant 4)."""

    RESEARCHER = "researcher"
    REVIEWER = "reviewer"
    ADMIN = "admin"


class RequestStatus(str, enum.Enum):
    """Where a submitted cell is in its life at the datasite."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"  # ran to the end without raising
    ERROR = "error"  # raised an exception (the traceback is an output like any other)
    FAILED = "failed"  # the kernel died under it
    INTERRUPTED = "interrupted"  # interrupted, or the server stopped while it ran

    @property
    def finished(self) -> bool:
        return self not in (RequestStatus.QUEUED, RequestStatus.RUNNING)


class OutputState(str, enum.Enum):
    """Whether an output's content may travel to the researcher."""

    PENDING = "pending"  # held for a reviewer
    RELEASED = "released"  # by policy or by a reviewer: content travels
    DENIED = "denied"  # a reviewer said no; their comment travels
    BLOCKED = "blocked"  # the filter proved a leak; never reviewable into release
    # Two-person rule: the reviewers disagreed. Final, like a denial: the content never
    # travels, the reviewers' comments do, and the researcher can change the cell and rerun.
    CONFLICTED = "conflicted"

    @property
    def decided(self) -> bool:
        return self is not OutputState.PENDING


class Verdict(str, enum.Enum):
    """A filter's opinion of one output item; ordered from best to worst."""

    RELEASE = "release"
    REVIEW = "review"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return {"release": 0, "review": 1, "block": 2}[self.value]

    @staticmethod
    def worst(verdicts: list[Verdict]) -> Verdict:
        """Deny by default: no findings at all means review, not release."""
        if not verdicts:
            return Verdict.REVIEW
        return max(verdicts, key=lambda v: v.severity)


#: Kernel iopub message types that carry content a researcher could read.
OUTPUT_MSG_TYPES = frozenset(
    {"stream", "display_data", "execute_result", "error", "update_display_data"}
)


@dataclass(frozen=True)
class Finding:
    """One reason for a verdict, written for a person."""

    check: str
    verdict: Verdict
    message: str
    location: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "verdict": self.verdict.value,
            "message": self.message,
            "location": self.location,
        }


@dataclass
class OutputItem:
    """One output of a request, exactly as the kernel emitted it.

    ``content`` is the iopub message content (a JSON object).  The bytes that
    are checked, stored, hashed and released are ``canonical_bytes()``: one
    serialisation used everywhere so that invariant 2 ("decided on exactly the
    bytes that are released") holds by construction.
    """

    msg_type: str
    content: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    def canonical_bytes(self) -> bytes:
        return canonical_json({"msg_type": self.msg_type, "content": self.content})

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON encoding (sorted keys, no spaces) used for hashing."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class FilterDecision:
    """What the filter says about one output item."""

    verdict: Verdict
    findings: tuple[Finding, ...]

    def summary(self) -> str:
        """A content-free sentence safe to show the researcher: check names and counts only.

        Finding messages and locations may quote the output (a table cell, a value),
        so they go to reviewers only.
        """
        if self.verdict is Verdict.RELEASE:
            return "released by policy"
        counts: dict[str, int] = {}
        for finding in self.findings:
            if finding.verdict is self.verdict:
                counts[finding.check] = counts.get(finding.check, 0) + 1
        what = "blocked" if self.verdict is Verdict.BLOCK else "held for review"
        reasons = ", ".join(f"{check} ({n})" if n > 1 else check for check, n in counts.items())
        return f"{what}: {reasons or 'policy'}"
