"""Assemble and run a datasite server."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tornado import web
from tornado.httpserver import HTTPServer

from remote_kernel.checks.filter import RuleBasedFilter, make_filter
from remote_kernel.checks.leaks import PrivateIndex
from remote_kernel.checks.policy import load_policy
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.core import DatasiteCore
from remote_kernel.datasite.datasets import load_private_tables
from remote_kernel.datasite.gateway import GatewayKernelProvider
from remote_kernel.datasite.http import handlers as h
from remote_kernel.datasite.http.kernel_api import KernelApi
from remote_kernel.datasite.http.throttle import AuthThrottle
from remote_kernel.datasite.http.tls import tls_context
from remote_kernel.datasite.kernels import LocalKernelProvider
from remote_kernel.datasite.store import Store

log = logging.getLogger("remote_kernel.datasite.http")

SESSION = r"(?P<session_id>[^/]+)"
ID = r"(?P<{}>[^/]+)"


def routes(
    datasite: DatasiteCore, throttle: AuthThrottle | None = None
) -> list[tuple[str, type, dict[str, Any]]]:
    """Every route of the API; docs/openapi.yaml must describe exactly these."""
    kw = {"datasite": datasite, "throttle": throttle}
    return [
        (r"/api/health", h.HealthHandler, kw),
        (r"/api/me", h.MeHandler, kw),
        (r"/api/datasets", h.DatasetsHandler, kw),
        (r"/api/datasets/(?P<name>[^/]+)", h.DatasetHandler, kw),
        (r"/api/datasets/(?P<name>[^/]+)/mock", h.MockHandler, kw),
        (r"/api/sessions", h.SessionsHandler, kw),
        (rf"/api/sessions/{SESSION}", h.SessionHandler, kw),
        (rf"/api/sessions/{SESSION}/(?P<action>interrupt|restart)", h.SessionActionHandler, kw),
        (rf"/api/sessions/{SESSION}/requests", h.SessionRequestsHandler, kw),
        (rf"/api/sessions/{SESSION}/channel", h.ChannelHandler, kw),
        (r"/api/requests", h.RequestsHandler, kw),
        (r"/api/requests/" + ID.format("request_id"), h.RequestHandler, kw),
        (r"/api/outputs/" + ID.format("output_id"), h.OutputHandler, kw),
        (r"/api/outputs/" + ID.format("output_id") + "/review", h.ReviewHandler, kw),
        (r"/api/reviews", h.ReviewQueueHandler, kw),
        (r"/api/budgets", h.BudgetsHandler, kw),
        (r"/api/secure/query", h.SecureQueryHandler, kw),
    ]


def make_app(datasite: DatasiteCore) -> web.Application:
    limit = body_limit(datasite.config)
    throttle = AuthThrottle(datasite.config.auth)
    return web.Application(
        routes(datasite, throttle),  # type: ignore[arg-type]
        default_handler_class=h.NotFoundHandler,
        default_handler_args={"datasite": datasite, "throttle": throttle},
        websocket_max_message_size=limit,
    )


def kernel_provider(config: DatasiteConfig) -> LocalKernelProvider | GatewayKernelProvider:
    """``kernels.provider``: kernels on this machine, or through a Jupyter gateway."""
    if config.kernels.provider == "gateway":
        return GatewayKernelProvider(config.kernels)
    return LocalKernelProvider(
        config.directory / "runtime",
        config.kernels.startup_timeout_seconds,
        settings=config.kernels,
        datasets={
            name: config.directory / entry.private for name, entry in config.datasets.items()
        },
        site=config.name,
    )


def body_limit(config: DatasiteConfig) -> int:
    """Room for JSON-escaped code and base64 pushes up to their limits, so they get JSON errors."""
    limits = config.limits
    room = limits.max_code_bytes * 6 + limits.max_push_bytes * 4 // 3 + 65536
    return max(limits.max_request_body_bytes, room)


def build_datasite(config: DatasiteConfig, allow_insecure: bool = False) -> DatasiteCore:
    """Everything a datasite needs, from its directory: store, policy, leak index, kernels."""
    policy = load_policy(config.directory)
    tables = load_private_tables(config)
    scanner = None
    if config.output_filter == RuleBasedFilter.name:
        scanner = PrivateIndex.build(tables, policy.datasets)
    output_filter = make_filter(config.output_filter, policy, scanner, allow_insecure)
    provider = kernel_provider(config)
    return DatasiteCore(
        config,
        Store(config.database_url),
        output_filter,
        provider,
        policy,
        tables,
        kernel_api=KernelApi,
    )


async def run_server(
    directory: str | Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_insecure: bool = False,
    filter_name: str | None = None,
    ready: Callable[[str], None] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    behind_proxy: bool = False,
) -> None:
    """Serve a datasite until SIGINT or SIGTERM, then stop kernels cleanly.

    With ``certfile`` and ``keyfile`` it serves HTTPS (TLS 1.2 or later) on the
    same port; ``behind_proxy`` takes client addresses from the reverse proxy's
    X-Forwarded-For / X-Real-IP (for throttling and the audit log).
    """
    config = DatasiteConfig.load(directory)
    if filter_name:
        config.output_filter = filter_name
    tls = tls_context(certfile, keyfile) if certfile and keyfile else None
    datasite = build_datasite(config, allow_insecure=allow_insecure)
    await datasite.start()
    server = HTTPServer(
        make_app(datasite),
        max_body_size=body_limit(config),
        ssl_options=tls,
        xheaders=behind_proxy,
    )
    server.listen(port, address=host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    if ready:
        ready(url)
    try:
        await stop.wait()
        # A server that stops says why (its log would otherwise just end).
        log.info("%s received: stopping the datasite %s", received[0], config.name)
    finally:
        server.stop()
        await datasite.stop()
        datasite.store.close()
        log.info("datasite %s stopped", config.name)
