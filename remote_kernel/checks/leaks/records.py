"""The record rule (``leak-record``, ``leak-record-suspected``): private rows in an output.

Candidates (a window of the output, a private row) come from two indexes,
neither compared with every private row: the exact multiset hash of each row
(:func:`_exact_matches`) and the anchor pairs (:func:`_anchor_candidates`).
Cheap bounds drop most anchor candidates; the rest are verified in numpy
batches (:mod:`.verify`). See the package docstring for the rule itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from remote_kernel.checks.leaks.dataset import DatasetIndex, row_vids
from remote_kernel.checks.leaks.hashing import (
    exact_key,
    pair_keys,
    signature,
    value_hash,
    window_signatures,
)
from remote_kernel.checks.leaks.tunables import (
    FULL_MARGIN_BITS,
    FULL_MIN_BITS,
    MAX_CONFIRMED,
    MAX_LOCATIONS,
    PARTIAL_MARGIN_BITS,
    PARTIAL_MIN_BITS,
    PARTIAL_MIN_COLUMNS,
    SUSPECT_MARGIN_BITS,
    THIN_UNIT_VALUES,
    VERIFY_BATCH,
)
from remote_kernel.checks.leaks.verify import Evidence, cell_bits, occurrence_ranks, verify


@dataclass
class Result:
    """Where a check fired in one text for one dataset, before it becomes a message."""

    count: int
    lines: list[int]  # token indices (converted to line numbers by the caller)
    detail: dict[str, Any]


class _Thresholds(NamedTuple):
    """Bits a full and a partial match need; what is within SUSPECT_MARGIN_BITS is suspected."""

    full: float
    partial: float
    full_floor: float
    partial_floor: float


#: Matches found so far: where each starts (an index into the hits) and its evidence.
_Found = list[tuple[np.ndarray, Evidence]]


def _segments(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per value hit: the start and end (exclusive) of its unit, thin units merged."""
    n = len(units)
    new_unit = np.ones(n, dtype=bool)
    new_unit[1:] = units[1:] != units[:-1]
    run_starts = np.flatnonzero(new_unit)
    run_lengths = np.diff(np.append(run_starts, n))
    thin = np.repeat(run_lengths <= THIN_UNIT_VALUES, run_lengths)
    breaks = new_unit.copy()
    breaks[1:] &= ~(thin[1:] & thin[:-1])
    seg_starts = np.flatnonzero(breaks)
    seg_ends = np.append(seg_starts[1:], n)
    seg_lengths = seg_ends - seg_starts
    return np.repeat(seg_starts, seg_lengths), np.repeat(seg_ends, seg_lengths)


def _thresholds(ds: DatasetIndex, n_hits: int) -> _Thresholds:
    """Bits a full and a partial match need in an output holding ``n_hits`` values of ``ds``.

    Expected chance matches grow with the private rows compared (``N``) and with
    the windows of the output they are compared with (about one per ``C`` values),
    so both enter as ``log2`` terms: a Bonferroni bound with a margin.
    """
    tests = math.log2(max(1.0, n_hits / max(1, len(ds.columns))))
    full = max(FULL_MIN_BITS, ds.log_rows + tests + FULL_MARGIN_BITS)
    partial = max(PARTIAL_MIN_BITS, ds.log_rows + tests + PARTIAL_MARGIN_BITS)
    return _Thresholds(full, partial, full - SUSPECT_MARGIN_BITS, partial - SUSPECT_MARGIN_BITS)


