"""Values in a kernel: a cell's last value as a payload, pushes, and released objects.

The kernel's half of :mod:`remote_kernel.protocol.values`. Encoding runs in a
kernel (both the researcher's and the one at the datasite, which runs the
researcher's code); pickles are made here and loaded here, only in a kernel and
only when asked (``PickledValue.load(trust=True)``, pushes received by the
datasite kernel). Nothing in this module runs in the datasite server.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

from remote_kernel.protocol.model_values import (
    ModelDecodeError,
    build_model,
    describe_model,
    is_estimator,
    public_path,
    read_model,
    supported_list,
)
from remote_kernel.protocol.values import (
    DEFAULT_VALUE_LIMIT,
    VALUE_LIMIT_ENV,
    VALUE_MIME,
    canonical_arrow,
    canonical_frame,
    check_payload,
    json_safe,
    read_ndarray,
    read_table,
    type_name,
)


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
    if is_estimator(obj):
        return _encode_model(obj, base)
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        obj = obj.item()
    if json_safe(obj):
        return {**base, "kind": "json", "data": obj}
    try:
        if isinstance(obj, pd.DataFrame):
            canonical = canonical_frame(obj)
            if canonical is not None:
                raw, decoded = canonical
                b64 = base64.b64encode(raw).decode()
                return {**base, "kind": "dataframe", "shape": list(decoded.shape), "arrow": b64}
        elif isinstance(obj, pd.Series):
            name = obj.name if isinstance(obj.name, str) else "__series__"
            canonical = canonical_arrow(obj.to_frame(name=name))
            if canonical is not None:
                raw, decoded = canonical
                return {
                    **base,
                    "kind": "series",
                    "shape": [len(decoded)],
                    "name": obj.name if json_safe(obj.name) else None,
                    "column": name,
                    "arrow": base64.b64encode(raw).decode(),
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


def _encode_model(model: Any, base: dict[str, Any]) -> dict[str, Any] | None:
    """A fitted estimator as data (never a pickle); None while it is not fitted.

    A class outside the allow-list, or one whose fitted state the allow-list's shapes
    do not cover (a multi-output tree), travels as a description only: its class and
    the names of its fitted attributes, which the datasite blocks with a reason.
    """
    if getattr(model, "n_features_in_", None) is None:
        return None
    try:
        payload = describe_model(model)
        if payload["supported"]:
            read_model(json.loads(json.dumps(payload)))
    except Exception:  # any failure: describe the model, carry none of its numbers
        names = sorted(k for k in vars(model) if k.endswith("_") or k.startswith("_fit"))
        payload = {"kind": "model", "class": public_path(type(model)), "supported": False,
                   "attributes": [n[:100] for n in names[:100]]}  # fmt: skip
    return {**base, **payload}


def _display_only(obj: Any) -> bool:
    """Figures, axes and display objects: their picture is the output, not an object."""
    module = type(obj).__module__ or ""
    return module.startswith(("matplotlib", "IPython", "ipywidgets", "plotly", "PIL"))


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
    payload = check_payload(payload)
    kind = payload["kind"]
    if kind == "json":
        return payload.get("data")
    if kind == "pickle":
        data = base64.b64decode(str(payload["pickle"]))
        return PickledValue(str(payload.get("type", "object")), data, site)
    if kind == "ndarray":
        return read_ndarray(payload)
    if kind == "model":
        return decode_model(payload)
    frame = read_table(payload)
    if kind == "series":
        series = frame[payload.get("column", frame.columns[0])]
        series.name = payload.get("name")
        return series
    return frame


def decode_model(payload: dict[str, Any]) -> Any:
    """A working estimator rebuilt from a released model payload (no pickle is loaded)."""
    if payload.get("supported") is not True:
        raise ModelDecodeError(
            f"a fitted {str(payload.get('class', '?'))[:200]} cannot be carried as data; "
            f"the supported models are: {supported_list()}"
        )
    return build_model(read_model(payload))


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
    _attach_models_to_display(shell)


def _attach_models_to_display(shell: Any) -> None:
    """``display(model)`` carries the model as data too, so the datasite checks it like a
    cell's value (a k-NN shown with ``display`` is blocked the same way)."""
    formatter = shell.display_formatter
    original = formatter.format

    def format(obj: Any, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        data, metadata = original(obj, *args, **kwargs)
        if data and is_estimator(obj):
            try:
                payload = encode_value(obj)
            except Exception:
                payload = None
            if payload is not None:
                data = {**data, VALUE_MIME: payload}
        return data, metadata

    formatter.format = format


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


def fetch_pushes(request_id: int, names: list[str], namespace: dict[str, Any]) -> list[str]:
    """Load pushed objects in a kernel on another machine (a gateway's): it shares no
    files with the datasite, so it asks the kernel API for each one's bytes."""
    import cloudpickle

    from remote_kernel.researcher.kernel_api import kernel_api_client

    loaded = []
    with kernel_api_client() as http:
        for name in names:
            if not name.isidentifier():
                raise NameError(f"cannot push to {name!r}: not a Python name")
            response = http.get(f"/kernel/pushes/{request_id}/{name}")
            response.raise_for_status()
            namespace[name] = cloudpickle.loads(response.content)
            loaded.append(name)
    return loaded


def pickle_for_push(obj: Any) -> bytes:
    """The bytes of a local object for ``--push`` (researcher side)."""
    import cloudpickle

    return cloudpickle.dumps(obj)
