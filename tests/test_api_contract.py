"""docs/openapi.yaml is the API: every route, method, role and answer, checked against
the code and against a real server holding real requests and outputs.

One module-scoped setup makes the data every call needs: alice's session with three
finished requests whose outputs are released (by bob), pending (private data plus a
marker string), and pending for the matrix's own review call; a session to close; a
session of carol's. Then every documented operation is called by every kind of caller.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pandas as pd
import pytest
import yaml
from openapi_spec_validator import validate
from tornado import websocket
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from remote_kernel.datasite.http.app import routes

from .conftest import RunningDatasite, wait_finished

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text())
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
FINISHED = {"completed", "error", "failed", "interrupted"}
CALLERS = ("none", "bad", "alice", "carol", "bob", "admin")
ROLES = {"alice": "researcher", "carol": "researcher", "bob": "reviewer", "admin": "admin"}
TAG = uuid.uuid4().hex[:10]
# Built at run time by the cells, so that the code text (which researchers see) does
# not contain them: finding one in a response means an output's content leaked.
RELEASED_MARKER = f"released-marker-{TAG}"
PENDING_MARKER = f"pending-marker-{TAG}"


def operations() -> list[tuple[str, str]]:
    return [
        (path, method)
        for path, item in DOC["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]


def op(path: str, method: str) -> dict[str, Any]:
    return DOC["paths"][path][method]


def doc_schema(name: str) -> dict[str, Any]:
    """A component schema, with the components its ``$ref``s point at."""
    return {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}


# --- the document against the code -----------------------------------------------------------
def test_document_is_valid_openapi_3_1() -> None:
    assert DOC["openapi"].startswith("3.1")
    validate(DOC)


def templated_paths(regex: str) -> list[str]:
    """``/api/x/(?P<id>[^/]+)/(?P<action>a|b)`` -> ``/api/x/{id}/a``, ``/api/x/{id}/b``."""
    paths = [""]
    pos = 0
    for group in re.finditer(r"\(\?P<(\w+)>([^()]*)\)", regex):
        literal = regex[pos : group.start()]
        pos = group.end()
        name, pattern = group.groups()
        if pattern == "[^/]+":
            choices = ["{" + name + "}"]
        else:
            assert re.fullmatch(r"\w+(\|\w+)*", pattern), f"cannot template {pattern!r}"
            choices = pattern.split("|")
        paths = [p + literal + c for p in paths for c in choices]
    paths = [p + regex[pos:] for p in paths]
    for path in paths:
        assert not re.search(r"[\\^$()?*+\[\]]", path), f"untemplated regex left in {path!r}"
    return paths


def implemented_methods(handler: type) -> set[str]:
    """HTTP methods the handler itself implements (not tornado's 405 defaults)."""
    methods = {
        method
        for klass in handler.__mro__
        if not klass.__module__.startswith("tornado") and klass is not object
        for method in HTTP_METHODS
        if method in vars(klass)
    }
    if issubclass(handler, websocket.WebSocketHandler):
        methods.add("get")  # the upgrade
    return methods


def code_routes() -> dict[str, type]:
    found: dict[str, type] = {}
    for regex, handler, _ in routes(None):  # type: ignore[arg-type]  # handlers are classes
        for path in templated_paths(regex):
            assert path not in found, f"{path} routed twice"
            found[path] = handler
    return found


HANDLERS = code_routes()


def test_templating_of_route_regexes() -> None:
    assert templated_paths(r"/api/s/(?P<session_id>[^/]+)/(?P<action>interrupt|restart)") == [
        "/api/s/{session_id}/interrupt",
        "/api/s/{session_id}/restart",
    ]


def test_every_route_and_method_is_documented_and_nothing_else() -> None:
    documented = {
        path: {m for m in item if m in HTTP_METHODS} for path, item in DOC["paths"].items()
    }
    implemented = {path: implemented_methods(handler) for path, handler in HANDLERS.items()}
    assert implemented == documented


def test_every_operation_is_fully_described() -> None:
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert DOC["security"] == [{"bearer": []}]
    ids = set()
    for path, method in operations():
        operation = op(path, method)
        where = f"{method.upper()} {path}"
        assert operation.get("summary") and operation.get("description"), where
        assert operation["operationId"] not in ids, where
        ids.add(operation["operationId"])
        roles = operation.get("x-roles")
        assert roles and set(roles) <= set(ROLES.values()), where
        assert len(set(roles)) == len(roles), where
        public = path == "/api/health"
        assert (operation.get("security") == []) is public, where
        statuses = set(operation["responses"])
        if not public:
            assert "401" in statuses, where
        if set(ROLES.values()) - set(roles):
            assert "403" in statuses, where
        if "{" in path:
            assert "404" in statuses, where
        # A request body is documented exactly where the handler reads one.
        reads_body = "json_body()" in inspect.getsource(getattr(HANDLERS[path], method))
        assert ("requestBody" in operation) is reads_body, where
        if reads_body:
            assert operation["requestBody"]["required"] is True, where
            assert operation["requestBody"]["content"]["application/json"]["schema"], where
        assert any(s.startswith(("1", "2")) for s in statuses), where
        for status, response in operation["responses"].items():
            response = resolve(response)
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, f"{where} {status}"
        params = {p["name"] for p in map(resolve, operation.get("parameters", []))}
        params |= {p["name"] for p in map(resolve, DOC["paths"][path].get("parameters", []))}
        assert set(re.findall(r"{(\w+)}", path)) <= params, where


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/")
        node = DOC
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def check_against_doc(path: str, method: str, response: httpx.Response) -> Any:
    """The status is documented; a JSON body matches the documented schema."""
    where = f"{method.upper()} {path} -> {response.status_code}: {response.text[:300]}"
    documented = op(path, method)["responses"]
    assert str(response.status_code) in documented, where
    content = resolve(documented[str(response.status_code)]).get("content", {})
    if not content:
        assert response.content == b"", where
        return None
    (media_type,) = content
    assert response.headers["content-type"].startswith(media_type), where
    if media_type != "application/json":
        return response.content
    body = response.json()
    schema = {**content[media_type]["schema"], "components": DOC["components"]}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(body))
    assert not errors, f"{where}\n" + "\n".join(e.message for e in errors[:5])
    return body


