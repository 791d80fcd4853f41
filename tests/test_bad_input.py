"""Invariant 7: bad input gets a clear JSON error and changes nothing.

One datasite with a small code limit (1000 bytes) serves every case. Around each bad
call the whole store is read (row counts, as ``Store.counts()``, and every row of every
table); it must be identical before and after. All calls use valid tokens, because a
failed login is (rightly) audited.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from sqlalchemy import text
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.http.app import body_limit
from remote_kernel.datasite.store import Store

from .conftest import RunningDatasite, make_datasite, wait_finished

CODE_LIMIT = 1000
FINISHED = {"completed", "error", "failed", "interrupted"}
TABLES = ("users", "sessions", "requests", "pushes", "outputs", "reviews", "audit")
DOC = yaml.safe_load((Path(__file__).resolve().parent.parent / "docs/openapi.yaml").read_text())


@dataclass
class Site:
    site: RunningDatasite
    http: httpx.Client
    store: Store
    ids: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, caller: str, **kwargs: Any) -> httpx.Response:
        path = path.format(**self.ids)
        return self.http.request(method, path, headers=self.site.headers(caller), **kwargs)

    def ok(self, method: str, path: str, caller: str, status: int = 200, **kw: Any) -> Any:
        response = self.call(method, path, caller, **kw)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def snapshot(self) -> tuple[dict[str, int], dict[str, list[Any]]]:
        with self.store.engine.connect() as db:
            rows = {t: db.execute(text(f"SELECT * FROM {t} ORDER BY 1")).all() for t in TABLES}
        return self.store.counts(), rows

    def wait_finished(self, request_id: int) -> dict[str, Any]:
        return wait_finished(lambda path: self.ok("GET", path, "alice"), request_id)

    def channel(self, session: str) -> ClientConnection:
        url = f"ws://127.0.0.1:{self.site.port}/api/sessions/{self.ids[session]}/channel"
        return ws_connect(url, additional_headers=self.site.headers("alice"), open_timeout=10)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    running = make_datasite(tmp_path_factory.mktemp("bad-input"), max_code_bytes=CODE_LIMIT)
    running.start()
    site = Site(running, httpx.Client(base_url=running.url, timeout=60), running.store())
    try:
        ids = site.ids
        ids["session"] = site.ok("POST", "/api/sessions", "alice", 201)["id"]
        ids["quiet"] = site.ok("POST", "/api/sessions", "alice", 201)["id"]  # never a kernel
        ids["closed"] = site.ok("POST", "/api/sessions", "alice", 201)["id"]
        ids["carols"] = site.ok("POST", "/api/sessions", "carol", 201)["id"]
        site.ok("DELETE", "/api/sessions/{closed}", "alice", 204)
        for key in ("decided", "pending"):
            body = {"code": f"print({key!r})"}
            request = site.ok("POST", "/api/sessions/{session}/requests", "alice", 201, json=body)
            view = site.wait_finished(request["id"])
            assert view["status"] == "completed", view
            (output,) = view["outputs"]
            ids[key] = str(output["id"])
        site.ok("POST", "/api/outputs/{decided}/review", "bob", json={"decision": "approve"})
        yield site
    finally:
        site.http.close()
        site.store.close()
        running.stop()


def assert_error(response: httpx.Response, status: int, needles: tuple[str, ...]) -> str:
    where = f"{response.request.method} {response.request.url} -> {response.text[:500]}"
    assert response.status_code == status, where
    assert response.headers["content-type"].startswith("application/json"), where
    body = response.json()
    error_schema = {"$ref": "#/components/schemas/Error", "components": DOC["components"]}
    jsonschema.Draft202012Validator(error_schema).validate(body)
    error = body["error"]
    assert error["status"] == status, where
    message = error["message"]
    for needle in needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in {message!r}"
    return message


def check_rejected(
    site: Site, method: str, path: str, caller: str, status: int, *needles: str, **kwargs: Any
) -> str:
    before = site.snapshot()
    response = site.call(method, path, caller, **kwargs)
    after = site.snapshot()
    message = assert_error(response, status, needles)
    assert after[0] == before[0], f"row counts changed: {before[0]} -> {after[0]}"
    assert after == before, "a rejected call changed the store"
    return message


SUBMIT = "/api/sessions/{session}/requests"


@pytest.mark.parametrize(
    ("kwargs", "status", "needles"),
    [
        ({"content": b'{"code": "print(1)"'}, 400, ("not valid JSON",)),
        ({"content": b"code=print(1)"}, 400, ("not valid JSON",)),
        ({"content": b'{"code": "\xff\xfe"}'}, 400, ("not valid JSON",)),
        ({"content": b""}, 400, ("JSON object",)),
        ({"content": b"null"}, 400, ("JSON object",)),
        ({"json": ["print(1)"]}, 400, ("JSON object",)),
        ({"json": "print(1)"}, 400, ("JSON object",)),
        ({"json": 5}, 400, ("JSON object",)),
        ({"json": {}}, 400, ("missing field 'code'",)),
        ({"json": {"source": "print(1)"}}, 400, ("missing field 'code'",)),
        ({"json": {"code": 5}}, 400, ("'code' must be a string",)),
        ({"json": {"code": ["print(1)"]}}, 400, ("'code' must be a string",)),
        ({"json": {"code": None}}, 400, ("'code' must be a string",)),
        ({"json": {"code": {"text": "print(1)"}}}, 400, ("'code' must be a string",)),
        ({"json": {"code": True}}, 400, ("'code' must be a string",)),
        ({"content": b'{"code": "print(\\"\\ud800\\")"}'}, 400, ("unicode",)),
        ({"content": b"[" * 100_000}, 400, ("nested too deeply",)),
        ({"content": b'{"code": ' + b"[" * 100_000}, 400, ("nested too deeply",)),
        ({"json": {"code": "#" * (CODE_LIMIT + 1)}}, 413, (f"limit of {CODE_LIMIT} bytes",)),
        # The limit is in UTF-8 bytes: 501 characters, 1002 bytes.
        ({"json": {"code": "é" * 501}}, 413, ("1002 bytes", f"limit of {CODE_LIMIT} bytes")),
        ({"json": {"code": "#" * 500_000}}, 413, (f"limit of {CODE_LIMIT} bytes",)),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None,
)
def test_bad_submission(bad: Site, kwargs: dict[str, Any], status: int, needles: tuple) -> None:
    check_rejected(bad, "POST", SUBMIT, "alice", status, *needles, **kwargs)


def test_submission_to_a_closed_session(bad: Site) -> None:
    path = "/api/sessions/{closed}/requests"
    check_rejected(bad, "POST", path, "alice", 400, "closed", json={"code": "print(1)"})


UNKNOWN_SESSIONS = ["nope", str(uuid.uuid4()), "1", "x" * 300, "%20", "{carols}"]
UNKNOWN_NUMBERS = ["999999", "0", "-1", "abc", "1.5", "1e3", "0x10", "9" * 30, "%20"]


@pytest.mark.parametrize("session", UNKNOWN_SESSIONS)
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("DELETE", "", None),
        ("POST", "/interrupt", None),
        ("POST", "/restart", None),
        ("POST", "/requests", {"code": "print(1)"}),
    ],
)
def test_unknown_session(bad: Site, session: str, method: str, suffix: str, body: Any) -> None:
    path = f"/api/sessions/{session}{suffix}"
    kwargs = {"json": body} if body is not None else {}
    check_rejected(bad, method, path, "alice", 404, "no session", **kwargs)


@pytest.mark.parametrize("number", UNKNOWN_NUMBERS)
@pytest.mark.parametrize("caller", ["alice", "bob"])
def test_unknown_request_and_output(bad: Site, number: str, caller: str) -> None:
    check_rejected(bad, "GET", f"/api/requests/{number}", caller, 404, "no request")
    check_rejected(bad, "GET", f"/api/outputs/{number}", caller, 404, "no output")


@pytest.mark.parametrize("number", UNKNOWN_NUMBERS)
def test_review_of_unknown_output(bad: Site, number: str) -> None:
    path = f"/api/outputs/{number}/review"
    check_rejected(bad, "POST", path, "bob", 404, "no output", json={"decision": "approve"})


def test_unknown_dataset_route_and_method(bad: Site) -> None:
    check_rejected(bad, "GET", "/api/datasets/nope", "alice", 404, "no dataset 'nope'", "heart")
    check_rejected(bad, "GET", "/api/datasets/nope/mock", "alice", 404, "no dataset 'nope'")
    check_rejected(bad, "GET", "/api/nope", "alice", 404, "no route")
    check_rejected(bad, "GET", "/api/sessions/{session}/nope", "alice", 404, "no route")
    for method, path in [
        ("PUT", "/api/me"),
        ("DELETE", "/api/requests"),
        ("PATCH", "/api/sessions/{session}"),
        ("GET", "/api/outputs/{pending}/review"),
        ("POST", "/api/sessions/{session}/channel"),
    ]:
        check_rejected(bad, method, path, "alice", 405, "not allowed")


def test_plain_get_of_the_channel(bad: Site) -> None:
    check_rejected(bad, "GET", "/api/sessions/{session}/channel", "alice", 400, "websocket")


@pytest.mark.parametrize(
    "path",
    ["/api/requests/%ff", "/api/outputs/%C3%28", "/api/sessions/%ff", "/api/sessions/%ff/channel"],
)
def test_path_that_is_not_utf8(bad: Site, path: str) -> None:
    check_rejected(bad, "GET", path, "alice", 400, "invalid unicode")


def test_wrong_roles(bad: Site) -> None:
    check_rejected(bad, "POST", "/api/sessions", "bob", 403, "researcher")
    check_rejected(bad, "POST", SUBMIT, "bob", 403, "researcher", json={"code": "print(1)"})
    check_rejected(bad, "POST", SUBMIT, "admin", 403, "researcher", json={"code": "print(1)"})
    review = {"decision": "approve"}
    for caller in ("alice", "admin"):
        path = "/api/outputs/{pending}/review"
        check_rejected(bad, "POST", path, caller, 403, "reviewer", json=review)
    check_rejected(bad, "GET", "/api/reviews", "alice", 403, "reviewer")


REVIEW = "/api/outputs/{pending}/review"


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"content": b"approve"}, ("not valid JSON",)),
        ({"content": b""}, ("JSON object",)),
        ({"json": ["approve"]}, ("JSON object",)),
        ({"json": {}}, ("'decision'",)),
        ({"json": {"decision": "maybe"}}, ("'decision'", "approve", "deny")),
        ({"json": {"decision": "APPROVE"}}, ("'decision'",)),
        ({"json": {"decision": "approve "}}, ("'decision'",)),
        ({"json": {"decision": True}}, ("'decision'",)),
        ({"json": {"decision": None}}, ("'decision'",)),
        ({"json": {"decision": ["approve"]}}, ("'decision'",)),
        ({"json": {"decision": {"approve": 1}}}, ("'decision'",)),
        ({"json": {"decision": "approve", "comment": 5}}, ("'comment'",)),
        ({"json": {"decision": "deny"}}, ("comment",)),
        ({"json": {"decision": "deny", "comment": ""}}, ("comment",)),
        ({"json": {"decision": "deny", "comment": "  \n\t"}}, ("comment",)),
        ({"content": b'{"decision": "deny", "comment": "\\udfff"}'}, ("unicode",)),
        ({"content": b'{"decision": ' + b"[" * 100_000}, ("nested too deeply",)),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None,
)
def test_bad_review(bad: Site, kwargs: dict[str, Any], needles: tuple[str, ...]) -> None:
    check_rejected(bad, "POST", REVIEW, "bob", 400, *needles, **kwargs)
    assert bad.ok("GET", "/api/outputs/{pending}", "bob")["state"] == "pending"


@pytest.mark.parametrize(
    "body", [{"decision": "approve"}, {"decision": "deny", "comment": "too late"}]
)
def test_review_of_a_decided_output(bad: Site, body: dict[str, str]) -> None:
    path = "/api/outputs/{decided}/review"
    check_rejected(bad, "POST", path, "bob", 409, "already released by bob", json=body)


def test_bad_query_arguments_change_nothing(bad: Site) -> None:
    before = bad.snapshot()
    response = bad.call("GET", "/api/requests?outputs=1&x=1", "alice")  # unknown: ignored
    assert response.status_code == 200 and isinstance(response.json(), list)
    assert bad.snapshot() == before
    check_rejected(bad, "GET", "/api/requests?outputs=maybe", "alice", 400, "'outputs'")
    check_rejected(bad, "GET", "/api/requests?status=bogus", "alice", 400, "unknown status")
    check_rejected(bad, "GET", "/api/requests?status=%ff", "alice", 400, "status")


def post_over_the_body_limit(bad: Site) -> tuple[int, bytes, bytes]:
    """Announce a body one byte over the server's limit; tornado answers from the headers."""
    limit = body_limit(DatasiteConfig.load(bad.site.directory))
    head = (
        f"POST /api/sessions/{bad.ids['session']}/requests HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {bad.site.tokens['alice']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {limit + 1}\r\n\r\n"
    )
    answer = b""
    with socket.create_connection(("127.0.0.1", bad.site.port), timeout=10) as sock:
        sock.sendall(head.encode())
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), headers, body


