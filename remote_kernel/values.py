"""Python objects that travel between kernels: a cell's last value and pushed objects.

A released value comes back to the researcher as an object, not only as its
printed form. The encoding is chosen so that the *datasite server* can check
it without running anything the researcher sent (invariant 3):

* ``json``: numbers, strings, booleans, None, and lists/dicts of those;
* ``dataframe`` / ``series``: Arrow IPC stream (exact dtypes, index, categories);
* ``ndarray``: JSON lists with dtype and shape (numeric and boolean arrays);
* ``pickle``: anything else (a fitted model), made with cloudpickle. The server
  never loads it; the filter holds it for a person, and the researcher's
  kernel loads it only when asked to (``load(trust=True)``).

Pushed objects (``%%remote --push``) go the other way, always as cloudpickle:
the datasite server stores the bytes for reviewers and hands them to the
researcher's kernel at the datasite, which is the only process that loads them.

This module is imported in kernels (both sides) and, for :func:`describe`, by
the filter; decoding in the server never touches the ``pickle`` kind.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Any

#: The mime type of a cell's last value, next to its text/plain and text/html.
VALUE_MIME = "application/vnd.remote-kernel.value+json"
#: Values larger than this (encoded) are not attached; the printed form still is.
VALUE_LIMIT_ENV = "REMOTE_KERNEL_VALUE_LIMIT"
DEFAULT_VALUE_LIMIT = 4 * 1024 * 1024
KINDS = ("json", "dataframe", "series", "ndarray", "pickle")


class ValueDecodeError(ValueError):
    """A value payload that cannot be decoded."""


# --- encoding (in a kernel) ----------------------------------------------------------------------
def _json_safe(obj: Any, depth: int = 0) -> bool:
    if depth > 50:
        return False
    if obj is None or isinstance(obj, (bool, int, str)):
        return True
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, (list, tuple)):
        return all(_json_safe(v, depth + 1) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _json_safe(v, depth + 1) for k, v in obj.items())
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


def encode_value(obj: Any, allow_pickle: bool = True) -> dict[str, Any] | None:
    """The payload for ``obj``, or None when it cannot travel (too big, unpicklable)."""
    payload = _encode(obj, allow_pickle)
    if payload is None:
        return None
    limit = int(os.environ.get(VALUE_LIMIT_ENV, DEFAULT_VALUE_LIMIT))
    if len(json.dumps(payload)) > limit:
        return None
    return payload


def _encode(obj: Any, allow_pickle: bool) -> dict[str, Any] | None:
    import numpy as np
    import pandas as pd

    base = {"type": type_name(obj)}
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        obj = obj.item()
    if _json_safe(obj):
        return {**base, "kind": "json", "data": obj}
    try:
        if isinstance(obj, pd.DataFrame):
            if not all(isinstance(c, str) for c in obj.columns):
                obj = obj.rename(columns=str)
            b64 = base64.b64encode(_arrow_bytes(obj)).decode()
            return {**base, "kind": "dataframe", "shape": list(obj.shape), "arrow": b64}
        if isinstance(obj, pd.Series):
            name = obj.name if isinstance(obj.name, str) else "__series__"
            frame = obj.to_frame(name=name)
            b64 = base64.b64encode(_arrow_bytes(frame)).decode()
            return {
                **base,
                "kind": "series",
                "shape": [len(obj)],
                "name": obj.name if _json_safe(obj.name) else None,
                "column": name,
                "arrow": b64,
            }
    except Exception:  # noqa: S110 (mixed-type object columns: fall through to pickle)
        pass
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        data = obj.tolist()
        if obj.dtype.kind != "f" or bool(np.isfinite(obj).all()):
            return {
                **base,
                "kind": "ndarray",
                "dtype": obj.dtype.str,
                "shape": list(obj.shape),
                "data": data,
            }
    if not allow_pickle or _display_only(obj):
        return None
    try:
        import cloudpickle

        pickled = cloudpickle.dumps(obj)
    except Exception:
        return None
    return {**base, "kind": "pickle", "pickle": base64.b64encode(pickled).decode()}


def _display_only(obj: Any) -> bool:
    """Figures, axes and display objects: their picture is the output, not an object."""
    module = type(obj).__module__ or ""
    return module.startswith(("matplotlib", "IPython", "ipywidgets", "plotly", "PIL"))


# --- decoding (researcher side; the server only ever uses read_table / describe) -----------------
def _check(payload: Any) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("kind") not in KINDS:
        raise ValueDecodeError("not a remote_kernel value payload")
    return payload


def read_table(payload: dict[str, Any]) -> Any:
    """A dataframe/series/ndarray payload as a DataFrame (no code from the payload runs)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    kind = _check(payload)["kind"]
    try:
        if kind in ("dataframe", "series"):
            raw = base64.b64decode(str(payload["arrow"]), validate=True)
            with pa.ipc.open_stream(pa.BufferReader(raw)) as reader:
                return reader.read_all().to_pandas()
        if kind == "ndarray":
            array = np.asarray(payload["data"], dtype=np.dtype(str(payload["dtype"])))
            if list(array.shape) != list(payload["shape"]):
                raise ValueDecodeError("ndarray shape does not match its data")
            return pd.DataFrame(array.reshape(array.shape[0], -1) if array.ndim else [array])
    except ValueDecodeError:
        raise
    except Exception as exc:
        raise ValueDecodeError(f"cannot decode the {kind} value: {exc}") from None
    raise ValueDecodeError(f"a {kind} value is not a table")


