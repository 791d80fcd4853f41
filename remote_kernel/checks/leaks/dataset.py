"""The index of one private table (:class:`DatasetIndex`), built once at start-up.

The build works column by column on contiguous arrays, with nothing ``N x C``
but the packed rows, and frees what it no longer needs as it goes: at a
million rows the build's peak memory is what limits it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from remote_kernel.checks.leaks.anchors import Anchors, build_anchors
from remote_kernel.checks.leaks.hashing import exact_key, signature, value_hash
from remote_kernel.checks.leaks.lookup import Bloom, KeyTable
from remote_kernel.checks.leaks.tunables import ANCHOR_VALUES, CODE_LEVELS, MAX_WINDOW, WINDOW_SLACK
from remote_kernel.checks.policy import DatasetPolicy

_NULL16 = 2**16 - 1


@dataclass
class DatasetIndex:
    """One private table as the scan needs it: value ids, evidence weights, the exact
    multiset hashes and anchors of its rows, and bounds that let the scan drop
    candidates before comparing any values. Hashes and ids only, never strings."""

    name: str
    columns: list[str]  # value columns (identifiers excluded)
    qi_mask: np.ndarray  # bool per value column
    distinctive: np.ndarray  # bool per value column: more than CODE_LEVELS distinct values
    qi_declared: bool
    n_rows: int
    rows: np.ndarray  # (n_rows, C) value ids, -1 for null
    occ_keys: np.ndarray  # int64 sorted: vid * C + occurrence rank
    occ_bits: np.ndarray  # float32
    bits_table: np.ndarray | None  # float32 per (vid * C + rank) when that is small
    anchors: Anchors  # rows filed under pairs of their rarest values
    is_value: np.ndarray  # bool per global vid
    row_needed: np.ndarray  # int16: non-null quasi-identifier values of each row
    row_sig: np.ndarray  # uint64: one bit per needed value (a 64-bit Bloom filter of them)
    row_full_max: np.ndarray  # float32: bits of all of a row's values
    row_partial_max: np.ndarray  # float32: bits of its high-cardinality values
    min_needed: int  # fewest values a full match of any row needs
    exact_keys: np.ndarray  # uint64 sorted: multiset hash of each row's non-null values
    exact_rows: np.ndarray  # int32
    exact_lengths: np.ndarray  # int64: the distinct numbers of non-null values of rows
    exact_bloom: Bloom
    column_names: KeyTable  # hashes of the column names -> column number
    window: int
    log_rows: float

    @property
    def nbytes(self) -> int:
        arrays = (
            self.rows,
            self.occ_keys,
            self.occ_bits,
            self.is_value,
            self.row_needed,
            self.row_sig,
            self.row_full_max,
            self.row_partial_max,
            self.exact_keys,
            self.exact_rows,
        )
        return int(sum(a.nbytes for a in arrays) + self.anchors.nbytes + self.exact_bloom.nbytes)


def build_dataset(
    name: str,
    columns: list[str],
    vid_columns: list[np.ndarray],
    levels: list[int],
    policy: DatasetPolicy,
    n_vids: int,
) -> DatasetIndex:
    """Index one table from the value ids of its value columns (-1 for null) and their
    numbers of distinct values. Empties ``vid_columns`` once the rows are packed, so the
    caller's copies are not held while the anchors are built."""
    qi = set(policy.quasi_identifiers) - set(policy.identifiers)
    qi_mask = np.array([(c in qi) if qi else True for c in columns], dtype=bool)
    distinctive = np.array([n > CODE_LEVELS for n in levels], dtype=bool)
    cols = [np.asarray(c, dtype=np.int32) for c in vid_columns]
    valid_cols = [c >= 0 for c in cols]
    bits = _value_bits(cols, valid_cols, n_vids)
    bounds = _row_bounds(cols, valid_cols, bits, qi_mask, distinctive)
    rows = _pack_rows(cols, valid_cols, n_vids)
    hashes = _row_hashes(cols, valid_cols, qi_mask, n_vids)
    cols.clear()
    valid_cols.clear()
    vid_columns.clear()  # the caller's copies: the packed rows hold it all now
    needed = bounds.needed
    return DatasetIndex(
        name=name,
        columns=columns,
        qi_mask=qi_mask,
        distinctive=distinctive,
        qi_declared=bool(qi),
        n_rows=len(rows),
        rows=rows,
        occ_keys=bits.keys,
        occ_bits=bits.bits,
        bits_table=bits.table if n_vids * len(columns) <= 1 << 22 else None,
        anchors=build_anchors(
            bounds.top_vids, bounds.top_ok, needed, bounds.full_max, bounds.partial_max, n_vids
        ),
        row_needed=needed,
        row_full_max=bounds.full_max,
        row_partial_max=bounds.partial_max,
        min_needed=int(needed[needed > 0].min()) if (needed > 0).any() else 0,
        is_value=hashes.is_value,
        row_sig=hashes.row_sig,
        exact_keys=hashes.exact_keys,
        exact_rows=hashes.exact_rows,
        exact_lengths=hashes.exact_lengths,
        exact_bloom=Bloom(hashes.exact_keys),
        column_names=KeyTable.from_strings(
            [" ".join(str(c).casefold().split()) for c in columns], np.arange(len(columns))
        ),
        window=min(len(columns) + WINDOW_SLACK, MAX_WINDOW),
        log_rows=math.log2(max(len(rows), 1)),
    )


