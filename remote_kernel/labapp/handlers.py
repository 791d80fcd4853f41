"""REST handlers under ``/remote-kernel/``: connections, datasets, requests, reviews.

Every handler is ``@tornado.web.authenticated`` (the Jupyter server's own
token or login), reads the saved connections, calls one or more datasites with
the saved token (async httpx, so the server's event loop never blocks) and
returns JSON without the token. Failures are typed (:class:`LabApiError`)
and written as ``{"error": {"status", "message"}}`` with a 4xx status (502
when a datasite cannot be reached), so the panels can show the message.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import TYPE_CHECKING, Any

import httpx
from jupyter_server.base.handlers import APIHandler
from tornado import web

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
REVIEWER_ROLES = {"reviewer"}


class LabApiError(web.HTTPError):
    """An error whose message is meant for the person at the panel."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status)
        self.message = message


class BadInput(LabApiError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class UnknownConnection(LabApiError):
    def __init__(self, name: str) -> None:
        super().__init__(404, f"no saved datasite connection named {name!r}")


class DatasiteRefused(LabApiError):
    """The datasite answered with an error; its message is passed on.

    A datasite's 401 becomes a 403 here: a 401 from this server would tell
    JupyterLab that the *Jupyter* login expired.
    """

    def __init__(self, connection: str, status: int, message: str) -> None:
        super().__init__(403 if status == 401 else status, f"{connection}: {message}")


class DatasiteUnreachable(LabApiError):
    def __init__(self, connection: str, url: str, detail: str) -> None:
        super().__init__(502, f"{connection}: cannot reach the datasite at {url} ({detail})")


class RemoteKernelHandler(APIHandler):
    """Base: JSON errors, the app's settings, calls to a datasite with a saved token."""

    @property
    def app(self) -> RemoteKernelApp:
        return self.settings["remote_kernel"]  # type: ignore[no-any-return]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, LabApiError):
            message = exc.message
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or self._reason
        else:
            message = "internal error in the remote_kernel server extension (see the server log)"
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": {"status": status_code, "message": message}}))

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def json_body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise BadInput("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise BadInput("the request body must be a JSON object")
        return body

    def connection(self, name: str) -> Connection:
        connection = load_connections().get(name)
        if connection is None:
            raise UnknownConnection(name)
        return connection

    async def datasite(
        self,
        connection: Connection,
        method: str,
        path: str,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Call ``path`` at the connection's datasite with its token; raise typed errors."""
        try:
            response = await self.app.http.request(
                method,
                connection.url.rstrip("/") + path,
                headers={"Authorization": f"Bearer {connection.token}"},
                timeout=timeout or self.app.request_timeout,
                **kwargs,
            )
        except httpx.HTTPError as exc:
            raise DatasiteUnreachable(
                connection.name, connection.url, f"{type(exc).__name__}: {exc}"
            ) from None
        if response.status_code >= 400:
            raise DatasiteRefused(connection.name, response.status_code, datasite_message(response))
        return response

    async def datasite_json(
        self, connection: Connection, method: str, path: str, **kwargs: Any
    ) -> Any:
        response = await self.datasite(connection, method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            message = "answered with something that is not JSON"
            raise DatasiteRefused(connection.name, 502, message) from None


def datasite_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


# --- connections ---------------------------------------------------------------------------
class ConnectionsHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self) -> None:
        """Saved connections with their health (checked concurrently, short timeout)."""
        connections = sorted(load_connections().values(), key=lambda c: c.name)
        healths = await asyncio.gather(*(self._health(c) for c in connections))
        self.write_json(
            {
                "connections": [
                    {**c.public(), "health": health}
                    for c, health in zip(connections, healths, strict=True)
                ]
            }
        )

    async def _health(self, connection: Connection) -> dict[str, Any]:
        started = time.monotonic()
        try:
            response = await self.app.http.get(
                connection.url.rstrip("/") + "/api/health", timeout=self.app.health_timeout
            )
            payload = response.json() if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError) as exc:
            return {"ok": False, "message": f"unreachable ({type(exc).__name__})"}
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        if response.status_code != 200:
            return {"ok": False, "message": f"HTTP {response.status_code}"}
        return {
            "ok": True,
            "message": "ok",
            "latency_ms": latency_ms,
            "datasite": payload.get("name"),
            "version": payload.get("version"),
        }

    @web.authenticated
    async def post(self) -> None:
        """Connect: check the token with the datasite (``/api/me``), then save it."""
        body = self.json_body()
        url, token, name = body.get("url"), body.get("token"), body.get("name") or ""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BadInput("'url' must be the datasite's http:// or https:// address")
        if not isinstance(token, str) or not token.strip():
            raise BadInput("'token' is required (the datasite admin gives it to you)")
        if not isinstance(name, str):
            raise BadInput("'name' must be a string")
        probe = Connection(name=name or "new", url=url.rstrip("/"), token=token.strip())
        me = await self.datasite_json(probe, "GET", "/api/me")
        name = name or str(me.get("datasite", ""))
        try:
            check_name(name)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        connection = Connection(
            name=name,
            url=probe.url,
            token=probe.token,
            user=str(me.get("name", "")),
            role=str(me.get("role", "")),
        )
        await asyncio.to_thread(save_connection, connection)
        self.log.info("remote_kernel: saved connection %s (%s as %s)", name, url, connection.user)
        self.write_json({**connection.public(), "datasite": me.get("datasite")}, status=201)


class ConnectionHandler(RemoteKernelHandler):
    @web.authenticated
    async def delete(self, name: str) -> None:
        if not await asyncio.to_thread(remove_connection, name):
            raise UnknownConnection(name)
        self.set_status(204)
        self.finish()


# --- datasets ------------------------------------------------------------------------------
class DatasetsHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str) -> None:
        self.write_json(await self.datasite_json(self.connection(name), "GET", "/api/datasets"))


class DatasetHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str, dataset: str) -> None:
        path = f"/api/datasets/{dataset}"
        self.write_json(await self.datasite_json(self.connection(name), "GET", path))


class MockPreviewHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str, dataset: str) -> None:
        """The first rows of a dataset's mock as JSON (parsed off the event loop)."""
        path = f"/api/datasets/{dataset}/mock"
        response = await self.datasite(self.connection(name), "GET", path)
        rows = self.app.mock_preview_rows
        self.write_json(await asyncio.to_thread(mock_preview, response.content, rows))


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
        self.write_json(await self.datasite_json(self.connection(name), "GET", path))


class RequestsHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str) -> None:
        """This connection's user's requests, newest first (no outputs).

        Lets the notebook find the request a run made when the run displayed
        nothing that names it (a cell that failed to start, or printed nothing).
        """
        path = "/api/requests"
        self.write_json(await self.datasite_json(self.connection(name), "GET", path))


# --- reviewers -----------------------------------------------------------------------------
def reviewer_connections() -> list[Connection]:
    return sorted(
        (c for c in load_connections().values() if c.role in REVIEWER_ROLES),
        key=lambda c: c.name,
    )


class ReviewerSitesHandler(RemoteKernelHandler):
    """Base of the handlers that ask every reviewer connection's datasite the same thing."""

    async def at_every_site(
        self, path: str, **kwargs: Any
    ) -> tuple[list[tuple[Connection, Any]], list[dict[str, str]]]:
        """``[(connection, answer)]`` and ``[{site, message}]`` for the sites that failed."""
        connections = reviewer_connections()
        results = await asyncio.gather(
            *(self.datasite_json(c, "GET", path, **kwargs) for c in connections),
            return_exceptions=True,
        )
        answers: list[tuple[Connection, Any]] = []
        errors: list[dict[str, str]] = []
        for connection, result in zip(connections, results, strict=True):
            if isinstance(result, LabApiError):
                errors.append({"site": connection.name, "message": result.message})
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
        items: list[dict[str, Any]] = []
        for connection, result in answers:
            for request in result:
                outputs = request.pop("outputs", None) or []
                for output in outputs:
                    if output.get("state") == "pending" and not voted(output, connection.user):
                        continue
                    items.append(
                        {
                            **output,
                            "request": request,
                            "site": connection.name,
                            "reviewer": connection.user,
                        }
                    )
        items.sort(key=lambda item: item.get("decided_at") or "", reverse=True)
        self.write_json({"items": items[: self.app.history_limit], "errors": errors})


class OutputHandler(RemoteKernelHandler):
    @web.authenticated
    async def get(self, name: str, output_id: str) -> None:
        path = f"/api/outputs/{int(output_id)}"
        self.write_json(await self.datasite_json(self.connection(name), "GET", path))


class ReviewHandler(RemoteKernelHandler):
    @web.authenticated
    async def post(self, name: str, output_id: str) -> None:
        """Approve or deny at the datasite, as this connection's reviewer."""
        body = self.json_body()
        decision, comment = body.get("decision"), body.get("comment", "")
        if decision not in ("approve", "deny"):
            raise BadInput('\'decision\' must be "approve" or "deny"')
        if not isinstance(comment, str):
            raise BadInput("'comment' must be a string")
        if decision == "deny" and not comment.strip():
            raise BadInput("a denial needs a comment: the researcher reads it")
        path = f"/api/outputs/{int(output_id)}/review"
        payload = {"decision": decision, "comment": comment}
        self.write_json(await self.datasite_json(self.connection(name), "POST", path, json=payload))


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
    ]
