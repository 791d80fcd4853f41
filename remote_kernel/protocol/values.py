"""Python objects that travel between kernels: a cell's last value and pushed objects.

A released value comes back to the researcher as an object, not only as its
printed form. The encoding is chosen so that the *datasite server* can check
it without running anything the researcher sent (invariant 3):

* ``json``: numbers, strings, booleans, None, and lists/dicts of those;
* ``dataframe`` / ``series``: Arrow IPC stream (exact dtypes, index, categories);
* ``ndarray``: JSON lists with dtype and shape (numeric and boolean arrays);
* ``model``: a fitted scikit-learn estimator as data (class from an allow-list,
  parameters, fitted arrays; :mod:`remote_kernel.protocol.model_values`), never a pickle;
* ``pickle``: anything else, made with cloudpickle. The server
  never loads it; the filter holds it for a person, and the researcher's
  kernel loads it only when asked to (``load(trust=True)``).

Pushed objects (``%%remote --push``) go the other way, always as cloudpickle:
the datasite server stores the bytes for reviewers and hands them to the
researcher's kernel at the datasite, which is the only process that loads them.

This module is imported in kernels (both sides) and, for :func:`value_texts`
and :func:`describe`, by the filter; decoding in the server never touches the
``pickle`` kind.

The researcher's code runs in the kernel that makes a payload, so the datasite
treats every payload as hostile: :func:`value_texts` reads Arrow bytes only
after checking, before anything is decompressed or allocated, that they are
uncompressed, of flat column types and of bounded size, validates them fully
(a malformed Arrow buffer could crash the server), and then requires them to
be *canonical*: exactly the bytes this module's own encoder makes for the table
they decode to. Bytes that carry anything else (after the end of the stream, in
padding, under null slots) are refused, so everything the researcher could read from the
payload is in the text the filter scans: every cell at full precision, every
category, the column names and the schema's metadata (``DataFrame.attrs``).
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from typing import Any

from remote_kernel.protocol.errors import InputError
from remote_kernel.protocol.model_values import ModelDecodeError, read_description, read_model

#: The mime type of a cell's last value, next to its text/plain and text/html.
VALUE_MIME = "application/vnd.remote-kernel.value+json"
#: Values larger than this (encoded) are not attached; the printed form still is.
VALUE_LIMIT_ENV = "REMOTE_KERNEL_VALUE_LIMIT"
DEFAULT_VALUE_LIMIT = 4 * 1024 * 1024
KINDS = ("json", "dataframe", "series", "ndarray", "pickle", "model")
#: Most cells (rows x columns) of a table or array value the datasite decodes.
MAX_VALUE_CELLS = 2_000_000
#: Most characters a decoded value may render to for the leak scan (about 3 s of scanning).
MAX_VALUE_TEXT = 16 * 1024 * 1024


class ValueDecodeError(InputError):
    """A value payload that cannot be decoded."""


# --- encoding (in a kernel) ----------------------------------------------------------------------
def json_safe(obj: Any, depth: int = 0) -> bool:
    if depth > 50:
        return False
    if obj is None or isinstance(obj, (bool, int, str)):
        return True
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, (list, tuple)):
        return all(json_safe(v, depth + 1) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and json_safe(v, depth + 1) for k, v in obj.items())
    return False


def type_name(obj: Any) -> str:
    cls = type(obj)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _arrow_bytes(frame: Any) -> bytes:
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=True)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def canonical_frame(frame: Any) -> tuple[bytes, Any] | None:
    """:func:`_canonical_arrow` keeping column labels (ints from a crosstab, tuples
    from ``agg``) when Arrow brings them back unchanged; labels it cannot (mixed
    types, booleans) travel as their ``str``, as before."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyarrow warns before stringifying mixed labels
        try:
            canonical = canonical_arrow(frame)
        except (ValueError, TypeError):
            canonical = None
    if canonical is not None and canonical[1].columns.equals(frame.columns):
        return canonical
    return canonical_arrow(frame.rename(columns=str))


def canonical_arrow(frame: Any) -> tuple[bytes, Any] | None:
    """Arrow bytes for ``frame`` the datasite accepts as canonical and the frame they
    decode to (what the researcher receives), or None.

    The datasite re-encodes the table a payload decodes to and refuses bytes that
    differ (see the module docstring). A few pandas types change on the way
    through Arrow (an object column of strings comes back as ``str``), so the
    bytes of the decoded table are taken until they no longer change; a table
    that does not settle, or that the datasite would not decode (nested or
    extension columns, too large), travels as a pickle instead.
    """
    raw = _arrow_bytes(frame)
    for _ in range(3):
        decoded = _checked_arrow(raw)[1]
        again = _arrow_bytes(decoded)
        if again == raw:
            return raw, decoded
        raw = again
    return None