def _occurrence_keys(cols: list[np.ndarray], valid: list[np.ndarray], c: int) -> np.ndarray:
    """Key ``vid * C + k`` of each cell of column ``c`` (-1 for null), ``k`` being how many
    cells to its left hold the same value.

    A row with ``0`` in four columns is matched only by four ``0`` tokens, so
    each occurrence of a value in a row is its own piece of evidence, weighed
    by how many rows hold the value at least that many times.
    """
    rank = np.zeros(len(cols[c]), dtype=np.int64)
    for d in range(c):
        rank += cols[d] == cols[c]
    return np.where(valid[c], cols[c].astype(np.int64) * len(cols) + rank, -1)


@dataclass
class _ValueBits:
    """Bits of evidence per (value, occurrence rank) key: ``log2((N+1)/(n+1))``."""

    keys: np.ndarray  # int64 sorted: the keys that occur
    bits: np.ndarray  # float32 per key
    table: np.ndarray | None  # float32 per possible key, when that array is small enough

    def of_cells(self, occ: np.ndarray) -> np.ndarray:
        """Bits of each cell's key (nulls, ``-1``, get an arbitrary value to mask out)."""
        safe = np.maximum(occ, 0)
        if self.table is not None:
            return self.table[safe]
        return self.bits[np.minimum(np.searchsorted(self.keys, safe), len(self.keys) - 1)]


def _value_bits(cols: list[np.ndarray], valid: list[np.ndarray], n_vids: int) -> _ValueBits:
    """Count the rows holding each value at least ``k + 1`` times, over the (v, k) cells.

    A direct array of counts when the keys fit in 2^26 slots (one bincount per
    column); otherwise one sort of all the keys, slower but bounded by the cells.
    """
    n_cols, n_rows = len(cols), len(cols[0])
    if n_vids * n_cols <= 1 << 26:
        counts = np.zeros(n_vids * n_cols, dtype=np.int64)
        for c in range(n_cols):
            occ = _occurrence_keys(cols, valid, c)
            counts += np.bincount(occ[occ >= 0], minlength=n_vids * n_cols)
        occ_keys = np.flatnonzero(counts).astype(np.int64)
        occ_counts = counts[occ_keys]
        table: np.ndarray | None = np.log2((n_rows + 1) / (counts + 1)).astype(np.float32)
        del counts
    else:
        table = None
        every = np.concatenate(
            [occ[occ >= 0] for occ in (_occurrence_keys(cols, valid, c) for c in range(n_cols))]
        )
        occ_keys, occ_counts = np.unique(every, return_counts=True)
        del every
    occ_bits = np.log2((n_rows + 1) / (occ_counts + 1)).astype(np.float32)
    return _ValueBits(occ_keys, occ_bits, table)


@dataclass
class _RowBounds:
    """Per row, what the scan needs before it compares a row with a window."""

    full_max: np.ndarray  # float32: bits of all of a row's values
    partial_max: np.ndarray  # float32: bits of its high-cardinality values
    needed: np.ndarray  # int16: non-null quasi-identifier values of each row
    top_vids: np.ndarray  # int32 (N, min(ANCHOR_VALUES, C)): its rarest values
    top_ok: np.ndarray  # bool, same shape: which of top_vids are set


