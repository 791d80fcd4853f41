"""remote_kernel: run notebook cells next to private data; only released outputs come back.

In a notebook::

    %load_ext remote_kernel
    import remote_kernel as rk
    site = rk.connect("http://127.0.0.1:8765", token="rk_…", name="cleveland")
    df = rk.data("heart")   # the mock here, the private table at the datasite
"""

from __future__ import annotations

from typing import Any

from . import acro
from ._version import __version__
from .client import (
    AuthenticationError,
    Datasite,
    DatasiteUnreachable,
    NoValue,
    RemoteKernelError,
    RemoteOutput,
    RemoteRequest,
    RequestRejected,
    UnknownDataset,
    connect,
    disconnect,
    sites,
)
from .data import at_datasite, data
from .fanout import RemoteResult, last, run_everywhere
from .query import crosstab, query
from .values import PickledValue

__all__ = [
    "AuthenticationError",
    "Datasite",
    "DatasiteUnreachable",
    "NoValue",
    "PickledValue",
    "RemoteKernelError",
    "RemoteOutput",
    "RemoteRequest",
    "RemoteResult",
    "RequestRejected",
    "UnknownDataset",
    "__version__",
    "acro",
    "at_datasite",
    "connect",
    "crosstab",
    "data",
    "disconnect",
    "last",
    "load_ipython_extension",
    "query",
    "requests",
    "run_everywhere",
    "sites",
]


def requests(*args: Any, **kwargs: Any) -> Any:
    """Past requests at every connected site, with released outputs shown again.

    See :func:`remote_kernel.magics.requests` (imported lazily: it needs IPython).
    """
    from .magics import requests as show_requests

    return show_requests(*args, **kwargs)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext remote_kernel`` registers the ``%%remote`` cell magic."""
    from .magics import RemoteMagics

    ipython.register_magics(RemoteMagics)