# --- the real server with real data ----------------------------------------------------------
@dataclass
class World:
    site: RunningDatasite
    http: httpx.Client
    session: str  # alice's, with a kernel and three finished requests
    doomed_session: str  # alice's, closed by the matrix's DELETE
    carol_session: str
    requests: dict[str, int] = field(default_factory=dict)  # released, pending, target
    outputs: dict[str, int] = field(default_factory=dict)
    pending_text: str = ""
    frames: list[str] = field(default_factory=list)  # alice's channel during setup

    def headers(self, caller: str) -> dict[str, str]:
        if caller == "none":
            return {}
        if caller == "bad":
            return {"Authorization": "Bearer rk_not-a-token-of-this-datasite"}
        return self.site.headers(caller)

    def call(self, method: str, path: str, caller: str, **kwargs: Any) -> httpx.Response:
        return self.http.request(method, path, headers=self.headers(caller), **kwargs)

    def ok(self, method: str, path: str, caller: str, status: int = 200, **kw: Any) -> Any:
        response = self.call(method, path, caller, **kw)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    def wait_finished(self, request_id: int) -> dict[str, Any]:
        return wait_finished(lambda path: self.ok("GET", path, "alice"), request_id)


def channel(world: World, session_id: str, caller: str) -> ClientConnection:
    url = f"ws://127.0.0.1:{world.site.port}/api/sessions/{session_id}/channel"
    return ws_connect(url, additional_headers=world.headers(caller), open_timeout=10)


