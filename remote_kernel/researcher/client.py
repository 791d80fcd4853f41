"""The researcher's client: connect to datasites, get mocks, run code, follow requests.

Plain Python, usable from a script, a notebook or the proxy kernel::

    import remote_kernel as rk
    site = rk.connect("http://127.0.0.1:8765", token="rk_…", name="cleveland")
    request = site.run("df = rk.data('heart')\\ndf.groupby('sex').num.mean()")
    request.wait(timeout=600)
    request.outputs

REST for everything but execution, through :class:`~.api.DatasiteApi` (the
one place that knows how to call the datasite API, shared with the JupyterLab
server extension); one websocket per session (a background reader thread) for
execute requests and live status, so that released outputs arrive without
polling.
"""

from __future__ import annotations

import base64
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

import pandas as pd
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from remote_kernel.protocol.errors import (
    DatasiteUnreachable,
    NoValue,
    RemoteKernelError,
    RequestRejected,
    UnknownDataset,
)
from remote_kernel.protocol.models import OutputState, RequestStatus
from remote_kernel.researcher.api import DEFAULT_TIMEOUT, DatasiteApi, sync_client

#: Request states after which nothing runs any more (completed, error, failed, interrupted).
FINISHED = {status.value for status in RequestStatus if status.finished}
#: Tables the datasite computed itself (sound tier); mirrors filter.QUERY_MIME.
QUERY_MIME = "application/vnd.remote-kernel.query+json"
#: A DP answer's facts (cost, error bars); mirrors datasite.dp_tier.DP_MIME.
DP_MIME = "application/vnd.remote-kernel.dp+json"


def dp_attrs(payload: dict[str, Any], output_id: int | None, site: str | None) -> dict[str, Any]:
    """``frame.attrs["dp"]`` of a DP answer: what it cost, what is left, and per aggregate
    column its error bars ("57.3 ± 4.1 at 95%") and half-widths, from the released payload.

    ``rk.exact(frame)`` reads ``sql`` and ``output_id`` from it.
    """
    columns = list(payload.get("columns") or [])
    keys = set(payload.get("keys") or [])

    def by_column(rows: Any) -> dict[str, list[Any]]:
        rows = rows or []
        return {c: [r[i] for r in rows] for i, c in enumerate(columns) if c not in keys}

    facts = {k: payload.get(k) for k in ("sql", "dataset", "epsilon", "delta", "epsilon_left")}
    return {
        **facts,
        "confidence": payload.get("confidence"),
        "error": by_column(payload.get("error")),
        "error_bars": by_column(payload.get("error_bars")),
        "notes": list(payload.get("notes") or []),
        "output_id": output_id,
        "site": site,
        "mock": False,
    }


