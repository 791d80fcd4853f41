"""Value normalisation: the spellings outputs use for a private value, and value ids.

Private values are normalised when the index is built, not when text is
scanned (see the package docstring): every spelling of a value maps to the id
of its canonical spelling, shared by all datasets and columns.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.checks.leaks.lookup import KeyTable

#: A value's canonical spelling and every spelling of it to index; None for null.
Spelled = tuple[str, list[str]] | None


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
    """A date's ISO spelling and the others outputs use (``to_json`` writes epoch ms)."""
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


def column_spellings(column: pd.Series) -> tuple[np.ndarray, list[Spelled]]:
    """Factorise a column: per-row codes (-1 for null) and per-unique (canonical, spellings)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(object)
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    out: list[Spelled] = []
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


def _object_spellings(value: Any) -> Spelled:
    """Spellings of a value of an object column: numbers and dates kept as text get the
    spellings of their type too, because a CSV loaded without types still prints as one."""
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


@dataclass
class Vocabulary:
    """Value ids of the value columns of all datasets: one per canonical spelling.

    Shared across datasets so that the scan looks each token up once, whatever
    the number of tables, and then asks each dataset whether the id is one of
    its values.
    """

    ids: dict[str, int] = field(default_factory=dict)
    strings: list[str] = field(default_factory=list)  # every spelling, canonical first
    vids: list[int] = field(default_factory=list)  # the value id of each spelling

    def add_column(self, spelled: list[Spelled]) -> np.ndarray:
        """Value id per unique value of a column (from :func:`column_spellings`), and a
        trailing -1: a null's code is -1, which picks it."""
        ids, strings, vids = self.ids, self.strings, self.vids
        vid_of_unique = np.full(len(spelled) + 1, -1, dtype=np.int64)
        for u, item in enumerate(spelled):
            if item is None:
                continue
            canonical, spellings = item
            vid = ids.get(canonical)
            if vid is None:
                vid = ids[canonical] = len(ids)
                strings.append(canonical)
                vids.append(vid)
                strings.extend(spellings)
                vids.extend([vid] * len(spellings))
            vid_of_unique[u] = vid
        return vid_of_unique

    def table(self) -> KeyTable:
        """Token-sequence hashes of every spelling -> value id, for the scan."""
        return KeyTable.from_strings(self.strings, np.asarray(self.vids, dtype=np.int32))
