"""The identifier rule (``leak-identifier``): values of declared identifier columns.

Every value of every declared identifier column is indexed with all its
spellings; an occurrence of one anywhere in an output blocks it. Values that
would also be ordinary tokens of harmless outputs are not indexed (see the
package docstring), and :attr:`PrivateIndex.stats` counts them per column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from remote_kernel.checks.leaks.findings import Hits
from remote_kernel.checks.leaks.lookup import KeyTable
from remote_kernel.checks.leaks.spellings import Spelled
from remote_kernel.checks.leaks.tokens import Tokens
from remote_kernel.checks.leaks.tunables import (
    COMMON_WORDS,
    MAX_LOCATIONS,
    MIN_IDENTIFIER_CHARS,
    MIN_IDENTIFIER_NUMBER,
)
from remote_kernel.protocol.models import Finding, Verdict


def worth_indexing(canonical: str) -> bool:
    """See the package docstring: too short, small numbers and common words are not indexed."""
    if len(canonical.replace(" ", "")) < MIN_IDENTIFIER_CHARS:
        return False
    if canonical in COMMON_WORDS:
        return False
    try:
        number = float(canonical)
    except ValueError:
        return True
    return not math.isfinite(number) or abs(number) >= MIN_IDENTIFIER_NUMBER


@dataclass
class IdentifierValues:
    """The spellings of identifier values of all datasets, each labelled with its column."""

    strings: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # index into owners, per string
    owners: list[tuple[str, str]] = field(default_factory=list)  # (dataset, column)
    skipped: dict[str, int] = field(default_factory=dict)  # "dataset.column" -> values
    indexed: int = 0

    def add_column(self, dataset: str, column: str, spelled: list[Spelled]) -> None:
        """File every value of one identifier column (from ``column_spellings``) worth it."""
        label = len(self.owners)
        self.owners.append((dataset, column))
        for item in spelled:
            if item is None:
                continue
            if not worth_indexing(item[0]):
                key = f"{dataset}.{column}"
                self.skipped[key] = self.skipped.get(key, 0) + 1
                continue
            self.indexed += 1
            self.strings.extend(item[1])
            self.labels.extend([label] * len(item[1]))

    def table(self) -> KeyTable:
        """Token-sequence hashes of every indexed spelling -> its column's label."""
        return KeyTable.from_strings(self.strings, np.asarray(self.labels, dtype=np.int32))


def identifier_findings(
    table: KeyTable, owners: list[tuple[str, str]], tokens: Tokens, where: str
) -> list[Finding]:
    """One ``leak-identifier`` block per identifier column whose values are in ``tokens``."""
    per_owner: dict[int, Hits] = {}
    for _, positions, labels in table.lookup(tokens):
        for label in np.unique(labels):
            at = positions[labels == label]
            hits = per_owner.setdefault(int(label), Hits())
            hits.count += len(at)
            hits.lines += [tokens.line_of(int(p)) for p in at[:MAX_LOCATIONS]]
    findings = []
    for label, hits in sorted(per_owner.items()):
        dataset, column = owners[label]
        findings.append(
            Finding(
                "leak-identifier",
                Verdict.BLOCK,
                f"values of identifier column {column!r} of dataset {dataset!r} in the "
                f"{where}, {hits.count} time(s) ({hits.where()}); identifier values may "
                "appear in no output",
                location=f"{where} {hits.where()}",
            )
        )
    return findings
