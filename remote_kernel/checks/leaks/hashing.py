"""64-bit hashing in numpy: token-sequence, multiset, pair and signature hashes.

Everything here works on whole arrays; no Python code runs per value.
"""

from __future__ import annotations

import numpy as np

#: Masks keeping the first k bytes of a little-endian uint64 word (k = 0..8).
WORD_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)

K0 = np.uint64(0x9E3779B97F4A7C15)
K1 = np.uint64(0xBF58476D1CE4E5B9)
K2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
S32 = np.uint64(32)
_VALUE_SALT = np.uint64(0x2545F4914F6CDD1D)
_LOW6 = np.uint64(63)
_ONE = np.uint64(1)


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised: every input bit affects every output bit."""
    x = x ^ (x >> _S30)
    tmp = np.empty_like(x)
    np.multiply(x, K1, out=x)
    np.right_shift(x, _S27, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, K2, out=x)
    np.right_shift(x, _S31, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    return x


def combine(h: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Hash of a token sequence from the hash of its prefix and of the next token."""
    return mix(h * K0 + g)


def pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """32-bit hash of an unordered pair of value ids."""
    lo = np.minimum(a, b).astype(np.uint64)
    hi = np.maximum(a, b).astype(np.uint64)
    return (mix((lo << S32) | hi) >> S32).astype(np.uint32)


def value_hash(vids: np.ndarray) -> np.ndarray:
    """A random-looking 64-bit number per value id; sums of them hash multisets."""
    return mix(vids.astype(np.uint64) + _VALUE_SALT)


def exact_key(sums: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Order-free hash of a multiset of values from their sum and how many there are."""
    return mix(sums ^ (lengths.astype(np.uint64) * K0))


def signature(value_hashes: np.ndarray) -> np.ndarray:
    """One of 64 bits per value: ORed over a row or a window, a tiny Bloom filter."""
    return _ONE << (value_hashes & _LOW6)


def window_signatures(sig: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """OR of ``sig[lo:hi]`` for many windows at once, through a sparse table of ORs."""
    levels = [sig]
    longest = int((hi - lo).max()) if len(lo) else 1
    while (1 << len(levels)) <= longest:
        prev, step = levels[-1], 1 << (len(levels) - 1)
        levels.append(prev[:-step] | prev[step:] if len(prev) > step else prev[:0])
    length = np.maximum(hi - lo, 1)
    level = np.floor(np.log2(length)).astype(np.int64)
    out = np.zeros(len(lo), dtype=np.uint64)
    for k, table in enumerate(levels):
        pick = np.flatnonzero(level == k)
        if len(pick):
            out[pick] = table[lo[pick]] | table[hi[pick] - (1 << k)]
    return out