def _is_model(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("kind") == "model"


STATUS_ORDER = {
    RequestStatus.QUEUED.value: 0,
    RequestStatus.RUNNING.value: 1,
    **dict.fromkeys(FINISHED, 2),
}
#: Final output states (conflicted: two reviewers disagreed, see the two-person rule).
DECIDED = {state.value for state in OutputState if state.decided}
RELEASED, DENIED = OutputState.RELEASED.value, OutputState.DENIED.value
BLOCKED, CONFLICTED = OutputState.BLOCKED.value, OutputState.CONFLICTED.value


#: Seconds between the attempts to reopen a channel that dropped (about 30 s in all).
RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)


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
        return self.state == RELEASED

    @property
    def data(self) -> dict[str, Any]:
        """The released mime bundle ({} for streams, errors and unreleased outputs)."""
        return dict((self.content or {}).get("data") or {})

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
    status: str = RequestStatus.QUEUED.value
    message: str = ""
    #: The live channel to the datasite dropped before this request finished.
    connection_lost: bool = False
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

    def value(self) -> Any:
        """The cell's last value as a Python object, once released.

        The value of the last expression (a DataFrame comes back as a DataFrame, a
        fitted scikit-learn model as a working model rebuilt from data, other objects
        as a :class:`~remote_kernel.protocol.values.PickledValue`); for a cell whose last
        value is a datasite table (``rk.query``), that released table; else a released
        model the cell displayed (``rk.fit_dp``).
        Raises :class:`NoValue` saying what stands in the way.
        """
        from remote_kernel.protocol.values import VALUE_MIME
        from remote_kernel.researcher.values import decode_value

        outputs = self.outputs
        results = [o for o in outputs if o.msg_type == "execute_result"]
        queries = [o for o in outputs if o.released and QUERY_MIME in o.data]
        if results:
            last = results[-1]
            if last.released and VALUE_MIME in last.data:
                return decode_value(last.data[VALUE_MIME], self.site)
            if last.released:
                raise NoValue(f"the value at {self.site} was released only as text")
            if last.state == DENIED:
                raise NoValue(
                    f"the value at {self.site} was denied by {last.decided_by}: {last.comment}"
                )
            if last.state == BLOCKED:
                raise NoValue(f"the value at {self.site} was blocked: {last.summary}")
            if last.state == CONFLICTED:
                raise NoValue(f"the reviewers at {self.site} disagreed: {last.comment}")
            raise NoValue(f"the value at {self.site} is pending review ({last.summary})")
        if queries:
            table = queries[-1].data[QUERY_MIME]
            frame = pd.DataFrame(table["data"], columns=table["columns"])
            dp = queries[-1].data.get(DP_MIME)
            if isinstance(dp, dict):
                frame.attrs["dp"] = dp_attrs(dp, queries[-1].id, self.site)
            return frame
        models = [o for o in outputs if o.released and o.msg_type == "display_data"]
        models = [o for o in models if _is_model(o.data.get(VALUE_MIME))]
        if models:  # a model the datasite fitted (rk.fit_dp) or a reviewer released
            return decode_value(models[-1].data[VALUE_MIME], self.site)
        if not self.finished:
            raise NoValue(f"the cell is still {self.status} at {self.site}")
        if self.status != RequestStatus.COMPLETED.value:
            raise NoValue(f"the cell {self.status} at {self.site}: {self.message}")
        raise NoValue(f"the cell at {self.site} has no value (its last line is not an expression)")

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
                        with contextlib.suppress(RemoteKernelError):
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
            self.connection_lost = False
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

    def _lose_connection(self) -> None:
        with self._changed:
            if self.finished:
                return
            self.connection_lost = True
            self._changed.notify_all()
        self._notify(None)

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
        timeout: float = DEFAULT_TIMEOUT,
        known_identity: tuple[str, str] | None = None,
    ) -> None:
        self.api = DatasiteApi(url, token, timeout=timeout)
        self.url = self.api.url
        self.http = sync_client(timeout)
        self.user: str
        self.role: str
        if name and known_identity:
            # A saved connection: who we are is known, the site is contacted only when used.
            self.user, self.role = known_identity
            self.name = self.remote_name = name
        else:
            me = self._call("GET", "/api/me")
            self.user, self.role = me["name"], me["role"]
            self.name = name or me["datasite"]
            self.remote_name = me["datasite"]
        self.cache_dir = (cache_dir or default_cache_dir()) / _cache_key(self.url, self.name)
        self._session_id: str | None = None
        self._requests: dict[int, RemoteRequest] = {}
        self._lock = threading.RLock()
        self._ws: ClientConnection | None = None
        self._reader: threading.Thread | None = None
        self._waiters: dict[str, tuple[threading.Event, list[dict[str, Any]]]] = {}

    @classmethod
    def from_connection(cls, connection: Any) -> Datasite:
        """A saved :class:`~.connections.Connection`, contacted only when used."""
        return cls(
            connection.url,
            connection.token,
            connection.name,
            known_identity=(connection.user, connection.role or "researcher"),
        )

    def __repr__(self) -> str:
        return f"<Datasite {self.name} at {self.url} as {self.user} ({self.role})>"

    # --- HTTP ----------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.api.call(self.http, method, path, **kwargs)

    # --- privacy budgets -----------------------------------------------------------------
    def budget(self) -> list[dict[str, Any]]:
        """Your privacy budgets here (DP tier): per dataset, ε and δ granted, spent and left."""
        return list(self._call("GET", "/api/budgets"))

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
            data = self._call("GET", f"/api/datasets/{dataset}/mock", raw=True)
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
            ws_url = self.api.ws_url(f"/api/sessions/{self.session_id}/channel")
            try:
                self._ws = ws_connect(
                    ws_url,
                    additional_headers=self.api.headers,
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
        if ws is self._ws:
            # Not a close we asked for: whatever was still running may never report back.
            for request in list(self._requests.values()):
                request._lose_connection()
            # A cell sent but not acknowledged will never be: say so now, not at the
            # timeout (the next run() opens a new channel, maybe to another replica).
            for ref, (done, box) in list(self._waiters.items()):
                if not done.is_set():
                    box.append({"type": "lost", "ref": ref})
                    done.set()
            threading.Thread(
                target=self._reconnect, args=(ws,), daemon=True, name=f"{self.name}-reconnect"
            ).start()

    def _reconnect(self, lost: ClientConnection) -> None:
        """The channel dropped (the server restarted, a replica died): open it again, with
        backoff, so that live events resume without the researcher doing anything. The
        new channel may reach another replica behind the balancer; :meth:`_channel`
        then catches up on what changed meanwhile. Gives up after about half a minute
        (the next :meth:`run` opens one anyway)."""
        reader = self._reader
        for delay in RECONNECT_DELAYS:
            time.sleep(delay)
            if reader is not None:
                reader.join(timeout=5)
            with self._lock:
                if self._ws is not lost:
                    return  # closed by us, or opened again by run() meanwhile
                try:
                    self._channel()
                    return
                except RemoteKernelError:
                    continue

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

    def run(
        self, code: str, timeout: float = 60.0, push: dict[str, Any] | None = None
    ) -> RemoteRequest:
        """Submit ``code`` to this researcher's kernel at the datasite; returns at once.

        ``push``: local objects to define in the remote kernel before the cell runs
        (sent as cloudpickle bytes, shown to reviewers, loaded only by that kernel).
        """
        message: dict[str, Any] = {"type": "execute", "code": code}
        if push:
            message["push"] = encode_pushes(push)
        ws = self._channel()
        ref = uuid.uuid4().hex
        message["ref"] = ref
        done, box = threading.Event(), []
        self._waiters[ref] = (done, box)
        try:
            ws.send(json.dumps(message))
            if not done.wait(timeout):
                raise DatasiteUnreachable(f"{self.url} did not acknowledge the request in time")
        finally:
            self._waiters.pop(ref, None)
        reply = box[0]
        if reply["type"] == "lost":
            raise DatasiteUnreachable(
                f"the channel to {self.url} closed before the datasite acknowledged the cell; "
                "it may or may not have been accepted (see requests())"
            )
        if reply["type"] == "error":
            raise RequestRejected(
                f"{self.name} refused the cell: {reply['message']}", int(reply.get("status", 400))
            )
        return self._handle(reply["request"]["id"])  # the reader thread applied the view

    def follow(self) -> None:
        """Open the live channel so that decisions on earlier requests arrive here too."""
        self._channel()

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
        ws, self._ws = self._ws, None  # first, so the reader knows the close was ours
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.close()

    def close(self, end_session: bool = False) -> None:
        """Close the channel (and, if asked, the session and its kernel at the datasite)."""
        with self._lock:
            self._close_channel()
            if end_session and self._session_id:
                with contextlib.suppress(RemoteKernelError):
                    self._call("DELETE", f"/api/sessions/{self._session_id}")
                self._session_id = None
        self.http.close()


def encode_pushes(objects: dict[str, Any]) -> list[dict[str, str]]:
    """Local objects as push entries (cloudpickle, base64), with a clear error per object."""
    from remote_kernel.protocol.values import type_name
    from remote_kernel.researcher.values import pickle_for_push

    entries = []
    for name, obj in objects.items():
        if not name.isidentifier():
            raise RemoteKernelError(f"cannot push {name!r}: not a Python variable name")
        try:
            data = pickle_for_push(obj)
        except Exception as exc:
            raise RemoteKernelError(f"cannot push {name!r}: it does not pickle ({exc})") from None
        entries.append(
            {"name": name, "type": type_name(obj), "data": base64.b64encode(data).decode()}
        )
    return entries


def _cache_key(url: str, name: str) -> str:
    return f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


# --- the researcher's registry of connected sites -----------------------------------------------
_sites: dict[str, Datasite] = {}


def connect(url: str, token: str, name: str | None = None, save: bool = False) -> Datasite:
    """Connect to a datasite (checks the token) and remember it under ``name``.

    ``save=True`` also keeps the connection in the researcher's 0600 connections
    file, so that every later kernel (and the JupyterLab panels) finds it without
    the token appearing in a notebook.
    """
    site = Datasite(url, token, name)
    old = _sites.get(site.name)
    if old is not None:
        old.close()
    _sites[site.name] = site
    if save:
        from remote_kernel.researcher.connections import Connection, save_connection

        save_connection(Connection(site.name, site.url, token, site.user, site.role))
    return site


def budget() -> pd.DataFrame:
    """Your privacy budgets at every connected site, one row per site and dataset."""
    rows = [
        {"site": name, **line}
        for name, site in sites().items()
        if site.role == "researcher"
        for line in site.budget()
    ]
    columns = ["site", "dataset", "epsilon_total", "epsilon_spent", "epsilon_left", "charges"]
    frame = pd.DataFrame(rows, columns=[*columns, "delta_total", "delta_spent", "delta_left"])
    return frame[columns + [c for c in ("delta_total", "delta_left") if frame[c].any()]]


def sites() -> dict[str, Datasite]:
    """The datasites this Python process can use, by name.

    Those connected with :func:`connect`, and every saved researcher connection
    (``remote-kernel connect`` or the Datasites panel), contacted only when used.
    """
    from remote_kernel.researcher.connections import load_connections

    try:
        saved = load_connections()
    except ValueError:
        saved = {}
    for name, connection in saved.items():
        if name not in _sites and connection.role in ("", "researcher"):
            _sites[name] = Datasite.from_connection(connection)
    return dict(_sites)


def disconnect(name: str) -> None:
    """Close this process's connection (a saved one: ``remote-kernel disconnect NAME``)."""
    site = _sites.pop(name, None)
    if site is not None:
        site.close()