def match_records(
    ds: DatasetIndex,
    token_pos: np.ndarray,
    hit_vids: np.ndarray,
    hit_units: np.ndarray,
) -> tuple[Result | None, Result | None]:
    """Find candidate (window, private row) pairs and apply the record rule.

    See "Finding the candidates" in the package docstring. Returns the proven
    records and, separately, the suspected ones (within SUSPECT_MARGIN_BITS of
    the proof); one hit per unit of the output each.
    """
    n_hits = len(hit_vids)
    bar = _thresholds(ds, n_hits)
    proven: _Found = []
    suspected: _Found = []
    seg_start, seg_end = _segments(hit_units)
    for starts, ev in _exact_matches(ds, hit_vids, seg_end):
        proven.append((starts[ev.full >= bar.full], ev.take(ev.full >= bar.full)))
        near = (ev.full < bar.full) & (ev.full >= bar.full_floor)
        suspected.append((starts[near], ev.take(near)))
    n_proven = sum(len(lo) for lo, _ in proven)
    capped = False
    if len(ds.anchors.keys) and n_hits >= 2 and n_proven < MAX_CONFIRMED:
        found = _anchor_candidates(ds, hit_vids, seg_start, seg_end, bar)
        if found is not None:
            lo, hi, rows, sig = _within_reach(ds, *found, hit_vids, bar)
            n_proven = _verify_candidates(
                ds, lo, hi, rows, sig, hit_vids, bar, proven, suspected, n_proven
            )
            # Verification stops at MAX_CONFIRMED: the count is then a lower bound.
            capped = n_proven >= MAX_CONFIRMED
    result = _summarise(proven, token_pos, hit_units, bar)
    if result is not None and capped:
        result.detail["capped"] = True
    return result, _summarise(suspected, token_pos, hit_units, bar)


def _exact_matches(
    ds: DatasetIndex, hit_vids: np.ndarray, seg_end: np.ndarray
) -> Iterator[tuple[np.ndarray, Evidence]]:
    """Runs of exactly a private row's non-null values, in any order, inside one unit.

    The multiset hash of a run of ``k`` consecutive values is a difference of
    prefix sums, so this is one pass per distinct ``k`` whatever the number of
    private rows.
    """
    if len(ds.exact_keys) == 0:
        return
    prefix = np.zeros(len(hit_vids) + 1, dtype=np.uint64)
    np.cumsum(value_hash(hit_vids), out=prefix[1:])
    room = seg_end - np.arange(len(hit_vids))  # values left in the unit from here
    for k in ds.exact_lengths:
        k = int(k)
        at_start = np.flatnonzero(room >= k)
        if len(at_start) == 0:
            continue
        keys = exact_key(prefix[at_start + k] - prefix[at_start], np.full(len(at_start), k))
        maybe = np.flatnonzero(ds.exact_bloom.maybe(keys))
        if len(maybe) == 0:
            continue
        at = np.minimum(np.searchsorted(ds.exact_keys, keys[maybe]), len(ds.exact_keys) - 1)
        found = ds.exact_keys[at] == keys[maybe]
        if not found.any():
            continue
        starts, rows = at_start[maybe[found]], ds.exact_rows[at[found]]
        vals = row_vids(ds, rows)
        nonnull = vals >= 0
        bits = cell_bits(ds, vals, occurrence_ranks(vals)).sum(axis=1)
        covers = (nonnull & ds.qi_mask[None, :]).any(axis=1)
        yield (
            starts,
            Evidence(
                full=np.where(covers, bits, -1.0),
                partial=np.full(len(rows), -1.0),
                columns=nonnull.sum(axis=1),
            ),
        )


def _pair_starts(
    ds: DatasetIndex,
    hit_vids: np.ndarray,
    seg_start: np.ndarray,
    seg_end: np.ndarray,
    bar: _Thresholds,
) -> tuple[np.ndarray, np.ndarray]:
    """The hits that may start an anchor pair, and how many more of them their unit holds.

    A full match needs a unit with as many values as the smallest row has; a
    partial one needs four and a row that can still reach the (output-size
    dependent) threshold through this value. Anything else would only make
    candidates that the bounds drop later, at a higher price.
    """
    seg_len = seg_end - seg_start
    is_anchor = ds.anchors.is_anchor
    usable = is_anchor[hit_vids] & (seg_len >= max(ds.min_needed, 2))
    if not ds.qi_declared:
        usable |= (
            is_anchor[hit_vids]
            & (seg_len >= PARTIAL_MIN_COLUMNS)
            & (ds.anchors.vid_partial_max[hit_vids] >= bar.partial_floor)
        )
    comp = np.flatnonzero(usable)
    after = np.zeros(len(comp), dtype=np.int64)
    if len(comp):
        comp_seg = seg_start[comp]
        new_run = np.ones(len(comp), dtype=bool)
        new_run[1:] = comp_seg[1:] != comp_seg[:-1]
        run_start = np.flatnonzero(new_run)
        run_end = np.append(run_start[1:], len(comp))
        after = np.repeat(run_end, run_end - run_start) - np.arange(len(comp)) - 1
    return comp, after


