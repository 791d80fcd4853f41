"""Text cut into tokens and hashed, with numpy over the bytes.

Tokens are maximal runs of letters, digits and ``_ . -`` (and any non-ASCII
character), case-folded, with a trailing ``.`` or ``-`` dropped; see the package
docstring. The private values are hashed with the same code
(:func:`hash_strings`), so a value and its occurrence in an output agree by
construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from remote_kernel.checks.leaks.extract import html_to_text, inside_tags, tags
from remote_kernel.checks.leaks.hashing import K0, K1, K2, WORD_MASKS, combine, mix
from remote_kernel.checks.leaks.tunables import MAX_NGRAM, MAX_TOKEN_BYTES

_UPPER = bytes(range(65, 91))
_LOWER = bytes(range(97, 123))
_CASE_TABLE = bytes.maketrans(_UPPER, _LOWER)

#: Byte classes: 1 token character, 2 unit boundary, 0 separator.
_CLASS = np.zeros(256, dtype=np.uint8)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-":
    _CLASS[_c] = 1  # classes are read from the text before case folding
_CLASS[128:] = 1
for _c in b"\n)]}":
    _CLASS[_c] = 2
_CLASS_TABLE = _CLASS.tobytes()
#: In markup only row-ending tags end units (line breaks and brackets are text).
_MARKUP_CLASS_TABLE = np.where(_CLASS == 2, 0, _CLASS).astype(np.uint8).tobytes()
_IS_DIGIT = np.zeros(256, dtype=bool)
_IS_DIGIT[48:58] = True
_PAD = b"\x00" * (MAX_TOKEN_BYTES + 16)


@dataclass
class Tokens:
    """A text cut into tokens: byte offsets and hashes; units and kinds computed on demand."""

    padded: bytes  # the case-folded text and MAX_TOKEN_BYTES + 16 bytes of padding
    starts: np.ndarray  # int64 byte offsets
    hashes: np.ndarray  # uint64
    boundaries: np.ndarray  # byte offsets of unit ends: newline ) ] }
    #: For text rewritten before scanning (unwrapped pandas blocks): scanned line -> original.
    line_map: list[int] | None = None
    #: Where lines end; None: at newlines (for markup: at row-ending tags).
    line_breaks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def units_of(self, positions: np.ndarray) -> np.ndarray:
        """Which unit each of these tokens is in (non-decreasing for sorted positions)."""
        return np.searchsorted(self.boundaries, self.starts[positions]).astype(np.int64)

    def first_tokens(self) -> np.ndarray:
        """Index of the first token at or after the start of every unit (may be ``len``)."""
        heads = np.concatenate([[0], self.boundaries + 1])
        return np.searchsorted(self.starts, heads)

    def numeric(self) -> np.ndarray:
        """Whether each token is a number (a digit first, or ``-``/``.`` and then a digit)."""
        buf = np.frombuffer(self.padded, dtype=np.uint8)
        first = buf[self.starts]
        numeric = _IS_DIGIT[first]
        signed = np.flatnonzero((first == 45) | (first == 46))
        if len(signed):
            at = self.starts[signed]
            second, third = buf[at + 1], buf[at + 2]
            numeric[signed] = _IS_DIGIT[second] | ((second == 46) & _IS_DIGIT[third])
        return numeric

    def line_of(self, token_index: int | np.integer) -> int:
        """1-based line number of a token (lines of the text as scanned)."""
        if self.line_breaks is None:
            self.line_breaks = np.flatnonzero(np.frombuffer(self.padded, dtype=np.uint8) == 10)
        line = int(np.searchsorted(self.line_breaks, self.starts[token_index])) + 1
        if self.line_map is not None and line <= len(self.line_map):
            return self.line_map[line - 1]
        return line

    def ngram_hashes(self, n: int) -> np.ndarray:
        """Hash of the ``n`` tokens starting at each position (``len - n + 1`` of them)."""
        h = self.hashes[: len(self.hashes) - n + 1].copy()
        for k in range(1, n):
            h = combine(h, self.hashes[k : len(self.hashes) - n + 1 + k])
        return h


def tokenize(text: str, markup: bool = False) -> Tokens:
    """Cut ``text`` into tokens and hash them, with numpy over the bytes: linear, no loop per token.

    Byte classes come from one ``bytes.translate``; each token's hash mixes its
    length and its bytes read eight at a time (an unaligned uint64 view of the
    buffer), so the only Python loop is over the eight-byte words of the longest
    token (at most MAX_TOKEN_BYTES / 8).

    With ``markup`` (HTML, SVG) tags are separators and row-ending tags end
    units and lines, as if :func:`html_to_text` had run, without building that
    text; markup with entities or non-ASCII text takes the :func:`html_to_text` way.
    """
    if markup and not text.isascii():
        return tokenize(html_to_text(text))
    if not text.isascii():
        text = text.casefold()
    raw = text.encode("utf-8", "replace")
    data = raw.translate(_CASE_TABLE)
    n = len(data)
    padded = data + _PAD
    buf = np.frombuffer(padded, dtype=np.uint8)
    if markup:
        classes = _markup_classes(raw, buf, n)
        if classes is None:
            return tokenize(html_to_text(text))  # entities in the text: unescape first
        cls, line_breaks = classes
    else:
        cls = np.zeros(n + 2, dtype=np.uint8)
        cls[1:-1] = np.frombuffer(raw.translate(_CLASS_TABLE), dtype=np.uint8)
        line_breaks = None
    is_tok = cls == 1
    edges = np.flatnonzero(is_tok[1:] != is_tok[:-1])
    starts = edges[0::2].astype(np.int64)
    lens = edges[1::2].astype(np.int64) - starts
    # "63.0." at the end of a sentence, "P-1-" cut before a dash: drop trailing . and -.
    last = buf[starts + lens - 1]
    trim = np.flatnonzero((last == 46) | (last == 45))
    for _ in range(3):
        if len(trim) == 0:
            break
        lens[trim] -= 1
        last = buf[starts[trim] + lens[trim] - 1]
        trim = trim[(lens[trim] > 0) & ((last == 46) | (last == 45))]
    if (lens == 0).any():
        keep = lens > 0
        starts, lens = starts[keep], lens[keep]
    hashes = _hash_spans(padded, starts, lens)
    boundaries = np.flatnonzero(cls[1:-1] == 2)
    return Tokens(padded, starts, hashes, boundaries, line_breaks=line_breaks)


def _markup_classes(raw: bytes, buf: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Byte classes of markup (tags are separators, row-ending tags end units) and where
    its lines end; None when an entity sits in the text, which must be unescaped first.

    Classes are padded with a separator on each side, as :func:`tokenize` expects.
    """
    opens, ends, line_end = tags(buf, n)
    inside = inside_tags(n, opens, ends)
    amps = np.flatnonzero(buf[:n] == 38)
    if len(amps) and not inside[amps].all():
        return None
    cls = np.zeros(n + 2, dtype=np.uint8)
    cls[1:-1] = np.frombuffer(raw.translate(_MARKUP_CLASS_TABLE), dtype=np.uint8)
    cls[1:-1] *= ~inside
    line_breaks = opens[line_end]
    cls[1:-1][line_breaks] = 2
    return cls, line_breaks


