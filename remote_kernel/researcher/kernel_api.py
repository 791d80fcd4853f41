"""Inside a datasite kernel: the one HTTP client to the datasite's kernel API.

A kernel on the datasite's machine reaches the API on a Unix socket; a kernel a
gateway started elsewhere (a cluster pod) reaches it over TCP with TLS, checking
the certificate the datasite handed it (``REMOTE_KERNEL_API_CA``). Either way it
authenticates with its own session's token. ``rk.query``, ``rk.fit_dp`` and
``rk.data`` on a gateway kernel all go through :func:`kernel_api_client`.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import httpx

from remote_kernel.protocol.errors import BudgetExhausted, QueryRejected
from remote_kernel.protocol.kernel_env import (
    API_CA_ENV,
    API_SOCKET_ENV,
    API_TOKEN_ENV,
    API_URL_ENV,
)


def remote_kernel_api() -> bool:
    """True in a kernel that reaches its datasite over TCP (it has no datasite files)."""
    return bool(os.environ.get(API_URL_ENV))


def kernel_api_client(timeout: float = 600) -> httpx.Client:
    """A client for this kernel's datasite, with the kernel's token on every call."""
    headers = {"Authorization": f"Bearer {os.environ[API_TOKEN_ENV]}"}
    url = os.environ.get(API_URL_ENV)
    if url:
        context = ssl.create_default_context(cadata=os.environ.get(API_CA_ENV) or None)
        return httpx.Client(base_url=url, verify=context, headers=headers, timeout=timeout)
    transport = httpx.HTTPTransport(uds=os.environ[API_SOCKET_ENV])
    return httpx.Client(
        transport=transport, base_url="http://datasite", headers=headers, timeout=timeout
    )


def post_to_datasite(route: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to this kernel's datasite; its answer, or its refusal raised in its own words
    (403: :class:`BudgetExhausted`, anything else: :class:`QueryRejected`)."""
    with kernel_api_client() as http:
        response = http.post(route, json=body)
    answer: dict[str, Any] = response.json()
    if response.status_code != 200:
        message = answer.get("error", {}).get("message", f"HTTP {response.status_code}")
        raise BudgetExhausted(message) if response.status_code == 403 else QueryRejected(message)
    return answer
