"""remote_kernel: run notebook cells next to private data; only released outputs come back.

In a notebook::

    %load_ext remote_kernel
    import remote_kernel as rk
    site = rk.connect("http://127.0.0.1:8765", token="rk_…", name="cleveland")
    df = rk.data("heart")   # the mock here, the private table at the datasite
"""

from __future__ import annotations

import importlib
from typing import Any

from remote_kernel._version import __version__

#: What ``import remote_kernel as rk`` offers, and the module each name lives in. Loaded on
#: first use (PEP 562), so that a process that imports only one side -- the datasite server
#: imports ``remote_kernel.datasite`` -- never loads the other side's modules.
_EXPORTS = {
    "AuthenticationError": "remote_kernel.protocol.errors",
    "DatasiteUnreachable": "remote_kernel.protocol.errors",
    "NoValue": "remote_kernel.protocol.errors",
    "RemoteKernelError": "remote_kernel.protocol.errors",
    "RequestRejected": "remote_kernel.protocol.errors",
    "UnknownDataset": "remote_kernel.protocol.errors",
    "QueryRejected": "remote_kernel.protocol.errors",
    "BudgetExhausted": "remote_kernel.protocol.errors",
    "Datasite": "remote_kernel.researcher.client",
    "RemoteOutput": "remote_kernel.researcher.client",
    "RemoteRequest": "remote_kernel.researcher.client",
    "connect": "remote_kernel.researcher.client",
    "budget": "remote_kernel.researcher.client",
    "disconnect": "remote_kernel.researcher.client",
    "sites": "remote_kernel.researcher.client",
    "at_datasite": "remote_kernel.researcher.data",
    "data": "remote_kernel.researcher.data",
    "RemoteResult": "remote_kernel.researcher.fanout",
    "last": "remote_kernel.researcher.fanout",
    "run_everywhere": "remote_kernel.researcher.fanout",
    "crosstab": "remote_kernel.researcher.query",
    "exact": "remote_kernel.researcher.query",
    "fit_dp": "remote_kernel.researcher.dp_models",
    "query": "remote_kernel.researcher.query",
    "PickledValue": "remote_kernel.researcher.values",
}
#: Modules offered as attributes (``rk.acro.show(...)``).
_MODULES = {"acro": "remote_kernel.researcher.acro", "secure": "remote_kernel.researcher.secure"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value: Any = importlib.import_module(_MODULES[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'remote_kernel' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "AuthenticationError",
    "BudgetExhausted",
    "Datasite",
    "DatasiteUnreachable",
    "NoValue",
    "PickledValue",
    "QueryRejected",
    "RemoteKernelError",
    "RemoteOutput",
    "RemoteRequest",
    "RemoteResult",
    "RequestRejected",
    "UnknownDataset",
    "__version__",
    "acro",
    "at_datasite",
    "budget",
    "connect",
    "crosstab",
    "data",
    "disconnect",
    "exact",
    "fit_dp",
    "last",
    "load_ipython_extension",
    "query",
    "requests",
    "run_everywhere",
    "secure",
    "sites",
]


def requests(*args: Any, **kwargs: Any) -> Any:
    """Past requests at every connected site, with released outputs shown again.

    See :func:`remote_kernel.researcher.magics.requests` (imported lazily: it needs IPython).
    """
    from remote_kernel.researcher.magics import requests as show_requests

    return show_requests(*args, **kwargs)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext remote_kernel`` registers the ``%%remote`` cell magic."""
    from remote_kernel.researcher.magics import RemoteMagics

    ipython.register_magics(RemoteMagics)