CELLS = {
    "released": f"print('-'.join(['released', 'marker', {TAG!r}]))",
    "pending": "df = rk.data('heart')\n"
    f"print('-'.join(['pending', 'marker', {TAG!r}]), round(df.chol.mean(), 6))",
    "target": "print('review target')",
}


@pytest.fixture(scope="module")
def world(shared_datasite: RunningDatasite) -> Iterator[World]:
    http = httpx.Client(base_url=shared_datasite.url, timeout=60)
    w = World(shared_datasite, http, "", "", "")
    w.session = w.ok("POST", "/api/sessions", "alice", 201)["id"]
    w.doomed_session = w.ok("POST", "/api/sessions", "alice", 201)["id"]
    w.carol_session = w.ok("POST", "/api/sessions", "carol", 201)["id"]
    ws = channel(w, w.session, "alice")
    try:
        for key, code in CELLS.items():
            body = {"code": code}
            request = w.ok("POST", f"/api/sessions/{w.session}/requests", "alice", 201, json=body)
            w.requests[key] = request["id"]
        for key, request_id in w.requests.items():
            view = w.wait_finished(request_id)
            assert view["status"] == "completed", view
            (output,) = view["outputs"]
            assert output["state"] == "pending" and "content" not in output, output
            w.outputs[key] = output["id"]
        review = {"decision": "approve"}
        w.ok("POST", f"/api/outputs/{w.outputs['released']}/review", "bob", json=review)
        # Alice's channel saw every event of the setup; the release is the last one.
        while True:
            frame = ws.recv(timeout=30)
            assert isinstance(frame, str)
            w.frames.append(frame)
            event = json.loads(frame)
            output = event.get("output", {})
            if output.get("id") == w.outputs["released"] and output["state"] == "released":
                break
    finally:
        ws.close()
    store = shared_datasite.store()
    try:
        content = json.loads(store.get_output(w.outputs["pending"]).body)["content"]
    finally:
        store.close()
    w.pending_text = content["text"]
    assert PENDING_MARKER in w.pending_text
    yield w
    http.close()


def fill(world: World, path: str, method: str) -> str:
    output = "target" if path.endswith("/review") else "pending"
    session = world.doomed_session if method == "delete" else world.session
    return (
        path.replace("{session_id}", session)
        .replace("{request_id}", str(world.requests["released"]))
        .replace("{output_id}", str(world.outputs[output]))
        .replace("{name}", "heart")
    )


BODIES = {
    ("/api/sessions/{session_id}/requests", "post"): {"code": "x = 1"},
    ("/api/outputs/{output_id}/review", "post"): {"decision": "deny", "comment": "contract"},
    ("/api/secure/query", "post"): {
        "computation_id": "0" * 32,
        "sql": "SELECT COUNT(*) AS n FROM heart",
        "dataset": "heart",
        "parties": ["cleveland", "hungary", "ttp"],
    },
}


def expected_status(path: str, method: str, caller: str) -> set[int]:
    operation = op(path, method)
    success = {int(s) for s in operation["responses"] if s.startswith(("1", "2"))}
    if operation.get("security") == []:
        return success
    if caller in {"none", "bad"}:
        return {401}
    if ROLES[caller] not in operation["x-roles"]:
        return {403, 404}
    if caller == "carol" and "{" in path and "{name}" not in path:
        return {404}  # alice's ids
    if path == "/api/secure/query":
        return {403}  # this datasite names no MPC peers; tests/test_mpc.py has the 200s
    return success


