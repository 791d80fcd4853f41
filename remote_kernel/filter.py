"""The output filter interface and the filters that exist today.

A filter sees one output item at a time, in the datasite server process,
outside the researcher's kernel (invariant 2), and says ``release``,
``review`` or ``block`` with findings a person can read. The rule-based
filter (ACRO-style thresholds, leak detection against the private data)
implements the same interface.
"""

from __future__ import annotations

from typing import Protocol

from .models import OUTPUT_MSG_TYPES, FilterDecision, Finding, OutputItem, Verdict


class OutputFilter(Protocol):
    """Decides, for one output item, whether it may leave the datasite."""

    name: str

    def check(self, item: OutputItem) -> FilterDecision: ...


class DenyByDefaultFilter:
    """Every output goes to a human reviewer. The safe default; blocks what is too big."""

    name = "deny-by-default"

    def __init__(self, max_output_bytes: int = 1024 * 1024) -> None:
        self.max_output_bytes = max_output_bytes

    def check(self, item: OutputItem) -> FilterDecision:
        size = len(item.canonical_bytes())
        if size > self.max_output_bytes:
            return FilterDecision(
                Verdict.BLOCK,
                (
                    Finding(
                        "size",
                        Verdict.BLOCK,
                        f"output is {size} bytes, over the datasite's limit of "
                        f"{self.max_output_bytes} bytes",
                    ),
                ),
            )
        if item.msg_type not in OUTPUT_MSG_TYPES:
            return FilterDecision(
                Verdict.BLOCK,
                (Finding("type", Verdict.BLOCK, f"unknown output type {item.msg_type!r}"),),
            )
        return FilterDecision(
            Verdict.REVIEW,
            (
                Finding(
                    "deny-by-default",
                    Verdict.REVIEW,
                    "every output is reviewed by a person under this datasite's policy",
                ),
            ),
        )


class InsecureReleaseAllFilter:
    """Releases everything. For benchmarks only; refused unless explicitly asked for."""

    name = "insecure-release-all"

    def check(self, item: OutputItem) -> FilterDecision:
        return FilterDecision(
            Verdict.RELEASE,
            (Finding("insecure-release-all", Verdict.RELEASE, "benchmark-only policy"),),
        )


class InsecureFilterRefused(RuntimeError):
    pass


def make_filter(name: str, max_output_bytes: int, allow_insecure: bool = False) -> OutputFilter:
    """Build the filter a datasite config names."""
    if name == DenyByDefaultFilter.name:
        return DenyByDefaultFilter(max_output_bytes)
    if name == InsecureReleaseAllFilter.name:
        if not allow_insecure:
            raise InsecureFilterRefused(
                "the 'insecure-release-all' policy releases private data without review; "
                "it exists only for benchmarks and needs --insecure-release-all"
            )
        return InsecureReleaseAllFilter()
    raise ValueError(f"unknown output filter {name!r} (known: deny-by-default)")