def test_body_over_the_server_limit_changes_nothing(bad: Site) -> None:
    before = bad.snapshot()
    status, _, _ = post_over_the_body_limit(bad)
    assert status in (400, 413)
    assert bad.snapshot() == before


@pytest.mark.xfail(
    strict=True,
    reason="tornado's HTTPServer refuses a body over max_body_size before any handler "
    "runs: an empty 400, not a JSON error (needs a fix in server/app.py)",
)
def test_body_over_the_server_limit_gets_a_json_error(bad: Site) -> None:
    status, headers, body = post_over_the_body_limit(bad)
    assert b"application/json" in headers.lower()
    assert json.loads(body)["error"]["status"] == status == 413


# --- the websocket channel -------------------------------------------------------------------
SERVER_FRAME = {
    **DOC["components"]["schemas"]["ChannelServerMessage"],
    "components": DOC["components"],
}


def exchange(ws: ClientConnection, frame: str | bytes) -> dict[str, Any]:
    ws.send(frame)
    answer = json.loads(ws.recv(timeout=10))
    jsonschema.Draft202012Validator(SERVER_FRAME).validate(answer)
    return answer


def still_open(ws: ClientConnection) -> None:
    assert exchange(ws, json.dumps({"type": "interrupt", "ref": "ping"})) == {
        "type": "interrupted",
        "ref": "ping",
    }


