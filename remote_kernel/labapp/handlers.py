"""REST handlers under ``/remote-kernel/``: connections, datasets, requests, reviews.

Every handler is ``@tornado.web.authenticated`` (the Jupyter server's own
token or login), reads the saved connections, calls one or more datasites with
the saved token and returns JSON without the token. Every call to a datasite
goes through the researcher's :class:`~remote_kernel.researcher.api.DatasiteApi`
(its async variant, so the server's event loop never blocks), the one client of
the datasite API. Failures are the typed errors of
:mod:`remote_kernel.protocol.errors`, written by one :meth:`write_error` as
``{"error": {"status", "reason", "message"}}`` with the status of
:func:`~remote_kernel.protocol.errors.http_status` (502 when a datasite cannot
be reached), so the panels can show the message.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import TYPE_CHECKING, Any

from jupyter_server.base.handlers import APIHandler
from tornado import web

from remote_kernel.protocol.errors import (
    InputError,
    NotFound,
    RemoteKernelError,
    RequestRejected,
    error_body,
    http_status,
)
from remote_kernel.protocol.models import OutputState, Role
from remote_kernel.researcher.api import DatasiteApi
from remote_kernel.researcher.connections import (
    Connection,
    check_name,
    load_connections,
    remove_connection,
    save_connection,
)

if TYPE_CHECKING:
    from remote_kernel.labapp.app import RemoteKernelApp

PREFIX = "/remote-kernel"
REVIEWER_ROLES = {Role.REVIEWER.value}
INTERNAL_ERROR = "internal error in the remote_kernel server extension (see the server log)"


def unknown_connection(name: str) -> NotFound:
    return NotFound(f"no saved datasite connection named {name!r}")


def answer_status(exc: RemoteKernelError) -> int:
    """The status this server answers for one of our errors.

    As :func:`http_status`, except that a datasite's 401 becomes a 403 here: a
    401 from the Jupyter server would tell JupyterLab that its own login expired.
    """
    status = http_status(exc) or 500
    return 403 if status == 401 else status


class RemoteKernelHandler(APIHandler):
    """Base: JSON errors, the app's settings, calls to a datasite with a saved token."""

    @property
    def app(self) -> RemoteKernelApp:
        return self.settings["remote_kernel"]  # type: ignore[no-any-return]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error answer: one of our typed errors, tornado's own, or a bug (500)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, RemoteKernelError):
            status_code, message = answer_status(exc), str(exc)
            self.set_status(status_code)
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or self._reason
        else:
            message = INTERNAL_ERROR
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body(status_code, message)))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Our typed errors are answers, not bugs: one line, no traceback."""
        if isinstance(value, RemoteKernelError) and answer_status(value) != 500:
            self.log.warning(
                "remote_kernel: %s %s: %s", self.request.method, self.request.path, value
            )
        else:
            super().log_exception(typ, value, tb)

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def json_body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise InputError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise InputError("the request body must be a JSON object")
        return body

    def connection(self, name: str) -> Connection:
        connection = load_connections().get(name)
        if connection is None:
            raise unknown_connection(name)
        return connection

    def api(self, connection: Connection) -> DatasiteApi:
        """The connection's datasite, its errors worded for the panels ("<name>: …").

        A connection being made has no name yet: its errors read "new: …".
        """
        return DatasiteApi(
            connection.url,
            connection.token,
            label=connection.name or "new",
            timeout=self.app.request_timeout,
        )

    async def call(self, connection: Connection, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``path`` at the connection's datasite; its JSON answer, or a typed error."""
        return await self.api(connection).acall(self.app.http, method, path, **kwargs)


# --- connections ---------------------------------------------------------------------------
class ConnectionsHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self) -> None:
        """Saved connections with their health (checked concurrently, short timeout)."""
        connections = sorted(load_connections().values(), key=lambda c: c.name)
        timeout = self.app.health_timeout
        healths = await asyncio.gather(
            *(self.api(c).ahealth(self.app.http, timeout) for c in connections)
        )
        self.write_json(
            {
                "connections": [
                    {**c.public(), "health": health}
                    for c, health in zip(connections, healths, strict=True)
                ]
            }
        )

    @web.authenticated
    async def post(self) -> None:
        """Connect: check the token with the datasite (``/api/me``), then save it."""
        probe = new_connection(self.json_body())
        me = await self.call(probe, "GET", "/api/me")
        connection = identified(probe, me)
        await asyncio.to_thread(save_connection, connection)
        self.log.info(
            "remote_kernel: saved connection %s (%s as %s)",
            connection.name,
            connection.url,
            connection.user,
        )
        self.write_json({**connection.public(), "datasite": me.get("datasite")}, status=201)


