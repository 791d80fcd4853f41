"""Tornado handlers of the datasite API: thin wrappers over :class:`DatasiteCore`.

Each handler authenticates, checks the role, calls one DatasiteCore method and
returns a view from :mod:`remote_kernel.datasite.views`. Errors are JSON bodies of
the form ``{"error": {"status": 404, "reason": "not_found", "message": "…"}}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import time
from typing import TYPE_CHECKING, Any

from tornado import web, websocket

from remote_kernel._version import __version__
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.mpc.errors import JointComputationFailed
from remote_kernel.datasite.mpc.run import secure_query
from remote_kernel.datasite.store import Output, User
from remote_kernel.datasite.views import (
    Votes,
    budget_view,
    output_view,
    request_view,
    session_view,
)
from remote_kernel.mocks.report import load_summary
from remote_kernel.protocol.errors import (
    AuthenticationError,
    InputError,
    NotFound,
    PermissionDenied,
    RemoteKernelError,
    TooManyRequests,
    error_body,
    http_status,
)
from remote_kernel.protocol.models import Role

if TYPE_CHECKING:
    from remote_kernel.datasite.core import DatasiteCore
    from remote_kernel.datasite.http.throttle import AuthThrottle

log = logging.getLogger("remote_kernel.datasite.http")

#: Websocket close code (RFC 6455 7.4.1) for floods and clients that do not read.
WS_POLICY = 1008
WS_SEND_BUFFER = 64 * 1024


def token_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() in {"bearer", "token"} and token.strip():
        return token.strip()
    return None


class AuthMixin:
    """Authentication shared by REST and websocket handlers."""

    datasite: DatasiteCore
    throttle: AuthThrottle
    request: Any
    user: User | None = None
    public = False  # routes that need no token (health only)

    def authenticate(self) -> None:
        if self.public:
            return
        address = str(self.request.remote_ip)
        throttle = self.throttle
        wait = throttle.retry_after(address)
        if wait > 0:
            raise too_many_failures(wait)
        token = token_from_header(self.request.headers.get("Authorization"))
        if token is None:
            raise AuthenticationError("missing token: send 'Authorization: Bearer <token>'")
        user = self.datasite.store.user_by_token(token)
        if user is None:
            locked = throttle.failure(address)
            self.datasite.store.audit(
                "anonymous",
                "auth.throttled" if locked else "auth.failed",
                "",
                remote_ip=address,
                path=self.request.path,
            )
            raise AuthenticationError(
                "invalid, expired or revoked token: ask the datasite admin for a new one",
            )
        self.user = user

    def require(self, *roles: Role) -> User:
        assert self.user is not None
        if self.user.role_enum not in roles:
            allowed = " or ".join(r.value for r in roles)
            raise PermissionDenied(
                f"this needs the {allowed} role; your token is a {self.user.role} token"
            )
        return self.user


def too_many_failures(wait: float) -> TooManyRequests:
    seconds = max(1, math.ceil(wait))
    return TooManyRequests(
        f"too many failed logins from your address; try again in {seconds} s", seconds
    )


class JsonErrorsMixin(web.RequestHandler):
    """Every error is a JSON body; domain errors (not found, forbidden, bad input,
    conflict) become 4xx with their message; only 5xx are logged as failures."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_json_error(self, status_code, kwargs)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, web.HTTPError) and value.status_code < 500:
            return
        super().log_exception(typ, value, tb)

    def _handle_request_exception(self, e: BaseException) -> None:
        status = http_status(e)
        if status is None or status >= 500:
            super()._handle_request_exception(e)
        elif not self._finished:
            self.send_error(status, exc_info=(type(e), e, None))