@pytest.mark.parametrize(
    ("frame", "status", "needle"),
    [
        ("not json", 400, "not valid JSON"),
        ("", 400, "not valid JSON"),
        ("{'type': 'execute'}", 400, "not valid JSON"),
        (b"\xff\x00binary", 400, "not valid JSON"),
        ("[]", 400, "must be an object"),
        ('["execute", "print(1)"]', 400, "must be an object"),
        ("5", 400, "must be an object"),
        ("null", 400, "must be an object"),
        ('{"type": "nope"}', 400, "unknown message type 'nope'"),
        ("{}", 400, "unknown message type"),
        ('{"type": null, "code": "print(1)"}', 400, "unknown message type"),
        ('{"type": "execute"}', 400, "missing field 'code'"),
        ('{"type": "execute", "source": "print(1)"}', 400, "missing field 'code'"),
        ('{"type": "execute", "code": 5}', 400, "'code' must be a string"),
        ('{"type": "execute", "code": null}', 400, "'code' must be a string"),
        ('{"type": "execute", "code": ["print(1)"]}', 400, "'code' must be a string"),
        ('{"type": "execute", "code": "\\ud800"}', 400, "unicode"),
        ("[" * 100_000, 400, "nested too deeply"),
        (json.dumps({"type": "execute", "code": "#" * 1001}), 413, f"limit of {CODE_LIMIT}"),
    ],
    ids=lambda v: repr(v)[:30] if isinstance(v, (str, bytes)) else None,
)
def test_bad_channel_frame(bad: Site, frame: str | bytes, status: int, needle: str) -> None:
    with bad.channel("quiet") as ws:
        still_open(ws)
        before = bad.snapshot()
        answer = exchange(ws, frame)
        assert answer["type"] == "error" and answer["status"] == status, answer
        assert needle.lower() in answer["message"].lower(), answer
        still_open(ws)
        assert bad.snapshot() == before


