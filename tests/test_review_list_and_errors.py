"""What a reviewer and a researcher read: ``review list`` with site and age, the
wrong-token message with its advice once, and the proxy kernel's errors named by
their own class."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from remote_kernel.cli import main
from remote_kernel.cli.review import age
from remote_kernel.protocol.errors import AuthenticationError
from remote_kernel.researcher.client import Datasite

from .conftest import RunningDatasite, free_port, wait_finished


def test_age_reads_like_a_person_says_it() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)

    def ago(**delta: float) -> str:
        return age((now - timedelta(**delta)).replace(tzinfo=None).isoformat() + "Z", now)

    assert ago(seconds=40) == "40 s"
    assert ago(minutes=3, seconds=20) == "3 min"
    assert ago(hours=2, minutes=59) == "2 h"
    assert ago(days=5, hours=3) == "5 d"
    assert ago(seconds=-5) == "0 s"  # a clock a little ahead is not "in the future"
    assert age(None) == "?"


def test_review_list_shows_the_site_and_the_age(
    shared_datasite: RunningDatasite, capsys: pytest.CaptureFixture[str]
) -> None:
    site = shared_datasite
    researcher = Datasite(site.url, site.tokens["alice"])
    try:
        request = researcher.run("print('for the list', rk.data('heart').shape)")
        view = wait_finished(
            lambda path: researcher.api.call(researcher.http, "GET", path), request.id
        )
    finally:
        researcher.close()
    (output,) = view["outputs"]
    assert main(["review", "list", "--url", site.url, "--token", site.tokens["bob"]]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["output", "request", "site", "age", "researcher", "type", "summary"]
    (row,) = [r for r in rows if r.split()[:1] == [str(output["id"])]]
    assert re.match(
        rf"\s*{output['id']}\s+{request.id}\s+cleveland\s+\d+ (s|min)\s+alice\s+stream", row
    )


def test_a_wrong_token_says_what_to_do_once(shared_datasite: RunningDatasite) -> None:
    with pytest.raises(AuthenticationError, match="rejected the token") as caught:
        Datasite(shared_datasite.url, "not-a-token")
    message = str(caught.value)
    assert message.lower().count("ask") == 1, message
    assert "admin" in message


# --- the proxy kernel "Remote: <site>" names each error by its class ----------------------------
def proxy_error(site: str) -> dict:
    """Run one cell on the proxy kernel of saved connection ``site``; its error reply."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=f"remote-{site}")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive("df = rk.data('heart')", timeout=60)
        return dict(reply["content"])
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_the_proxy_kernel_names_errors_by_their_class(
    shared_datasite: RunningDatasite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from remote_kernel.researcher.connections import Connection, save_connection
    from remote_kernel.researcher.proxy_kernel import install_kernelspec

    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    url = shared_datasite.url
    save_connection(Connection("wrong-token", url, "not-a-token", "alice", "researcher"))
    down = f"http://127.0.0.1:{free_port()}"
    save_connection(
        Connection("down", down, shared_datasite.tokens["alice"], "alice", "researcher")
    )
    expected = {
        "wrong-token": ("AuthenticationError", "rejected the token"),
        "down": ("DatasiteUnreachable", "cannot reach the datasite"),
        "never-saved": ("NotFound", "no saved connection named 'never-saved'"),
    }
    for name, (ename, text) in expected.items():
        install_kernelspec(name)
        reply = proxy_error(name)
        assert reply["status"] == "error"
        assert reply["ename"] == ename, reply
        assert text in reply["evalue"]
        assert reply["traceback"] == [f"{ename}: {reply['evalue']}"]  # one line, no internals
