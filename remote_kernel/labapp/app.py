"""``RemoteKernelApp``: the jupyter-server extension application and its settings."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Float, Int, Unicode

from remote_kernel.labapp.handlers import route_table
from remote_kernel.researcher.api import async_client
from remote_kernel.researcher.connections import CONNECTIONS_ENV

if TYPE_CHECKING:
    import httpx


class RemoteKernelApp(ExtensionApp):
    """Datasite connections and a proxy to the datasites for the JupyterLab panels."""

    name = "remote_kernel"
    load_other_extensions = True

    connections_file = Unicode(
        "",
        config=True,
        help=(
            "Where saved datasite connections (with their tokens) live. Empty: "
            "$REMOTE_KERNEL_CONNECTIONS, else <jupyter config dir>/remote_kernel/"
            "connections.json. When set, it is also exported to the kernels this "
            "server starts, so %%remote in a notebook finds the same connections."
        ),
    )
    request_timeout = Float(
        30.0, config=True, help="Seconds to wait for a datasite to answer a proxied call."
    )
    health_timeout = Float(
        3.0,
        config=True,
        help="Seconds to wait for a datasite's /api/health before showing it as unreachable.",
    )
    mock_preview_rows = Int(
        20, config=True, help="Rows of a dataset's mock shown in the Datasites panel."
    )
    history_limit = Int(
        200, config=True, help="Most recent decisions listed in the reviewers' history."
    )

    def initialize_settings(self) -> None:
        if self.connections_file:
            os.environ[CONNECTIONS_ENV] = self.connections_file
        self.settings["remote_kernel"] = self

    def initialize_handlers(self) -> None:
        self.handlers.extend(route_table())

    _http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        """One pooled async client (created on first use, inside the server's loop)."""
        if self._http is None or self._http.is_closed:
            self._http = async_client(self.request_timeout)
        return self._http

    async def stop_extension(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def settings_summary(self) -> dict[str, Any]:
        return {
            "request_timeout": self.request_timeout,
            "health_timeout": self.health_timeout,
            "mock_preview_rows": self.mock_preview_rows,
        }
