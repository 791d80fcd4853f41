"""Anchors: each private row filed under the pairs of its rarest values.

Whole rows are found by their exact multiset hash; everything else (partial
matches, a run with extra values, declared quasi-identifiers) is found through
anchors, so that the scan never compares an output with every private row.
Each row is filed under the unordered pairs of its ``ANCHOR_VALUES`` rarest
values; the scan looks up pairs of nearby values of the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remote_kernel.checks.leaks.hashing import S32, pair_keys
from remote_kernel.checks.leaks.tunables import ANCHOR_MAX_ROWS


@dataclass
class Anchors:
    """The anchor index of one dataset, and per-key bounds so hopeless keys are skipped."""

    keys: np.ndarray  # uint32 sorted, unique
    offsets: np.ndarray  # int64: rows of keys[i] are rows[offsets[i]:offsets[i+1]]
    rows: np.ndarray  # int32
    key_min_needed: np.ndarray  # int16 per anchor key: fewest values a full match of its rows needs
    key_full_max: np.ndarray  # float32 per anchor key: most bits any of its rows has
    key_partial_max: np.ndarray  # float32 per anchor key: most high-cardinality bits
    is_anchor: np.ndarray  # bool per global vid
    vid_partial_max: np.ndarray  # float32 per global vid: best row_partial_max it anchors

    @property
    def nbytes(self) -> int:
        return int(sum(array.nbytes for array in vars(self).values()))


def build_anchors(
    top_vids: np.ndarray,
    top_ok: np.ndarray,
    row_needed: np.ndarray,
    row_full_max: np.ndarray,
    row_partial_max: np.ndarray,
    n_vids: int,
) -> Anchors:
    """File rows under the pairs of their rarest values (``top_vids`` where ``top_ok``).

    With fewer than two value columns there is no pair, and the rows are found
    by the exact multiset hash alone.
    """
    out = Anchors(
        keys=np.zeros(0, dtype=np.uint32),
        offsets=np.zeros(1, dtype=np.int64),
        rows=np.zeros(0, dtype=np.int32),
        key_min_needed=np.zeros(0, dtype=np.int16),
        key_full_max=np.zeros(0, dtype=np.float32),
        key_partial_max=np.zeros(0, dtype=np.float32),
        is_anchor=np.zeros(n_vids, dtype=bool),
        vid_partial_max=np.zeros(n_vids, dtype=np.float32),
    )
    if top_vids.shape[1] < 2:
        return out
    out.keys, out.offsets, out.rows = _file_rows(top_vids, top_ok)
    # Per key, the best its rows could do, so hopeless keys are never expanded.
    if len(out.rows):
        key_starts = out.offsets[:-1]
        out.key_min_needed = np.minimum.reduceat(row_needed[out.rows], key_starts)
        out.key_full_max = np.maximum.reduceat(row_full_max[out.rows], key_starts)
        out.key_partial_max = np.maximum.reduceat(row_partial_max[out.rows], key_starts)
    anchored = np.zeros(len(top_vids), dtype=bool)
    anchored[out.rows] = True
    used = top_ok & anchored[:, None]
    used_vids = top_vids[used]
    out.is_anchor[used_vids] = True
    # Per value: the most a partial match through it could show (max over its rows).
    part = np.broadcast_to(row_partial_max[:, None], used.shape)[used]
    np.maximum.at(out.vid_partial_max, used_vids, part)
    return out


def _file_rows(top_vids: np.ndarray, top_ok: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sorted unique pair keys, offsets into the rows filed under each, and those rows.

    (key, row) is packed in 64 bits and sorted in place: one array, no argsort,
    which keeps the build's peak memory low at a million rows.
    """
    n_anchor = top_vids.shape[1]
    pairs = [(i, j) for i in range(n_anchor) for j in range(i + 1, n_anchor)]
    ok_pairs = [top_ok[:, i] & top_ok[:, j] for i, j in pairs]
    both = np.empty(sum(int(ok.sum()) for ok in ok_pairs), dtype=np.uint64)
    at = 0
    for (i, j), ok in zip(pairs, ok_pairs, strict=True):
        key = pair_keys(top_vids[ok, i], top_vids[ok, j]).astype(np.uint64)
        both[at : at + len(key)] = (key << S32) | np.flatnonzero(ok).astype(np.uint64)
        at += len(key)
    del ok_pairs
    both.sort()
    keys = (both >> S32).astype(np.uint32)
    # A pair of values shared by many rows anchors nothing worth verifying; those
    # rows are still found whole by the exact multiset hash.
    change = np.ones(len(keys), dtype=bool)
    change[1:] = keys[1:] != keys[:-1]
    starts = np.flatnonzero(change)
    sizes = np.diff(np.append(starts, len(keys)))
    kept = sizes <= ANCHOR_MAX_ROWS
    anchor_rows = (both[np.repeat(kept, sizes)] & np.uint64(0xFFFFFFFF)).astype(np.int32)
    anchor_keys = keys[starts[kept]]
    anchor_offsets = np.concatenate([[0], np.cumsum(sizes[kept])]).astype(np.int64)
    return anchor_keys, anchor_offsets, anchor_rows
