"""The one place that knows how to call a datasite's API over HTTP.

Both clients of the datasite API go through :class:`DatasiteApi`: the
researcher's :class:`~remote_kernel.researcher.client.Datasite` (sync, in a
notebook, a script or the command line) and the JupyterLab server extension
(:mod:`remote_kernel.labapp`, async, on the Jupyter server's event loop). It
holds what both need: the base URL, the ``Authorization: Bearer`` header, the
TLS and timeout settings of the clients, and the turning of an answer into a
value or a typed error of :mod:`remote_kernel.protocol.errors`:

* no answer (down, wrong address, TLS) → :class:`DatasiteUnreachable`;
* a 401 → :class:`AuthenticationError`;
* any other error status → :class:`RequestRejected` with that status;
* the datasite's own words (``{"error": {"status", "reason", "message"}}``) are
  passed on in the message.

Sync (:meth:`DatasiteApi.call`, with an :class:`httpx.Client`) and async
(:meth:`DatasiteApi.acall`, with an :class:`httpx.AsyncClient`) share
everything but the transport call itself.

A separate module rather than part of ``client.py``: it needs only httpx, so
the server extension loads it without pandas or websockets.

Two wordings, for two readers: without ``label`` the messages are for the
person at the notebook (the URL, the call and what to do); with ``label`` (the
server extension passes the connection's name) they are the panels' short
``"<label>: <what happened>"``.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from remote_kernel.protocol.errors import (
    AuthenticationError,
    DatasiteUnreachable,
    RemoteKernelError,
    RequestRejected,
)

#: Seconds to wait for a datasite's answer, unless a call or a client says otherwise.
DEFAULT_TIMEOUT = 30.0
#: Certificate checking is always on; a site with its own CA: point SSL_CERT_FILE at it.
VERIFY = True


def sync_client(timeout: float = DEFAULT_TIMEOUT) -> httpx.Client:
    """A pooled client for :meth:`DatasiteApi.call` (any datasite: URL and token go per call)."""
    return httpx.Client(timeout=timeout, verify=VERIFY)


def async_client(timeout: float = DEFAULT_TIMEOUT) -> httpx.AsyncClient:
    """A pooled client for :meth:`DatasiteApi.acall` (create it inside the loop that uses it)."""
    return httpx.AsyncClient(timeout=timeout, verify=VERIFY)


class DatasiteApi:
    """How to call one datasite as one token holder."""

    def __init__(
        self, url: str, token: str, *, label: str = "", timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.url = url.rstrip("/")
        self.label = label
        self.timeout = timeout
        self._token = token

    def __repr__(self) -> str:  # never the token
        return f"<DatasiteApi {self.label or self.url}>"

    @property
    def headers(self) -> dict[str, str]:
        """What authenticates a call (REST or the websocket channel)."""
        return {"Authorization": f"Bearer {self._token}"}

    def ws_url(self, path: str) -> str:
        """The websocket address of ``path`` (``ws://`` or ``wss://`` like the site's URL)."""
        return "ws" + self.url[len("http") :] + path

    # --- sending: the transport call is all that differs ---------------------------------
    def call(self, client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``path``; the JSON answer (None for 204), or the bytes with ``raw=True``."""
        raw = kwargs.pop("raw", False)
        try:
            response = client.request(**self._prepare(method, path, **kwargs))
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._answer(response, method, path, raw)

    async def acall(self, client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
        """:meth:`call` on an event loop."""
        raw = kwargs.pop("raw", False)
        try:
            response = await client.request(**self._prepare(method, path, **kwargs))
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._answer(response, method, path, raw)

    async def ahealth(self, client: httpx.AsyncClient, timeout: float) -> dict[str, Any]:
        """The site's ``/api/health`` and latency; never raises (``ok`` False, and why).

        A probe, not an API call: no token, and a failure is a state to show,
        so it reads the transport's answer itself.
        """
        started = time.monotonic()
        request = self._prepare("GET", "/api/health", timeout=timeout, token=False)
        try:
            response = await client.request(**request)
            payload = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as exc:
            return {"ok": False, "message": f"unreachable ({exc.__class__.__name__})"}
        if response.status_code != 200:
            return {"ok": False, "message": f"HTTP {response.status_code}"}
        return {
            "ok": True,
            "message": "ok",
            "latency_ms": round((time.monotonic() - started) * 1000, 1),
            "datasite": payload.get("name"),
            "version": payload.get("version"),
        }

    # --- shared by both ------------------------------------------------------------------
    def _prepare(
        self,
        method: str,
        path: str,
        timeout: float | None = None,
        token: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """The arguments of ``client.request``; ``token=False`` for the public health check."""
        headers = {**kwargs.pop("headers", {}), **(self.headers if token else {})}
        return {
            "method": method,
            "url": self.url + path,
            "headers": headers,
            "timeout": self.timeout if timeout is None else timeout,
            **kwargs,
        }

    def _answer(self, response: httpx.Response, method: str, path: str, raw: bool) -> Any:
        if response.status_code >= 400:
            raise self._refusal(response, method, path)
        if raw:
            return response.content
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise RequestRejected(
                self._worded(
                    "answered with something that is not JSON",
                    f"{self.url} answered {method} {path} with something that is not JSON",
                ),
                502,
            ) from None

    def _refusal(self, response: httpx.Response, method: str, path: str) -> RemoteKernelError:
        said = error_message(response)
        if response.status_code == 401:
            # The datasite's own words say what to do ("… ask the datasite admin for a new
            # one"); advice of ours only when it sent none.
            advice = "" if said_by_datasite(response) else ": ask its admin for a valid token"
            return AuthenticationError(
                self._worded(said, f"the datasite at {self.url} rejected the token: {said}{advice}")
            )
        notebook = f"{self.url} refused {method} {path}: {said}"
        return RequestRejected(self._worded(said, notebook), response.status_code)

    def _unreachable(self, exc: httpx.HTTPError) -> DatasiteUnreachable:
        what = f"cannot reach the datasite at {self.url} ({exc.__class__.__name__}: {exc})"
        advice = "; check the URL and that the datasite server is running"
        return DatasiteUnreachable(self._worded(what, what + advice))

    def _worded(self, panel: str, notebook: str) -> str:
        return f"{self.label}: {panel}" if self.label else notebook


def said_by_datasite(response: httpx.Response) -> str | None:
    """The datasite's own message in an error answer, or None if it has none."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return None


def error_message(response: httpx.Response) -> str:
    """The datasite's own message in an error answer (``HTTP <status>`` if it has none)."""
    return said_by_datasite(response) or f"HTTP {response.status_code}"
