"""Researcher kernels on a cluster, started through a Jupyter (Enterprise) Gateway.

A hospital runs kernels where its compute is -- Kubernetes pods, YARN, other
hosts -- and the Jupyter world's service for that is Jupyter Enterprise Gateway:
it starts kernels through its process proxies and speaks the kernel gateway
protocol (``POST /api/kernels``, a websocket on ``/api/kernels/<id>/channels``).
This module drives that protocol with the manager/client shape of jupyter_client
(``client().execute``, ``get_iopub_msg``, ``interrupt_kernel`` ...), so the one
execution loop of :class:`~remote_kernel.datasite.kernels.LocalKernel` runs
gateway kernels unchanged.

Why not jupyter_server's own ``GatewayKernelClient``: its channel queues wait by
spinning (``asyncio.sleep(0)`` in a loop), a full core per waiting cell on a
datasite that waits on long cells all day, and it is configured through a
process-wide singleton. This client waits on asyncio queues fed by one websocket
reader task.

A gateway kernel has no datasite files: it reads its private tables and asks its
queries through the datasite's kernel API over TCP with TLS and its own token
(:mod:`remote_kernel.datasite.http.kernel_api`), the only address its network
policy lets it reach (``deploy/kubernetes``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
from pathlib import Path
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from remote_kernel.datasite.config import KernelSettings
from remote_kernel.datasite.kernels import LocalKernel
from remote_kernel.protocol.errors import Unavailable
from remote_kernel.protocol.kernel_env import (
    API_CA_ENV,
    API_SOCKET_ENV,
    API_TOKEN_ENV,
    API_URL_ENV,
    DATASET_FDS_ENV,
    DATASETS_ENV,
    SITE_ENV,
)
from remote_kernel.protocol.models import OutputItem

log = logging.getLogger("remote_kernel.datasite.gateway")

#: Variables a gateway kernel must receive (the gateway's ``client_envs`` must list them).
GATEWAY_KERNEL_ENV = (SITE_ENV, API_URL_ENV, API_TOKEN_ENV, API_CA_ENV)


class GatewayUnavailable(Unavailable, RuntimeError):
    """The gateway refused or could not be reached."""


class Gateway:
    """One gateway's address and credentials, and its REST calls."""

    def __init__(self, settings: KernelSettings) -> None:
        self.url = settings.gateway_url.rstrip("/")
        self.kernel_name = settings.gateway_kernel_name
        self.username = settings.gateway_username
        self.token = settings.gateway_token()
        self.timeout = settings.startup_timeout_seconds
        self.http = AsyncHTTPClient()

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One REST call; a gateway error becomes :class:`GatewayUnavailable` with its reason."""
        request = HTTPRequest(
            f"{self.url}{path}",
            method=method,
            headers={**self.headers(), "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body),
            request_timeout=self.timeout,
            allow_nonstandard_methods=True,
        )
        try:
            response = await self.http.fetch(request)
        except HTTPClientError as exc:
            reason = exc.response.body.decode(errors="replace")[:300] if exc.response else ""
            raise GatewayUnavailable(
                f"the kernel gateway answered {exc.code} to {method} {path}: {reason}"
            ) from None
        except OSError as exc:
            where = f"cannot reach the kernel gateway at {self.url}"
            raise GatewayUnavailable(f"{where}: {exc}") from None
        return json.loads(response.body) if response.body else None

    def ws_url(self, kernel_id: str) -> str:
        base = "ws" + self.url.removeprefix("http")
        return f"{base}/api/kernels/{kernel_id}/channels"


class GatewayKernelClient:
    """A kernel client over the gateway's websocket, with jupyter_client's async calls."""

    def __init__(self, gateway: Gateway, kernel_id: str) -> None:
        self.gateway = gateway
        self.kernel_id = kernel_id
        self.session = Session(username="remote-kernel")
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {
            name: asyncio.Queue() for name in ("shell", "iopub", "control", "stdin")
        }
        self._socket: WebSocketClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected: asyncio.Task[None] | None = None

    def start_channels(self) -> None:
        self._connected = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        request = HTTPRequest(
            self.gateway.ws_url(self.kernel_id),
            headers=self.gateway.headers(),
            request_timeout=self.gateway.timeout,
        )
        self._socket = await websocket_connect(request, max_message_size=256 * 1024 * 1024)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._socket is not None
        while True:
            raw = await self._socket.read_message()
            if raw is None:
                return
            message = json.loads(raw)
            channel = self._queues.get(message.get("channel", ""))
            if channel is not None:
                channel.put_nowait(message)

    def _send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        message = self.session.msg(msg_type, content)
        message["channel"] = channel
        assert self._socket is not None, "channels are not started"
        self._socket.write_message(json.dumps(message, default=json_default))
        return str(message["header"]["msg_id"])

    def execute(self, code: str, silent: bool = False, store_history: bool = True,
                allow_stdin: bool = False, stop_on_error: bool = True) -> str:  # fmt: skip
        content = {"code": code, "silent": silent, "store_history": store_history,
                   "user_expressions": {}, "allow_stdin": allow_stdin,
                   "stop_on_error": stop_on_error}  # fmt: skip
        return self._send("shell", "execute_request", content)

    async def _get(self, channel: str, timeout: float | None) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._queues[channel].get(), timeout)
        except TimeoutError:
            raise queue.Empty from None

    async def get_iopub_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return await self._get("iopub", timeout)

    async def get_shell_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return await self._get("shell", timeout)

    async def wait_for_ready(self, timeout: float) -> None:
        """Connected, and the kernel answered a ``kernel_info_request``."""
        assert self._connected is not None, "channels are not started"
        await asyncio.wait_for(self._connected, timeout)
        msg_id = self._send("shell", "kernel_info_request", {})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            reply = await self._get("shell", max(deadline - loop.time(), 0.01))
            if reply["parent_header"].get("msg_id") == msg_id:
                return

    def stop_channels(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._socket is not None:
            self._socket.close()
        self._socket = None


class GatewayKernelManager:
    """One gateway kernel, with the calls :class:`LocalKernel` makes of a kernel manager."""

    #: No local process: nothing to read an exit status from.
    provisioner = None

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.kernel_id: str | None = None

    async def start_kernel(self, env: dict[str, str]) -> None:
        body = {"name": self.gateway.kernel_name, "env": env}
        model = await self.gateway.call("POST", "/api/kernels", body)
        self.kernel_id = str(model["id"])
        log.info("gateway kernel %s started (%s)", self.kernel_id, self.gateway.kernel_name)

    def client(self) -> GatewayKernelClient:
        assert self.kernel_id is not None, "the kernel is not started"
        return GatewayKernelClient(self.gateway, self.kernel_id)

    async def is_alive(self) -> bool:
        try:
            model = await self.gateway.call("GET", f"/api/kernels/{self.kernel_id}")
        except GatewayUnavailable:
            return False
        return bool(model) and model.get("execution_state") != "dead"

    async def interrupt_kernel(self) -> None:
        await self.gateway.call("POST", f"/api/kernels/{self.kernel_id}/interrupt", {})

    async def restart_kernel(self, now: bool = True) -> None:
        await self.gateway.call("POST", f"/api/kernels/{self.kernel_id}/restart", {})

    async def shutdown_kernel(self, now: bool = True) -> None:
        if self.kernel_id is not None:
            try:
                await self.gateway.call("DELETE", f"/api/kernels/{self.kernel_id}")
            except GatewayUnavailable as exc:
                log.warning("gateway kernel %s: %s", self.kernel_id, exc)


class GatewayKernelProvider:
    """Starts researcher kernels through a Jupyter (Enterprise) Gateway.

    The kernel gets only what it needs to reach this datasite's kernel API
    (``REMOTE_KERNEL_*``, which the gateway must pass on: its ``client_envs``), and
    ``KERNEL_USERNAME`` (Enterprise Gateway refuses a start without it when it runs
    as root, and its process proxies run the kernel as that user).
    """

    def __init__(self, settings: KernelSettings) -> None:
        self.settings = settings
        self.gateway = Gateway(settings)
        self.status = GatewayIsolation()

    async def start(self, session_id: str, cwd: Path, env: dict[str, str]) -> LocalKernel:
        kernel_env = {k: v for k, v in env.items() if k not in LOCAL_ONLY_ENV}
        if API_URL_ENV not in kernel_env:
            raise GatewayUnavailable(
                "gateway kernels reach the datasite over TCP: set kernels.api_listen and "
                "kernels.api_url in datasite.yaml"
            )
        kernel_env["KERNEL_USERNAME"] = self.gateway.username
        if self.settings.gateway_kernel_image:
            kernel_env["KERNEL_IMAGE"] = self.settings.gateway_kernel_image
        manager = GatewayKernelManager(self.gateway)
        await manager.start_kernel(kernel_env)
        kernel = LocalKernel(manager, self.settings.startup_timeout_seconds, cwd,  # type: ignore[arg-type]
                             settings=self.settings)  # fmt: skip
        kernel.shares_files = False  # pushes travel through the kernel API
        try:
            await kernel._connect()
            await self._check_environment(kernel)
        except Exception:
            await kernel.shutdown()
            raise
        return kernel

    async def _check_environment(self, kernel: LocalKernel) -> None:
        """Refuse a kernel the gateway did not give remote_kernel's variables (its
        ``client_envs``): it could not find its datasite, and would say so confusingly."""
        missing: list[str] = []

        async def collect(item: OutputItem) -> None:
            if item.msg_type == "stream":
                missing.extend(str(item.content.get("text", "")).split())

        code = (
            f"import os\nprint(*[n for n in {list(GATEWAY_KERNEL_ENV)!r} if not os.environ.get(n)])"
        )
        await kernel.execute(code, collect)
        if missing:
            raise GatewayUnavailable(
                f"the kernel gateway did not pass {', '.join(missing)} to the kernel: list "
                f"{','.join(GATEWAY_KERNEL_ENV)} in its client_envs (EG_CLIENT_ENVS)"
            )

    def close(self) -> None:
        return None


class GatewayIsolation:
    """What /api/health says of gateway kernels' isolation: the cluster's, not ours."""

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "gateway",
            "warnings": [
                "kernels run where the kernel gateway starts them: their isolation is the "
                "cluster's (a NetworkPolicy that lets them reach only the kernel API; "
                "see docs/operators.md)"
            ],
        }


#: What only makes sense on the datasite's machine (paths, Unix sockets, open files).
LOCAL_ONLY_ENV = frozenset({DATASETS_ENV, API_SOCKET_ENV, DATASET_FDS_ENV})