# --- decoding (researcher side; the server only ever uses read_table / describe) -----------------
def check_payload(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("kind") not in KINDS:
        raise ValueDecodeError("not a remote_kernel value payload")
    return payload


def read_table(payload: dict[str, Any]) -> Any:
    """A dataframe/series/ndarray payload as a DataFrame (no code from the payload runs).

    The Arrow bytes get every safety check of :func:`value_texts` (so a crafted
    payload cannot crash or exhaust the process reading it) except canonicity.
    """
    import pandas as pd

    kind = check_payload(payload)["kind"]
    try:
        if kind in ("dataframe", "series"):
            table = _arrow_table(_b64(payload.get("arrow")))
            return table.to_pandas()
        if kind == "ndarray":
            return pd.DataFrame(_rows(read_ndarray(payload)))
    except ValueDecodeError:
        raise
    except Exception as exc:
        raise ValueDecodeError(f"cannot decode the {kind} value: {_reason(exc)}") from None
    raise ValueDecodeError(f"a {kind} value is not a table")


def value_texts(payload: Any) -> list[tuple[str, str]]:
    """Everything a researcher could read from a value payload, as ``(where, text)`` for the scan.

    Runs in the datasite server, on payloads made by researcher code. A
    ``dataframe``/``series`` must be canonical Arrow (see the module docstring)
    whose shape is the one it declares; its text is the column names, every row
    with every cell at full precision, every category (used or not) and the
    schema's metadata. An ``ndarray`` must be a numeric dtype whose data has its
    declared shape. ``json`` values are JSON already, scanned with the rest of the
    output. Raises :class:`ValueDecodeError` for anything else, pickles included:
    the server never opens those.
    """
    kind = check_payload(payload)["kind"]
    try:
        if kind == "json":
            return []
        if kind in ("dataframe", "series"):
            raw = _b64(payload.get("arrow"))
            table, frame = _checked_arrow(raw)
            if _arrow_bytes(frame) != raw:
                raise ValueDecodeError(
                    "its Arrow bytes are not the datasite's own encoding of the table they "
                    "decode to, so they may carry bytes the filter would not read"
                )
            shape = list(frame.shape) if kind == "dataframe" else [len(frame)]
            if payload.get("shape") != shape:
                raise ValueDecodeError(
                    f"it declares shape {_short(payload.get('shape'))} but holds {shape}"
                )
            return _table_texts(table)
        if kind == "ndarray":
            return [("value", _array_text(read_ndarray(payload)))]
        if kind == "model":
            return model_texts(payload)
    except ValueDecodeError:
        raise
    except Exception as exc:
        raise ValueDecodeError(f"cannot decode the {kind} value: {_reason(exc)}") from None
    raise ValueDecodeError(f"the datasite does not open {kind} values")


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_short(exc)}"


