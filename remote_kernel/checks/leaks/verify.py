"""Verification of candidate (window, private row) pairs in numpy batches.

A window of the output matches a private row on the set of the row's columns
whose value it holds, counted as a multiset and regardless of position, and
only *dense* windows count (see the package docstring). Cheap upper bounds run
first, so most candidates stop before any value is compared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remote_kernel.checks.leaks.dataset import DatasetIndex
from remote_kernel.checks.leaks.hashing import signature, value_hash
from remote_kernel.checks.leaks.tunables import (
    PARTIAL_MIN_COLUMNS,
    PARTIAL_MIN_RARE,
    RARE_BITS,
    SPAN_SLACK,
)


@dataclass
class Evidence:
    """Per verified candidate: the strongest dense full match and partial match (bits)."""

    full: np.ndarray  # bits of the best dense window covering every needed column, or -1
    partial: np.ndarray  # bits (high-cardinality columns) of the best dense partial match, or -1
    columns: np.ndarray  # columns matched by the stronger of the two

    def take(self, mask: np.ndarray) -> Evidence:
        return Evidence(self.full[mask], self.partial[mask], self.columns[mask])


def occurrence_ranks(rows: np.ndarray) -> np.ndarray:
    """For each cell, how many cells to its left in the same row hold the same value."""
    ranks = np.zeros(rows.shape, dtype=np.int16)
    for c in range(1, rows.shape[1]):
        col = rows[:, c]
        for d in range(c):
            ranks[:, c] += rows[:, d] == col
    return ranks


def cell_bits(ds: DatasetIndex, vals: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Bits of each cell of some private rows (0 for null)."""
    nonnull = vals >= 0
    occ = np.where(nonnull, vals * len(ds.columns) + ranks, 0)
    if ds.bits_table is not None:
        return np.where(nonnull, ds.bits_table[occ], np.float32(0.0))
    at = np.minimum(np.searchsorted(ds.occ_keys, occ), len(ds.occ_keys) - 1)
    return np.where(nonnull & (ds.occ_keys[at] == occ), ds.occ_bits[at], np.float32(0.0))