def test_channel_error_echoes_ref_and_closed_session_rejects(bad: Site) -> None:
    with bad.channel("quiet") as ws:
        answer = exchange(ws, json.dumps({"type": "nope", "ref": {"cell": 7}}))
        assert answer["type"] == "error" and answer["ref"] == {"cell": 7}
    with bad.channel("closed") as ws:
        before = bad.snapshot()
        answer = exchange(ws, json.dumps({"type": "execute", "code": "print(1)", "ref": 1}))
        assert answer == {**answer, "type": "error", "status": 400, "ref": 1}
        assert "closed" in answer["message"]
        assert bad.snapshot() == before
        still_open(ws)


def test_channel_frame_over_the_size_limit_closes_the_channel(bad: Site) -> None:
    """A frame announcing more than the limit is refused from its header: close code 1009.

    Spoken on a raw socket so that the test does not depend on TCP timing: a
    client still writing megabytes when the server closes gets a reset that can
    swallow the close frame; here only the header and a little payload are sent.
    """
    import base64
    import os

    limit = body_limit(DatasiteConfig.load(bad.site.directory))
    before = bad.snapshot()
    with socket.create_connection(("127.0.0.1", bad.site.port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        handshake = (
            f"GET /api/sessions/{bad.ids['quiet']}/channel HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{bad.site.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {bad.site.tokens['alice']}\r\n\r\n"
        )
        sock.sendall(handshake.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += sock.recv(4096)
        assert response.startswith(b"HTTP/1.1 101"), response
        # A masked text frame with a 64-bit length of limit + 1, then 1 KiB of it.
        header = bytes([0x81, 0x80 | 127]) + (limit + 1).to_bytes(8, "big") + os.urandom(4)
        sock.sendall(header + b"x" * 1024)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    assert received[:1] == b"\x88", received[:20]  # a close frame
    assert int.from_bytes(received[2:4], "big") == 1009
    assert bad.snapshot() == before