class BaseHandler(AuthMixin, JsonErrorsMixin):
    def initialize(self, datasite: DatasiteCore, throttle: AuthThrottle) -> None:
        self.datasite = datasite
        self.throttle = throttle

    @property
    def config(self) -> DatasiteConfig:
        return self.datasite.config

    def prepare(self) -> None:
        self.authenticate()

    def check_xsrf_cookie(self) -> None:  # token auth in a header: no cookies, no XSRF
        return None

    def write_json(self, value: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    def json_body(self) -> dict[str, Any]:
        body = load_json(self.request.body or b"null", "request body")
        if not isinstance(body, dict):
            raise InputError("request body must be a JSON object")
        return body

    def votes(self, outputs: list[Output]) -> Votes | None:
        """The votes of these outputs (one query) for a reviewer's or admin's view.

        None for researchers: their views never show votes, so nothing is queried.
        """
        assert self.user is not None
        if self.user.role_enum is Role.RESEARCHER:
            return None
        return self.datasite.votes_of(outputs)

    def dp(self, researcher_id: int) -> dict[str, Any] | None:
        """The DP section of a reviewer's or admin's view of that researcher's outputs
        (once per researcher per call); None for researchers, whose views do not have it."""
        assert self.user is not None
        if self.user.role_enum is Role.RESEARCHER:
            return None
        cache: dict[int, dict[str, Any]] = self.__dict__.setdefault("_dp_cache", {})
        if researcher_id not in cache:
            cache[researcher_id] = self.datasite.dp_of(researcher_id)
        return cache[researcher_id]

    def variants(self, outputs: list[Output]) -> dict[int, list[Output]] | None:
        """The suppressed variants offered on these outputs (one query), for a reviewer's or
        admin's view; None for researchers, who never learn of a variant before release."""
        assert self.user is not None
        if self.user.role_enum is Role.RESEARCHER:
            return None
        return self.datasite.store.variants_of([o.id for o in outputs])


def load_json(raw: str | bytes, what: str) -> Any:
    """Parse JSON from a caller; anything it cannot be stored as is a 400, never a 500."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError(f"{what} is nested too deeply") from None
    try:
        # JSON can escape lone surrogates ("\ud800"), which are not Unicode text: the
        # store, the audit hashes and the code limit all need UTF-8.
        json.dumps(value, ensure_ascii=False).encode()
    except RecursionError:
        raise InputError(f"{what} is nested too deeply") from None
    except UnicodeEncodeError:
        raise InputError(
            f"{what} holds a lone surrogate escape (\\ud800-\\udfff), "
            "which is not valid Unicode text",
        ) from None
    return value


def finish_error(
    handler: web.RequestHandler,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
) -> None:
    """End a request with the JSON error body every route uses."""
    handler.set_status(status)
    handler.set_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        handler.set_header(name, value)
    handler.finish(json.dumps(error_body(status, message)))


def write_json_error(handler: web.RequestHandler, status: int, kwargs: dict[str, Any]) -> None:
    """``write_error`` of every handler: tornado's own errors (405, …) become JSON too."""
    exc = kwargs.get("exc_info", (None, None, None))[1]
    message = str(exc) if isinstance(exc, RemoteKernelError) else None
    if not message and isinstance(exc, web.HTTPError) and exc.log_message:
        # tornado's own 4xx (e.g. "Invalid unicode in status: b'\\xff'") say what was wrong
        message = exc.log_message % exc.args if exc.args else exc.log_message
    message = message or handler._reason
    if status >= 500:
        message = "internal datasite error; the admin can find details in the server log"
    headers = error_headers(exc)
    if status == 405:  # RFC 9110: say which methods the route has
        headers["Allow"] = ", ".join(allowed_methods(handler))
    finish_error(handler, status, message, headers)


def allowed_methods(handler: web.RequestHandler) -> list[str]:
    """The HTTP methods a handler class implements."""
    return [
        method
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if getattr(type(handler), method.lower()) is not getattr(web.RequestHandler, method.lower())
    ]


def error_headers(exc: BaseException | None) -> dict[str, str]:
    """Headers an error answer carries besides its body (Retry-After for throttling)."""
    if isinstance(exc, TooManyRequests):
        return {"Retry-After": str(exc.retry_after)}
    return {}


def error_event(exc: Exception, ref: Any = None) -> dict[str, Any]:
    """The websocket form of an error answer (same status and message as over REST)."""
    status = http_status(exc)
    if status is None or status >= 500:
        log.exception("websocket message failed")
        return {"type": "error", "ref": ref, "status": 500, "message": "internal datasite error"}
    return {"type": "error", "ref": ref, "status": status, "message": str(exc)}


def parse_id(value: str, kind: str) -> int:
    try:
        parsed = int(value)
    except ValueError:
        raise NotFound(f"no {kind} {value!r}") from None
    if parsed < 1 or parsed > 2**62:
        raise NotFound(f"no {kind} {value!r}")
    return parsed


# --- routes ----------------------------------------------------------------------------------
class HealthHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.write_json(
            {
                "status": "ok",
                "name": self.config.name,
                "version": __version__,
                "sandbox": self.datasite.sandbox_status(),
            }
        )


class MeHandler(BaseHandler):
    def get(self) -> None:
        assert self.user is not None
        self.write_json(
            {"name": self.user.name, "role": self.user.role, "datasite": self.config.name}
        )


class DatasetsHandler(BaseHandler):
    def get(self) -> None:
        self.write_json([d.to_public_json() for _, d in sorted(self.config.datasets.items())])


class DatasetHandler(BaseHandler):
    def get(self, name: str) -> None:
        entry = self._entry(name)
        view = entry.to_public_json()
        # Only the non-disclosive summary written for researchers, never the owner's report.
        view["mock_summary"] = load_summary((self.config.directory / entry.mock).parent)
        self.write_json(view)

    def _entry(self, name: str) -> Any:
        return self.config.dataset(name)  # UnknownDataset is a 404


class MockHandler(DatasetHandler):
    def get(self, name: str) -> None:
        entry = self._entry(name)
        data = (self.config.directory / entry.mock).read_bytes()
        self.set_header("Content-Type", "application/vnd.apache.parquet")
        self.set_header("Content-Disposition", f'attachment; filename="{name}-mock.parquet"')
        self.finish(data)


class SessionsHandler(BaseHandler):
    def get(self) -> None:
        user = self.require(Role.RESEARCHER)
        sessions = self.datasite.store.sessions_of(user.id)
        self.write_json([session_view(s, self.datasite.kernel_state(s.id)) for s in sessions])

    def post(self) -> None:
        user = self.require(Role.RESEARCHER)
        session = self.datasite.create_session(user)
        self.write_json(session_view(session, self.datasite.kernel_state(session.id)), 201)


class SessionHandler(BaseHandler):
    def get(self, session_id: str) -> None:
        user = self.require(Role.RESEARCHER)
        session = self.datasite.own_session(user, session_id)
        self.write_json(session_view(session, self.datasite.kernel_state(session.id)))

    async def delete(self, session_id: str) -> None:
        user = self.require(Role.RESEARCHER)
        await self.datasite.close_session(user, session_id)
        self.set_status(204)
        self.finish()


class SessionActionHandler(BaseHandler):
    async def post(self, session_id: str, action: str) -> None:
        user = self.require(Role.RESEARCHER)
        if action == "interrupt":
            await self.datasite.interrupt(user, session_id)
        else:
            await self.datasite.restart(user, session_id)
        session = self.datasite.own_session(user, session_id)
        self.write_json(session_view(session, self.datasite.kernel_state(session_id)))


class SessionRequestsHandler(BaseHandler):
    def post(self, session_id: str) -> None:
        user = self.require(Role.RESEARCHER)
        body = self.json_body()
        if "code" not in body:
            raise InputError("missing field 'code' (the cell's source text)")
        request = self.datasite.submit(user, session_id, body["code"], body.get("push"))
        self.write_json(request_view(request, user.role_enum, user.name, []), 201)


class RequestsHandler(BaseHandler):
    def get(self) -> None:
        assert self.user is not None
        status = self.get_query_argument("status", None)
        flag = self.get_query_argument("outputs", "false").lower()
        if flag not in {"1", "true", "0", "false"}:
            raise InputError(f"'outputs' must be true, false, 1 or 0, not {flag!r}")
        with_outputs = flag in {"1", "true"}
        store = self.datasite.store
        requests = self.datasite.requests_for(self.user, status)
        outputs = {r.id: store.outputs_of(r.id) for r in requests} if with_outputs else {}
        votes = self.votes([o for listed in outputs.values() for o in listed])
        views = [
            request_view(
                request,
                self.user.role_enum,
                store.user_name(request.user_id),
                outputs.get(request.id),
                store.pushes_of(request.id) if with_outputs else None,
                votes,
                self.dp(request.user_id) if with_outputs else None,
            )
            for request in requests
        ]
        self.write_json(views)


class RequestHandler(BaseHandler):
    def get(self, request_id: str) -> None:
        assert self.user is not None
        request = self.datasite.visible_request(self.user, parse_id(request_id, "request"))
        store = self.datasite.store
        outputs = store.outputs_of(request.id)
        self.write_json(
            request_view(
                request,
                self.user.role_enum,
                store.user_name(request.user_id),
                outputs,
                store.pushes_of(request.id),
                self.votes(outputs),
                self.dp(request.user_id),
            )
        )


class OutputHandler(BaseHandler):
    def get(self, output_id: str) -> None:
        assert self.user is not None
        output = self.datasite.visible_output(self.user, parse_id(output_id, "output"))
        role, outputs = self.user.role_enum, [output]
        view = output_view(output, role, self.votes(outputs), self.variants(outputs))
        if role is not Role.RESEARCHER:
            view["dp"] = self.dp(self.datasite.store.get_request(output.request_id).user_id)
        self.write_json(view)


class ReviewQueueHandler(BaseHandler):
    def get(self) -> None:
        user = self.require(Role.REVIEWER, Role.ADMIN)
        store = self.datasite.store
        items = []
        outputs, votes = self.datasite.pending_for_review(user)
        variants = self.variants(outputs)
        for output in outputs:
            request = store.get_request(output.request_id)
            view = output_view(output, user.role_enum, votes, variants, self.dp(request.user_id))
            view["request"] = request_view(
                request,
                user.role_enum,
                store.user_name(request.user_id),
                pushes=store.pushes_of(request.id),
            )
            items.append(view)
        self.write_json(items)


class BudgetsHandler(BaseHandler):
    """Privacy budgets of the DP tier: a researcher's own; every researcher's for
    reviewers (what a researcher already spent is context for a review) and admins."""

    def get(self) -> None:
        assert self.user is not None
        own = self.user.role_enum is Role.RESEARCHER
        lines = self.datasite.store.budgets(self.user.name if own else None)
        self.write_json([budget_view(line) for line in lines])


class SecureQueryHandler(BaseHandler):
    """This site's part of a pooled query computed with its MPC peers (``rk.secure.query``).

    Verified here on its own; the site answers only with the pooled table, once every
    party's policy passed it (:mod:`remote_kernel.datasite.mpc`)."""

    async def post(self) -> None:
        user = self.require(Role.RESEARCHER)
        try:
            self.write_json(await secure_query(self.datasite, user, self.json_body()))
        except JointComputationFailed as exc:
            # A peer's failure, not this server's: a 503 that says what happened (and no
            # traceback in the log; the audit entry has the outcome).
            log.warning("joint computation failed: %s", exc)
            finish_error(self, 503, str(exc), {})


class ReviewHandler(BaseHandler):
    def post(self, output_id: str) -> None:
        user = self.require(Role.REVIEWER)
        body = self.json_body()
        decision = body.get("decision")
        if decision not in ("approve", "deny"):
            raise InputError('field \'decision\' must be "approve" or "deny"')
        comment = body.get("comment", "")
        if not isinstance(comment, str):
            raise InputError("field 'comment' must be a string")
        output = self.datasite.review(
            user, parse_id(output_id, "output"), decision == "approve", comment
        )
        outputs = [output]
        dp = self.dp(self.datasite.store.get_request(output.request_id).user_id)
        view = output_view(output, user.role_enum, self.votes(outputs), self.variants(outputs), dp)
        self.write_json(view)


class NotFoundHandler(BaseHandler):
    public = True

    def prepare(self) -> None:
        raise NotFound(f"no route {self.request.method} {self.request.path}")


class ChannelHandler(AuthMixin, websocket.WebSocketHandler):
    """One websocket per researcher session: execute requests in, live events out.

    Client → server: ``{"type": "execute", "code": "...", "ref": "any"}`` (optionally
    with ``"push": [{"name", "type", "data"}]``, see :func:`parse_pushes`) and
    ``{"type": "interrupt"}``. Server → client: ``accepted`` (with the request),
    ``request`` (status changes), ``output`` (researcher views of outputs:
    placeholders, releases, denials) and ``error``.
    """

    def initialize(self, datasite: DatasiteCore, throttle: AuthThrottle) -> None:
        self.datasite = datasite
        self.throttle = throttle
        self.session_id = ""
        limits = datasite.config.limits
        # Flood control: a token bucket of messages (burst, then a steady rate).
        self._tokens = float(limits.ws_message_burst)
        self._refilled = time.monotonic()
        # Bytes written to this client but not yet taken by its socket (a slow reader).
        self._unsent = 0

    def prepare(self) -> None:
        try:
            self.authenticate()
            user = self.require(Role.RESEARCHER)
        except (AuthenticationError, PermissionDenied, TooManyRequests) as exc:
            finish_error(self, http_status(exc) or 500, str(exc), error_headers(exc))
            return
        session_id = self.path_kwargs.get("session_id") or self.path_args[0]
        try:
            self.datasite.own_session(user, session_id)
        except NotFound as exc:
            finish_error(self, 404, str(exc))
            return
        self.session_id = session_id

    async def get(self, *args: Any, **kwargs: Any) -> None:
        # tornado answers a plain GET with a text/plain 400; keep errors JSON.
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            finish_error(
                self,
                400,
                "this route is a websocket: connect with "
                "'Upgrade: websocket' and 'Connection: Upgrade'",
            )
            return
        await super().get(*args, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_json_error(self, status_code, kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        assert self.user is not None
        # Events are small and latency matters (a 40 ms delayed ACK otherwise).
        self.set_nodelay(True)
        # A fixed, modest kernel send buffer: a client that stops reading backs up into
        # our own (counted, capped) buffer soon, not into megabytes of autotuned buffer.
        stream = getattr(self.ws_connection, "stream", None)
        sock = getattr(stream, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WS_SEND_BUFFER)
        self.datasite.events.subscribe(self.user.id, self._forward)

    def on_close(self) -> None:
        if self.user is not None:
            self.datasite.events.unsubscribe(self.user.id, self._forward)

    def _forward(self, event: dict[str, Any]) -> None:
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        text = json.dumps(event)
        limit = self.datasite.config.limits.max_ws_buffer_bytes
        if self._unsent + len(text) > limit:
            # The client does not read: stop queueing (memory stays bounded) and say why.
            # Nothing is lost: every state is in GET /api/requests?outputs=true.
            log.warning("closing a channel of %s: over %d bytes unread", self.user_name, limit)
            self.close(
                WS_POLICY,
                "events are not being read fast enough; reconnect and fetch what you "
                "missed with GET /api/requests",
            )
            return
        self._unsent += len(text)
        try:
            sent = self.write_message(text)
        except websocket.WebSocketClosedError:
            return

        def _flushed(_: Any, size: int = len(text)) -> None:
            self._unsent -= size

        sent.add_done_callback(_flushed)

    @property
    def user_name(self) -> str:
        return self.user.name if self.user is not None else "?"

    def _send(self, payload: dict[str, Any]) -> None:
        self._forward(payload)

    def _over_rate(self) -> bool:
        limits = self.datasite.config.limits
        now = time.monotonic()
        refill = (now - self._refilled) * limits.ws_messages_per_second
        self._tokens = min(float(limits.ws_message_burst), self._tokens + refill)
        self._refilled = now
        if self._tokens < 1:
            return True
        self._tokens -= 1
        return False

    async def on_message(self, message: str | bytes) -> None:
        assert self.user is not None
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        if self._over_rate():
            limits = self.datasite.config.limits
            log.warning("closing a channel of %s: message flood", self.user_name)
            self.close(
                WS_POLICY,
                f"too many messages: at most {limits.ws_messages_per_second:g} per second "
                f"(bursts of {limits.ws_message_burst})",
            )
            return
        try:
            data = load_json(message, "message")
        except InputError as exc:
            event = error_event(exc)
            del event["ref"]
            self._send(event)
            return
        if not isinstance(data, dict):
            self._send({"type": "error", "status": 400, "message": "message must be an object"})
            return
        ref = data.get("ref")
        kind = data.get("type")
        try:
            if kind == "execute":
                if "code" not in data:
                    raise InputError("missing field 'code'")
                request = self.datasite.submit(
                    self.user, self.session_id, data["code"], data.get("push")
                )
                self._send(
                    {
                        "type": "accepted",
                        "ref": ref,
                        "request": request_view(request, Role.RESEARCHER, self.user.name),
                    }
                )
            elif kind == "interrupt":
                await self.datasite.interrupt(self.user, self.session_id)
                self._send({"type": "interrupted", "ref": ref})
            else:
                raise InputError(f"unknown message type {kind!r} (known: execute, interrupt)")
        except Exception as exc:
            self._send(error_event(exc, ref))

    def check_origin(self, origin: str) -> bool:
        # Authentication is by bearer token, never by cookie, so cross-origin
        # pages cannot ride on a researcher's credentials.
        return True
