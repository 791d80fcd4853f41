"""The JupyterLab server extension (``remote_kernel.labapp``) in a real Jupyter server.

pytest-jupyter serves the extension; a real datasite (``shared_datasite``)
answers the proxied calls. Checks: tokens are saved in the 0600 connections
file and never returned, errors are typed JSON 4xx (502 when a datasite is
down), a reviewer's approve/deny through the extension reaches the
researcher's request, and at a two-person site the votes pass through
("1 of 2") while the first reviewer's queue no longer has the output, and the
researcher connections' privacy budgets are gathered (a site that is down reported).
"""

from __future__ import annotations

import inspect
import json
import stat
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from remote_kernel.protocol.models import Role
from remote_kernel.researcher.client import Datasite
from remote_kernel.researcher.connections import Connection, load_connections, save_connection

from .conftest import RunningDatasite, free_port, make_datasite

pytest_plugins = ("pytest_jupyter.jupyter_server",)


def on_server_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on pytest-jupyter's loop, where its Jupyter server lives.

    The suite's pytest-asyncio would run it on a loop of its own, where the
    server never answers; a plain function that asks for ``jp_asyncio_loop``
    keeps both plugins out of each other's way.
    """
    signature = inspect.signature(test)

    def run(jp_asyncio_loop: Any, **fixtures: Any) -> None:
        jp_asyncio_loop.run_until_complete(test(**fixtures))

    loop = inspect.Parameter("jp_asyncio_loop", inspect.Parameter.KEYWORD_ONLY)
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]
    run.__signature__ = signature.replace(parameters=[loop, *params])  # type: ignore[attr-defined]
    run.__name__, run.__doc__ = test.__name__, test.__doc__
    return run


@pytest.fixture
def connections_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "rk" / "connections.json"
    monkeypatch.setenv("REMOTE_KERNEL_CONNECTIONS", str(path))
    return path


@pytest.fixture
def jp_server_config(connections_file: Path) -> dict[str, Any]:
    return {
        "ServerApp": {
            "jpserver_extensions": {"remote_kernel.labapp": True},
            "allow_unauthenticated_access": False,
        },
        "RemoteKernelApp": {"health_timeout": 2.0, "mock_preview_rows": 5},
    }


async def call(jp_fetch: Any, method: str, *path: str, body: Any = None, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"method": method, **kwargs}
    if body is not None:
        options["body"] = json.dumps(body)
    elif method == "POST":
        options["body"] = "{}"
    response = await jp_fetch("remote-kernel", *path, **options)
    return json.loads(response.body) if response.body else None


async def error_of(jp_fetch: Any, method: str, *path: str, body: Any = None) -> tuple[int, str]:
    with pytest.raises(HTTPClientError) as caught:
        await call(jp_fetch, method, *path, body=body)
    response = caught.value.response
    assert response is not None
    assert response.headers["Content-Type"].startswith("application/json")
    return caught.value.code, json.loads(response.body)["error"]["message"]


async def connect(jp_fetch: Any, site: RunningDatasite, user: str, name: str) -> dict:
    body = {"url": site.url, "token": site.tokens[user], "name": name}
    return await call(jp_fetch, "POST", "connections", body=body)


@on_server_loop
async def test_connect_saves_the_token_server_side_and_never_returns_it(
    jp_fetch: Any, shared_datasite: RunningDatasite, connections_file: Path
) -> None:
    token = shared_datasite.tokens["alice"]
    saved = await connect(jp_fetch, shared_datasite, "alice", "cleveland")
    assert saved["user"] == "alice" and saved["role"] == "researcher"
    assert token not in json.dumps(saved)
    assert stat.S_IMODE(connections_file.stat().st_mode) == 0o600
    assert load_connections()["cleveland"].token == token

    listed = await call(jp_fetch, "GET", "connections")
    assert token not in json.dumps(listed)
    (entry,) = listed["connections"]
    assert entry["name"] == "cleveland" and entry["health"]["ok"] is True
    assert entry["health"]["datasite"] == shared_datasite.name

    datasets = await call(jp_fetch, "GET", "connections", "cleveland", "datasets")
    assert [d["name"] for d in datasets] == ["heart"]
    preview = await call(jp_fetch, "GET", "connections", "cleveland", "datasets", "heart", "mock")
    assert len(preview["rows"]) == 5 and preview["total_rows"] > 5
    assert preview["columns"] == [c["name"] for c in datasets[0]["columns"]]

    assert await call(jp_fetch, "DELETE", "connections", "cleveland") is None
    assert load_connections() == {}


@on_server_loop
async def test_errors_are_typed_json(
    jp_fetch: Any, shared_datasite: RunningDatasite, connections_file: Path
) -> None:
    bad_token = {"url": shared_datasite.url, "token": "rk_wrong", "name": "x"}
    status, message = await error_of(jp_fetch, "POST", "connections", body=bad_token)
    assert status == 403 and "x:" in message
    assert not connections_file.exists()

    status, message = await error_of(jp_fetch, "POST", "connections", body={"url": "ftp://a"})
    assert status == 400 and "url" in message
    status, message = await error_of(jp_fetch, "GET", "connections", "nobody", "datasets")
    assert status == 404 and "nobody" in message

    down = {"url": f"http://127.0.0.1:{free_port()}", "token": "rk_x", "name": "down"}
    status, message = await error_of(jp_fetch, "POST", "connections", body=down)
    assert status == 502 and "cannot reach" in message


@on_server_loop
async def test_unauthenticated_calls_are_refused(jp_fetch: Any) -> None:
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch("remote-kernel", "connections", headers={"Authorization": "token nope"})
    assert caught.value.code in (401, 403)


@on_server_loop
async def test_review_through_the_extension_reaches_the_researcher(
    jp_fetch: Any, shared_datasite: RunningDatasite, connections_file: Path
) -> None:
    await connect(jp_fetch, shared_datasite, "alice", "cleveland")
    await connect(jp_fetch, shared_datasite, "bob", "cleveland-bob")
    researcher = Datasite(shared_datasite.url, shared_datasite.tokens["alice"])
    try:
        first = researcher.run("print('first', rk.data('heart').shape[1])")
        second = researcher.run("print('second')")
        for request in (first, second):
            request.wait(120, until="finished")
    finally:
        researcher.close()

    queue = await call(jp_fetch, "GET", "reviews")
    assert queue["errors"] == []
    mine = {i["request_id"]: i for i in queue["items"] if i["request"]["user"] == "alice"}
    assert {first.id, second.id} <= set(mine)
    item = mine[first.id]
    assert item["site"] == "cleveland-bob" and item["reviewer"] == "bob"
    assert "first" in item["content"]["text"] and item["request"]["code"].startswith("print(")

    review = ("connections", "cleveland-bob", "outputs", str(item["id"]), "review")
    status, message = await error_of(jp_fetch, "POST", *review, body={"decision": "deny"})
    assert status == 400 and "comment" in message
    # A researcher connection cannot review: the datasite's 403 is passed on.
    as_alice = ("connections", "cleveland", "outputs", str(item["id"]), "review")
    status, _ = await error_of(jp_fetch, "POST", *as_alice, body={"decision": "approve"})
    assert status == 403

    approved = await call(jp_fetch, "POST", *review, body={"decision": "approve"})
    assert approved["state"] == "released" and approved["decided_by"] == "bob"
    other = mine[second.id]["id"]
    denial = {"decision": "deny", "comment": "not needed"}
    await call(
        jp_fetch,
        "POST",
        "connections",
        "cleveland-bob",
        "outputs",
        str(other),
        "review",
        body=denial,
    )

    seen = await call(jp_fetch, "GET", "connections", "cleveland", "requests", str(first.id))
    assert (
        seen["outputs"][0]["state"] == "released"
        and "first" in seen["outputs"][0]["content"]["text"]
    )
    denied = await call(jp_fetch, "GET", "connections", "cleveland", "requests", str(second.id))
    assert denied["outputs"][0]["state"] == "denied" and "content" not in denied["outputs"][0]

    listed = await call(jp_fetch, "GET", "connections", "cleveland", "requests")
    assert {first.id, second.id} <= {r["id"] for r in listed}

    history = await call(jp_fetch, "GET", "reviews", "history")
    decided = {i["id"]: i for i in history["items"]}
    assert decided[item["id"]]["state"] == "released"
    assert decided[other]["comment"] == "not needed"
    queue = await call(jp_fetch, "GET", "reviews")
    assert item["id"] not in [i["id"] for i in queue["items"]]


@pytest.fixture(scope="module")
def two_person_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    site = make_datasite(tmp_path_factory.mktemp("labapp-two"), "hungary")
    (site.directory / "policy.yaml").write_text("required_reviews: 2\n")
    store = site.store()
    _, site.tokens["dave"] = store.create_user("dave", Role.REVIEWER)
    store.close()
    site.start()
    yield site
    site.stop()


@on_server_loop
async def test_votes_pass_through_and_a_voter_queue_drops_the_output(
    jp_fetch: Any, two_person_site: RunningDatasite, connections_file: Path
) -> None:
    for user, name in (("alice", "hungary"), ("bob", "hungary-bob"), ("dave", "hungary-dave")):
        await connect(jp_fetch, two_person_site, user, name)
    researcher = Datasite(two_person_site.url, two_person_site.tokens["alice"])
    try:
        request = researcher.run("print('mean age', round(rk.data('heart').age.mean(), -1))")
        request.wait(120, until="finished")
    finally:
        researcher.close()

    def of_request(items: list[dict]) -> dict[str, dict]:
        return {i["site"]: i for i in items if i["request_id"] == request.id}

    queue = of_request((await call(jp_fetch, "GET", "reviews"))["items"])
    assert set(queue) == {"hungary-bob", "hungary-dave"}
    assert all(i["required_reviews"] == 2 and i["votes"] == [] for i in queue.values())

    output_id = str(queue["hungary-bob"]["id"])
    review = ("connections", "hungary-bob", "outputs", output_id, "review")
    voted = await call(jp_fetch, "POST", *review, body={"decision": "approve"})
    bob_vote = {"reviewer": "bob", "decision": "approve"}
    assert voted["state"] == "pending" and voted["votes"] == [bob_vote]

    # Only the second reviewer's queue has it now, with bob's vote ("1 of 2").
    queue = of_request((await call(jp_fetch, "GET", "reviews"))["items"])
    assert set(queue) == {"hungary-dave"}
    assert queue["hungary-dave"]["votes"] == [bob_vote]
    # Bob finds it in his history, still pending, with his vote; dave's has nothing yet.
    history = of_request((await call(jp_fetch, "GET", "reviews", "history"))["items"])
    assert set(history) == {"hungary-bob"}
    assert history["hungary-bob"]["state"] == "pending"
    assert history["hungary-bob"]["votes"] == [bob_vote]
    # The researcher's connection never shows votes.
    seen = await call(jp_fetch, "GET", "connections", "hungary", "requests", str(request.id))
    assert "votes" not in seen["outputs"][0] and "required_reviews" not in seen["outputs"][0]

    review = ("connections", "hungary-dave", "outputs", output_id, "review")
    released = await call(jp_fetch, "POST", *review, body={"decision": "approve"})
    assert released["state"] == "released" and released["decided_by"] == "bob, dave"
    history = of_request((await call(jp_fetch, "GET", "reviews", "history"))["items"])
    assert {i["state"] for i in history.values()} == {"released"} and len(history) == 2


@on_server_loop
async def test_budgets_of_every_researcher_connection_a_down_site_reported(
    jp_fetch: Any, two_person_site: RunningDatasite, connections_file: Path
) -> None:
    """``GET budgets``: one line per site and dataset, what is left after a charge; the
    reviewer connection is not asked, and a site that is down is an error, not a failure."""
    store = two_person_site.store()
    try:
        store.set_budget("alice", "heart", 3.0)
        store.charge_budget("alice", "heart", 0.6, what="test")
    finally:
        store.close()
    await connect(jp_fetch, two_person_site, "alice", "hungary")
    await connect(jp_fetch, two_person_site, "bob", "hungary-bob")
    down = f"http://127.0.0.1:{free_port()}"
    save_connection(Connection("switzerland", down, "rk_x", "alice", "researcher"))

    page = await call(jp_fetch, "GET", "budgets")
    (line,) = page["budgets"]
    assert line["site"] == "hungary" and line["dataset"] == "heart"
    assert line["epsilon_total"] == pytest.approx(3.0)
    assert line["epsilon_spent"] == pytest.approx(0.6)
    assert line["epsilon_left"] == pytest.approx(2.4) and line["charges"] == 1
    (error,) = page["errors"]
    assert error["site"] == "switzerland" and "cannot reach" in error["message"]
    assert "rk_x" not in json.dumps(page)