def check_error(response: httpx.Response, where: str) -> None:
    assert response.headers.get("content-type", "").startswith("application/json"), where
    error = response.json()["error"]
    assert error["status"] == response.status_code, where
    assert isinstance(error["message"], str) and error["message"].strip(), where


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("path", "method"), operations(), ids=lambda v: v)
def test_route_role_matrix(world: World, path: str, method: str, caller: str) -> None:
    where = f"{caller}: {method.upper()} {path}"
    expected = expected_status(path, method, caller)
    if path.endswith("/channel"):
        status, body = ws_status(world, fill(world, path, method), caller)
        assert status in expected, f"{where} -> {status} {body!r}"
        if status >= 400:
            error = json.loads(body)["error"]
            assert error["status"] == status and error["message"].strip(), where
        return
    kwargs: dict[str, Any] = {}
    if (path, method) in BODIES:
        kwargs["json"] = BODIES[path, method]
    response = world.call(method.upper(), fill(world, path, method), caller, **kwargs)
    assert response.status_code < 500, f"{where} -> {response.status_code} {response.text}"
    assert response.status_code in expected, f"{where} -> {response.status_code} {response.text}"
    check_against_doc(path, method, response)
    if response.status_code >= 400:
        check_error(response, where)


def ws_status(world: World, url_path: str, caller: str) -> tuple[int, bytes]:
    session_id = url_path.split("/")[3]
    try:
        ws = channel(world, session_id, caller)
    except InvalidStatus as exc:
        response = exc.response
        assert response.headers.get("Content-Type", "").startswith("application/json")
        return response.status_code, response.body or b""
    ws.close()
    return 101, b""


# --- roles and ownership ---------------------------------------------------------------------
def test_carol_gets_404_for_alices_ids_and_never_sees_them(world: World) -> None:
    s, r, o = world.session, world.requests["pending"], world.outputs["released"]
    for method, path in [
        ("GET", f"/api/sessions/{s}"),
        ("DELETE", f"/api/sessions/{s}"),
        ("POST", f"/api/sessions/{s}/interrupt"),
        ("POST", f"/api/sessions/{s}/restart"),
        ("GET", f"/api/requests/{r}"),
        ("GET", f"/api/outputs/{o}"),
    ]:
        response = world.call(method, path, "carol")
        assert response.status_code == 404, (path, response.text)
        check_error(response, path)
    submit = world.call("POST", f"/api/sessions/{s}/requests", "carol", json={"code": "1"})
    assert submit.status_code == 404
    assert ws_status(world, f"/api/sessions/{s}/channel", "carol")[0] == 404
    # The same answer as for an id that does not exist: nothing to probe.
    unknown = world.call("GET", f"/api/sessions/{uuid.uuid4()}", "carol").json()["error"]
    known = world.call("GET", f"/api/sessions/{s}", "carol").json()["error"]
    assert (known["status"], known["reason"]) == (unknown["status"], unknown["reason"])
    listed = world.ok("GET", "/api/sessions", "carol")
    assert world.carol_session in {x["id"] for x in listed}
    assert not {s, world.doomed_session} & {x["id"] for x in listed}
    requests = world.ok("GET", "/api/requests", "carol", params={"outputs": "true"})
    assert not set(world.requests.values()) & {x["id"] for x in requests}
    assert all(x["user"] == "carol" for x in requests)
    # And alice cannot reach carol's session either.
    assert world.call("GET", f"/api/sessions/{world.carol_session}", "alice").status_code == 404


def test_reviewer_cannot_submit_code_and_researcher_cannot_review(world: World) -> None:
    store = world.site.store()
    try:
        before = store.counts()
        for path in ("/api/sessions", f"/api/sessions/{world.session}/requests"):
            response = world.call("POST", path, "bob", json={"code": "print(1)"})
            assert response.status_code == 403, response.text
            assert "researcher" in response.json()["error"]["message"]
        assert ws_status(world, f"/api/sessions/{world.session}/channel", "bob")[0] == 403
        pending = world.outputs["pending"]
        for caller in ("alice", "carol", "admin"):
            response = world.call(
                "POST", f"/api/outputs/{pending}/review", caller, json={"decision": "approve"}
            )
            assert response.status_code == 403, response.text
            assert "reviewer" in response.json()["error"]["message"]
        assert store.counts() == before
    finally:
        store.close()
    view = world.ok("GET", f"/api/outputs/{pending}", "bob")
    assert view["state"] == "pending"


