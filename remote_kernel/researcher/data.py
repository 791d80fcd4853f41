"""``rk.data(name)``: one call, two meanings, so one cell runs in both places.

In the researcher's own kernel it returns the dataset's MOCK (from a
connected datasite); in a kernel the datasite started (which has
``REMOTE_KERNEL_DATASETS`` in its environment) it returns the PRIVATE table.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pandas as pd

from remote_kernel.protocol.errors import RemoteKernelError, UnknownDataset
from remote_kernel.protocol.kernel_env import DATASET_FDS_ENV, DATASETS_ENV
from remote_kernel.protocol.names import NAME_PATTERN
from remote_kernel.researcher.client import sites
from remote_kernel.researcher.kernel_api import kernel_api_client, remote_kernel_api

#: The columns of the mock each dataset name last returned here, so that a fan-out
#: can warn when a site's table differs from what the cell was tried on.
mock_schemas: dict[str, list[dict[str, str]]] = {}


def at_datasite() -> bool:
    """True inside a researcher kernel started by a datasite (here or through a gateway)."""
    return bool(os.environ.get(DATASETS_ENV)) or remote_kernel_api()


def data(name: str, site: str | None = None) -> pd.DataFrame:
    """The dataset ``name``: the mock here, the private data at the datasite."""
    if at_datasite():
        return _private(name)
    return _mock(name, site)


def _private(name: str) -> pd.DataFrame:
    if remote_kernel_api():
        return _fetched(name)
    handed = os.environ.get(DATASET_FDS_ENV)
    if handed:
        # A sandboxed kernel cannot open the datasite directory: its launcher opened
        # this site's private tables and handed over the open files (sandbox.py).
        fds = json.loads(handed)
        if name not in fds:
            raise UnknownDataset(
                f"this datasite has no dataset {name!r} "
                f"(available: {', '.join(sorted(fds)) or 'none'})"
            )
        with os.fdopen(os.dup(int(fds[name])), "rb") as file:
            file.seek(0)
            return pd.read_parquet(file)
    root = Path(os.environ[DATASETS_ENV])
    path = root / name / "private.parquet"
    if not NAME_PATTERN.match(name) or not path.exists():
        available = sorted(p.name for p in root.iterdir() if (p / "private.parquet").exists())
        raise UnknownDataset(
            f"this datasite has no dataset {name!r} (available: {', '.join(available) or 'none'})"
        )
    return pd.read_parquet(path)


def _fetched(name: str) -> pd.DataFrame:
    """A kernel on another machine (a gateway's) gets its table from the kernel API."""
    if not NAME_PATTERN.match(name):
        raise UnknownDataset(f"this datasite has no dataset {name!r}")
    with kernel_api_client() as http:
        response = http.get(f"/kernel/datasets/{name}")
    if response.status_code == 404:
        raise UnknownDataset(response.json()["error"]["message"])
    response.raise_for_status()
    return pd.read_parquet(io.BytesIO(response.content))


def _mock(name: str, site: str | None) -> pd.DataFrame:
    frame = _find_mock(name, site)
    mock_schemas[name] = [{"name": str(c), "dtype": str(t)} for c, t in frame.dtypes.items()]
    return frame


def _find_mock(name: str, site: str | None) -> pd.DataFrame:
    connected = sites()
    if not connected:
        raise RemoteKernelError(
            "no datasite connected: run rk.connect(url, token=..., name=...) first"
        )
    if site is not None:
        if site not in connected:
            raise RemoteKernelError(
                f"not connected to a datasite named {site!r} (connected: {', '.join(connected)})"
            )
        return connected[site].mock(name)
    held: dict[str, list[str]] = {}  # dataset -> the sites that have it
    for site_name, candidate in connected.items():
        for dataset in candidate.datasets():
            if dataset["name"] == name:
                return candidate.mock(name)
            held.setdefault(dataset["name"], []).append(site_name)
    listing = "; ".join(f"{d} (at {', '.join(s)})" for d, s in sorted(held.items()))
    raise UnknownDataset(
        f"no connected datasite has a dataset {name!r}; the datasets they have: {listing or 'none'}"
    )
