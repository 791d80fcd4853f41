"""The researcher's client: connect to datasites, get mocks, run code, follow requests.

Plain Python, usable from a script, a notebook or the proxy kernel::

    import remote_kernel as rk
    site = rk.connect("http://127.0.0.1:8765", token="rk_…", name="cleveland")
    request = site.run("df = rk.data('heart')\\ndf.groupby('sex').num.mean()")
    request.wait(timeout=600)
    request.outputs

REST (httpx) for everything but execution; one websocket per session (a
background reader thread) for execute requests and live status, so that
released outputs arrive without polling.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

FINISHED = {"completed", "error", "failed", "interrupted"}
STATUS_ORDER = {"queued": 0, "running": 1, **dict.fromkeys(FINISHED, 2)}
DECIDED = {"released", "denied", "blocked"}


class RemoteKernelError(Exception):
    """Base of every error the client raises; the message says what to do."""


class AuthenticationError(RemoteKernelError):
    pass


class DatasiteUnreachable(RemoteKernelError):
    pass


class UnknownDataset(RemoteKernelError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RequestRejected(RemoteKernelError):
    """The datasite refused a call (4xx); ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "remote_kernel"


@dataclass
class RemoteOutput:
    """One output of a remote request, as the researcher may see it."""

    id: int
    request_id: int
    seq: int
    msg_type: str
    state: str
    summary: str = ""
    decided_by: str | None = None
    comment: str = ""
    content: dict[str, Any] | None = None

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> RemoteOutput:
        return cls(
            id=view["id"],
            request_id=view["request_id"],
            seq=view["seq"],
            msg_type=view["msg_type"],
            state=view["state"],
            summary=view.get("summary", ""),
            decided_by=view.get("decided_by"),
            comment=view.get("comment") or "",
            content=view.get("content"),
        )

    @property
    def released(self) -> bool:
        return self.state == "released"

    @property
    def text(self) -> str:
        """The released content as plain text ('' until released)."""
        if self.content is None:
            return ""
        if self.msg_type == "stream":
            return str(self.content.get("text", ""))
        if self.msg_type == "error":
            return f"{self.content.get('ename')}: {self.content.get('evalue')}"
        return str((self.content.get("data") or {}).get("text/plain", ""))


