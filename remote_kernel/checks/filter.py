"""The output filter: every output item gets findings and a verdict, outside the kernel.

A filter sees one output item at a time, in the datasite server process,
never in the researcher's kernel (invariant 2), and answers ``release``,
``review`` or ``block`` with findings a person can read. The item's verdict
is the worst of its findings, and no findings at all means review: deny by
default.

Two origins of items reach the filter:

* ``kernel``: anything the researcher's kernel emitted. Researcher code could
  have computed it from anything and labelled it anything, so it is never
  released automatically (unless the policy's ``trust_kernel_evidence`` lets an
  ACRO "pass" hint through); the filter's job is to block what it can prove is a
  leak and to explain the rest to the reviewer.
* ``query``: aggregate tables the datasite computed itself (the sound tier,
  :mod:`remote_kernel.checks.sqltier`), whose evidence the datasite also computed; their
  verdict comes with them and is combined with the leak scan.
* ``suppressed``: a kernel table with its failing cells blanked, which the
  datasite wrote (:mod:`remote_kernel.checks.kernel_tables`). Its numbers are still
  the kernel's, so it is reviewed like kernel output, never released by policy.
* ``error``: what the datasite tells at once about a cell that raised
  (:mod:`remote_kernel.checks.errors`): a known exception name and line numbers of
  the researcher's own cell, quoted from their submitted code. Released by policy:
  its content is a function of a few bounded numbers, not of the kernel's text.

Kernel tables also get *hints* (small cells, zeros) for the reviewer; they are
findings with the verdict ``review`` that the researcher's summary leaves out.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from remote_kernel.checks.kernel_tables import HINT_CHECKS, table_hint_findings
from remote_kernel.checks.models import model_findings
from remote_kernel.checks.policy import Policy, Thresholds
from remote_kernel.checks.sqltier.cells import CELL_CHECKS
from remote_kernel.protocol.errors import RemoteKernelError
from remote_kernel.protocol.models import (
    OUTPUT_MSG_TYPES,
    FilterDecision,
    Finding,
    OutputItem,
    Verdict,
)
from remote_kernel.protocol.values import KINDS, VALUE_MIME, ValueDecodeError, describe, value_texts

log = logging.getLogger(__name__)

#: Mime types whose full content the leak scan reads.
TEXT_MIME_TYPES = frozenset(
    {"text/plain", "text/html", "text/markdown", "text/latex", "application/json"}
)
#: The datasite's own table format for sound-tier results.
QUERY_MIME = "application/vnd.remote-kernel.query+json"


@dataclass(frozen=True)
class CheckContext:
    """What the filter knows about the item besides its bytes."""

    researcher: str = ""
    origin: str = "kernel"  # "kernel", "query", "suppressed" or "error" (module docstring)
    #: For query results: the sound tier's own verdict and findings.
    query_findings: tuple[Finding, ...] = field(default_factory=tuple)


class OutputFilter(Protocol):
    """Decides, for one output item, whether it may leave the datasite."""

    name: str

    def check(self, item: OutputItem, context: CheckContext) -> FilterDecision: ...


class LeakScanner(Protocol):
    def scan_item(self, item: OutputItem) -> list[Finding]: ...
    def scan_text(self, text: str, where: str = ..., markup: bool = ...) -> list[Finding]: ...


#: Findings about the private numbers themselves: reviewers see them, researchers don't.
DATA_CHECKS = HINT_CHECKS | CELL_CHECKS


@dataclass(frozen=True)
class HintedDecision(FilterDecision):
    """A decision whose researcher summary leaves out what depends on the private numbers.

    Hints on a kernel table (``small-cells-hint (3)``) and the cell rules of an
    aggregate query (``small-cells``, ``nk-dominance`` ...) depend on the numbers;
    in the summary a researcher sees before release they would answer "were there
    small cells, and how many?" for a table nobody released -- even when the policy
    holds every such query anyway (preset strict, a computed key), so the summary
    must depend on the code alone. Reviewers see every finding.
    """

    def summary(self) -> str:
        shown = tuple(f for f in self.findings if f.check not in DATA_CHECKS)
        return FilterDecision(self.verdict, shown).summary()


def decision(findings: Sequence[Finding]) -> FilterDecision:
    return HintedDecision(Verdict.worst([f.verdict for f in findings]), tuple(findings))


def size_findings(item: OutputItem, limit: int) -> list[Finding]:
    size = len(item.canonical_bytes())
    if size > limit:
        message = f"output is {size} bytes, over the datasite's limit of {limit} bytes"
        return [Finding("size", Verdict.BLOCK, message)]
    return []


def type_findings(item: OutputItem) -> list[Finding]:
    if item.msg_type not in OUTPUT_MSG_TYPES:
        return [Finding("type", Verdict.BLOCK, f"unknown output type {item.msg_type!r}")]
    return []


class DenyByDefaultFilter:
    """Every output goes to a human reviewer; only oversized or unknown items are blocked."""

    name = "deny-by-default"

    def __init__(self, max_output_bytes: int = 1024 * 1024) -> None:
        self.max_output_bytes = max_output_bytes

    def check(self, item: OutputItem, context: CheckContext | None = None) -> FilterDecision:
        findings = size_findings(item, self.max_output_bytes) + type_findings(item)
        if not findings:
            findings.append(
                Finding("deny-by-default", Verdict.REVIEW,
                        "every output is reviewed by a person under this datasite's policy")
            )  # fmt: skip
        return decision(findings)


class RuleBasedFilter:
    """Policy-driven checks: size, type, leak scan, images, kernel evidence, sound tier."""

    name = "rules"

    def __init__(self, policy: Policy, scanner: LeakScanner | None) -> None:
        self.policy = policy
        self.scanner = scanner

    def check(self, item: OutputItem, context: CheckContext | None = None) -> FilterDecision:
        try:
            return self._check(item, context or CheckContext())
        except Exception as exc:  # a check that fails cannot vouch for anything: deny
            log.exception("the filter failed on an output")
            return decision([filter_error(exc)])

    def _check(self, item: OutputItem, context: CheckContext) -> FilterDecision:
        thresholds = self.policy.for_researcher(context.researcher)
        findings = size_findings(item, thresholds.max_output_bytes) + type_findings(item)
        if any(f.verdict is Verdict.BLOCK for f in findings):
            return decision(findings)  # do not scan what is never going out anyway
        if self.scanner is not None:
            findings += self.scanner.scan_item(item)
        findings += value_findings(item, self.scanner, thresholds, context.origin)
        if context.origin == "query":
            findings += list(context.query_findings)
            if not context.query_findings:
                findings.append(
                    Finding("sound-tier", Verdict.REVIEW,
                            "the datasite's own evidence for this table was lost (restart)")
                )  # fmt: skip
        elif context.origin == "error":
            findings.append(ERROR_SUMMARY)
        elif context.origin == "suppressed":
            findings += [*mime_findings(item), SUPPRESSED_VARIANT]
        else:
            findings += mime_findings(item) + kernel_origin_findings(item, thresholds)
            # Hints only guide a person: never where no person looks (a block, or a
            # release the policy trusts), where they would change the verdict.
            if Verdict.worst([f.verdict for f in findings]) is Verdict.REVIEW:
                findings += table_hint_findings(item, thresholds)
        return decision(findings)


ERROR_SUMMARY = Finding(
    "error-summary",
    Verdict.RELEASE,
    "written by the datasite: a known exception name and line numbers of the researcher's "
    "own cell, with those lines quoted from the code they submitted; the kernel's message "
    "and traceback are a separate output, held",
)
SUPPRESSED_VARIANT = Finding(
    "suppressed-variant",
    Verdict.REVIEW,
    "written by the datasite from the kernel's table: its labels and numbers only, failing "
    "cells blank. The numbers are still the kernel's (not evidence), so a person decides; "
    "approving it releases these bytes in place of the original",
)


def filter_error(exc: BaseException) -> Finding:
    """The finding for an output the filter could not finish checking: blocked, never released.

    Researcher code chooses every byte of a kernel output, so an output that makes
    a check fail is an attack as likely as a bug; and an output nobody could check
    must not leave (deny by default). A reviewer sees why.
    """
    return Finding(
        "filter-error",
        Verdict.BLOCK,
        f"the filter failed on this output ({type(exc).__name__}: {str(exc)[:300]}), so nobody "
        "can say what it carries; blocked",
    )


def mime_findings(item: OutputItem) -> list[Finding]:
    """Images go to a person; mime types the scan cannot read are never auto-released."""
    data: dict[str, Any] = item.content.get("data") or {}
    findings = []
    for mime in sorted(data):
        if mime.startswith("image/"):
            findings.append(
                Finding("image", Verdict.REVIEW,
                        f"images are always reviewed by a person ({mime})", location=mime)
            )  # fmt: skip
        elif mime not in TEXT_MIME_TYPES and mime not in (QUERY_MIME, VALUE_MIME):
            findings.append(
                Finding("uncheckable", Verdict.REVIEW,
                        f"the filter cannot read {mime}; a person must", location=mime)
            )  # fmt: skip
    return findings


def value_findings(
    item: OutputItem,
    scanner: LeakScanner | None,
    thresholds: Thresholds | None = None,
    origin: str = "kernel",
) -> list[Finding]:
    """A cell's last value travels as an object: check what the researcher would receive.

    The payload is made by researcher code, so it is decoded defensively
    (:func:`remote_kernel.protocol.values.value_texts`: canonical Arrow of flat columns,
    bounded sizes, full validation, never by running anything) and everything it
    carries (every cell, category, column name and metadata entry) is scanned
    like a printed table. A value that does not decode, or does not decode to
    exactly its own bytes, is blocked, since nobody could say what it carries.
    Pickles are never opened here (invariant 3): the filter scans their raw bytes
    for identifier values and always hands them to a person. Fitted models travel as
    data (``model``) and get the model rules too (:mod:`remote_kernel.checks.models`).
    """
    data = item.content.get("data")
    if not isinstance(data, dict) or VALUE_MIME not in data:
        return []
    payload = data[VALUE_MIME]
    kind = payload.get("kind") if isinstance(payload, dict) else None
    findings: list[Finding] = []
    try:
        if kind == "pickle":
            raw = base64.b64decode(str(payload.get("pickle", "")), validate=True)
            if scanner is not None:
                findings += scanner.scan_text(binary_text(raw), where="pickled value")
            findings.append(Finding("pickled-value", Verdict.REVIEW, describe(payload),
                                    location=VALUE_MIME))  # fmt: skip
            return findings
        if not isinstance(payload, dict):
            raise ValueDecodeError(f"the value is a JSON {type(payload).__name__}, not an object")
        if kind not in KINDS:
            raise ValueDecodeError(f"unknown value kind {str(kind)[:100]!r}")
        for where, text in value_texts(payload):
            if scanner is not None:
                findings += scanner.scan_text(text, where=where)
        note = describe(payload)
        if kind == "model":
            findings += model_findings(payload, thresholds or Thresholds(), origin)
    except Exception as exc:  # undecodable, malformed, too large, or a bug: nobody checked it
        reason = str(exc) if isinstance(exc, ValueDecodeError) else f"{type(exc).__name__}"
        return [Finding("value-undecodable", Verdict.BLOCK,
                        f"the attached value cannot be decoded, so nobody can check it: {reason}",
                        location=VALUE_MIME)]  # fmt: skip
    # Informational: the value is judged with the rest of the output, not on its own.
    findings.append(Finding("value", Verdict.RELEASE, note, location=VALUE_MIME))
    return findings


#: Control characters become spaces in :func:`binary_text`.
_CONTROLS = {i: " " for i in range(32)} | {0x7F: " ", 0xFFFD: " "}


def binary_text(raw: bytes) -> str:
    """The strings inside binary data (a pickle) as separate words for the leak scan.

    A pickle stores a string's UTF-8 bytes between opcode bytes (a length before,
    a memo mark after); read as Latin-1 those glue onto the string and hide it.
    Bytes that are not valid UTF-8 and control characters become spaces instead.
    """
    return raw.decode("utf-8", "replace").translate(_CONTROLS)


def kernel_origin_findings(item: OutputItem, thresholds: Thresholds) -> list[Finding]:
    """Kernel output is reviewed; an ACRO hint is shown, and trusted only if the policy says so."""
    hint = acro_hint(item)
    if hint is not None:
        status, summary = hint
        trusted = thresholds.trust_kernel_evidence and status == "pass"
        verdict = Verdict.RELEASE if trusted else Verdict.REVIEW
        source = "trusted by this datasite's policy" if trusted else "a hint, not verified"
        return [
            Finding("acro-hint", verdict,
                    f"ACRO in the researcher's kernel says {status!r}: {summary} ({source})")
        ]  # fmt: skip
    return [
        Finding("kernel-output", Verdict.REVIEW,
                "computed in the researcher's kernel, which could compute anything: "
                "a person decides (aggregate queries through rk.query can be released "
                "automatically)")
    ]  # fmt: skip


def acro_hint(item: OutputItem) -> tuple[str, str] | None:
    """An ACRO status and summary the researcher's kernel attached to an output, if any."""
    hint = (item.metadata or {}).get("acro")
    if hint is None:
        hint = (item.content.get("metadata") or {}).get("acro")
    if not isinstance(hint, dict):
        return None
    status, summary = hint.get("status"), hint.get("summary", "")
    if status not in ("pass", "review", "fail") or not isinstance(summary, str):
        return None
    return status, summary[:500]


