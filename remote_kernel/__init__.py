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
from .query import crosstab, query

__all__ = [
    "AuthenticationError",
    "Datasite",
    "DatasiteUnreachable",
    "RemoteKernelError",
    "RemoteOutput",
    "RemoteRequest",
    "RequestRejected",
    "UnknownDataset",
    "__version__",
    "acro",
    "at_datasite",
    "connect",
    "crosstab",
    "data",
    "disconnect",
    "load_ipython_extension",
    "query",
    "sites",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext remote_kernel`` registers the ``%%remote`` cell magic."""
    from .magics import RemoteMagics

    ipython.register_magics(RemoteMagics)