def _short(value: Any, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueDecodeError("its data is not a base64 string")
    return base64.b64decode(text, validate=True)


def read_ndarray(payload: dict[str, Any]) -> Any:
    """The array of an ndarray payload: numeric dtypes only, data of exactly the declared shape."""
    import numpy as np

    dtype = np.dtype(str(payload.get("dtype")))
    if dtype.kind not in "biuf" or dtype.fields or dtype.subdtype:
        raise ValueDecodeError(f"ndarray values are numeric; {str(dtype)[:50]!r} is not")
    shape = payload.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise ValueDecodeError(f"ndarray shape {_short(shape)} is not a list of sizes")
    if math.prod(shape) > MAX_VALUE_CELLS:
        raise ValueDecodeError(f"ndarray shape {_short(shape)} is over {MAX_VALUE_CELLS} cells")
    array = np.asarray(payload.get("data"), dtype=dtype)
    if list(array.shape) != shape:
        raise ValueDecodeError("ndarray shape does not match its data")
    return array


def _rows(array: Any) -> Any:
    """An array as a 2-d table: one row per first index (a scalar is one cell)."""
    if array.ndim == 0:
        return array.reshape(1, 1)
    return array.reshape(array.shape[0], math.prod(array.shape[1:]))


def _array_text(array: Any) -> str:
    return "\n".join(" ".join(row) for row in _rows(array).astype(str).tolist())


# Arrow, read defensively: the bytes were made by researcher code.
_SCHEMA, _DICTIONARY, _RECORD_BATCH = 1, 2, 3  # MessageHeader union tags (Message.fbs)


class _Flatbuffer:
    """Just enough of a flatbuffer reader to see an Arrow message's header and compression."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def int(self, at: int, size: int, signed: bool = False) -> int:
        if at < 0 or at + size > len(self.buf):
            raise ValueDecodeError("a malformed Arrow message")
        return int.from_bytes(self.buf[at : at + size], "little", signed=signed)

    def field(self, table: int, index: int) -> int | None:
        vtable = table - self.int(table, 4, signed=True)
        if 4 + 2 * index + 2 > self.int(vtable, 2):
            return None
        offset = self.int(vtable + 4 + 2 * index, 2)
        return table + offset if offset else None

    def table(self, table: int, index: int) -> int | None:
        at = self.field(table, index)
        return None if at is None else at + self.int(at, 4)


def _check_messages(raw: bytes) -> None:
    """Refuse compressed bodies and foreign messages before anything is decompressed.

    A few kilobytes of zstd-compressed zeros decompress to gigabytes; the
    datasite's encoder never compresses, so a compressed body is refused.
    """
    import pyarrow as pa

    reader = pa.ipc.MessageReader.open_stream(pa.BufferReader(raw))
    first = True
    while True:
        try:
            message = reader.read_next_message()
        except StopIteration:
            return
        flat = _Flatbuffer(bytes(message.metadata))
        root = flat.int(0, 4)
        tag_at = flat.field(root, 1)
        tag = flat.int(tag_at, 1) if tag_at is not None else 0
        if tag not in ((_SCHEMA,) if first else (_DICTIONARY, _RECORD_BATCH)):
            raise ValueDecodeError(f"an Arrow stream with an unexpected message ({message.type})")
        first = False
        header = flat.table(root, 2)
        if header is None:
            raise ValueDecodeError("a malformed Arrow message")
        batch = flat.table(header, 1) if tag == _DICTIONARY else header
        if tag != _SCHEMA and batch is not None and flat.field(batch, 3) is not None:
            raise ValueDecodeError(
                "its Arrow body is compressed; the datasite's encoder never compresses, and a "
                "compressed body can decompress to far more than the output's size"
            )


def _flat_type(t: Any) -> bool:
    import pyarrow as pa

    return not isinstance(t, pa.BaseExtensionType) and (
        pa.types.is_null(t)
        or pa.types.is_boolean(t)
        or pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_decimal(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_temporal(t)
    )


def _check_schema(schema: Any) -> None:
    """Flat columns only (and dictionaries of them): what pandas tables encode to."""
    import pyarrow as pa

    for field in schema:
        t = field.type
        if pa.types.is_dictionary(t):
            ok = pa.types.is_integer(t.index_type) and _flat_type(t.value_type)
        else:
            ok = _flat_type(t)
        if not ok:
            raise ValueDecodeError(
                f"column {field.name[:100]!r} has Arrow type {str(t)[:100]}, which values do "
                "not use (nested, extension and view types are not decoded here)"
            )


def _arrow_table(raw: bytes) -> Any:
    """A validated Arrow table from stream bytes, read without decompressing or expanding."""
    import pyarrow as pa

    _check_messages(raw)
    with pa.ipc.open_stream(pa.BufferReader(raw)) as reader:
        table = reader.read_all()
    _check_schema(table.schema)
    cells = table.num_rows * max(1, table.num_columns)
    if cells > MAX_VALUE_CELLS:
        raise ValueDecodeError(
            f"it holds {table.num_rows} rows x {table.num_columns} columns, over the "
            f"{MAX_VALUE_CELLS} cells the datasite decodes"
        )
    # Reading trusts offsets and indices; a crafted buffer would crash to_pandas.
    table.validate(full=True)
    return table


def _checked_arrow(raw: bytes) -> tuple[Any, Any]:
    """``(table, frame)`` for Arrow bytes, once they are known to render to bounded text."""
    table = _arrow_table(raw)
    size = sum(_text_size(chunk) for column in table.columns for chunk in column.chunks)
    if size > MAX_VALUE_TEXT:
        raise ValueDecodeError(
            f"it renders to about {size // 2**20} MiB of text (a dictionary repeats its "
            f"values), over the {MAX_VALUE_TEXT // 2**20} MiB the filter reads"
        )
    return table, table.to_pandas()


def _text_size(chunk: Any) -> int:
    """An upper bound of the characters :func:`_table_texts` writes for one chunk."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t, n = chunk.type, len(chunk)
    if pa.types.is_dictionary(t):
        values = chunk.dictionary
        size = _text_size(values)
        if _is_bytes_like(values.type):
            lengths = pc.take(pc.binary_length(values), chunk.indices)
            return size + n + int(pc.sum(lengths).as_py() or 0) + 4 * n
        return size + _cell_width(values.type) * n
    if _is_bytes_like(t):
        return chunk.nbytes * 4 + n  # latin-1 bytes can be 4 characters of escaped text
    return _cell_width(t) * n


def _is_bytes_like(t: Any) -> bool:
    import pyarrow as pa

    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _cell_width(t: Any) -> int:
    import pyarrow as pa

    if pa.types.is_integer(t):
        return {8: 5, 16: 7, 32: 12, 64: 21}[t.bit_width]
    if pa.types.is_floating(t):
        return 26
    return 64  # dates, times, decimals, booleans, nulls: well under


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _cells(array: Any) -> list[str]:
    """Every cell of an Arrow array as text, at full precision (float32 at its own)."""
    import pyarrow as pa

    t = array.type
    if pa.types.is_dictionary(t):
        array = array.cast(t.value_type)
        t = t.value_type
    if pa.types.is_floating(t):
        # numpy prints each float type's shortest round-trip form (2.3, not 2.299999952316284)
        values = array.to_numpy(zero_copy_only=False).astype(str).tolist()
        if array.null_count:
            valid = array.is_valid().to_pylist()
            values = [v if ok else "null" for v, ok in zip(values, valid, strict=True)]
        return values
    return [_cell(v) for v in array.to_pylist()]


def _table_texts(table: Any) -> list[tuple[str, str]]:
    """The column names and rows; the categories; the schema's metadata (pandas index, attrs)."""
    import pyarrow as pa

    names = [str(name) for name in table.column_names]
    columns = [
        [cell for chunk in column.chunks for cell in _cells(chunk)] for column in table.columns
    ]
    rows = [" ".join(cells) for cells in zip(*columns, strict=True)]
    texts = [("value", "\n".join([" ".join(names), *rows]))]
    categories = [
        cell
        for column in table.columns
        if pa.types.is_dictionary(column.type)
        for chunk in column.chunks
        for cell in _cells(chunk.dictionary)
    ]
    if categories:
        texts.append(("value categories", "\n".join(categories)))
    metadata = [table.schema.metadata or {}] + [f.metadata or {} for f in table.schema]
    lines = [
        f"{key.decode('utf-8', 'replace')} {value.decode('utf-8', 'replace')}"
        for entries in metadata
        for key, value in entries.items()
    ]
    if lines:
        texts.append(("value metadata", "\n".join(lines)))
    return texts


def describe(payload: Any) -> str:
    """One line for reviewers: what the researcher would receive as an object."""
    try:
        payload = check_payload(payload)
    except ValueDecodeError as exc:
        return str(exc)
    kind, label = payload["kind"], str(payload.get("type", "?"))[:200]
    if kind in ("dataframe", "series", "ndarray"):
        shape = payload.get("shape")
        shape = " x ".join(str(n) for n in shape) if isinstance(shape, list) else "?"
        return f"a {label} ({shape[:200]}) the researcher receives as an object"
    if kind == "model":
        return describe_model_payload(payload)
    if kind == "pickle":
        size = len(str(payload.get("pickle", ""))) * 3 // 4
        return (
            f"a pickled {label} ({size} bytes): the filter cannot look inside; "
            "models can embed training rows (e.g. nearest neighbours)"
        )
    return f"a {label} value the researcher receives as an object"


# --- the datasite kernel's side ------------------------------------------------------------------


# --- models (the data of :mod:`remote_kernel.protocol.model_values`) ------------------------------
def model_texts(payload: dict[str, Any]) -> list[tuple[str, str]]:
    """Every parameter, label and fitted number of a model payload, for the leak scan.

    A description of an unsupported class carries no values (its class and attribute
    names only); a supported one must pass :func:`read_model` or it is refused.
    """
    try:
        if payload.get("supported") is False:
            path, names = read_description(payload)
            return [("model attributes", " ".join([path, *names]))]
        return read_model(payload).texts()
    except ModelDecodeError as exc:
        raise ValueDecodeError(f"a malformed model: {exc}") from None


def describe_model_payload(payload: dict[str, Any]) -> str:
    """One line for reviewers about a model value."""
    label = str(payload.get("class", "?"))[:200]
    if payload.get("supported") is not True:
        return f"a fitted {label}, described by its class only (not carried as data)"
    try:
        spec = read_model(payload)
    except ModelDecodeError as exc:
        return f"a malformed {label} model payload: {exc}"
    leaves = spec.leaf_sizes()
    shape = f", {len(leaves)} leaves" if leaves else ""
    return (
        f"a fitted {label} ({spec.n_features} features{shape}) the researcher receives as a "
        "working model, rebuilt from these numbers (no pickle)"
    )