def new_connection(body: dict[str, Any]) -> Connection:
    """The connection a connect form asks for, not yet checked (its name may be empty)."""
    url, token, name = body.get("url"), body.get("token"), body.get("name") or ""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InputError("'url' must be the datasite's http:// or https:// address")
    if not isinstance(token, str) or not token.strip():
        raise InputError("'token' is required (the datasite admin gives it to you)")
    if not isinstance(name, str):
        raise InputError("'name' must be a string")
    return Connection(name=name, url=url.rstrip("/"), token=token.strip())


def identified(probe: Connection, me: dict[str, Any]) -> Connection:
    """The probed connection with who the token belongs to (named after the site if unnamed)."""
    name = probe.name or str(me.get("datasite", ""))
    try:
        check_name(name)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    user, role = str(me.get("name", "")), str(me.get("role", ""))
    return Connection(name=name, url=probe.url, token=probe.token, user=user, role=role)


class ConnectionHandler(RemoteKernelHandler):
    @web.authenticated
    async def delete(self, name: str) -> None:
        if not await asyncio.to_thread(remove_connection, name):
            raise unknown_connection(name)
        self.set_status(204)
        self.finish()


# --- datasets ------------------------------------------------------------------------------
class DatasetsHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str) -> None:
        self.write_json(await self.call(self.connection(name), "GET", "/api/datasets"))


class DatasetHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str, dataset: str) -> None:
        path = f"/api/datasets/{dataset}"
        self.write_json(await self.call(self.connection(name), "GET", path))


class MockPreviewHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str, dataset: str) -> None:
        """The first rows of a dataset's mock as JSON (parsed off the event loop)."""
        path = f"/api/datasets/{dataset}/mock"
        parquet = await self.call(self.connection(name), "GET", path, raw=True)
        rows = self.app.mock_preview_rows
        self.write_json(await asyncio.to_thread(mock_preview, parquet, rows))


def mock_preview(parquet: bytes, rows: int) -> dict[str, Any]:
    import pandas as pd

    frame = pd.read_parquet(io.BytesIO(parquet))
    head = json.loads(frame.head(rows).to_json(orient="split", index=False, date_format="iso"))
    return {
        "columns": head["columns"],
        "dtypes": [str(t) for t in frame.dtypes],
        "rows": head["data"],
        "total_rows": len(frame),
    }


# --- researchers' requests -----------------------------------------------------------------
class RequestHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str, request_id: str) -> None:
        """A request as the datasite shows this connection's user (released content only)."""
        path = f"/api/requests/{int(request_id)}"
        self.write_json(await self.call(self.connection(name), "GET", path))


class RequestsHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str) -> None:
        """This connection's user's requests, newest first (no outputs).

        Lets the notebook find the request a run made when the run displayed
        nothing that names it (a cell that failed to start, or printed nothing).
        """
        path = "/api/requests"
        self.write_json(await self.call(self.connection(name), "GET", path))


# --- reviewers -----------------------------------------------------------------------------
def reviewer_connections() -> list[Connection]:
    return sorted(
        (c for c in load_connections().values() if c.role in REVIEWER_ROLES),
        key=lambda c: c.name,
    )


def researcher_connections() -> list[Connection]:
    return sorted(
        (c for c in load_connections().values() if c.role == Role.RESEARCHER.value),
        key=lambda c: c.name,
    )


class ReviewerSitesHandler(RemoteKernelHandler):
    """Base of the handlers that ask every reviewer (or researcher) connection the same thing."""

    async def at_every_site(
        self, path: str, connections: list[Connection] | None = None, **kwargs: Any
    ) -> tuple[list[tuple[Connection, Any]], list[dict[str, str]]]:
        """``[(connection, answer)]`` and ``[{site, message}]`` for the sites that failed.

        ``connections``: the reviewer connections unless given.
        """
        if connections is None:
            connections = reviewer_connections()
        results = await asyncio.gather(
            *(self.call(c, "GET", path, **kwargs) for c in connections),
            return_exceptions=True,
        )
        answers: list[tuple[Connection, Any]] = []
        errors: list[dict[str, str]] = []
        for connection, result in zip(connections, results, strict=True):
            if isinstance(result, RemoteKernelError):
                errors.append({"site": connection.name, "message": str(result)})
                continue
            if isinstance(result, BaseException):
                raise result
            answers.append((connection, result))
        return answers, errors


class ReviewQueueHandler(ReviewerSitesHandler):
    @web.authenticated
    async def get(self) -> None:
        """Pending outputs of every reviewer connection; a failing site is reported, not fatal.

        Each item is the datasite's review item as it is (its ``votes`` and
        ``required_reviews`` included; the datasite already left out the outputs
        this connection's reviewer voted on) plus ``site`` and ``reviewer``.
        """
        answers, errors = await self.at_every_site("/api/reviews")
        items = [
            {**item, "site": connection.name, "reviewer": connection.user}
            for connection, result in answers
            for item in result
        ]
        self.write_json({"items": items, "errors": errors})