# --- invariant 1: nothing unreleased reaches a researcher ------------------------------------
def researcher_gets(world: World) -> list[str]:
    """Every GET path a researcher can name, with every real id there is."""
    ids = {
        "{session_id}": [world.session, world.doomed_session, world.carol_session],
        "{request_id}": [str(i) for i in world.requests.values()],
        "{output_id}": [str(i) for i in world.outputs.values()],
        "{name}": ["heart"],
    }
    paths = []
    for path, method in operations():
        if method != "get" or path.endswith("/channel"):
            continue
        filled = [path]
        for key, values in ids.items():
            filled = [p.replace(key, v) for p in filled for v in values] if key in path else filled
        paths += filled
    paths += [
        "/api/requests?outputs=true",
        "/api/requests?outputs=1",
        "/api/requests?status=completed&outputs=true",
    ]
    return paths


@pytest.mark.parametrize("caller", ["alice", "carol"])
def test_no_researcher_get_returns_unreleased_content(world: World, caller: str) -> None:
    escaped = json.dumps(world.pending_text)[1:-1]
    seen = []
    for path in researcher_gets(world):
        response = world.call("GET", path, caller)
        assert response.status_code < 500, (path, response.text)
        text = response.text if not path.endswith("/mock") else ""
        assert PENDING_MARKER not in text, f"{caller} {path} leaks pending content"
        assert escaped not in text and world.pending_text not in text, path
        seen.append(text)
    # The search works: the released output's content does reach alice.
    assert any(RELEASED_MARKER in text for text in seen) is (caller == "alice")
    for frame in world.frames:
        assert PENDING_MARKER not in frame and escaped not in frame
    assert any(RELEASED_MARKER in frame for frame in world.frames)


def test_channel_events_match_the_document(world: World) -> None:
    schema = {
        **DOC["components"]["schemas"]["ChannelServerMessage"],
        "components": DOC["components"],
    }
    validator = jsonschema.Draft202012Validator(schema)
    kinds = set()
    for frame in world.frames:
        event = json.loads(frame)
        validator.validate(event)
        kinds.add(event["type"])
    assert {"request", "output"} <= kinds


def test_reviewers_do_see_pending_content(world: World) -> None:
    """The other half of the marker search: the string is there to find when allowed."""
    for caller in ("bob", "admin"):
        view = world.ok("GET", f"/api/outputs/{world.outputs['pending']}", caller)
        assert view["content"]["text"] == world.pending_text
        assert PENDING_MARKER in world.call("GET", "/api/reviews", caller).text


@pytest.mark.parametrize("caller", ["alice", "carol", "bob", "admin"])
def test_mock_download_holds_no_private_row(world: World, caller: str) -> None:
    response = world.call("GET", "/api/datasets/heart/mock", caller)
    assert response.status_code == 200
    assert "heart-mock.parquet" in response.headers["content-disposition"]
    mock = pd.read_parquet(io.BytesIO(response.content))
    private = pd.read_parquet(world.site.directory / "datasets" / "heart" / "private.parquet")
    assert list(mock.columns) == list(private.columns)
    assert (mock.dtypes == private.dtypes).all()
    private_rows = set(map(tuple, private.astype(str).to_numpy()))
    assert not any(tuple(row) in private_rows for row in mock.astype(str).to_numpy())
    assert (
        response.content != (world.site.directory / "datasets/heart/private.parquet").read_bytes()
    )


def test_dataset_listing_shows_only_public_fields(world: World) -> None:
    for caller in ("alice", "bob"):
        (dataset,) = world.ok("GET", "/api/datasets", caller)
        assert set(dataset) == {"name", "description", "columns"}
        assert "private" not in json.dumps(dataset)
