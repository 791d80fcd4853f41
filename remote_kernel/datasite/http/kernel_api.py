"""The datasite's API for researcher kernels, on a Unix socket.

A kernel at the datasite cannot release anything itself; it can only *ask* the
datasite to run an aggregate query (``rk.query``) whose result the datasite
checks and releases on its own evidence. That request travels over a Unix
socket in a private directory (not TCP), so it keeps working when kernels are
cut off from the network, and each kernel authenticates with a token issued
for its session at start-up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_unix_socket

from remote_kernel.datasite.dp_models import fit_dp_model
from remote_kernel.datasite.dp_tier import run_dp_query, run_exact_of
from remote_kernel.datasite.http.handlers import JsonErrorsMixin, load_json
from remote_kernel.datasite.http.tls import tls_context
from remote_kernel.protocol.errors import (
    AuthenticationError,
    InputError,
    NotFound,
    PermissionDenied,
    UnknownDataset,
)
from remote_kernel.protocol.kernel_env import (
    API_CA_ENV,
    API_SOCKET_ENV,
    API_TOKEN_ENV,
    API_URL_ENV,
)

if TYPE_CHECKING:
    from remote_kernel.datasite.core import DatasiteCore


class KernelApi:
    """Issues per-session kernel tokens and serves kernel requests on a Unix socket."""

    def __init__(self, datasite: DatasiteCore) -> None:
        self.datasite = datasite
        self._tokens: dict[str, str] = {}
        # Named after the datasite directory, so that what a killed server left behind
        # is removed when that datasite starts again (and nothing else).
        where = str(datasite.config.directory.resolve()).encode()
        prefix = f"rk-kapi-{hashlib.sha256(where).hexdigest()[:12]}-"
        base = Path(tempfile.gettempdir())
        for stale in base.glob(prefix + "*"):
            info = stale.lstat()
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
                shutil.rmtree(stale, ignore_errors=True)
        self._directory = Path(tempfile.mkdtemp(prefix=prefix))
        os.chmod(self._directory, 0o700)
        self.socket_path = self._directory / "kernel-api.sock"
        self._server: HTTPServer | None = None
        #: The TLS listener for kernels elsewhere, the URL they are told, and its certificate.
        self._tcp_server: HTTPServer | None = None
        self.url = ""
        self.ca = ""

    def start(self, other_users: bool = False) -> None:
        """Listen; ``other_users``: kernels run as uids of their own and must reach the socket.

        Then the directory becomes enterable (not listable) and the socket connectable
        by anyone who knows its random path; every call still needs a kernel token.
        """
        app = web.Application(
            [
                (r"/kernel/query", QueryHandler, {"api": self}),
                (r"/kernel/fit_dp", FitDPHandler, {"api": self}),
                (r"/kernel/datasets/([^/]+)", DatasetHandler, {"api": self}),
                (r"/kernel/pushes/([0-9]+)/([^/]+)", PushHandler, {"api": self}),
            ]
        )
        limit = self.datasite.config.limits.max_code_bytes * 2
        self._server = HTTPServer(app, max_body_size=limit)
        mode = 0o666 if other_users else 0o600
        self._server.add_socket(bind_unix_socket(str(self.socket_path), mode=mode))
        if other_users:
            os.chmod(self._directory, 0o711)  # noqa: S103 (enter, not list)
        self._listen_tcp(app, limit)

    def _listen_tcp(self, app: web.Application, limit: int) -> None:
        """For kernels on other machines (``kernels.provider: gateway``): TLS only, on
        ``kernels.api_listen``; the same tokens, the same handlers, plus their tables."""
        settings = self.datasite.config.kernels
        if not settings.api_listen:
            return
        host, _, port = settings.api_listen.rpartition(":")
        tls = tls_context(settings.api_certfile, settings.api_keyfile)
        self._tcp_server = HTTPServer(app, ssl_options=tls, max_body_size=limit)
        self._tcp_server.listen(int(port), host or "0.0.0.0")  # noqa: S104 (configured)
        self.url = settings.api_url.rstrip("/")
        self.ca = Path(settings.api_certfile).read_text()

    def stop(self) -> None:
        for server in (self._server, self._tcp_server):
            if server is not None:
                server.stop()
        shutil.rmtree(self._directory, ignore_errors=True)

    def kernel_env(self, session_id: str) -> dict[str, str]:
        """Environment for a new kernel of ``session_id`` (a fresh token per start)."""
        self.revoke(session_id)
        token = secrets.token_urlsafe(32)
        self._tokens[token] = session_id
        env = {API_SOCKET_ENV: str(self.socket_path), API_TOKEN_ENV: token}
        if self.url:
            env.update({API_URL_ENV: self.url, API_CA_ENV: self.ca})
        return env

    def revoke(self, session_id: str) -> None:
        for token, owner in list(self._tokens.items()):
            if owner == session_id:
                del self._tokens[token]

    def session_for(self, token: str | None) -> str:
        session_id = self._tokens.get(token or "")
        if session_id is None:
            raise AuthenticationError("unknown kernel token")
        return session_id


class QueryHandler(JsonErrorsMixin):
    def initialize(self, api: KernelApi) -> None:
        self.api = api

    def check_xsrf_cookie(self) -> None:
        return None

    def kernel_session(self) -> str:
        """The session whose kernel holds the request's token (401 for any other token)."""
        header = self.request.headers.get("Authorization", "")
        return self.api.session_for(header.removeprefix("Bearer ").strip())

    async def post(self) -> None:
        session_id = self.kernel_session()
        body = load_json(self.request.body or b"null", "request body")
        if not isinstance(body, dict):
            raise InputError("request body must be a JSON object")
        sql = body.get("sql")
        if not isinstance(sql, str):
            raise InputError("field 'sql' must be a string")
        epsilon, delta = body.get("epsilon"), body.get("delta", 0.0)
        if not all(_number(v) for v in (epsilon or 0, delta)):
            raise InputError("fields 'epsilon' and 'delta' must be numbers")
        exact_of = body.get("exact_of")
        if exact_of is not None and (type(exact_of) is not int or epsilon is not None):
            raise InputError("field 'exact_of' is a DP answer's output id, without 'epsilon'")
        core = self.api.datasite
        try:
            if exact_of is not None:
                result = await run_exact_of(core, session_id, sql, exact_of)
            elif epsilon is None:
                result = await core.run_query(session_id, sql)
            else:
                result = await run_dp_query(core, session_id, sql, float(epsilon), float(delta))
        except (InputError, PermissionDenied) as exc:
            core.record_refusal(session_id, str(exc))
            raise
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(result))


