"""A remote cell as the researcher sees it: tagged cells run remotely with any run
command, and the cell shows one ordered view (one status row per site, then each
site's outputs by number), in a real kernel against two real datasites."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from remote_kernel.researcher.display import output_bundle, row_text, rows_html
from remote_kernel.researcher.fanout import RemoteResult, SiteRun
from remote_kernel.researcher.magics import FanoutView, TaggedCells

from .conftest import RunningDatasite, make_datasite
from .test_end_to_end import LocalKernel, texts

TWO = ("hungary", "cleveland")  # chosen in this order, not alphabetically


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningDatasite]]:
    sites = {name: make_datasite(tmp_path_factory.mktemp(name), name) for name in TWO}
    for site in sites.values():
        site.start()
    yield sites
    for site in sites.values():
        site.stop()


@pytest.fixture
def kernel(two_sites: dict[str, RunningDatasite], tmp_path: Path) -> Iterator[LocalKernel]:
    kernel = LocalKernel({**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    connect = "".join(
        f"rk.connect({s.url!r}, token={s.tokens['alice']!r}, name={s.name!r})\n"
        for s in two_sites.values()
    )
    kernel.run("import remote_kernel as rk\n" + connect)
    yield kernel
    kernel.close()


def run_cell(kernel: LocalKernel, code: str, tags: list[str], timeout: float = 120) -> list[dict]:
    """What JupyterLab sends for a cell: its metadata (tags, cellId) with the request."""
    metadata = {"tags": tags, "cellId": "cell-1", "deletedCells": [], "recordTiming": False}
    content = {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    msg = kernel.kc.session.msg("execute_request", content, metadata=metadata)
    kernel.kc.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]
    messages = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = kernel.kc.get_iopub_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") != msg_id:
            continue
        if reply["msg_type"] == "status" and reply["content"]["execution_state"] == "idle":
            return messages
        messages.append(reply)
    raise TimeoutError(code)


def prepare(kernel: LocalKernel, sites: list[str] | None) -> None:
    """What the JupyterLab extension runs silently right before a tagged cell."""
    kernel.run(
        '__import__("remote_kernel.researcher.magics", fromlist=["_"])'
        f".prepare_tagged_cells(get_ipython(), {sites!r})"
    )


def remote_outputs(messages: list[dict]) -> list[tuple[str, int]]:
    """(site, output number) of every remote output the cell displayed, in display order."""
    shown = []
    for m in messages:
        if m["msg_type"] != "display_data":
            continue
        meta = m["content"]["metadata"].get("remote_kernel", {})
        if "output_id" in meta:
            number = int(m["content"]["data"]["text/plain"].split("output ")[1].split(" ")[0])
            shown.append((meta["site"], number))
    return shown


def test_a_tagged_cell_runs_on_the_mock_then_at_the_sites(
    two_sites: dict[str, RunningDatasite], kernel: LocalKernel
) -> None:
    prepare(kernel, list(TWO))
    code = 'print("rows", len(rk.data("heart")) > 0)\nrk.data("heart").shape'
    messages = run_cell(kernel, code, ["remote"])
    shown = texts(messages)
    assert "mock" in shown  # ran here first, labelled
    tables = [
        m
        for m in messages
        if m["msg_type"] == "display_data"
        and "rows" in m["content"]["metadata"].get("remote_kernel", {})
    ]
    assert len(tables) == 1  # one status table, not one per site
    meta = tables[0]["content"]["metadata"]["remote_kernel"]
    assert [row["site"] for row in meta["rows"]] == list(TWO)  # in the chosen order
    assert list(meta["requests"]) == list(TWO)
    # Each site's outputs, grouped in the sites' order and numbered in order.
    assert remote_outputs(messages) == [(s, n) for s in TWO for n in (1, 2)]
    # Once every site has finished, the table is plain text/HTML (a widget dies with
    # its kernel, and the saved notebook must still show the rows).
    ident = tables[0]["content"]["transient"]["display_id"]
    updates = [
        m
        for m in messages
        if m["msg_type"] == "update_display_data"
        and m["content"]["transient"]["display_id"] == ident
    ]
    assert updates
    assert "application/vnd.jupyter.widget-view+json" not in updates[-1]["content"]["data"]
    # No status line per request besides the table.
    assert "request " not in "".join(
        m["content"]["data"]["text/plain"]
        for m in messages
        if m["msg_type"] == "display_data"
        and "output_id" in m["content"]["metadata"].get("remote_kernel", {})
    )
    # The request reached both datasites, with the cell's source as written.
    for name, request_id in meta["requests"].items():
        client = two_sites[name]
        view = SimpleNamespace(**client_request(client, request_id))
        assert view.code.strip() == code
    # The kernel's history keeps the cell as the researcher wrote it.
    history = kernel.run("print(repr(_ih[-2]))")
    assert "%%remote" not in texts(history)


def client_request(site: RunningDatasite, request_id: int) -> dict[str, Any]:
    from remote_kernel.researcher.client import Datasite

    client = Datasite(site.url, site.tokens["alice"], site.name)
    try:
        return client.request_json(request_id)
    finally:
        client.close()


def test_untagged_cells_and_no_target(kernel: LocalKernel) -> None:
    prepare(kernel, ["cleveland"])
    local = run_cell(kernel, 'print("here only")', [])
    assert "here only" in texts(local) and "remote_kernel" not in texts(local)
    # A cell with its own %%remote line runs as written (its options are the researcher's).
    own = run_cell(kernel, '%%remote --site hungary --no-local\nprint("own")', ["remote"])
    assert remote_outputs(own) == [("hungary", 1)]
    # The notebook targets no site: say so, run nothing.
    prepare(kernel, [])
    none = run_cell(kernel, 'print("nowhere")', ["remote"])
    printed = "".join(m["content"]["text"] for m in none if m["msg_type"] == "stream")
    assert "no datasite" in printed and "nowhere" not in printed


# --- the view's order, without servers ----------------------------------------------------------
def fake_request(site: str, request_id: int, outputs: list[Any], finished: bool) -> Any:
    return SimpleNamespace(
        site=site,
        id=request_id,
        outputs=outputs,
        finished=finished,
        decided=False,
        connection_lost=False,
        status="completed" if finished else "running",
        message="",
        on_update=lambda callback: None,
    )


def fake_output(output_id: int, seq: int) -> Any:
    return SimpleNamespace(
        id=output_id,
        seq=seq,
        state="pending",
        summary="text",
        content=None,
        decided_by=None,
        comment="",
        msg_type="stream",
    )


def test_outputs_show_in_site_order_whatever_order_they_arrive_in() -> None:
    first = fake_request("hungary", 3, [], finished=False)
    second = fake_request("cleveland", 8, [fake_output(21, 1), fake_output(20, 0)], True)
    result = RemoteResult(
        "x", {"hungary": SiteRun("hungary", first), "cleveland": SiteRun("cleveland", second)}
    )
    shown: list[tuple[str, bool]] = []
    view = FanoutView(
        result, show=lambda b, m, ident, update: shown.append((ident, update)), widgets=False
    )
    view.sync()
    # cleveland finished first, but hungary comes first: nothing of cleveland yet.
    assert not [ident for ident, _ in shown if "output" in ident]
    first.outputs.append(fake_output(5, 0))
    view.sync()
    first.finished, first.status = True, "completed"
    view.sync()
    outputs = [ident for ident, update in shown if "output" in ident and not update]
    assert outputs == [
        "rk-hungary-3-output-5",
        "rk-cleveland-8-output-20",
        "rk-cleveland-8-output-21",
    ]


def test_one_line_per_site() -> None:
    row = {
        "site": "cleveland",
        "request": 4,
        "state": "pending review",
        "outputs": "1 pending, 1 released",
        "when": "1.2 s",
        "detail": "",
    }
    assert row_text(row) == "cleveland · pending review · 1 pending, 1 released · request 4 · 1.2 s"
    html = rows_html([row, {**row, "site": "hungary"}])
    assert html.index('data-site="cleveland"') < html.index('data-site="hungary"')
    request = SimpleNamespace(site="cleveland", id=4)
    bundle, meta = output_bundle(request, fake_output(9, 0))
    assert bundle["text/plain"] == "⏳ pending review at cleveland · output 1 (text)"
    assert meta["remote_kernel"]["output_id"] == 9


def test_the_transformer_leaves_other_requests_alone() -> None:
    shell = SimpleNamespace(kernel=SimpleNamespace(get_parent=lambda: {}))
    transform = TaggedCells(shell)
    assert transform(["x = 1\n"]) == ["x = 1\n"]
    parent = {"header": {"msg_type": "execute_request"}, "metadata": {"tags": ["remote"]}}
    shell.kernel.get_parent = lambda: parent
    transform.sites = ["cleveland", "hungary"]
    assert transform(["x = 1\n"]) == ["%%remote --site cleveland --site hungary\n", "x = 1\n"]
    transform.running_remote = True  # the magic's own mock run
    assert transform(["x = 1\n"]) == ["x = 1\n"]