def _anchor_candidates(
    ds: DatasetIndex,
    hit_vids: np.ndarray,
    seg_start: np.ndarray,
    seg_end: np.ndarray,
    bar: _Thresholds,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Windows ``[lo, hi)`` of the hits and the private rows filed under a pair of their
    values, each (window start, row) once; None when no pair is an anchor.

    Pairs at most ``window`` apart inside one unit are looked up with one
    ``searchsorted`` per distance ``k``, so the Python loop is over distances,
    never over values.
    """
    window, anchors = ds.window, ds.anchors
    comp, after = _pair_starts(ds, hit_vids, seg_start, seg_end, bar)
    cand_lo: list[np.ndarray] = []
    cand_hi: list[np.ndarray] = []
    cand_row: list[np.ndarray] = []
    active = np.arange(len(comp))
    for k in range(1, window + 1):
        active = active[after[active] >= k]  # pairs k apart inside one unit
        if len(active) == 0:
            break
        i, j = comp[active], comp[active + k]
        ok = j - i <= window
        if not ok.any():
            continue
        i, j = i[ok], j[ok]
        keys = pair_keys(hit_vids[i], hit_vids[j])
        at = np.minimum(np.searchsorted(anchors.keys, keys), len(anchors.keys) - 1)
        found = anchors.keys[at] == keys
        if not found.any():
            continue
        i, j, at = i[found], j[found], at[found]
        # Keys none of whose rows could reach a threshold here are not expanded.
        room = seg_end[i] - seg_start[i]
        feasible = (room >= anchors.key_min_needed[at]) & (
            anchors.key_full_max[at] >= bar.full_floor
        )
        if not ds.qi_declared:
            feasible |= anchors.key_partial_max[at] >= bar.partial_floor
        i, j, at = i[feasible], j[feasible], at[feasible]
        lo, hi = anchors.offsets[at], anchors.offsets[at + 1]
        counts = hi - lo
        rep_i = np.repeat(i, counts)
        rep_j = np.repeat(j, counts)
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        cand_row.append(anchors.rows[np.repeat(lo, counts) + offsets])
        cand_lo.append(np.maximum(seg_start[rep_i], rep_j - window))
        cand_hi.append(np.minimum(seg_end[rep_i], rep_i + window + 1))
    if not cand_row:
        return None
    lo_all = np.concatenate(cand_lo)
    hi_all = np.concatenate(cand_hi)
    row_all = np.concatenate(cand_row).astype(np.int64)
    _, first = np.unique(lo_all * (ds.n_rows + 1) + row_all, return_index=True)
    return lo_all[first], hi_all[first], row_all[first]


def _within_reach(
    ds: DatasetIndex,
    lo: np.ndarray,
    hi: np.ndarray,
    rows: np.ndarray,
    hit_vids: np.ndarray,
    bar: _Thresholds,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The candidates that could still reach a threshold, and their windows' signatures.

    Cheap upper bounds first: a full match needs as many values as the row has,
    a partial one four; neither can beat the bits the row has at all. Then one
    bit per value: a 64-bit signature of each window tests "has all of the
    row's needed values" before any value is compared.
    """
    length = hi - lo
    hopeful = (length >= ds.row_needed[rows]) & (ds.row_full_max[rows] >= bar.full_floor)
    if not ds.qi_declared:
        hopeful |= (length >= PARTIAL_MIN_COLUMNS) & (ds.row_partial_max[rows] >= bar.partial_floor)
    lo, hi, rows = lo[hopeful], hi[hopeful], rows[hopeful]
    sig = window_signatures(signature(value_hash(hit_vids)), lo, hi)
    hopeful = (ds.row_sig[rows] & ~sig) == 0
    if not ds.qi_declared:
        hopeful |= (hi - lo >= PARTIAL_MIN_COLUMNS) & (
            ds.row_partial_max[rows] >= bar.partial_floor
        )
    return lo[hopeful], hi[hopeful], rows[hopeful], sig[hopeful]


def _verify_candidates(
    ds: DatasetIndex,
    lo_all: np.ndarray,
    hi_all: np.ndarray,
    row_all: np.ndarray,
    sig_all: np.ndarray,
    hit_vids: np.ndarray,
    bar: _Thresholds,
    proven: _Found,
    suspected: _Found,
    n_proven: int,
) -> int:
    """Verify the candidates, adding to ``proven`` and ``suspected``; the new proven count.

    Batches of similar window length, each as wide as its longest window,
    bound the temporary (K, C, W) arrays; once MAX_CONFIRMED windows are
    proven the output is blocked many times over and the rest is not verified.
    """
    n_hits = len(hit_vids)
    padded = np.append(hit_vids, -2)
    by_length = np.argsort(hi_all - lo_all, kind="stable")
    lo_all, hi_all, row_all = lo_all[by_length], hi_all[by_length], row_all[by_length]
    sig_all = sig_all[by_length]
    for b in range(0, len(row_all), VERIFY_BATCH):
        lo, hi = lo_all[b : b + VERIFY_BATCH], hi_all[b : b + VERIFY_BATCH]
        span = np.arange(int((hi - lo).max()))
        idx = lo[:, None] + span[None, :]
        win = padded[np.where(idx < hi[:, None], idx, n_hits)]
        rows = row_vids(ds, row_all[b : b + VERIFY_BATCH])
        ev = verify(ds, win, sig_all[b : b + VERIFY_BATCH], rows, bar.full_floor, bar.partial_floor)
        leak = (ev.full >= bar.full) | (ev.partial >= bar.partial)
        suspect = ~leak & ((ev.full >= bar.full_floor) | (ev.partial >= bar.partial_floor))
        if leak.any():
            proven.append((lo[leak], ev.take(leak)))
            n_proven += int(leak.sum())
        if suspect.any():
            suspected.append((lo[suspect], ev.take(suspect)))
        if n_proven >= MAX_CONFIRMED:
            break  # proven many times over; stop spending time on it
    return n_proven


def _summarise(
    found: _Found, token_pos: np.ndarray, hit_units: np.ndarray, bar: _Thresholds
) -> Result | None:
    """One hit per unit of the output; the strongest match described for the message."""
    found = [(lo, ev) for lo, ev in found if len(lo)]
    if not found:
        return None
    starts = np.concatenate([lo for lo, _ in found])
    full = np.concatenate([ev.full for _, ev in found])
    partial = np.concatenate([ev.partial for _, ev in found])
    columns = np.concatenate([ev.columns for _, ev in found])
    # Rank by how far past its own threshold each match is.
    margin = np.maximum(full - bar.full, partial - bar.partial)
    top = int(np.argmax(margin))
    is_full = bool(full[top] - bar.full >= partial[top] - bar.partial)
    units = hit_units[starts]
    order = np.argsort(starts, kind="stable")
    _, per_unit = np.unique(units[order], return_index=True)
    first = starts[order][per_unit]
    return Result(
        count=len(first),
        lines=[int(p) for p in token_pos[first[:MAX_LOCATIONS]]],
        detail={
            "bits": float(full[top] if is_full else partial[top]),
            "columns": int(columns[top]),
            "needed": bar.full if is_full else bar.partial,
            "full": is_full,
        },
    )
