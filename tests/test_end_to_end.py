"""The issue's whole story, with real parts: CLI-made datasite, served on loopback,
a real ipykernel at the datasite, the researcher client, the reviewer CLI, and
``%%remote`` in a real local ipykernel driven by jupyter_client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty
from typing import Any

import httpx
import pandas as pd
import pytest
from jupyter_client.manager import KernelManager

import remote_kernel as rk
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.researcher.client import Datasite

from .conftest import RunningDatasite, make_datasite


def review_cli(site: RunningDatasite, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "remote_kernel.cli",
            "review",
            *args,
            "--url",
            site.url,
            "--token",
            site.tokens["bob"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def pending_ids(site: RunningDatasite, request_id: int) -> list[int]:
    listing = review_cli(site, "list", "--json")
    assert listing.returncode == 0, listing.stderr
    return [
        item["id"] for item in json.loads(listing.stdout) if item["request"]["id"] == request_id
    ]


def test_the_issue_commands_work_on_a_fresh_directory(tmp_path: Path) -> None:
    """The exact admin commands from the README, as a new user types them."""
    from .conftest import heart_source

    source, columns = heart_source("cleveland", tmp_path)
    cli = [sys.executable, "-m", "remote_kernel.cli", "datasite"]
    directory = str(tmp_path / "cleveland")
    run = lambda *a: subprocess.run([*cli, *a], capture_output=True, text=True, timeout=60)  # noqa: E731
    assert run("init", directory, "--name", "cleveland").returncode == 0
    extra = ["--columns", ",".join(columns), "--na", "?"] if columns else []
    added = run("add-dataset", directory, "heart", "--private", str(source), *extra)
    assert added.returncode == 0, added.stderr
    user = run("add-user", directory, "alice", "--role", "researcher")
    token = user.stdout.strip().splitlines()[-1]
    assert token.startswith("rk_")
    # The token is stored only as a hash.
    assert token.encode() not in (tmp_path / "cleveland" / "datasite.db").read_bytes()
    again = run("add-user", directory, "alice", "--role", "reviewer")
    assert again.returncode == 2 and "already exists" in again.stderr
    missing = run("add-dataset", directory, "other", "--private", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_client_path_approve(shared_datasite: RunningDatasite, private_heart: pd.DataFrame) -> None:
    site = rk.connect(shared_datasite.url, token=shared_datasite.tokens["alice"], name="cleveland")
    try:
        mock = rk.data("heart")
        assert list(mock.columns) == list(private_heart.columns)
        assert mock.dtypes.astype(str).tolist() == private_heart.dtypes.astype(str).tolist()
        private_rows = set(map(tuple, private_heart.astype(str).to_numpy()))
        assert not any(tuple(row) in private_rows for row in mock.astype(str).to_numpy())

        request = site.run('df = rk.data("heart")\nprint(len(df))\ndf.groupby("sex").num.mean()')
        request.wait(60, until="finished")
        assert request.status == "completed"
        assert [o.state for o in request.outputs] == ["pending", "pending"]
        assert all(o.content is None for o in request.outputs)
        assert "pending" in repr(request)

        ids = pending_ids(shared_datasite, request.id)
        assert len(ids) == 2
        shown = review_cli(shared_datasite, "show", str(ids[1]))
        assert shown.returncode == 0 and 'groupby("sex")' in shown.stdout
        for output_id in ids:
            approved = review_cli(shared_datasite, "approve", str(output_id))
            assert approved.returncode == 0, approved.stderr
        request.wait(30)
        stream, result = request.outputs
        assert stream.text == f"{len(private_heart)}\n"
        expected = private_heart.groupby("sex").num.mean().to_string()
        assert result.text.replace("\n", "").startswith(expected.replace("\n", "")[:40])
        assert result.decided_by == "bob"
        # Reconnecting later: the researcher can list requests and see released outputs.
        again = Datasite(shared_datasite.url, shared_datasite.tokens["alice"])
        listed = {r.id: r for r in again.requests()}
        assert listed[request.id].outputs[0].text == stream.text
        again.close()
    finally:
        rk.disconnect("cleveland")


def test_client_path_deny(shared_datasite: RunningDatasite) -> None:
    site = Datasite(shared_datasite.url, shared_datasite.tokens["alice"])
    request = site.run("print(rk.data('heart').shape)")
    request.wait(60, until="finished")
    (output_id,) = pending_ids(shared_datasite, request.id)
    no_comment = review_cli(shared_datasite, "deny", str(output_id))
    assert no_comment.returncode == 2  # argparse: --comment is required
    denied = review_cli(shared_datasite, "deny", str(output_id), "--comment", "raw rows")
    assert denied.returncode == 0, denied.stderr
    request.wait(30)
    (output,) = request.outputs
    assert output.state == "denied" and output.comment == "raw rows" and output.content is None
    again = review_cli(shared_datasite, "approve", str(output_id))
    assert again.returncode == 2 and "already denied" in again.stderr
    site.close()


# --- %%remote in a real local ipykernel -------------------------------------------------------
class LocalKernel:
    """A researcher's own ipykernel, driven by jupyter_client as a frontend would."""

    def __init__(self, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str, timeout: float = 120) -> list[dict[str, Any]]:
        msg_id = self.kc.execute(code)
        messages = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.kc.get_iopub_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return messages
            messages.append(msg)
        raise TimeoutError(code)

    def wait_for_update(self, display_id: str, contains: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except Empty:
                continue
            if (
                msg["msg_type"] == "update_display_data"
                and msg["content"]["transient"]["display_id"] == display_id
                and contains in msg["content"]["data"]["text/plain"]
            ):
                return msg
        raise TimeoutError(f"no update of {display_id} containing {contains!r}")

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def texts(messages: list[dict[str, Any]]) -> str:
    return json.dumps([m["content"] for m in messages])


def placeholders(messages: list[dict[str, Any]]) -> dict[str, str]:
    return {
        m["content"]["transient"]["display_id"]: m["content"]["data"]["text/plain"]
        for m in messages
        if m["msg_type"] == "display_data"
        and "pending review at" in m["content"]["data"].get("text/plain", "")
    }


@pytest.fixture
def local_kernel(tmp_path: Path) -> Any:
    import os

    kernel = LocalKernel({**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    yield kernel
    kernel.close()


def test_remote_magic_in_a_real_kernel(
    shared_datasite: RunningDatasite, private_heart: pd.DataFrame, local_kernel: LocalKernel
) -> None:
    site = shared_datasite
    setup = local_kernel.run(
        "%load_ext remote_kernel\nimport remote_kernel as rk\n"
        f"site = rk.connect({site.url!r}, token={site.tokens['alice']!r}, name='cleveland')\n"
        "df = rk.data('heart')\nprint(df.shape)"
    )
    assert ", 14)" in texts(setup), texts(setup)  # the mock: same columns

    cell = '%%remote\ndf = rk.data("heart")\ndf.groupby("sex").num.mean()'
    messages = local_kernel.run(cell)
    private_value = private_heart.groupby("sex").num.mean().to_string()
    shown = texts(messages)
    assert "mock" in shown  # the local run is labelled
    assert private_value.splitlines()[-2] not in shown  # nothing private before release
    ((display_id, text),) = placeholders(messages).items()
    assert "pending review at cleveland" in text

    request_id = int(display_id.split("-")[2])
    (output_id,) = pending_ids(site, request_id)
    assert review_cli(site, "approve", str(output_id)).returncode == 0
    update = local_kernel.wait_for_update(display_id, "released by bob")
    released = update["content"]["data"]["text/plain"]
    assert "cleveland" in released and private_value.splitlines()[-2] in released

    # A cell that fails on the mock sends nothing.
    headers = site.headers("alice")
    before = len(httpx.get(site.url + "/api/requests", headers=headers).json())
    failed = local_kernel.run('%%remote\nraise ValueError("boom")')
    assert "nothing was sent" in texts(failed)
    assert len(httpx.get(site.url + "/api/requests", headers=headers).json()) == before

    # A denial replaces the placeholder with the reviewer's comment.
    messages = local_kernel.run('%%remote --no-local\nprint("hello")')
    ((display_id, _),) = placeholders(messages).items()
    (output_id,) = pending_ids(site, int(display_id.split("-")[2]))
    denied = review_cli(site, "deny", str(output_id), "--comment", "please aggregate")
    assert denied.returncode == 0
    update = local_kernel.wait_for_update(display_id, "please aggregate")
    assert "denied by bob" in update["content"]["data"]["text/plain"]


def test_errors_a_researcher_can_act_on(shared_datasite: RunningDatasite) -> None:
    with pytest.raises(rk.AuthenticationError, match="rejected the token"):
        Datasite(shared_datasite.url, "rk_not-a-token")
    store = shared_datasite.store()
    assert store.audit_entries()[-1].action == "auth.failed"  # failed logins are audited
    store.close()
    with pytest.raises(rk.DatasiteUnreachable, match="cannot reach"):
        Datasite("http://127.0.0.1:1", "rk_x")
    site = rk.connect(shared_datasite.url, token=shared_datasite.tokens["alice"], name="cle")
    try:
        with pytest.raises(rk.UnknownDataset, match="available: heart"):
            site.mock("hart")
        with pytest.raises(rk.UnknownDataset, match="no connected datasite has"):
            rk.data("hart")
    finally:
        rk.disconnect("cle")
    with pytest.raises(rk.RemoteKernelError, match="no datasite connected"):
        rk.data("heart")
    reviewer = Datasite(shared_datasite.url, shared_datasite.tokens["bob"])
    with pytest.raises(rk.RequestRejected, match="researcher"):
        reviewer.run("1+1")


def test_insecure_policy_is_refused_without_its_flag(tmp_path: Path) -> None:
    site = make_datasite(tmp_path)
    config = DatasiteConfig.load(site.directory)
    config.output_filter = "insecure-release-all"
    config.save()
    with pytest.raises(RuntimeError, match="needs --insecure-release-all"):
        site.start(timeout=20)
