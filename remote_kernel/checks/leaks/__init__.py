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

Modules
-------
``index`` (:class:`PrivateIndex`: build and scan), ``extract`` (the text of an
output item, markup, wrapped pandas reprs), ``tokens`` (tokenizer and token
hashes), ``hashing`` (numpy hash primitives), ``spellings`` (value
normalisation and value ids), ``lookup`` (Bloom filter, key tables),
``dataset`` (one table's index), ``anchors`` (rows filed under pairs of rare
values), ``records`` (the record rule: candidates and summary), ``verify``
(dense-window verification), ``record_like``, ``identifiers``, ``findings``
(messages), ``tunables`` (the constants named above).
"""

from remote_kernel.checks.leaks.extract import html_to_text, item_texts, unwrap_pandas
from remote_kernel.checks.leaks.index import PrivateIndex

__all__ = ["PrivateIndex", "html_to_text", "item_texts", "unwrap_pandas"]
