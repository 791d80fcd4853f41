"""The index of all private tables (:class:`PrivateIndex`): built once, scans every output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.checks.leaks.dataset import DatasetIndex, build_dataset
from remote_kernel.checks.leaks.extract import item_parts, unwrap_pandas
from remote_kernel.checks.leaks.findings import dataset_findings
from remote_kernel.checks.leaks.identifiers import IdentifierValues, identifier_findings
from remote_kernel.checks.leaks.lookup import KeyTable
from remote_kernel.checks.leaks.spellings import Vocabulary, column_spellings
from remote_kernel.checks.leaks.tokens import tokenize
from remote_kernel.checks.policy import DatasetPolicy
from remote_kernel.protocol.models import Finding, OutputItem

#: A table's value columns before indexing: (name, columns, value ids per column,
#: distinct values per column, policy).
_Prepared = tuple[str, list[str], list[np.ndarray], list[int], DatasetPolicy]


class PrivateIndex:
    """Hashes of the private tables' values, records and identifiers; scans outputs for them.

    Build once per datasite start with :meth:`build`; :meth:`scan_item` and
    :meth:`scan_text` are read-only and safe to call from several threads.
    """

    def __init__(
        self,
        datasets: list[DatasetIndex],
        vocab: KeyTable,
        identifiers: KeyTable,
        identifier_owners: list[tuple[str, str]],
        stats: dict[str, Any],
    ) -> None:
        self._datasets = datasets
        self._vocab = vocab
        self._identifiers = identifiers
        self._identifier_owners = identifier_owners
        #: What was indexed: rows, values, skipped identifier values, bytes held.
        self.stats = stats

    # -- building --

    @classmethod
    def build(
        cls,
        frames: Mapping[str, pd.DataFrame],
        policies: Mapping[str, DatasetPolicy] | None = None,
    ) -> PrivateIndex:
        """Index the private tables. Raises ValueError when a policy names a missing column:
        a typo there would otherwise silently leave identifiers unprotected."""
        policies = policies or {}
        values = Vocabulary()
        idents = IdentifierValues()
        prepared = [
            _prepare(name, frame, policies.get(name, DatasetPolicy()), values, idents)
            for name, frame in frames.items()
        ]
        n_vids = len(values.ids)
        vocab = values.table()
        identifiers = idents.table()
        datasets = []
        while prepared:  # popped, so each dataset's columns are freed once indexed
            name, columns, vids, levels, policy = prepared.pop(0)
            if columns and len(vids[0]):  # no value columns or no rows: nothing to match
                datasets.append(build_dataset(name, columns, vids, levels, policy, n_vids))
        stats = {
            "datasets": {
                d.name: {"rows": d.n_rows, "value_columns": len(d.columns)} for d in datasets
            },
            "distinct_values": n_vids,
            "identifier_values": idents.indexed,
            "identifier_values_not_indexed": idents.skipped,
            "bytes": int(vocab.nbytes + identifiers.nbytes + sum(d.nbytes for d in datasets)),
        }
        return cls(datasets, vocab, identifiers, idents.owners, stats)

    # -- scanning --

    def scan_item(self, item: OutputItem) -> list[Finding]:
        """Findings for every piece of text in one output item (see :func:`item_texts`)."""
        findings: list[Finding] = []
        for where, text, markup in item_parts(item):
            findings += self.scan_text(text, where=where, markup=markup)
        return findings

    def scan_text(self, text: str, where: str = "output", markup: bool = False) -> list[Finding]:
        """Findings for one text: leaked records, identifier values, record-like tables.

        ``markup``: the text is HTML (or XML); tags are skipped and table rows are
        its lines. ``where`` names the text in messages ("stream stdout", "text/html").
        """
        if not text or (not self._datasets and len(self._identifiers.keys) == 0):
            return []
        line_map = None
        if not markup and "\\\n" in text:
            text, line_map = unwrap_pandas(text)
        tokens = tokenize(text, markup=markup)
        tokens.line_map = line_map
        if len(tokens) == 0:
            return []
        findings = identifier_findings(self._identifiers, self._identifier_owners, tokens, where)
        found = list(self._vocab.lookup(tokens))
        if len(found) == 1:
            positions, labels = found[0][1], found[0][2].astype(np.int64)
        elif found:
            vids = np.full(len(tokens), -1, dtype=np.int64)
            for _, at, labels in found:
                vids[at] = labels  # n grows: a multi-word value wins over a word of it
            positions = np.flatnonzero(vids >= 0)
            labels = vids[positions]
        else:
            return findings
        for dataset in self._datasets:
            findings += dataset_findings(dataset, tokens, positions, labels, where)
        return findings


def _prepare(
    name: str,
    frame: pd.DataFrame,
    policy: DatasetPolicy,
    values: Vocabulary,
    idents: IdentifierValues,
) -> _Prepared:
    """Turn one table into value ids per value column, filing its values in ``values`` and
    its identifier columns' values in ``idents``.

    All tables are prepared before any is indexed: value ids are shared by
    every dataset, and a dataset's index needs their final number.
    """
    names = [str(c) for c in frame.columns]
    missing = [c for c in (*policy.identifiers, *policy.quasi_identifiers) if c not in names]
    if missing:
        raise ValueError(
            f"the policy for dataset {name!r} names column(s) {', '.join(missing)} "
            f"that it does not have (columns: {', '.join(names)})"
        )
    identifiers = set(policy.identifiers)
    value_columns = [c for c in names if c not in identifiers]
    vid_columns: list[np.ndarray] = []
    levels: list[int] = []
    for col_name, (_, column) in zip(names, frame.items(), strict=True):
        codes, spelled = column_spellings(column)
        if col_name in identifiers:
            idents.add_column(name, col_name, spelled)
            continue
        # A null's code is -1, which picks the trailing -1 of the value ids.
        vid_columns.append(values.add_column(spelled).astype(np.int32)[codes])
        levels.append(sum(item is not None for item in spelled))
    return name, value_columns, vid_columns, levels, policy