@dataclass(frozen=True)
class PickledValue:
    """A released object that only travels as a pickle; :meth:`load` it if you trust it.

    Unpickling runs code chosen by whoever made the bytes: here, code that ran in
    your own kernel at the datasite, checked by a person there. Load it only if
    you trust that kernel's code (your own cells and what they imported).
    """

    type: str
    data: bytes
    site: str = ""

    def load(self, trust: bool = False) -> Any:
        if not trust:
            raise PermissionError(
                f"this {self.type} from {self.site or 'the datasite'} travels as a pickle; "
                "loading it runs code. Call .load(trust=True) if you trust it."
            )
        import cloudpickle

        return cloudpickle.loads(self.data)

    def __repr__(self) -> str:
        where = f" from {self.site}" if self.site else ""
        return f"<PickledValue {self.type}{where}, {len(self.data)} bytes: .load(trust=True)>"


def decode_value(payload: Any, site: str = "") -> Any:
    """The object a payload carries; pickles come back as :class:`PickledValue`."""
    import numpy as np

    payload = _check(payload)
    kind = payload["kind"]
    if kind == "json":
        return payload.get("data")
    if kind == "pickle":
        data = base64.b64decode(str(payload["pickle"]))
        return PickledValue(str(payload.get("type", "object")), data, site)
    if kind == "ndarray":
        array = np.asarray(payload["data"], dtype=np.dtype(str(payload["dtype"])))
        return array.reshape(payload["shape"])
    frame = read_table(payload)
    if kind == "series":
        series = frame[payload.get("column", frame.columns[0])]
        series.name = payload.get("name")
        return series
    return frame


def describe(payload: Any) -> str:
    """One line for reviewers: what the researcher would receive as an object."""
    try:
        payload = _check(payload)
    except ValueDecodeError as exc:
        return str(exc)
    kind, label = payload["kind"], str(payload.get("type", "?"))[:200]
    if kind in ("dataframe", "series", "ndarray"):
        shape = " x ".join(str(n) for n in payload.get("shape") or [])
        return f"a {label} ({shape}) the researcher receives as an object"
    if kind == "pickle":
        size = len(str(payload.get("pickle", ""))) * 3 // 4
        return (
            f"a pickled {label} ({size} bytes): the filter cannot look inside; "
            "models can embed training rows (e.g. nearest neighbours)"
        )
    return f"a {label} value the researcher receives as an object"


# --- the datasite kernel's side ------------------------------------------------------------------
def attach_values(shell: Any) -> None:
    """Make every cell's last value travel with its execute_result (datasite kernels only).

    Only the displayhook (the cell's last expression) is changed; ``display()``
    calls are left alone. Whatever this attaches is an output like any other:
    recorded, checked and released or held by the datasite, never trusted.
    """
    hook = shell.displayhook
    original = hook.compute_format_data

    def compute_format_data(result: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        data, metadata = original(result)
        try:
            payload = encode_value(result)
        except Exception:
            payload = None
        if payload is not None and data:
            data = {**data, VALUE_MIME: payload}
        return data, metadata

    hook.compute_format_data = compute_format_data


def receive_pushes(paths: dict[str, str], namespace: dict[str, Any]) -> list[str]:
    """Load pushed objects into the kernel's namespace (runs in the datasite kernel)."""
    import cloudpickle

    loaded = []
    for name, path in paths.items():
        if not name.isidentifier():
            raise NameError(f"cannot push to {name!r}: not a Python name")
        with open(path, "rb") as handle:
            namespace[name] = cloudpickle.load(handle)
        os.unlink(path)
        loaded.append(name)
    return loaded


def pickle_for_push(obj: Any) -> bytes:
    """The bytes of a local object for ``--push`` (researcher side)."""
    import cloudpickle

    return cloudpickle.dumps(obj)