@dataclass
class _Cells:
    """The candidates' private rows, cell by cell (K, C): what a match on them is worth."""

    vals: np.ndarray  # value ids, -1 for null
    ranks: np.ndarray  # occurrence rank of each value within its row
    nonnull: np.ndarray
    bits: np.ndarray  # bits of evidence of each cell
    qi_needed: np.ndarray  # cells a full match must cover
    rare: np.ndarray  # high-cardinality cells with at least RARE_BITS
    distinct_bits: np.ndarray  # bits of the high-cardinality cells, 0 elsewhere

    @classmethod
    def of(cls, ds: DatasetIndex, vals: np.ndarray) -> _Cells:
        ranks = occurrence_ranks(vals)
        nonnull = vals >= 0
        bits = cell_bits(ds, vals, ranks)
        return cls(
            vals=vals,
            ranks=ranks,
            nonnull=nonnull,
            bits=bits,
            qi_needed=nonnull & ds.qi_mask[None, :],
            rare=ds.distinctive[None, :] & (bits >= RARE_BITS),
            distinct_bits=bits * ds.distinctive[None, :],
        )

    def take(self, keep: np.ndarray) -> _Cells:
        return _Cells(*(getattr(self, name)[keep] for name in self.__dataclass_fields__))

    def measure(
        self, ds: DatasetIndex, present: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full and partial bits (-1 where the rule is not met) and the columns matched,
        for the cells ``present`` (K, C) in a window."""
        qi_needed = self.qi_needed
        covers = (present | ~qi_needed).all(axis=1) & qi_needed.any(axis=1)
        full = np.where(covers, (present * self.bits).sum(axis=1), -1.0)
        # A partial match picks its own columns, and codes agree by chance all the
        # time: only values of high-cardinality columns count, two of them rare.
        n_present = present.sum(axis=1)
        partial_ok = (n_present >= PARTIAL_MIN_COLUMNS) & (
            (present & self.rare).sum(axis=1) >= PARTIAL_MIN_RARE
        )
        if ds.qi_declared:
            partial_ok[:] = False  # the policy says which columns identify a record
        partial = np.where(partial_ok, (present * self.distinct_bits).sum(axis=1), -1.0)
        return full, partial, n_present


def verify(
    ds: DatasetIndex,
    win: np.ndarray,
    win_sig: np.ndarray,
    vals: np.ndarray,
    full_t: float,
    partial_t: float,
) -> Evidence:
    """Measure the evidence that windows ``win`` (K, W) hold private rows ``vals`` (K, C).

    First on the window's 64-bit signature, then on the whole window (upper
    bounds, cheap); candidates below ``full_t`` and ``partial_t`` there stop.
    The rest are measured on every *dense* sub-window
    (:func:`_best_dense_windows`).
    """
    n_cand = len(vals)
    cells = _Cells.of(ds, vals)
    out = Evidence(
        full=np.full(n_cand, -1.0),
        partial=np.full(n_cand, -1.0),
        columns=np.zeros(n_cand, dtype=np.int64),
    )
    maybe = (win_sig[:, None] & signature(value_hash(np.maximum(vals, 0)))) != 0
    full, partial, _ = cells.measure(ds, maybe & cells.nonnull)
    hopeful = np.flatnonzero((full >= full_t) | (partial >= partial_t))
    if len(hopeful) == 0:
        return out
    win, cells = win[hopeful], cells.take(hopeful)
    eq = cells.vals[:, :, None] == win[:, None, :]  # (K, C, W)
    full, partial, _ = cells.measure(ds, (eq.sum(axis=2) > cells.ranks) & cells.nonnull)
    survivors = np.flatnonzero((full >= full_t) | (partial >= partial_t))
    if len(survivors) == 0:
        return out
    best_full, best_partial, best_cols = _best_dense_windows(
        ds, eq[survivors], cells.take(survivors)
    )
    chosen = hopeful[survivors]
    out.full[chosen] = best_full
    out.partial[chosen] = best_partial
    out.columns[chosen] = best_cols
    return out


def _best_dense_windows(
    ds: DatasetIndex, eq: np.ndarray, cells: _Cells
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best full and partial bits over the dense sub-windows of each window, and the columns
    of the stronger: a dense window is one in which at most SPAN_SLACK values are not
    values of the row. A printed record is dense; a row whose values are scattered over
    an aggregate table is not, though the whole table holds them all.

    ``eq`` (K, C, W) says which window value equals which cell of the row.
    """
    width = eq.shape[2]
    cum = np.zeros((*eq.shape[:2], width + 1), dtype=np.int16)
    np.cumsum(eq, axis=2, out=cum[:, :, 1:])
    ranks, nonnull = cells.ranks, cells.nonnull
    rank3 = ranks[:, :, None]
    best_full = np.full(len(eq), -1.0)
    best_partial = np.full(len(eq), -1.0)
    best_cols = np.zeros(len(eq), dtype=np.int64)
    for start in range(width):
        counts = cum[:, :, start + 1 :] - cum[:, :, start : start + 1]  # (K, C, ends)
        matched = ((counts > rank3) & nonnull[:, :, None]).sum(axis=1)  # (K, ends)
        lengths = np.arange(1, width - start + 1)
        # Values of the window that are not the row's never decrease as it grows,
        # so the longest dense window from here ends where the slack runs out.
        end = (lengths[None, :] - matched <= SPAN_SLACK).sum(axis=1) - 1
        present = np.take_along_axis(counts, end[:, None, None], axis=2)[:, :, 0] > ranks
        full, partial, n_present = cells.measure(ds, present & nonnull)
        stronger = (full > best_full) | (partial > best_partial)
        best_cols = np.where(stronger, n_present, best_cols)
        best_full = np.maximum(best_full, full)
        best_partial = np.maximum(best_partial, partial)
    return best_full, best_partial, best_cols