def _hash_spans(padded: bytes, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """64-bit hash of each token from its length and bytes (tokens of 16 bytes: one mix)."""
    words = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64)
    capped = np.minimum(lens, MAX_TOKEN_BYTES)
    first = words[starts] & WORD_MASKS[np.minimum(capped, 8)]
    second = words[starts + 8] & WORD_MASKS[np.clip(capped - 8, 0, 8)]
    first *= K1
    second *= K2
    first ^= second
    first ^= lens.astype(np.uint64) * K0
    h = mix(first)
    for j in range(2, math.ceil(int(capped.max()) / 8)):
        active = np.flatnonzero(capped > 8 * j)
        w = words[starts[active] + 8 * j] & WORD_MASKS[np.minimum(capped[active] - 8 * j, 8)]
        h[active] = combine(h[active], w)
    return h


def hash_strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token-sequence hash of each string, exactly as the scan would see it in a text.

    Returns ``(hashes, token_counts)``; a string with no token gets count 0.
    Long sequences are hashed on their first MAX_NGRAM tokens.
    """
    if not values:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    cleaned = [v.replace("\n", " ") for v in values]
    text = "\n".join(cleaned)
    if not text.isascii():
        # Casefold each value on its own so offsets below stay per value.
        cleaned = [v.casefold() for v in cleaned]
        text = "\n".join(cleaned)
    offsets = np.cumsum([0] + [len(v.encode("utf-8", "replace")) + 1 for v in cleaned])
    tokens = tokenize(text)
    owner = np.searchsorted(offsets, tokens.starts, side="right") - 1
    counts = np.bincount(owner, minlength=len(values)).astype(np.int64)
    first = np.searchsorted(owner, np.arange(len(values)))
    out = np.zeros(len(values), dtype=np.uint64)
    has = counts > 0
    out[has] = tokens.hashes[first[has]]
    for k in range(1, min(int(counts.max()), MAX_NGRAM)):
        more = np.flatnonzero(counts > k)
        out[more] = combine(out[more], tokens.hashes[first[more] + k])
    return out, np.minimum(counts, MAX_NGRAM)