@dataclass
class RemoteRequest:
    """A cell submitted to one datasite; updated live by the session's channel."""

    site: str
    id: int
    code: str = ""
    status: str = "queued"
    message: str = ""
    _outputs: dict[int, RemoteOutput] = field(default_factory=dict)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _listeners: list[Callable[[RemoteRequest, RemoteOutput | None], None]] = field(
        default_factory=list
    )
    _refresh: Callable[[], None] | None = None

    @property
    def outputs(self) -> list[RemoteOutput]:
        with self._changed:
            return sorted(self._outputs.values(), key=lambda o: o.seq)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def decided(self) -> bool:
        """Finished running and every output released, denied or blocked."""
        return self.finished and all(o.state in DECIDED for o in self.outputs)

    def on_update(self, listener: Callable[[RemoteRequest, RemoteOutput | None], None]) -> None:
        """Call ``listener(request, output_or_None)`` on every later change (reader thread)."""
        self._listeners.append(listener)

    def wait(self, timeout: float | None = None, until: str = "decided") -> RemoteRequest:
        """Block until the request is ``"finished"`` (ran) or ``"decided"`` (all reviewed).

        Raises ``TimeoutError`` naming what is still outstanding.
        """
        if until not in ("finished", "decided"):
            raise ValueError("until must be 'finished' or 'decided'")
        deadline = None if timeout is None else time.monotonic() + timeout
        refreshed_at = time.monotonic()
        with self._changed:
            while not (self.finished if until == "finished" else self.decided):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    pending = sum(1 for o in self._outputs.values() if o.state not in DECIDED)
                    raise TimeoutError(
                        f"request {self.id} at {self.site} is {self.status} with "
                        f"{pending} output(s) pending review after {timeout} s"
                    )
                self._changed.wait(timeout=min(remaining or 5.0, 5.0))
                # Belt and braces: if the channel dropped, poll now and then.
                if self._refresh and time.monotonic() - refreshed_at > 5.0:
                    refreshed_at = time.monotonic()
                    self._changed.release()
                    try:
                        with contextlib.suppress(RemoteKernelError, httpx.HTTPError):
                            self._refresh()
                    finally:
                        self._changed.acquire()
        return self

    def _apply_request(self, view: dict[str, Any]) -> None:
        with self._changed:
            # Views can arrive out of order (a REST refresh racing a live event):
            # a request never moves back from finished, or from running to queued.
            if STATUS_ORDER.get(view["status"], 0) >= STATUS_ORDER.get(self.status, 0):
                self.status = view["status"]
            self.message = view.get("message") or ""
            self.code = view.get("code", self.code)
            for output_view in view.get("outputs") or []:
                self._outputs[output_view["id"]] = RemoteOutput.from_view(output_view)
            self._changed.notify_all()
        self._notify(None)

    def _apply_output(self, view: dict[str, Any]) -> None:
        output = RemoteOutput.from_view(view)
        with self._changed:
            self._outputs[output.id] = output
            self._changed.notify_all()
        self._notify(output)

    def _notify(self, output: RemoteOutput | None) -> None:
        for listener in list(self._listeners):
            with contextlib.suppress(Exception):
                listener(self, output)

    def __repr__(self) -> str:
        states: dict[str, int] = {}
        for output in self.outputs:
            states[output.state] = states.get(output.state, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "no outputs"
        return f"<RemoteRequest {self.id} at {self.site}: {self.status}, {summary}>"


class Datasite:
    """A connection to one datasite as one researcher."""

    def __init__(
        self,
        url: str,
        token: str,
        name: str | None = None,
        cache_dir: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self.http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
        )
        me = self._call("GET", "/api/me")
        self.user: str = me["name"]
        self.role: str = me["role"]
        self.name: str = name or me["datasite"]
        self.remote_name: str = me["datasite"]
        self.cache_dir = (cache_dir or default_cache_dir()) / _cache_key(self.url, self.name)
        self._session_id: str | None = None
        self._requests: dict[int, RemoteRequest] = {}
        self._lock = threading.RLock()
        self._ws: ClientConnection | None = None
        self._reader: threading.Thread | None = None
        self._waiters: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}

    def __repr__(self) -> str:
        return f"<Datasite {self.name} at {self.url} as {self.user} ({self.role})>"

    # --- HTTP ----------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise DatasiteUnreachable(
                f"cannot reach the datasite at {self.url} ({exc.__class__.__name__}: {exc}); "
                "check the URL and that the datasite server is running"
            ) from None
        if response.status_code == 401:
            raise AuthenticationError(
                f"the datasite at {self.url} rejected the token: "
                f"{_error_message(response)}. Ask its admin for a valid researcher token."
            )
        if response.status_code >= 400:
            raise RequestRejected(
                f"{self.url} refused {method} {path}: {_error_message(response)}",
                response.status_code,
            )
        if response.status_code == 204:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    # --- datasets ------------------------------------------------------------------------
    def datasets(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/datasets"))

    def schema(self, dataset: str) -> dict[str, Any]:
        try:
            return dict(self._call("GET", f"/api/datasets/{dataset}"))
        except RequestRejected as exc:
            if exc.status == 404:
                names = ", ".join(d["name"] for d in self.datasets()) or "none"
                raise UnknownDataset(
                    f"datasite {self.name!r} has no dataset {dataset!r} (available: {names})"
                ) from None
            raise

    def mock(self, dataset: str) -> pd.DataFrame:
        """The dataset's mock, downloaded once and cached per schema."""
        schema = self.schema(dataset)
        digest = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]
        path = self.cache_dir / f"{dataset}-{digest}.parquet"
        if not path.exists():
            data = self._call("GET", f"/api/datasets/{dataset}/mock")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return pd.read_parquet(io.BytesIO(path.read_bytes()))

    # --- sessions and execution ----------------------------------------------------------
    @property
    def session_id(self) -> str:
        with self._lock:
            if self._session_id is None:
                self._session_id = self._call("POST", "/api/sessions")["id"]
            return self._session_id

    def use_session(self, session_id: str) -> None:
        """Reattach to an earlier session (its kernel state, if still running, is kept)."""
        self._call("GET", f"/api/sessions/{session_id}")
        with self._lock:
            self._close_channel()
            self._session_id = session_id

    def _channel(self) -> ClientConnection:
        with self._lock:
            if self._ws is not None and self._reader is not None and self._reader.is_alive():
                return self._ws
            ws_url = "ws" + self.url[4:] + f"/api/sessions/{self.session_id}/channel"
            try:
                self._ws = ws_connect(
                    ws_url,
                    additional_headers={"Authorization": f"Bearer {self._token}"},
                    max_size=None,
                    open_timeout=30,
                )
            except InvalidStatus as exc:
                raise RequestRejected(
                    f"{self.url} refused the session channel (HTTP {exc.response.status_code})",
                    exc.response.status_code,
                ) from None
            except (OSError, WebSocketException) as exc:
                raise DatasiteUnreachable(f"cannot open a channel to {self.url}: {exc}") from None
            self._reader = threading.Thread(
                target=self._read_loop,
                args=(self._ws,),
                daemon=True,
                name=f"remote_kernel-{self.name}",
            )
            self._reader.start()
            # Catch up on anything that changed while no channel was open.
            for request in list(self._requests.values()):
                if not request.decided:
                    with contextlib.suppress(RemoteKernelError):
                        self._refresh_request(request.id)
            return self._ws

    def _read_loop(self, ws: ClientConnection) -> None:
        try:
            for raw in ws:
                self._dispatch(json.loads(raw))
        except (ConnectionClosed, OSError, ValueError):
            pass

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("request", "accepted") and "request" in event:
            self._handle(event["request"]["id"])._apply_request(event["request"])
        elif kind == "output":
            self._handle(event["output"]["request_id"])._apply_output(event["output"])
        ref = event.get("ref")
        if ref is not None and ref in self._waiters:
            done, box = self._waiters[ref]
            box.append(event)
            done.set()

    def _handle(self, request_id: int) -> RemoteRequest:
        with self._lock:
            request = self._requests.get(request_id)
            if request is None:
                request = RemoteRequest(site=self.name, id=request_id)
                request._refresh = lambda: self._refresh_request(request_id)
                self._requests[request_id] = request
            return request

    def run(self, code: str, timeout: float = 60.0) -> RemoteRequest:
        """Submit ``code`` to this researcher's kernel at the datasite; returns at once."""
        ws = self._channel()
        ref = uuid.uuid4().hex
        done, box = threading.Event(), []
        self._waiters[ref] = (done, box)
        try:
            ws.send(json.dumps({"type": "execute", "code": code, "ref": ref}))
            if not done.wait(timeout):
                raise DatasiteUnreachable(f"{self.url} did not acknowledge the request in time")
        finally:
            self._waiters.pop(ref, None)
        reply = box[0]
        if reply["type"] == "error":
            raise RequestRejected(
                f"{self.name} refused the cell: {reply['message']}", int(reply.get("status", 400))
            )
        return self._handle(reply["request"]["id"])  # the reader thread applied the view

    def request_json(self, request_id: int) -> dict[str, Any]:
        """A request as the datasite shows it to this token (code, status, outputs)."""
        return dict(self._call("GET", f"/api/requests/{request_id}"))

    def _refresh_request(self, request_id: int) -> RemoteRequest:
        view = self.request_json(request_id)
        request = self._handle(request_id)
        request._apply_request(view)
        return request

    def request(self, request_id: int) -> RemoteRequest:
        """A request by id, fresh from the datasite (with its released outputs)."""
        return self._refresh_request(request_id)

    def requests(self, status: str | None = None) -> list[RemoteRequest]:
        """All of this researcher's requests at this datasite, newest first."""
        params = {"outputs": "true", **({"status": status} if status else {})}
        views = self._call("GET", "/api/requests", params=params)
        result = []
        for view in views:
            request = self._handle(view["id"])
            request._apply_request(view)
            result.append(request)
        return result

    # --- reviewers ----------------------------------------------------------------------
    def review_queue(self) -> list[dict[str, Any]]:
        """Pending outputs with their request and the filter's findings (reviewer token)."""
        return list(self._call("GET", "/api/reviews"))

    def output(self, output_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/outputs/{output_id}"))

    def approve(self, output_id: int, comment: str = "") -> dict[str, Any]:
        body = {"decision": "approve", "comment": comment}
        return dict(self._call("POST", f"/api/outputs/{output_id}/review", json=body))

    def deny(self, output_id: int, comment: str) -> dict[str, Any]:
        body = {"decision": "deny", "comment": comment}
        return dict(self._call("POST", f"/api/outputs/{output_id}/review", json=body))

    def interrupt(self) -> None:
        if self._session_id:
            self._call("POST", f"/api/sessions/{self._session_id}/interrupt")

    def restart(self) -> None:
        if self._session_id:
            self._call("POST", f"/api/sessions/{self._session_id}/restart")

    def _close_channel(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
        self._ws = None

    def close(self, end_session: bool = False) -> None:
        """Close the channel (and, if asked, the session and its kernel at the datasite)."""
        with self._lock:
            self._close_channel()
            if end_session and self._session_id:
                with contextlib.suppress(RemoteKernelError):
                    self._call("DELETE", f"/api/sessions/{self._session_id}")
                self._session_id = None
        self.http.close()


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _cache_key(url: str, name: str) -> str:
    return f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


# --- the researcher's registry of connected sites -----------------------------------------------
_sites: dict[str, Datasite] = {}


def connect(url: str, token: str, name: str | None = None) -> Datasite:
    """Connect to a datasite (checks the token) and remember it under ``name``."""
    site = Datasite(url, token, name)
    old = _sites.get(site.name)
    if old is not None:
        old.close()
    _sites[site.name] = site
    return site


def sites() -> dict[str, Datasite]:
    """The datasites connected in this Python process, by name."""
    return dict(_sites)


def disconnect(name: str) -> None:
    site = _sites.pop(name, None)
    if site is not None:
        site.close()