class InsecureReleaseAllFilter:
    """Releases everything. For benchmarks only; refused unless explicitly asked for."""

    name = "insecure-release-all"

    def check(self, item: OutputItem, context: CheckContext | None = None) -> FilterDecision:
        findings = [Finding("insecure-release-all", Verdict.RELEASE, "benchmark-only policy")]
        # Even here, pickles go to a person: they are code as much as data.
        findings += [
            f
            for f in value_findings(item, None)
            if f.check == "pickled-value" or f.verdict is Verdict.BLOCK
        ]
        return decision(findings)


class InsecureFilterRefused(RemoteKernelError, RuntimeError):
    pass


FILTER_NAMES = ("rules", "deny-by-default", "insecure-release-all")


def make_filter(
    name: str,
    policy: Policy,
    scanner: LeakScanner | None = None,
    allow_insecure: bool = False,
) -> OutputFilter:
    """Build the filter a datasite config names."""
    if name == RuleBasedFilter.name:
        return RuleBasedFilter(policy, scanner)
    if name == DenyByDefaultFilter.name:
        return DenyByDefaultFilter(policy.thresholds.max_output_bytes)
    if name == InsecureReleaseAllFilter.name:
        if not allow_insecure:
            raise InsecureFilterRefused(
                "the 'insecure-release-all' policy releases private data without review; "
                "it exists only for benchmarks and needs --insecure-release-all"
            )
        return InsecureReleaseAllFilter()
    raise ValueError(f"unknown output filter {name!r} (known: {', '.join(FILTER_NAMES)})")
