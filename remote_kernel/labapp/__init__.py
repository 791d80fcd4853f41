"""The JupyterLab server extension of remote_kernel (``remote_kernel.labapp``).

It keeps the researcher's and reviewer's datasite connections (tokens
included) on the server, in the shared file of :mod:`remote_kernel.researcher.connections`,
and proxies the JupyterLab panels' calls to the datasites, so that a token
never reaches the notebook, the page or browser storage.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from remote_kernel.labapp.app import RemoteKernelApp

    return [{"module": "remote_kernel.labapp", "app": RemoteKernelApp}]