def _row_bounds(
    cols: list[np.ndarray],
    valid: list[np.ndarray],
    bits: _ValueBits,
    qi_mask: np.ndarray,
    distinctive: np.ndarray,
) -> _RowBounds:
    """Evidence bounds of each row, so that candidates that cannot reach a threshold are
    dropped on a gather; and its ANCHOR_VALUES rarest values, kept incrementally column
    by column (no N x C array of bits), to file the row under anchors."""
    n_cols, n_rows = len(cols), len(cols[0])
    full_max = np.zeros(n_rows, dtype=np.float32)
    partial_max = np.zeros(n_rows, dtype=np.float32)
    needed = np.zeros(n_rows, dtype=np.int16)
    n_anchor = min(ANCHOR_VALUES, n_cols)
    top_bits = np.full((n_rows, n_anchor), -1.0, dtype=np.float32)
    top_vids = np.full((n_rows, n_anchor), -1, dtype=np.int32)
    every_row = np.arange(n_rows)
    for c in range(n_cols):
        occ = _occurrence_keys(cols, valid, c)
        cell = np.where(occ >= 0, bits.of_cells(occ), np.float32(-1.0))
        known = np.maximum(cell, 0.0)
        full_max += known
        if distinctive[c]:
            partial_max += known
        if qi_mask[c]:
            needed += valid[c]
        slot = top_bits.argmin(axis=1)
        better = np.flatnonzero(cell > top_bits[every_row, slot])
        top_bits[better, slot[better]] = cell[better]
        top_vids[better, slot[better]] = cols[c][better]
    return _RowBounds(full_max, partial_max, needed, top_vids, top_bits >= 0)


@dataclass
class _RowHashes:
    """What the scan recognises rows by without comparing values."""

    is_value: np.ndarray  # bool per global vid: a value of this dataset
    row_sig: np.ndarray  # uint64: one bit per needed value (a 64-bit Bloom filter of them)
    exact_keys: np.ndarray  # uint64 sorted: multiset hash of each row's non-null values
    exact_rows: np.ndarray  # int32: the row of each exact key
    exact_lengths: np.ndarray  # int64: the distinct numbers of non-null values of rows


def _row_hashes(
    cols: list[np.ndarray], valid: list[np.ndarray], qi_mask: np.ndarray, n_vids: int
) -> _RowHashes:
    """Multiset hash of each row (a sum of value hashes, so a run of an output is hashed
    as a difference of prefix sums, whatever the column order) and its signature."""
    n_rows = len(cols[0])
    is_value = np.zeros(n_vids, dtype=bool)
    lengths = np.zeros(n_rows, dtype=np.int16)
    sums = np.zeros(n_rows, dtype=np.uint64)
    row_sig = np.zeros(n_rows, dtype=np.uint64)
    for c, (col, ok) in enumerate(zip(cols, valid, strict=True)):
        is_value[col[ok]] = True
        lengths += ok
        hashes = np.where(ok, value_hash(col), np.uint64(0))
        sums += hashes
        if qi_mask[c]:
            row_sig |= np.where(ok, signature(hashes), np.uint64(0))
    exact = exact_key(sums, lengths)
    del sums
    has = np.flatnonzero(lengths > 0)
    exact = exact[has]
    order = np.argsort(exact)
    return _RowHashes(
        is_value=is_value,
        row_sig=row_sig,
        exact_keys=exact[order],
        exact_rows=has.astype(np.int32)[order],
        exact_lengths=np.unique(lengths[has]).astype(np.int64),
    )


def _pack_rows(cols: list[np.ndarray], valid: list[np.ndarray], n_vids: int) -> np.ndarray:
    """Row-major value ids, in 16 bits when they fit (null = 65535), else 32 (null = -1)."""
    small = n_vids < _NULL16
    rows = np.empty((len(cols[0]), len(cols)), dtype=np.uint16 if small else np.int32)
    for c, (col, ok) in enumerate(zip(cols, valid, strict=True)):
        rows[:, c] = np.where(ok, col, _NULL16 if small else -1)
    return rows


def row_vids(ds: DatasetIndex, rows: np.ndarray) -> np.ndarray:
    """Value ids of some private rows as int64, -1 for null (undoing the uint16 packing)."""
    out = ds.rows[rows].astype(np.int64)
    if ds.rows.dtype == np.uint16:
        out[out == _NULL16] = -1
    return out
