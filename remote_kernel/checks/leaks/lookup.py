"""Lookup of hashes: a Bloom filter and a table from token-sequence hashes to labels.

Most tokens of an output are no private value, so lookups are built to reject
those with a gather or two before any binary search.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from remote_kernel.checks.leaks.tokens import Tokens, hash_strings
from remote_kernel.checks.leaks.tunables import DIRECT_TABLE_MAX_KEYS


class Bloom:
    """Bit array in front of a sorted key array: most text tokens are not private values,
    and this rejects them with a gather or two instead of a binary search.

    Small tables get one probe into a sparse array (about 1/256 false positives);
    large ones two probes at 16 bits per key (about 1.4 %).
    """

    def __init__(self, keys: np.ndarray) -> None:
        n = max(len(keys), 1)
        self.probes = 1 if n <= 1 << 16 else 2
        per_key = 256 if self.probes == 1 else 16
        size_bits = min(max(16, math.ceil(math.log2(n * per_key))), 32)
        self.shift = np.uint64(64 - size_bits)
        self.low_mask = np.uint64((1 << size_bits) - 1)
        self.bits = np.zeros((1 << size_bits) // 8 + 1, dtype=np.uint8)
        for probe in self._probes(keys):
            np.bitwise_or.at(self.bits, probe >> 3, (1 << (probe & 7)).astype(np.uint8))

    def _probes(self, keys: np.ndarray) -> Iterator[np.ndarray]:
        # Keys are outputs of _mix already: their top and bottom bits are independent.
        yield (keys >> self.shift).astype(np.int64)
        if self.probes == 2:
            yield (keys & self.low_mask).astype(np.int64)

    def maybe(self, keys: np.ndarray) -> np.ndarray:
        out: np.ndarray | None = None
        for probe in self._probes(keys):
            hit = (self.bits[probe >> 3] >> (probe & 7).astype(np.uint8)) & 1
            out = hit.astype(bool) if out is None else out & hit.astype(bool)
        assert out is not None
        return out

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)


@dataclass
class KeyTable:
    """Hashes of token sequences -> a label, for sequences of 1..max_n tokens.

    Small tables (the usual value vocabulary: thousands of spellings) are also
    laid out as a direct-mapped array with 64 slots per key, so a lookup is two
    gathers; large ones (a million patient ids) use a Bloom filter and a binary
    search over the sorted keys.
    """

    keys: np.ndarray  # uint64, sorted
    labels: np.ndarray  # int32 or int64
    max_n: int
    bloom: Bloom
    slot_keys: np.ndarray | None = None
    slot_labels: np.ndarray | None = None  # -1 empty, -2 shared by several keys
    slot_shift: np.uint64 = field(default_factory=lambda: np.uint64(0))

    @classmethod
    def build(cls, keys: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> KeyTable:
        order = np.argsort(keys, kind="stable")
        keys, labels = keys[order], labels[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        keys, labels = keys[first], labels[first]
        max_n = int(lengths.max()) if len(lengths) else 0
        table = cls(keys, labels, max_n, Bloom(keys))
        if 0 < len(keys) <= DIRECT_TABLE_MAX_KEYS:
            bits = max(8, math.ceil(math.log2(len(keys) * 64)))
            table.slot_shift = np.uint64(64 - bits)
            slots = (keys >> table.slot_shift).astype(np.int64)
            table.slot_keys = np.zeros(1 << bits, dtype=np.uint64)
            table.slot_labels = np.full(1 << bits, -1, dtype=np.int64)
            table.slot_keys[slots] = keys
            table.slot_labels[slots] = labels
            shared, counts = np.unique(slots, return_counts=True)
            table.slot_labels[shared[counts > 1]] = -2
        return table

    @classmethod
    def from_strings(cls, strings: list[str], labels: np.ndarray) -> KeyTable:
        """Table of the token sequences of ``strings`` (as a text would spell them), each to
        its label; strings without a token are left out (nothing in a text could match them)."""
        keys, lengths = hash_strings(strings)
        keep = lengths > 0
        return cls.build(keys[keep], labels[keep], lengths[keep])

    def find(self, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``grams`` whose hash is a key, and the keys' labels."""
        if len(self.keys) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if self.slot_keys is not None and self.slot_labels is not None:
            slots = (grams >> self.slot_shift).astype(np.int64)
            labels = self.slot_labels[slots]
            hit = (labels >= 0) & (self.slot_keys[slots] == grams)
            positions = np.flatnonzero(hit)
            shared = np.flatnonzero(labels == -2)
            if len(shared) == 0:
                return positions, labels[positions]
            more, more_labels = self._search(grams[shared])
            positions = np.concatenate([positions, shared[more]])
            labels = np.concatenate([labels[hit], more_labels])
            order = np.argsort(positions, kind="stable")
            return positions[order], labels[order]
        maybe = np.flatnonzero(self.bloom.maybe(grams))
        found, found_labels = self._search(grams[maybe])
        return maybe[found], found_labels

    def _search(self, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.minimum(np.searchsorted(self.keys, grams), len(self.keys) - 1)
        hit = np.flatnonzero(self.keys[at] == grams)
        return hit, self.labels[at[hit]]

    def lookup(self, tokens: Tokens) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(n, positions, labels)`` for every n-gram of ``tokens`` found in the table."""
        for n in range(1, min(self.max_n, len(tokens)) + 1):
            grams = tokens.hashes if n == 1 else tokens.ngram_hashes(n)
            positions, labels = self.find(grams)
            if len(positions):
                yield n, positions, labels

    @property
    def nbytes(self) -> int:
        extra = 0
        if self.slot_keys is not None and self.slot_labels is not None:
            extra = self.slot_keys.nbytes + self.slot_labels.nbytes
        return int(self.keys.nbytes + self.labels.nbytes + self.bloom.nbytes + extra)
