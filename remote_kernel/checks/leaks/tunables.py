"""Tunables of the leak checks and the word lists they use.

The package docstring (:mod:`remote_kernel.checks.leaks`) says what each one
means and how the margins were set.
"""

from __future__ import annotations

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
#: Key tables up to this size also get a direct-mapped array (see KeyTable).
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