class FitDPHandler(QueryHandler):
    """``rk.fit_dp``: the datasite fits a DP model itself (``datasite/dp_models.py``)."""

    async def post(self) -> None:
        session_id = self.kernel_session()
        body = load_json(self.request.body or b"null", "request body")
        if not isinstance(body, dict):
            raise InputError("request body must be a JSON object")
        core = self.api.datasite
        try:
            result = await fit_dp_model(core, session_id, body)
        except (InputError, PermissionDenied) as exc:
            core.record_refusal(session_id, str(exc))
            raise
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(result))


class DatasetHandler(QueryHandler):
    """A private table for a kernel on another machine (``rk.data`` there): Parquet bytes.

    Only to a live kernel token (the kernel of a session this datasite started), and
    only over the TLS listener or the socket -- never on the researcher-facing port.
    """

    async def get(self, name: str) -> None:
        self.kernel_session()
        entry = self.api.datasite.config.datasets.get(name)
        if entry is None:
            available = ", ".join(sorted(self.api.datasite.config.datasets)) or "none"
            raise UnknownDataset(f"this datasite has no dataset {name!r} (available: {available})")
        path = self.api.datasite.config.directory / entry.private
        self.set_header("Content-Type", "application/vnd.apache.parquet")
        self.finish(await asyncio.to_thread(path.read_bytes))


class PushHandler(QueryHandler):
    """The bytes of an object pushed with a request of this kernel's own session.

    For kernels that share no files with the datasite; the bytes are the researcher's
    own, unpickled only in their kernel (invariant 3), never here.
    """

    async def get(self, request_id: str, name: str) -> None:
        session_id = self.kernel_session()
        store = self.api.datasite.store
        if store.get_request(int(request_id)).session_id != session_id:
            raise NotFound(f"no request {request_id} in this kernel's session")
        for push in store.pushes_of(int(request_id)):
            if push.name == name:
                self.set_header("Content-Type", "application/octet-stream")
                self.finish(push.data)
                return
        raise NotFound(f"request {request_id} pushed no object {name!r}")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