def voted(output: dict[str, Any], reviewer: str) -> bool:
    """Whether ``reviewer`` has voted on this output (its ``votes``, in a reviewer's view)."""
    votes = output.get("votes")
    if not isinstance(votes, list):
        return False
    return any(isinstance(v, dict) and v.get("reviewer") == reviewer for v in votes)


class ReviewHistoryHandler(ReviewerSitesHandler):
    @web.authenticated
    async def get(self) -> None:
        """Decided outputs (newest first) at every reviewer connection's datasite.

        Items have the review queue's shape (the output in the reviewer's view
        with its request, votes included), so the panel shows history and queue
        alike. "Decided" is from the connection's reviewer's side: an output they
        voted on that waits for another reviewer (two-person rule) is listed too,
        still ``pending``, since their queue no longer has it.
        """
        answers, errors = await self.at_every_site("/api/requests", params={"outputs": "true"})
        items = history_items(answers)[: self.app.history_limit]
        self.write_json({"items": items, "errors": errors})


def history_items(answers: list[tuple[Connection, Any]]) -> list[dict[str, Any]]:
    """The outputs each connection's reviewer has had their say on, newest decision first."""
    items: list[dict[str, Any]] = []
    for connection, requests in answers:
        for request in requests:
            for output in request.pop("outputs", None) or []:
                pending = output.get("state") == OutputState.PENDING.value
                if pending and not voted(output, connection.user):
                    continue
                site = {"site": connection.name, "reviewer": connection.user}
                items.append({**output, "request": request, **site})
    items.sort(key=lambda item: item.get("decided_at") or "", reverse=True)
    return items


class OutputHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str, output_id: str) -> None:
        path = f"/api/outputs/{int(output_id)}"
        self.write_json(await self.call(self.connection(name), "GET", path))


class ReviewHandler(RemoteKernelHandler):
    @web.authenticated
    async def post(self, name: str, output_id: str) -> None:
        """Approve or deny at the datasite, as this connection's reviewer."""
        payload = review_body(self.json_body())
        path = f"/api/outputs/{int(output_id)}/review"
        self.write_json(await self.call(self.connection(name), "POST", path, json=payload))


def review_body(body: dict[str, Any]) -> dict[str, str]:
    """A reviewer's decision, checked before it goes to the datasite."""
    decision, comment = body.get("decision"), body.get("comment", "")
    if decision not in ("approve", "deny"):
        raise InputError('\'decision\' must be "approve" or "deny"')
    if not isinstance(comment, str):
        raise InputError("'comment' must be a string")
    if decision == "deny" and not comment.strip():
        raise InputError("a denial needs a comment: the researcher reads it")
    return {"decision": decision, "comment": comment}


# --- the researcher's privacy budgets (DP tier) ---------------------------------------------
class BudgetsHandler(ReviewerSitesHandler):
    @web.authenticated
    async def get(self) -> None:
        """The privacy budgets of every researcher connection, one line per site and dataset.

        ``{"budgets": [{site, dataset, epsilon_total, epsilon_spent, epsilon_left, …}],
        "errors": [{site, message}]}``: a site that does not answer is reported, not
        fatal. A datasite older than the DP tier (no ``/api/budgets``) has none.
        """
        connections = researcher_connections()
        answers, errors = await self.at_every_site("/api/budgets", connections)
        budgets = [
            {**line, "site": connection.name}
            for connection, lines in answers
            for line in lines
            if isinstance(line, dict)
        ]
        self.write_json({"budgets": budgets, "errors": errors})

    async def call(self, connection: Connection, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return await super().call(connection, method, path, **kwargs)
        except RequestRejected as exc:
            if exc.status != 404:
                raise
            return []  # a datasite without the DP tier: no budgets there


def route_table() -> list[tuple[str, type[RemoteKernelHandler]]]:
    name = r"(?P<name>[a-z0-9][a-z0-9_-]{0,62})"
    number = r"(?P<%s>[0-9]{1,18})"
    dataset = r"(?P<dataset>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})"
    return [
        (f"{PREFIX}/connections", ConnectionsHandler),
        (f"{PREFIX}/connections/{name}", ConnectionHandler),
        (f"{PREFIX}/connections/{name}/datasets", DatasetsHandler),
        (f"{PREFIX}/connections/{name}/datasets/{dataset}", DatasetHandler),
        (f"{PREFIX}/connections/{name}/datasets/{dataset}/mock", MockPreviewHandler),
        (f"{PREFIX}/connections/{name}/requests", RequestsHandler),
        (f"{PREFIX}/connections/{name}/requests/{number % 'request_id'}", RequestHandler),
        (f"{PREFIX}/connections/{name}/outputs/{number % 'output_id'}", OutputHandler),
        (f"{PREFIX}/connections/{name}/outputs/{number % 'output_id'}/review", ReviewHandler),
        (f"{PREFIX}/reviews", ReviewQueueHandler),
        (f"{PREFIX}/reviews/history", ReviewHistoryHandler),
        (f"{PREFIX}/budgets", BudgetsHandler),
    ]
