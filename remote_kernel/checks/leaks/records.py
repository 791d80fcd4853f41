"""Leak detection against the private data: the filter holds the data, so it looks for it.

The datasite indexes its private tables once, at start (:meth:`PrivateIndex.build`),
and scans every output item in time linear in the output's size
(:meth:`PrivateIndex.scan_item`, :meth:`PrivateIndex.scan_text`). Four checks,
each explained to the reviewer without quoting private values:

``leak-record`` (block)
    a private *record* in the output: a table row, a text line, a JSON object or
    a run of values that matches one private row (rule below).
``leak-identifier`` (block)
    a value of a declared identifier column (patient id, name, date of birth)
    anywhere in the output.
``leak-record-suspected`` (review)
    a match that falls short of the record rule by less than
    ``SUSPECT_MARGIN_BITS`` (6) bits: worth a reviewer's look, not a proof.
``record-like-table`` (review)
    a table that looks like records of a dataset (many rows of the dataset's
    values under a header naming its columns) while no row was proven private:
    the mock, perturbed or synthetic rows. A person decides.

Tokens and values
-----------------
Text is cut into tokens: maximal runs of letters, digits and ``_ . -`` (and any
non-ASCII character), case-folded, with a trailing ``.`` or ``-`` dropped. So
whitespace and case never matter ("Anna   BERG" is the tokens ``anna`` ``berg``).
Tokens are hashed to 64 bits in bulk with numpy (a byte-class ``bytes.translate``,
an unaligned uint64 view for the token bytes); no Python code runs per token.
HTML and SVG are tokenized with tags as separators and row-ending tags
(``</tr>``, ``<br>``, ``</p>``...) as line ends; markup with entities is
unescaped first (:func:`html_to_text`). Wrapped pandas reprs (a notebook's
``print(df)`` splits wide frames into column blocks) are joined back into whole
rows first (:func:`unwrap_pandas`).

Private values are normalised when the index is built, not when text is
scanned: a number gets the spellings outputs use (``63``, ``63.0`` ...
``63.000000``; ``2.3``, ``2.30`` ...; ``0.333333`` and the shortest repr for
values with more decimals; ``.7`` for ``0.7``), so ``63``, ``63.0`` and
``"63.00"`` map to one value id. Strings are case-folded and
whitespace-collapsed, a multi-word value is matched as a token sequence
(n-gram hash). Dates get ISO, ``Y/m/d``, ``d/m/Y``, ``m/d/Y``, ``d.m.Y`` and epoch
seconds / milliseconds (``to_json``) spellings. The index keeps hashes and ids
only: sorted ``uint64``/``uint32`` key arrays, Bloom filters, and the private
rows as a ``uint16`` (or ``int32``) matrix of value ids, never strings.

The record rule (``leak-record``)
---------------------------------
*Units.* The text is cut at line ends, ``)``, ``]`` and ``}`` (a table line, an
HTML ``<tr>``, a JSON object or array, a tuple are each a unit); consecutive
units holding at most two values of the dataset (the lines of a printed Series
``age 63.0``, a pretty-printed JSON object) are merged into one unit. Only
tokens that are values of the dataset count below; labels, keys, prose and
numbers that are no private value are skipped, so they never break a run.
Matches never span two units.

*Matching.* A window of a unit matches private row ``r`` on the set ``M`` of
``r``'s columns whose value it holds, counted as a multiset (a row with ``0`` in
four columns needs four ``0`` tokens) and regardless of position (another column
order, an f-string, a dict still match). Only *dense* windows count: at most
``SPAN_SLACK`` (2) of their values may be something other than ``r``'s. A printed
record is dense; a row whose values are scattered over an aggregate table is not.

*Evidence.* A matched value weighs ``bits = log2((N+1)/(n+1))``, ``n`` being the
number of private rows holding that value at least that many times in any
column, ``N`` the number of rows: a code every row holds weighs almost nothing,
a cholesterol of 233 about 7 bits in the UCI data. With ``T = log2(N) +
log2(max(1, H/C))`` (``H`` values of the dataset in the output, ``C`` its value
columns: a bound on the chance matches among ``N`` rows and ``H/C`` windows), a
dense window is a leaked record when

* (full) ``M`` covers every non-null quasi-identifier of ``r`` (every value
  column when the policy declares none) and ``bits(M) >= max(FULL_MIN_BITS,
  T + FULL_MARGIN_BITS)`` (12 and 4 bits); or
* (partial; only when the policy declares no quasi-identifiers) ``M`` has at
  least 4 columns, 2 of them *rare* (a column with more than ``CODE_LEVELS`` (12)
  distinct values, a value held by at most 1/16 of the rows), and the bits of
  its high-cardinality columns alone reach ``max(PARTIAL_MIN_BITS, T +
  PARTIAL_MARGIN_BITS)`` (20 and 10 bits). This catches ``df[[a few columns]]``
  and truncated prints; codes are left out because they agree by chance all the
  time, and the margin is larger because the match chose its own columns.

So "0 1 1" (about one bit) is never a record, and neither is a describe(), a
min/max table or a crosstab: they hold private values, but not one row's values
densely. The margins were set on the UCI data and generated data: no block on 870
null outputs (aggregates as text and HTML, mock tables in five layouts, perturbed
rows), while 99 % of single rows printed in full are blocked.

*Finding the candidates in linear time.* Two indexes, neither compared with
every private row:

* an exact multiset hash per row (the sum of 64-bit hashes of its values): the
  hash of every run of ``k`` consecutive values of a unit is a difference of
  prefix sums, one pass per distinct ``k``, looked up through a Bloom filter.
  This finds whole rows at any ``N``;
* anchors for everything else (partial matches, extra values in the run,
  declared quasi-identifiers): each row is filed under the unordered pairs of its
  ``ANCHOR_VALUES`` (4) rarest values (six 32-bit pair hashes, one sorted array);
  pairs shared by more than ``ANCHOR_MAX_ROWS`` (32) rows are dropped (they
  anchor nothing rare). The scan forms the pairs of values at most ``L = min(C +
  4, 48)`` apart inside a unit, looks them up with one ``searchsorted`` per
  distance, drops candidates that cannot reach the threshold (too few values in
  the unit, too few bits in the row, a needed value missing from the window's
  64-bit signature), and verifies the rest in numpy batches.

The identifier rule (``leak-identifier``)
-----------------------------------------
Every value of every declared identifier column is indexed, with the spellings
above, as the hash of its token sequence; an occurrence of that sequence
anywhere in the output blocks it (case, whitespace and markup do not matter).
A value that is also an ordinary token would block harmless outputs, so it is
*not* indexed when, normalised, it has fewer than ``MIN_IDENTIFIER_CHARS`` (4)
non-space characters, is a number below ``MIN_IDENTIFIER_NUMBER`` (10000: counts,
years and codes look like that), or is a common word of outputs (``none``,
``nan``, ``true``, ``mean``...). :attr:`PrivateIndex.stats` counts those per
column; identifiers with a prefix ("P-000123") are all protected.

The record-like rule (``record-like-table``)
--------------------------------------------
A unit is record-like for a dataset when it holds at least ``min(C, 4)`` values
of the dataset, those are at least 75 % of its numbers, and it is not labelled as
a statistic (``count``, ``mean``, ``std``, ``min``, ``25%``...). An output with at
least 5 record-like units that also names at least ``min(C, 3)`` of the dataset's
columns goes to review.

Known blind spots (what an attacker can still do)
-------------------------------------------------
Everything here is pattern matching on text, so a transformation the index did
not anticipate defeats it: encodings (base64, hex, rot13, one character per
output, zero-padding ``063``), arithmetic (``age + 1``, scaling, a rounding the
index did not spell, scientific notation, thousands separators), interleaving
more than ``SPAN_SLACK`` foreign values into a row, splitting a row over units
(two lines of three values each, several outputs), transposed or column-wise
dumps (``df.T``, ``to_json()``'s default ``orient="columns"``, ``to_dict()``:
reviewed as record-like when they name columns, not blocked), partial views of
low-information rows (a truncated ``print(df)`` of the UCI data is often only
suspected), rows whose values are all common (about 1 % of UCI rows cannot be
told from chance), a value glued to other text (``xP-000123``), identifiers below
the minimum length, and images. With a million private rows the thresholds rise
by the ``log2(N)`` term, so only whole rows of informative columns are proven.
Every output not released by the datasite's own aggregate tier is still seen by
a person: this module blocks what it can prove and points the reviewer at what
it suspects.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.checks.policy import DatasetPolicy
from remote_kernel.protocol.models import Finding, OutputItem, Verdict

# --- tunables (see the module docstring for what each one means) -----------------------------

FULL_MIN_BITS = 12.0
FULL_MARGIN_BITS = 4.0
PARTIAL_MIN_COLUMNS = 4
PARTIAL_MIN_RARE = 2
RARE_BITS = 4.0
PARTIAL_MIN_BITS = 20.0
PARTIAL_MARGIN_BITS = 10.0
WINDOW_SLACK = 4
MAX_WINDOW = 48
ANCHOR_VALUES = 4
#: Anchor pairs shared by more private rows than this are not filed (see the docstring).
ANCHOR_MAX_ROWS = 32
THIN_UNIT_VALUES = 2
#: A column with at most this many distinct values holds codes (as in datasets.py).
CODE_LEVELS = 12
MIN_IDENTIFIER_CHARS = 4
MIN_IDENTIFIER_NUMBER = 10_000
RECORD_LIKE_MIN_ROWS = 5
RECORD_LIKE_MIN_VALUES = 4
RECORD_LIKE_MIN_NAMES = 3
RECORD_LIKE_FRACTION = 0.75
#: Key tables up to this size also get a direct-mapped array (see _KeyTable).
DIRECT_TABLE_MAX_KEYS = 1 << 15
#: Longest token sequence a value or identifier is matched as (longer values: their start).
MAX_NGRAM = 8
#: Tokens longer than this are hashed on their first MAX_TOKEN_BYTES bytes and their length.
MAX_TOKEN_BYTES = 64
#: How many locations a finding lists.
MAX_LOCATIONS = 5
#: Candidates verified per numpy batch (bounds temporary memory).
VERIFY_BATCH = 4_096
#: Stop verifying an output once this many windows are proven records.
MAX_CONFIRMED = 1_000
#: Matches this many bits short of proof are reported for review as suspected records.
SUSPECT_MARGIN_BITS = 6.0
#: Values of a dense window that need not be values of the matched row (an index, a label).
SPAN_SLACK = 2

#: Words outputs are full of; an identifier value equal to one of them is not indexed.
COMMON_WORDS = frozenset(
    """none null nan nat true false yes no male female unknown other missing name names
    dtype float64 int64 object mean median count std min max sum total all index value
    values rows columns column table error warning true false patient patients id""".split()
)
#: Row labels of statistics tables (describe, agg): such a line is not record-like.
STAT_LABELS = frozenset(
    """count mean std min max sum median var sem skew kurt mode total all 25 50 75
    first last size nunique unique top freq""".split()
)

# --- tokenizer -------------------------------------------------------------------------------

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
_WORD_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_NULL16 = 2**16 - 1
_PAD = b"\x00" * (MAX_TOKEN_BYTES + 16)

_K0 = np.uint64(0x9E3779B97F4A7C15)
_K1 = np.uint64(0xBF58476D1CE4E5B9)
_K2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S32 = np.uint64(32)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised: every input bit affects every output bit."""
    x = x ^ (x >> _S30)
    tmp = np.empty_like(x)
    np.multiply(x, _K1, out=x)
    np.right_shift(x, _S27, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    np.multiply(x, _K2, out=x)
    np.right_shift(x, _S31, out=tmp)
    np.bitwise_xor(x, tmp, out=x)
    return x


def _combine(h: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Hash of a token sequence from the hash of its prefix and of the next token."""
    return _mix(h * _K0 + g)


@dataclass
class _Tokens:
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
            h = _combine(h, self.hashes[k : len(self.hashes) - n + 1 + k])
        return h


def _tokenize(text: str, markup: bool = False) -> _Tokens:
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
        return _tokenize(html_to_text(text))
    if not text.isascii():
        text = text.casefold()
    raw = text.encode("utf-8", "replace")
    data = raw.translate(_CASE_TABLE)
    n = len(data)
    padded = data + _PAD
    buf = np.frombuffer(padded, dtype=np.uint8)
    line_breaks = None
    if markup:
        opens, ends, line_end = _tags(buf, n)
        inside = _inside_tags(n, opens, ends)
        amps = np.flatnonzero(buf[:n] == 38)
        if len(amps) and not inside[amps].all():
            return _tokenize(html_to_text(text))  # entities in the text: unescape first
        cls = np.zeros(n + 2, dtype=np.uint8)
        cls[1:-1] = np.frombuffer(raw.translate(_MARKUP_CLASS_TABLE), dtype=np.uint8)
        cls[1:-1] *= ~inside
        line_breaks = opens[line_end]
        cls[1:-1][line_breaks] = 2
    else:
        cls = np.zeros(n + 2, dtype=np.uint8)
        cls[1:-1] = np.frombuffer(raw.translate(_CLASS_TABLE), dtype=np.uint8)
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
    return _Tokens(padded, starts, hashes, boundaries, line_breaks=line_breaks)


def _hash_spans(padded: bytes, starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """64-bit hash of each token from its length and bytes (tokens of 16 bytes: one mix)."""
    words = np.ndarray((len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))
    if len(starts) == 0:
        return np.zeros(0, dtype=np.uint64)
    capped = np.minimum(lens, MAX_TOKEN_BYTES)
    first = words[starts] & _WORD_MASKS[np.minimum(capped, 8)]
    second = words[starts + 8] & _WORD_MASKS[np.clip(capped - 8, 0, 8)]
    first *= _K1
    second *= _K2
    first ^= second
    first ^= lens.astype(np.uint64) * _K0
    h = _mix(first)
    for j in range(2, math.ceil(int(capped.max()) / 8)):
        active = np.flatnonzero(capped > 8 * j)
        w = words[starts[active] + 8 * j] & _WORD_MASKS[np.minimum(capped[active] - 8 * j, 8)]
        h[active] = _combine(h[active], w)
    return h


def _hash_strings(values: list[str]) -> tuple[np.ndarray, np.ndarray]:
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
    tokens = _tokenize(text)
    owner = np.searchsorted(offsets, tokens.starts, side="right") - 1
    counts = np.bincount(owner, minlength=len(values)).astype(np.int64)
    first = np.searchsorted(owner, np.arange(len(values)))
    out = np.zeros(len(values), dtype=np.uint64)
    has = counts > 0
    out[has] = tokens.hashes[first[has]]
    for k in range(1, min(int(counts.max()), MAX_NGRAM)):
        more = np.flatnonzero(counts > k)
        out[more] = _combine(out[more], tokens.hashes[first[more] + k])
    return out, np.minimum(counts, MAX_NGRAM)


# --- value spellings -------------------------------------------------------------------------


def _number_spellings(value: float) -> tuple[str, list[str]] | None:
    """The canonical spelling of a number and the other spellings outputs use for it."""
    if not math.isfinite(value):
        return None
    if value == int(value) and abs(value) < 2**53:
        base = str(int(value))
        return base, [base] + [f"{base}.{'0' * k}" for k in range(1, 7)]
    text = repr(float(value))
    spellings = [text]
    if "e" not in text:
        decimals = len(text.split(".")[1])
        spellings += [text + "0" * k for k in range(1, 7 - decimals)]
    six = f"{value:.6f}"
    if float(six) != value:
        short = six.rstrip("0").rstrip(".")
        spellings += [six, short] + [
            short + "0" * k for k in range(1, 7 - len(short.split(".")[-1]))
        ]
    if 0 < abs(value) < 1:
        spellings += [s.replace("0.", ".", 1) for s in spellings if "0." in s]
    return text, list(dict.fromkeys(spellings))


def _date_spellings(ts: pd.Timestamp) -> tuple[str, list[str]]:
    iso = ts.strftime("%Y-%m-%d")
    if ts != ts.normalize():
        iso = ts.strftime("%Y-%m-%d %H:%M:%S")
        return iso, [iso, ts.isoformat()]
    epoch_s = int(ts.value // 10**9)
    return iso, [
        iso,
        ts.strftime("%Y/%m/%d"),
        ts.strftime("%d/%m/%Y"),
        ts.strftime("%m/%d/%Y"),
        ts.strftime("%d.%m.%Y"),
        str(epoch_s * 1000),
        str(epoch_s),
    ]


def _column_spellings(column: pd.Series) -> tuple[np.ndarray, list[tuple[str, list[str]] | None]]:
    """Factorise a column: per-row codes (-1 for null) and per-unique (canonical, spellings)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(object)
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    out: list[tuple[str, list[str]] | None] = []
    if pd.api.types.is_bool_dtype(column.dtype):
        out = [(str(bool(u)).lower(), [str(bool(u)).lower()]) for u in uniques]
    elif pd.api.types.is_numeric_dtype(column.dtype):
        out = [_number_spellings(float(u)) for u in np.asarray(uniques, dtype=float)]
    elif pd.api.types.is_datetime64_any_dtype(column.dtype):
        out = [_date_spellings(pd.Timestamp(u)) for u in uniques]
    else:
        for u in uniques:
            out.append(_object_spellings(u))
    return np.asarray(codes, dtype=np.int64), out


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _object_spellings(value: Any) -> tuple[str, list[str]] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower(), [str(bool(value)).lower()]
    if isinstance(value, int | float | np.integer | np.floating):
        return _number_spellings(float(value))
    if isinstance(value, pd.Timestamp):
        return _date_spellings(value)
    text = " ".join(str(value).casefold().split())
    if not text:
        return None
    if _ISO_DATE.fullmatch(text):  # a date kept as text: spell it as a date too
        try:
            canonical, spellings = _date_spellings(pd.Timestamp(text))
        except ValueError:
            return text, [text]
        return canonical, [text, *spellings]
    try:
        number = float(text)
    except ValueError:
        return text, [text]
    spelled = _number_spellings(number)
    if spelled is None:
        return text, [text]
    return spelled[0], [text, *spelled[1]]


# --- bloom filter ----------------------------------------------------------------------------


class _Bloom:
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
class _KeyTable:
    """Hashes of token sequences -> a label, for sequences of 1..max_n tokens.

    Small tables (the usual value vocabulary: thousands of spellings) are also
    laid out as a direct-mapped array with 64 slots per key, so a lookup is two
    gathers; large ones (a million patient ids) use a Bloom filter and a binary
    search over the sorted keys.
    """

    keys: np.ndarray  # uint64, sorted
    labels: np.ndarray  # int32 or int64
    max_n: int
    bloom: _Bloom
    slot_keys: np.ndarray | None = None
    slot_labels: np.ndarray | None = None  # -1 empty, -2 shared by several keys
    slot_shift: np.uint64 = field(default_factory=lambda: np.uint64(0))

    @classmethod
    def build(cls, keys: np.ndarray, labels: np.ndarray, lengths: np.ndarray) -> _KeyTable:
        order = np.argsort(keys, kind="stable")
        keys, labels = keys[order], labels[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        keys, labels = keys[first], labels[first]
        max_n = int(lengths.max()) if len(lengths) else 0
        table = cls(keys, labels, max_n, _Bloom(keys))
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

    def lookup(self, tokens: _Tokens) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
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


# --- per-dataset index -----------------------------------------------------------------------


@dataclass
class _DatasetIndex:
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
    anchor_keys: np.ndarray  # uint32 sorted, unique
    anchor_offsets: np.ndarray  # int64: rows of anchor_keys[i] are anchor_rows[off[i]:off[i+1]]
    anchor_rows: np.ndarray  # int32
    key_min_needed: np.ndarray  # int16 per anchor key: fewest values a full match of its rows needs
    key_full_max: np.ndarray  # float32 per anchor key: most bits any of its rows has
    key_partial_max: np.ndarray  # float32 per anchor key: most high-cardinality bits
    is_value: np.ndarray  # bool per global vid
    is_anchor: np.ndarray  # bool per global vid
    row_needed: np.ndarray  # int16: non-null quasi-identifier values of each row
    row_sig: np.ndarray  # uint64: one bit per needed value (a 64-bit Bloom filter of them)
    row_full_max: np.ndarray  # float32: bits of all of a row's values
    row_partial_max: np.ndarray  # float32: bits of its high-cardinality values
    vid_partial_max: np.ndarray  # float32 per global vid: best row_partial_max it anchors
    min_needed: int  # fewest values a full match of any row needs
    exact_keys: np.ndarray  # uint64 sorted: multiset hash of each row's non-null values
    exact_rows: np.ndarray  # int32
    exact_lengths: np.ndarray  # int64: the distinct numbers of non-null values of rows
    exact_bloom: _Bloom
    column_names: _KeyTable  # hashes of the column names -> column number
    window: int
    log_rows: float

    @property
    def nbytes(self) -> int:
        arrays = (
            self.rows,
            self.occ_keys,
            self.occ_bits,
            self.anchor_keys,
            self.anchor_offsets,
            self.anchor_rows,
            self.key_min_needed,
            self.key_full_max,
            self.key_partial_max,
            self.is_value,
            self.is_anchor,
            self.row_needed,
            self.row_sig,
            self.row_full_max,
            self.row_partial_max,
            self.vid_partial_max,
            self.exact_keys,
            self.exact_rows,
        )
        return int(sum(a.nbytes for a in arrays) + self.exact_bloom.nbytes)


def _pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """32-bit hash of an unordered pair of value ids."""
    lo = np.minimum(a, b).astype(np.uint64)
    hi = np.maximum(a, b).astype(np.uint64)
    return (_mix((lo << _S32) | hi) >> _S32).astype(np.uint32)


_VALUE_SALT = np.uint64(0x2545F4914F6CDD1D)


def _value_hash(vids: np.ndarray) -> np.ndarray:
    """A random-looking 64-bit number per value id; sums of them hash multisets."""
    return _mix(vids.astype(np.uint64) + _VALUE_SALT)


_LOW6 = np.uint64(63)
_ONE = np.uint64(1)


def _signature(value_hashes: np.ndarray) -> np.ndarray:
    """One of 64 bits per value: ORed over a row or a window, a tiny Bloom filter."""
    return _ONE << (value_hashes & _LOW6)


def _window_signatures(sig: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
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


def _exact_key(sums: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Order-free hash of a multiset of values from their sum and how many there are."""
    return _mix(sums ^ (lengths.astype(np.uint64) * _K0))


def _occurrence_ranks(rows: np.ndarray) -> np.ndarray:
    """For each cell, how many cells to its left in the same row hold the same value."""
    ranks = np.zeros(rows.shape, dtype=np.int16)
    for c in range(1, rows.shape[1]):
        col = rows[:, c]
        for d in range(c):
            ranks[:, c] += rows[:, d] == col
    return ranks


# --- findings helpers ------------------------------------------------------------------------


@dataclass
class _Hits:
    """Where one check fired for one dataset, collected before it becomes one Finding."""

    lines: list[int] = field(default_factory=list)
    count: int = 0
    detail: dict[str, Any] = field(default_factory=dict)

    def where(self) -> str:
        lines = sorted(set(self.lines))[:MAX_LOCATIONS]
        more = ", ..." if len(set(self.lines)) > MAX_LOCATIONS else ""
        label = "line" if len(lines) == 1 else "lines"
        return f"{label} {', '.join(map(str, lines))}{more}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- extracting text from output items -------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
_NEWLINES_TO_SPACES = bytes.maketrans(b"\r\n", b"  ")
#: Tags that end a row or block of visible text: they become line ends.
_HTML_LINE_TAGS = [
    *"/tr /p /li /div /h1 /h2 /h3 /h4 /h5 /h6 /caption /thead /tbody /table /pre /dt /dd".split(),
    *("br", "br/", "br /"),
]
_HTML_LINE_WORDS = np.array(
    [int.from_bytes(t.encode()[:8].ljust(8, b"\x00"), "little") for t in _HTML_LINE_TAGS],
    dtype=np.uint64,
)
_TEXT_LIKE_SUFFIXES = ("+json", "+xml", "/json", "/xml", "/javascript", "/csv")


def _tags(buf: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tags of markup in ``buf[:n]``: where each starts (``<``) and ends (``>``), and
    whether it ends a line of visible text (``</tr>``, ``<br>``, ``</p>``...)."""
    opens = np.flatnonzero(buf[:n] == 60)
    closes = np.flatnonzero(buf[:n] == 62)
    if len(opens) == 0:
        return opens, opens, np.zeros(0, dtype=bool)
    if len(opens) == len(closes) and (opens < closes).all() and (closes[:-1] < opens[1:]).all():
        ends = closes  # well-formed: every "<" closed before the next opens
    else:
        at = np.searchsorted(closes, opens)
        ends = np.where(at < len(closes), closes[np.minimum(at, len(closes) - 1)], n - 1)
        # A "<" inside an earlier tag (an attribute value) is not a tag of its own.
        keep = np.ones(len(opens), dtype=bool)
        keep[1:] = opens[1:] > ends[:-1]
        opens, ends = opens[keep], ends[keep]
    # Only "</..." and "<br" can end a line. Closing tags carry no attributes, so the
    # name is all of the tag: compare its first eight bytes, lower-cased.
    second = buf[opens + 1] | 0x20
    maybe = np.flatnonzero((second == 0x2F) | (second == 0x62))
    words = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
    word = words[opens[maybe] + 1] | np.uint64(0x2020202020202020)
    length = np.clip(ends[maybe] - opens[maybe] - 1, 0, 8)
    line_end = np.zeros(len(opens), dtype=bool)
    line_end[maybe] = np.isin(word & _WORD_MASKS[length], _HTML_LINE_WORDS)
    return opens, ends, line_end


def _inside_tags(n: int, opens: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Boolean mask of the bytes that belong to a tag: runs of False and True, repeated."""
    if len(opens) == 0:
        return np.zeros(n, dtype=bool)
    bounds = np.empty(2 * len(opens) + 2, dtype=np.int64)
    bounds[0] = 0
    bounds[1:-1:2] = opens
    bounds[2:-1:2] = ends + 1
    bounds[-1] = n
    flags = np.zeros(2 * len(opens) + 1, dtype=bool)
    flags[1::2] = True
    return np.repeat(flags, np.diff(bounds))


def html_to_text(markup: str) -> str:
    """Visible text of HTML with one line per table row (cells of a row stay on its line).

    Line breaks inside the markup are layout, not content (pandas puts every
    ``<td>`` on its own line), so they become spaces; row and block ends
    (``</tr>``, ``<br>``, ``</p>``...) become line ends; every other tag becomes a
    space; entities are unescaped. The scan itself does not build this text when
    the markup has no entities: it tokenizes the markup with tags as separators.
    """
    data = markup.encode("utf-8", "surrogatepass").translate(_NEWLINES_TO_SPACES)
    n = len(data)
    buf = np.frombuffer(data + b"\x00" * 16, dtype=np.uint8)
    opens, ends, line_end = _tags(buf, n)
    out = np.where(_inside_tags(n, opens, ends), np.uint8(32), buf[:n])
    out[opens[line_end]] = 10
    text = out.tobytes().decode("utf-8", "replace")
    if "&" in text:
        text = html.unescape(text)
    return text


def unwrap_pandas(text: str) -> tuple[str, list[int]]:
    """Join the column blocks of a wrapped pandas repr back into whole rows.

    In a notebook ``print(df)`` of a wide frame comes out as blocks of columns
    (the header of every block but the last ends with a backslash), so one
    record is split over lines far apart. Blocks with the same number of lines
    are joined line by line; anything else is left as it was. Returns the text
    and, per line of it, the line of the original text it starts on.
    """
    lines = text.split("\n")
    out: list[str] = []
    origin: list[int] = []
    i = 0
    while i < len(lines):
        if not lines[i].rstrip().endswith("\\"):
            out.append(lines[i])
            origin.append(i + 1)
            i += 1
            continue
        height = i
        while height < len(lines) and lines[height].strip():
            height += 1
        height -= i
        blocks = [lines[i : i + height]]
        j = i + height
        # Each further block: one blank line, then as many lines as the first.
        while blocks[-1][0].rstrip().endswith("\\") and j + 1 + height <= len(lines):
            block = lines[j + 1 : j + 1 + height]
            if lines[j].strip() or not all(line.strip() for line in block):
                break
            blocks.append(block)
            j += 1 + height
        if len(blocks) > 1:
            for n, parts in enumerate(zip(*blocks, strict=True)):
                label = parts[0].split(None, 1)[0] if parts[0].strip() else ""
                joined = [parts[0].rstrip().rstrip("\\")]
                for part in parts[1:]:
                    fields = part.rstrip().rstrip("\\").split(None, 1)
                    if len(fields) == 2 and fields[0] == label:
                        fields = fields[1:]  # the row label, repeated in every block
                    joined.append(" ".join(fields))
                out.append(" ".join(joined))
                origin.append(i + n + 1)
            i = j
        else:
            out.append(lines[i])
            origin.append(i + 1)
            i += 1
    return "\n".join(out), origin


def _is_text_mime(mime: str) -> bool:
    return mime.startswith("text/") or mime.endswith(_TEXT_LIKE_SUFFIXES)


def _item_parts(item: OutputItem) -> list[tuple[str, str, bool]]:
    """``(where, text, is_markup)`` for every piece of text an output item carries.

    Everything in the message content that is released is read: the known
    fields with their own treatment, and every other field (display metadata, a
    ``transient`` display id, keys no frontend knows, mime types that are not
    text, all of them chosen by researcher code) as JSON. Only the base64
    pictures of ``image/*`` types are left to the rules that send images to a
    person.
    """
    content = item.content or {}
    out: list[tuple[str, str, bool]] = []
    handled = {"data"}
    if item.msg_type == "stream":
        text = content.get("text")
        if isinstance(text, str):
            out.append((f"stream {content.get('name', 'stdout')}", _ANSI.sub("", text), False))
            handled.add("text")
    elif item.msg_type == "error":
        parts = [str(content.get("ename", "")), str(content.get("evalue", ""))]
        traceback = content.get("traceback") or []
        if isinstance(traceback, list):
            parts += [str(line) for line in traceback]
            handled.add("traceback")
        out.append(("traceback", _ANSI.sub("", "\n".join(parts)), False))
        handled.update({"ename", "evalue"})
    data = content.get("data")
    rest: dict[str, Any] = {k: v for k, v in content.items() if k not in handled}
    if isinstance(data, Mapping):
        other: dict[str, Any] = {}
        for mime in sorted(data):
            value = data[mime]
            if not _is_text_mime(mime):
                picture = mime.startswith("image/") and isinstance(value, str)
                other[mime] = None if picture else value  # the mime name itself is read too
                continue
            if isinstance(value, str):
                text = value
            else:
                text = json.dumps(value, ensure_ascii=False, default=str)
            out.append((mime, text, "html" in mime or mime.endswith("xml")))
            other[mime] = None
        if other:
            rest["data"] = other
    elif data is not None:
        rest["data"] = data
    if any(value not in (None, {}, [], "") for value in rest.values()):
        text = json.dumps(rest, ensure_ascii=False, default=str, sort_keys=True)
        out.append(("output's other fields", text, False))
    return out


def item_texts(item: OutputItem) -> list[tuple[str, str]]:
    """Every piece of text an output item carries, as ``(where, text)`` pairs.

    Stream text; each text-like mime type of a display (HTML and SVG/XML with
    tags stripped, JSON serialised); an error's name, value and traceback with
    terminal colour codes removed; every other field of the content (metadata,
    transient, unknown keys and mime types) as JSON. Base64 images carry no text
    and are left to the rules that send images to a person.
    """
    return [
        (where, html_to_text(text) if markup else text) for where, text, markup in _item_parts(item)
    ]


# --- the index -------------------------------------------------------------------------------


class PrivateIndex:
    """Hashes of the private tables' values, records and identifiers; scans outputs for them.

    Build once per datasite start with :meth:`build`; :meth:`scan_item` and
    :meth:`scan_text` are read-only and safe to call from several threads.
    """

    def __init__(
        self,
        datasets: list[_DatasetIndex],
        vocab: _KeyTable,
        identifiers: _KeyTable,
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
        canon_ids: dict[str, int] = {}
        spell_strings: list[str] = []
        spell_vids: list[int] = []
        prepared: list[tuple[str, list[str], list[np.ndarray], list[int], DatasetPolicy]] = []
        ident_strings: list[str] = []
        ident_labels: list[int] = []
        ident_owners: list[tuple[str, str]] = []
        skipped: dict[str, int] = {}
        indexed = 0

        for name, frame in frames.items():
            policy = policies.get(name, DatasetPolicy())
            names = [str(c) for c in frame.columns]
            missing = [
                c for c in (*policy.identifiers, *policy.quasi_identifiers) if c not in names
            ]
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
                codes, spelled = _column_spellings(column)
                if col_name in identifiers:
                    label = len(ident_owners)
                    ident_owners.append((name, col_name))
                    for item in spelled:
                        if item is None:
                            continue
                        if not _identifier_worth_indexing(item[0]):
                            skipped[f"{name}.{col_name}"] = skipped.get(f"{name}.{col_name}", 0) + 1
                            continue
                        indexed += 1
                        ident_strings.extend(item[1])
                        ident_labels.extend([label] * len(item[1]))
                    continue
                vid_of_unique = np.full(len(spelled) + 1, -1, dtype=np.int64)
                for u, item in enumerate(spelled):
                    if item is None:
                        continue
                    canonical, spellings = item
                    vid = canon_ids.get(canonical)
                    if vid is None:
                        vid = canon_ids[canonical] = len(canon_ids)
                        spell_strings.append(canonical)
                        spell_vids.append(vid)
                        spell_strings.extend(spellings)
                        spell_vids.extend([vid] * len(spellings))
                    vid_of_unique[u] = vid
                # A null's code is -1, which picks the trailing -1 of vid_of_unique.
                vid_columns.append(vid_of_unique.astype(np.int32)[codes])
                levels.append(sum(item is not None for item in spelled))
            prepared.append((name, value_columns, vid_columns, levels, policy))

        n_vids = len(canon_ids)
        keys, lengths = _hash_strings(spell_strings)
        labels = np.asarray(spell_vids, dtype=np.int32)
        keep = lengths > 0
        vocab = _KeyTable.build(keys[keep], labels[keep], lengths[keep])
        ikeys, ilengths = _hash_strings(ident_strings)
        ilabels = np.asarray(ident_labels, dtype=np.int32)
        ikeep = ilengths > 0
        identifiers = _KeyTable.build(ikeys[ikeep], ilabels[ikeep], ilengths[ikeep])

        datasets = []
        while prepared:  # popped, so each dataset's columns are freed once indexed
            name, columns, vids, levels, policy = prepared.pop(0)
            if columns and len(vids[0]):  # no value columns or no rows: nothing to match
                datasets.append(_build_dataset(name, columns, vids, levels, policy, n_vids))
        stats = {
            "datasets": {
                d.name: {"rows": d.n_rows, "value_columns": len(d.columns)} for d in datasets
            },
            "distinct_values": n_vids,
            "identifier_values": indexed,
            "identifier_values_not_indexed": skipped,
            "bytes": int(vocab.nbytes + identifiers.nbytes + sum(d.nbytes for d in datasets)),
        }
        return cls(datasets, vocab, identifiers, ident_owners, stats)

    # -- scanning --

    def scan_item(self, item: OutputItem) -> list[Finding]:
        """Findings for every piece of text in one output item (see :func:`item_texts`)."""
        findings: list[Finding] = []
        for where, text, markup in _item_parts(item):
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
        tokens = _tokenize(text, markup=markup)
        tokens.line_map = line_map
        if len(tokens) == 0:
            return []
        findings = self._identifier_findings(tokens, where)
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
            findings += self._dataset_findings(dataset, tokens, positions, labels, where)
        return findings

    def _identifier_findings(self, tokens: _Tokens, where: str) -> list[Finding]:
        per_owner: dict[int, _Hits] = {}
        for _, positions, labels in self._identifiers.lookup(tokens):
            for label in np.unique(labels):
                at = positions[labels == label]
                hits = per_owner.setdefault(int(label), _Hits())
                hits.count += len(at)
                hits.lines += [tokens.line_of(int(p)) for p in at[:MAX_LOCATIONS]]
        findings = []
        for label, hits in sorted(per_owner.items()):
            dataset, column = self._identifier_owners[label]
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

    def _dataset_findings(
        self,
        ds: _DatasetIndex,
        tokens: _Tokens,
        positions: np.ndarray,
        labels: np.ndarray,
        where: str,
    ) -> list[Finding]:
        mine = ds.is_value[labels]
        token_pos, hit_vids = positions[mine], labels[mine]
        if len(token_pos) == 0:
            return []
        hit_units = tokens.units_of(token_pos)
        findings = []
        proven, suspected = _match_records(ds, tokens, token_pos, hit_vids, hit_units)
        if proven is not None:
            findings.append(_record_message(ds, tokens, proven, where, proven=True))
            return findings  # blocked; the rest would only repeat it
        if suspected is not None:
            findings.append(_record_message(ds, tokens, suspected, where, proven=False))
        like = _record_like(ds, tokens, token_pos, hit_units)
        if like is not None:
            hits = _Hits([tokens.line_of(p) for p in like.lines], like.count)
            findings.append(
                Finding(
                    "record-like-table",
                    Verdict.REVIEW,
                    f"the {where} looks like records of dataset {ds.name!r}: {hits.count} rows "
                    f"carry {like.detail['values']}+ values each from its columns under a header "
                    f"naming {like.detail['names']} of them ({hits.where()}); no row was proven "
                    "to be a private record, but rows of a dataset (mock, perturbed, synthetic "
                    "or real) need a person's look",
                    location=f"{where} {hits.where()}",
                )
            )
        return findings


def _record_message(
    ds: _DatasetIndex, tokens: _Tokens, result: _Result, where: str, proven: bool
) -> Finding:
    hits = _Hits([tokens.line_of(p) for p in result.lines], result.count)
    best = result.detail
    if ds.qi_declared:
        coverage = "all its quasi-identifier columns among them"
    elif best["full"]:
        coverage = "all of its non-missing columns"
    else:
        coverage = "a subset of its columns"
    strength = (
        f"{best['bits']:.0f} bits of evidence where {best['needed']:.0f} rule out chance"
        if best["full"]
        else f"{best['bits']:.0f} bits of evidence from its high-cardinality columns where "
        f"{best['needed']:.0f} rule out chance"
    )
    lines = _plural(hits.count, "line")
    capped = "at least " if best.get("capped") else ""
    if proven:
        return Finding(
            "leak-record",
            Verdict.BLOCK,
            f"private records of dataset {ds.name!r} in {capped}{lines} of the {where} "
            f"({hits.where()}): the strongest matches one private row on {best['columns']} of "
            f"{len(ds.columns)} columns ({coverage}) with {strength}",
            location=f"{where} {hits.where()}",
        )
    return Finding(
        "leak-record-suspected",
        Verdict.REVIEW,
        f"possible private records of dataset {ds.name!r} in {lines} of the {where} "
        f"({hits.where()}): the strongest matches one private row on {best['columns']} of "
        f"{len(ds.columns)} columns ({coverage}), {strength}; too little to block, "
        "worth a reviewer's look",
        location=f"{where} {hits.where()}",
    )


def _identifier_worth_indexing(canonical: str) -> bool:
    """See the module docstring: too short, small numbers and common words are not indexed."""
    if len(canonical.replace(" ", "")) < MIN_IDENTIFIER_CHARS:
        return False
    if canonical in COMMON_WORDS:
        return False
    try:
        number = float(canonical)
    except ValueError:
        return True
    return not math.isfinite(number) or abs(number) >= MIN_IDENTIFIER_NUMBER


def _build_dataset(
    name: str,
    columns: list[str],
    vid_columns: list[np.ndarray],
    levels: list[int],
    policy: DatasetPolicy,
    n_vids: int,
) -> _DatasetIndex:
    n_cols = len(columns)
    n_rows = len(vid_columns[0]) if vid_columns else 0
    qi = set(policy.quasi_identifiers) - set(policy.identifiers)
    qi_declared = bool(qi)
    qi_mask = np.array([(c in qi) if qi_declared else True for c in columns], dtype=bool)
    # Column by column (contiguous arrays, nothing N x C but the packed rows): which
    # occurrence of its value each cell is, then how many rows hold value v at least
    # k + 1 times, counted over the (v, k) cells.
    cols = [np.asarray(c, dtype=np.int32) for c in vid_columns]
    valid_cols = [c >= 0 for c in cols]

    def occurrences(c: int) -> np.ndarray:
        rank = np.zeros(n_rows, dtype=np.int64)
        for d in range(c):
            rank += cols[d] == cols[c]
        return np.where(valid_cols[c], cols[c].astype(np.int64) * n_cols + rank, -1)

    dense = n_vids * n_cols <= 1 << 26
    if dense:
        counts = np.zeros(n_vids * n_cols, dtype=np.int64)
        for c in range(n_cols):
            occ = occurrences(c)
            counts += np.bincount(occ[occ >= 0], minlength=n_vids * n_cols)
        occ_keys = np.flatnonzero(counts).astype(np.int64)
        occ_counts = counts[occ_keys]
        bits_table: np.ndarray | None = np.log2((n_rows + 1) / (counts + 1)).astype(np.float32)
        del counts
    else:
        bits_table = None
        every = np.concatenate([occ[occ >= 0] for occ in map(occurrences, range(n_cols))])
        occ_keys, occ_counts = np.unique(every, return_counts=True)
        del every
    occ_bits = np.log2((n_rows + 1) / (occ_counts + 1)).astype(np.float32)

    # Per row: evidence bounds, and its ANCHOR_VALUES rarest values (kept incrementally).
    distinctive = np.array([n > CODE_LEVELS for n in levels], dtype=bool)
    row_full_max = np.zeros(n_rows, dtype=np.float32)
    row_partial_max = np.zeros(n_rows, dtype=np.float32)
    row_needed = np.zeros(n_rows, dtype=np.int16)
    n_anchor = min(ANCHOR_VALUES, n_cols)
    top_bits = np.full((n_rows, n_anchor), -1.0, dtype=np.float32)
    top_vids = np.full((n_rows, n_anchor), -1, dtype=np.int32)
    every_row = np.arange(n_rows)
    for c in range(n_cols):
        occ = occurrences(c)
        safe = np.maximum(occ, 0)
        if dense:
            bits = bits_table[safe]
        else:
            bits = occ_bits[np.minimum(np.searchsorted(occ_keys, safe), len(occ_keys) - 1)]
        bits = np.where(occ >= 0, bits, np.float32(-1.0))
        known = np.maximum(bits, 0.0)
        row_full_max += known
        if distinctive[c]:
            row_partial_max += known
        if qi_mask[c]:
            row_needed += valid_cols[c]
        slot = top_bits.argmin(axis=1)
        better = np.flatnonzero(bits > top_bits[every_row, slot])
        top_bits[better, slot[better]] = bits[better]
        top_vids[better, slot[better]] = cols[c][better]
    del every_row
    rows = _pack_rows(cols, valid_cols, n_vids)

    is_value = np.zeros(n_vids, dtype=bool)
    lengths = np.zeros(n_rows, dtype=np.int16)
    sums = np.zeros(n_rows, dtype=np.uint64)
    row_sig = np.zeros(n_rows, dtype=np.uint64)
    for c, (col, ok) in enumerate(zip(cols, valid_cols, strict=True)):
        is_value[col[ok]] = True
        lengths += ok
        value_hash = np.where(ok, _value_hash(col), np.uint64(0))
        sums += value_hash
        if qi_mask[c]:
            row_sig |= np.where(ok, _signature(value_hash), np.uint64(0))
    exact = _exact_key(sums, lengths)
    del sums
    has = np.flatnonzero(lengths > 0)
    exact = exact[has]
    order = np.argsort(exact)
    exact_keys = exact[order]
    exact_rows = has.astype(np.int32)[order]
    del exact, order
    cols.clear()
    valid_cols.clear()
    vid_columns.clear()  # the caller's copies: the packed rows hold it all now

    is_anchor = np.zeros(n_vids, dtype=bool)
    vid_partial_max = np.zeros(n_vids, dtype=np.float32)
    anchor_keys = np.zeros(0, dtype=np.uint32)
    anchor_offsets = np.zeros(1, dtype=np.int64)
    anchor_rows = np.zeros(0, dtype=np.int32)
    key_min_needed = np.zeros(0, dtype=np.int16)
    key_full_max = np.zeros(0, dtype=np.float32)
    key_partial_max = np.zeros(0, dtype=np.float32)
    if n_anchor >= 2:
        top_ok = top_bits >= 0
        del top_bits
        pairs = [(i, j) for i in range(n_anchor) for j in range(i + 1, n_anchor)]
        ok_pairs = [top_ok[:, i] & top_ok[:, j] for i, j in pairs]
        # (key, row) packed in 64 bits and sorted in place: one array, no argsort.
        both = np.empty(sum(int(ok.sum()) for ok in ok_pairs), dtype=np.uint64)
        at = 0
        for (i, j), ok in zip(pairs, ok_pairs, strict=True):
            key = _pair_keys(top_vids[ok, i], top_vids[ok, j]).astype(np.uint64)
            both[at : at + len(key)] = (key << _S32) | np.flatnonzero(ok).astype(np.uint64)
            at += len(key)
        del ok_pairs
        both.sort()
        keys = (both >> _S32).astype(np.uint32)
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
        # Per key, the best its rows could do, so hopeless keys are never expanded.
        if len(anchor_rows):
            key_starts = anchor_offsets[:-1]
            key_min_needed = np.minimum.reduceat(row_needed[anchor_rows], key_starts)
            key_full_max = np.maximum.reduceat(row_full_max[anchor_rows], key_starts)
            key_partial_max = np.maximum.reduceat(row_partial_max[anchor_rows], key_starts)
        del both, keys, change, starts, sizes, kept
        anchored = np.zeros(n_rows, dtype=bool)
        anchored[anchor_rows] = True
        used = top_ok & anchored[:, None]
        used_vids = top_vids[used]
        is_anchor[used_vids] = True
        # Per value: the most a partial match through it could show (max over its rows).
        part = np.broadcast_to(row_partial_max[:, None], used.shape)[used]
        np.maximum.at(vid_partial_max, used_vids, part)
        del used, used_vids, part, anchored, top_ok
    del top_vids

    name_keys, name_lengths = _hash_strings([" ".join(str(c).casefold().split()) for c in columns])
    window = min(n_cols + WINDOW_SLACK, MAX_WINDOW)
    log_n = math.log2(max(n_rows, 1))
    return _DatasetIndex(
        name=name,
        columns=columns,
        qi_mask=qi_mask,
        distinctive=distinctive,
        qi_declared=qi_declared,
        n_rows=n_rows,
        rows=rows,
        occ_keys=occ_keys,
        occ_bits=occ_bits,
        bits_table=bits_table if dense and n_vids * n_cols <= 1 << 22 else None,
        anchor_keys=anchor_keys,
        anchor_offsets=anchor_offsets,
        anchor_rows=anchor_rows,
        key_min_needed=key_min_needed,
        key_full_max=key_full_max,
        key_partial_max=key_partial_max,
        is_value=is_value,
        is_anchor=is_anchor,
        row_needed=row_needed,
        row_sig=row_sig,
        row_full_max=row_full_max,
        row_partial_max=row_partial_max,
        vid_partial_max=vid_partial_max,
        min_needed=int(row_needed[row_needed > 0].min()) if (row_needed > 0).any() else 0,
        exact_keys=exact_keys,
        exact_rows=exact_rows,
        exact_lengths=np.unique(lengths[has]).astype(np.int64),
        exact_bloom=_Bloom(exact_keys),
        column_names=_KeyTable.build(
            name_keys[name_lengths > 0],
            np.flatnonzero(name_lengths > 0),
            name_lengths[name_lengths > 0],
        ),
        window=window,
        log_rows=log_n,
    )


def _pack_rows(cols: list[np.ndarray], valid: list[np.ndarray], n_vids: int) -> np.ndarray:
    """Row-major value ids, in 16 bits when they fit (null = 65535), else 32 (null = -1)."""
    small = n_vids < _NULL16
    rows = np.empty((len(cols[0]), len(cols)), dtype=np.uint16 if small else np.int32)
    for c, (col, ok) in enumerate(zip(cols, valid, strict=True)):
        rows[:, c] = np.where(ok, col, _NULL16 if small else -1)
    return rows


def _unpack(packed: np.ndarray) -> np.ndarray:
    """Value ids as int64, -1 for null (undoing the uint16 packing)."""
    out = packed.astype(np.int64)
    if packed.dtype == np.uint16:
        out[out == _NULL16] = -1
    return out


def _row_vids(ds: _DatasetIndex, rows: np.ndarray) -> np.ndarray:
    """Value ids of some private rows as int64, -1 for null."""
    return _unpack(ds.rows[rows])


@dataclass
class _Result:
    count: int
    lines: list[int]  # token indices (converted to line numbers by the caller)
    detail: dict[str, Any]


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


def _thresholds(ds: _DatasetIndex, n_hits: int) -> tuple[float, float]:
    """Bits a full and a partial match need in an output holding ``n_hits`` values of ``ds``.

    Expected chance matches grow with the private rows compared (``N``) and with
    the windows of the output they are compared with (about one per ``C`` values),
    so both enter as ``log2`` terms: a Bonferroni bound with a margin.
    """
    tests = math.log2(max(1.0, n_hits / max(1, len(ds.columns))))
    full = max(FULL_MIN_BITS, ds.log_rows + tests + FULL_MARGIN_BITS)
    partial = max(PARTIAL_MIN_BITS, ds.log_rows + tests + PARTIAL_MARGIN_BITS)
    return full, partial


@dataclass
class _Evidence:
    """Per verified candidate: the strongest dense full match and partial match (bits)."""

    full: np.ndarray  # bits of the best dense window covering every needed column, or -1
    partial: np.ndarray  # bits (high-cardinality columns) of the best dense partial match, or -1
    columns: np.ndarray  # columns matched by the stronger of the two


def _verify(
    ds: _DatasetIndex,
    win: np.ndarray,
    win_sig: np.ndarray,
    vals: np.ndarray,
    full_t: float,
    partial_t: float,
) -> _Evidence:
    """Measure the evidence that windows ``win`` (K, W) hold private rows ``vals`` (K, C).

    First on the window's 64-bit signature, then on the whole window (upper
    bounds, cheap); candidates below ``full_t`` and ``partial_t`` there stop.
    The rest are measured on every
    *dense* sub-window: one in which at most SPAN_SLACK values are not values of
    the row. A printed record is dense; a row whose values are scattered over
    an aggregate table is not.
    """
    n_cand = len(vals)
    ranks = _occurrence_ranks(vals)
    nonnull = vals >= 0
    cell_bits = _cell_bits(ds, vals, ranks)
    qi_needed = nonnull & ds.qi_mask[None, :]
    rare = ds.distinctive[None, :] & (cell_bits >= RARE_BITS)
    distinct_bits = cell_bits * ds.distinctive[None, :]

    def measure(present: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        covers = (present | ~qi_needed).all(axis=1) & qi_needed.any(axis=1)
        full = np.where(covers, (present * cell_bits).sum(axis=1), -1.0)
        # A partial match picks its own columns, and codes agree by chance all the
        # time: only values of high-cardinality columns count, two of them rare.
        n_present = present.sum(axis=1)
        partial_ok = (n_present >= PARTIAL_MIN_COLUMNS) & (
            (present & rare).sum(axis=1) >= PARTIAL_MIN_RARE
        )
        if ds.qi_declared:
            partial_ok[:] = False  # the policy says which columns identify a record
        partial = np.where(partial_ok, (present * distinct_bits).sum(axis=1), -1.0)
        return full, partial, n_present

    out = _Evidence(
        full=np.full(n_cand, -1.0),
        partial=np.full(n_cand, -1.0),
        columns=np.zeros(n_cand, dtype=np.int64),
    )
    maybe = (win_sig[:, None] & _signature(_value_hash(np.maximum(vals, 0)))) != 0
    full, partial, _ = measure(maybe & nonnull)
    hopeful = np.flatnonzero((full >= full_t) | (partial >= partial_t))
    if len(hopeful) == 0:
        return out
    win, vals, ranks, nonnull = win[hopeful], vals[hopeful], ranks[hopeful], nonnull[hopeful]
    cell_bits, qi_needed = cell_bits[hopeful], qi_needed[hopeful]
    rare, distinct_bits = rare[hopeful], distinct_bits[hopeful]
    eq = vals[:, :, None] == win[:, None, :]  # (K, C, W)
    full, partial, n_present = measure((eq.sum(axis=2) > ranks) & nonnull)
    survivors = np.flatnonzero((full >= full_t) | (partial >= partial_t))
    if len(survivors) == 0:
        return out
    eq, ranks, nonnull, qi_needed = (
        eq[survivors],
        ranks[survivors],
        nonnull[survivors],
        qi_needed[survivors],
    )
    cell_bits, rare, distinct_bits = cell_bits[survivors], rare[survivors], distinct_bits[survivors]
    width = eq.shape[2]
    cum = np.zeros((*eq.shape[:2], width + 1), dtype=np.int16)
    np.cumsum(eq, axis=2, out=cum[:, :, 1:])
    rank3 = ranks[:, :, None]
    best_full = np.full(len(survivors), -1.0)
    best_partial = np.full(len(survivors), -1.0)
    best_cols = np.zeros(len(survivors), dtype=np.int64)
    for start in range(width):
        counts = cum[:, :, start + 1 :] - cum[:, :, start : start + 1]  # (K, C, ends)
        matched = ((counts > rank3) & nonnull[:, :, None]).sum(axis=1)  # (K, ends)
        lengths = np.arange(1, width - start + 1)
        # Values of the window that are not the row's never decrease as it grows,
        # so the longest dense window from here ends where the slack runs out.
        end = (lengths[None, :] - matched <= SPAN_SLACK).sum(axis=1) - 1
        present = np.take_along_axis(counts, end[:, None, None], axis=2)[:, :, 0] > ranks
        full, partial, n_present = measure(present & nonnull)
        stronger = (full > best_full) | (partial > best_partial)
        best_cols = np.where(stronger, n_present, best_cols)
        best_full = np.maximum(best_full, full)
        best_partial = np.maximum(best_partial, partial)
    chosen = hopeful[survivors]
    out.full[chosen] = best_full
    out.partial[chosen] = best_partial
    out.columns[chosen] = best_cols
    return out


def _cell_bits(ds: _DatasetIndex, vals: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Bits of each cell of some private rows (0 for null)."""
    nonnull = vals >= 0
    occ = np.where(nonnull, vals * len(ds.columns) + ranks, 0)
    if ds.bits_table is not None:
        return np.where(nonnull, ds.bits_table[occ], np.float32(0.0))
    at = np.minimum(np.searchsorted(ds.occ_keys, occ), len(ds.occ_keys) - 1)
    return np.where(nonnull & (ds.occ_keys[at] == occ), ds.occ_bits[at], np.float32(0.0))


def _match_records(
    ds: _DatasetIndex,
    tokens: _Tokens,
    token_pos: np.ndarray,
    hit_vids: np.ndarray,
    hit_units: np.ndarray,
) -> tuple[_Result | None, _Result | None]:
    """Find candidate (window, private row) pairs through the anchors and apply the record rule.

    See "Candidates" in the module docstring. Returns the proven records and,
    separately, the suspected ones (within SUSPECT_MARGIN_BITS of the proof);
    one hit per unit of the output each.
    """
    n_hits = len(hit_vids)
    full_t, partial_t = _thresholds(ds, n_hits)
    proven: list[tuple[np.ndarray, _Evidence]] = []
    suspected: list[tuple[np.ndarray, _Evidence]] = []
    seg_start, seg_end = _segments(hit_units)
    for starts, ev in _exact_matches(ds, hit_vids, seg_end):
        proven.append((starts[ev.full >= full_t], _take(ev, ev.full >= full_t)))
        near = (ev.full < full_t) & (ev.full >= full_t - SUSPECT_MARGIN_BITS)
        suspected.append((starts[near], _take(ev, near)))
    n_proven = sum(len(lo) for lo, _ in proven)
    if len(ds.anchor_keys) == 0 or n_hits < 2 or n_proven >= MAX_CONFIRMED:
        return (
            _summarise(proven, token_pos, hit_units, full_t, partial_t),
            _summarise(suspected, token_pos, hit_units, full_t, partial_t),
        )
    window = ds.window
    # Which values may start a pair: a full match needs a unit with as many values
    # as the smallest row has; a partial one needs four and a row that can still
    # reach the (output-size dependent) threshold through this value.
    seg_len = seg_end - seg_start
    usable = ds.is_anchor[hit_vids] & (seg_len >= max(ds.min_needed, 2))
    full_floor = full_t - SUSPECT_MARGIN_BITS
    partial_floor = partial_t - SUSPECT_MARGIN_BITS
    if not ds.qi_declared:
        usable |= (
            ds.is_anchor[hit_vids]
            & (seg_len >= PARTIAL_MIN_COLUMNS)
            & (ds.vid_partial_max[hit_vids] >= partial_floor)
        )
    comp = np.flatnonzero(usable)
    # For each usable value: how many more usable values its unit holds after it.
    after = np.zeros(len(comp), dtype=np.int64)
    if len(comp):
        comp_seg = seg_start[comp]
        new_run = np.ones(len(comp), dtype=bool)
        new_run[1:] = comp_seg[1:] != comp_seg[:-1]
        run_start = np.flatnonzero(new_run)
        run_end = np.append(run_start[1:], len(comp))
        after = np.repeat(run_end, run_end - run_start) - np.arange(len(comp)) - 1
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
        keys = _pair_keys(hit_vids[i], hit_vids[j])
        at = np.minimum(np.searchsorted(ds.anchor_keys, keys), len(ds.anchor_keys) - 1)
        found = ds.anchor_keys[at] == keys
        if not found.any():
            continue
        i, j, at = i[found], j[found], at[found]
        # Keys none of whose rows could reach a threshold here are not expanded.
        room = seg_end[i] - seg_start[i]
        feasible = (room >= ds.key_min_needed[at]) & (ds.key_full_max[at] >= full_floor)
        if not ds.qi_declared:
            feasible |= ds.key_partial_max[at] >= partial_floor
        i, j, at = i[feasible], j[feasible], at[feasible]
        lo, hi = ds.anchor_offsets[at], ds.anchor_offsets[at + 1]
        counts = hi - lo
        rep_i = np.repeat(i, counts)
        rep_j = np.repeat(j, counts)
        offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        cand_row.append(ds.anchor_rows[np.repeat(lo, counts) + offsets])
        cand_lo.append(np.maximum(seg_start[rep_i], rep_j - window))
        cand_hi.append(np.minimum(seg_end[rep_i], rep_i + window + 1))
    if not cand_row:
        return (
            _summarise(proven, token_pos, hit_units, full_t, partial_t),
            _summarise(suspected, token_pos, hit_units, full_t, partial_t),
        )
    lo_all = np.concatenate(cand_lo)
    hi_all = np.concatenate(cand_hi)
    row_all = np.concatenate(cand_row).astype(np.int64)
    _, first = np.unique(lo_all * (ds.n_rows + 1) + row_all, return_index=True)
    lo_all, hi_all, row_all = lo_all[first], hi_all[first], row_all[first]
    # Cheap upper bounds first: a full match needs as many values as the row has, a
    # partial one four; neither can beat the bits the row has at all.
    length = hi_all - lo_all
    hopeful = (length >= ds.row_needed[row_all]) & (ds.row_full_max[row_all] >= full_floor)
    if not ds.qi_declared:
        hopeful |= (length >= PARTIAL_MIN_COLUMNS) & (ds.row_partial_max[row_all] >= partial_floor)
    lo_all, hi_all, row_all = lo_all[hopeful], hi_all[hopeful], row_all[hopeful]
    # One bit per value: a 64-bit signature of each window, to test "has all of the
    # row's needed values" before comparing any values.
    sig_all = _window_signatures(_signature(_value_hash(hit_vids)), lo_all, hi_all)
    hopeful = (ds.row_sig[row_all] & ~sig_all) == 0
    if not ds.qi_declared:
        hopeful |= (hi_all - lo_all >= PARTIAL_MIN_COLUMNS) & (
            ds.row_partial_max[row_all] >= partial_floor
        )
    lo_all, hi_all, row_all, sig_all = (
        lo_all[hopeful],
        hi_all[hopeful],
        row_all[hopeful],
        sig_all[hopeful],
    )

    padded = np.append(hit_vids, -2)
    # Verify in batches of similar window length, each as wide as its longest window.
    by_length = np.argsort(hi_all - lo_all, kind="stable")
    lo_all, hi_all, row_all = lo_all[by_length], hi_all[by_length], row_all[by_length]
    sig_all = sig_all[by_length]
    for b in range(0, len(row_all), VERIFY_BATCH):
        lo, hi = lo_all[b : b + VERIFY_BATCH], hi_all[b : b + VERIFY_BATCH]
        span = np.arange(int((hi - lo).max()))
        idx = lo[:, None] + span[None, :]
        win = padded[np.where(idx < hi[:, None], idx, n_hits)]
        rows = _row_vids(ds, row_all[b : b + VERIFY_BATCH])
        ev = _verify(
            ds,
            win,
            sig_all[b : b + VERIFY_BATCH],
            rows,
            full_t - SUSPECT_MARGIN_BITS,
            partial_t - SUSPECT_MARGIN_BITS,
        )
        leak = (ev.full >= full_t) | (ev.partial >= partial_t)
        suspect = ~leak & (
            (ev.full >= full_t - SUSPECT_MARGIN_BITS)
            | (ev.partial >= partial_t - SUSPECT_MARGIN_BITS)
        )
        if leak.any():
            proven.append((lo[leak], _take(ev, leak)))
            n_proven += int(leak.sum())
        if suspect.any():
            suspected.append((lo[suspect], _take(ev, suspect)))
        if n_proven >= MAX_CONFIRMED:
            break  # proven many times over; stop spending time on it
    result = _summarise(proven, token_pos, hit_units, full_t, partial_t)
    if result is not None and n_proven >= MAX_CONFIRMED:
        result.detail["capped"] = True
    return result, _summarise(suspected, token_pos, hit_units, full_t, partial_t)


def _exact_matches(
    ds: _DatasetIndex, hit_vids: np.ndarray, seg_end: np.ndarray
) -> Iterator[tuple[np.ndarray, _Evidence]]:
    """Runs of exactly a private row's non-null values, in any order, inside one unit.

    The multiset hash of a run of ``k`` consecutive values is a difference of
    prefix sums, so this is one pass per distinct ``k`` whatever the number of
    private rows.
    """
    if len(ds.exact_keys) == 0:
        return
    prefix = np.zeros(len(hit_vids) + 1, dtype=np.uint64)
    np.cumsum(_value_hash(hit_vids), out=prefix[1:])
    room = seg_end - np.arange(len(hit_vids))  # values left in the unit from here
    for k in ds.exact_lengths:
        k = int(k)
        at_start = np.flatnonzero(room >= k)
        if len(at_start) == 0:
            continue
        keys = _exact_key(prefix[at_start + k] - prefix[at_start], np.full(len(at_start), k))
        maybe = np.flatnonzero(ds.exact_bloom.maybe(keys))
        if len(maybe) == 0:
            continue
        at = np.minimum(np.searchsorted(ds.exact_keys, keys[maybe]), len(ds.exact_keys) - 1)
        found = ds.exact_keys[at] == keys[maybe]
        if not found.any():
            continue
        starts, rows = at_start[maybe[found]], ds.exact_rows[at[found]]
        vals = _row_vids(ds, rows)
        nonnull = vals >= 0
        bits = _cell_bits(ds, vals, _occurrence_ranks(vals)).sum(axis=1)
        covers = (nonnull & ds.qi_mask[None, :]).any(axis=1)
        yield (
            starts,
            _Evidence(
                full=np.where(covers, bits, -1.0),
                partial=np.full(len(rows), -1.0),
                columns=nonnull.sum(axis=1),
            ),
        )


def _take(ev: _Evidence, mask: np.ndarray) -> _Evidence:
    return _Evidence(ev.full[mask], ev.partial[mask], ev.columns[mask])


def _summarise(
    found: list[tuple[np.ndarray, _Evidence]],
    token_pos: np.ndarray,
    hit_units: np.ndarray,
    full_t: float,
    partial_t: float,
) -> _Result | None:
    """One hit per unit of the output; the strongest match described for the message."""
    found = [(lo, ev) for lo, ev in found if len(lo)]
    if not found:
        return None
    starts = np.concatenate([lo for lo, _ in found])
    full = np.concatenate([ev.full for _, ev in found])
    partial = np.concatenate([ev.partial for _, ev in found])
    columns = np.concatenate([ev.columns for _, ev in found])
    # Rank by how far past its own threshold each match is.
    margin = np.maximum(full - full_t, partial - partial_t)
    top = int(np.argmax(margin))
    is_full = bool(full[top] - full_t >= partial[top] - partial_t)
    units = hit_units[starts]
    order = np.argsort(starts, kind="stable")
    _, per_unit = np.unique(units[order], return_index=True)
    first = starts[order][per_unit]
    return _Result(
        count=len(first),
        lines=[int(p) for p in token_pos[first[:MAX_LOCATIONS]]],
        detail={
            "bits": float(full[top] if is_full else partial[top]),
            "columns": int(columns[top]),
            "needed": full_t if is_full else partial_t,
            "full": is_full,
        },
    )


_STAT_TABLE: _KeyTable | None = None


def _stat_table() -> _KeyTable:
    global _STAT_TABLE
    if _STAT_TABLE is None:
        labels = sorted(STAT_LABELS)
        keys, lengths = _hash_strings(labels)
        _STAT_TABLE = _KeyTable.build(keys, np.arange(len(labels)), lengths)
    return _STAT_TABLE


def _record_like(
    ds: _DatasetIndex, tokens: _Tokens, token_pos: np.ndarray, hit_units: np.ndarray
) -> _Result | None:
    n_cols = len(ds.columns)
    need_values = min(n_cols, RECORD_LIKE_MIN_VALUES)
    n_units = len(tokens.boundaries) + 1
    per_unit = np.bincount(hit_units, minlength=n_units)
    if int((per_unit >= need_values).sum()) < RECORD_LIKE_MIN_ROWS:
        return None
    # Count numbers per candidate unit from a prefix sum over the tokens.
    heads = tokens.first_tokens()
    ends = np.append(heads[1:], len(tokens))
    numeric_prefix = np.zeros(len(tokens) + 1, dtype=np.int64)
    np.cumsum(tokens.numeric(), out=numeric_prefix[1:])
    candidates = np.flatnonzero(per_unit >= need_values)
    numbers = numeric_prefix[ends[candidates]] - numeric_prefix[heads[candidates]]
    stat_label = np.zeros(len(candidates), dtype=bool)
    stat_label[_stat_table().find(tokens.hashes[heads[candidates]])[0]] = True
    hits = per_unit[candidates]
    like = candidates[(hits >= RECORD_LIKE_FRACTION * np.maximum(numbers, hits)) & ~stat_label]
    like_units = like
    if len(like_units) < RECORD_LIKE_MIN_ROWS:
        return None
    names = _names_mentioned(ds, tokens)
    if names < min(n_cols, RECORD_LIKE_MIN_NAMES):
        return None
    first_hit = np.searchsorted(hit_units, like_units[:MAX_LOCATIONS])
    return _Result(
        count=len(like_units),
        lines=[int(p) for p in token_pos[first_hit]],
        detail={"values": need_values, "names": names},
    )


def _names_mentioned(ds: _DatasetIndex, tokens: _Tokens) -> int:
    found: set[int] = set()
    for _, _, labels in ds.column_names.lookup(tokens):
        found.update(int(label) for label in np.unique(labels))
    return len(found)
