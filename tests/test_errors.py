"""Known errors read as one line in a notebook; everything else keeps its traceback.

Driven through a real ipykernel (jupyter_client, as JupyterLab does): the error
message a frontend renders is the ``traceback`` list of the ``error`` iopub message.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from remote_kernel.protocol.errors import HTTP_STATUS, RemoteKernelError, http_status

from .conftest import RunningDatasite
from .test_end_to_end import LocalKernel, local_kernel  # noqa: F401 (fixture)

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_of(messages: list[dict[str, Any]]) -> dict[str, Any]:
    (error,) = [m["content"] for m in messages if m["msg_type"] == "error"]
    return error


def shown(error: dict[str, Any]) -> list[str]:
    """The lines a notebook shows for this error (colours removed)."""
    return [line for text in error["traceback"] for line in ANSI.sub("", text).splitlines()]


@pytest.mark.parametrize(
    ("code", "name", "says"),
    [
        (
            'rk.connect("http://127.0.0.1:1", token="rk_x", name="nowhere")',
            "DatasiteUnreachable",
            "127.0.0.1:1",
        ),
        ('rk.connect(URL, token="rk_not-a-token", name="wrong")', "AuthenticationError", "token"),
        ('rk.data("no_such_dataset")', "UnknownDataset", "they have: heart (at cleveland)"),
        ('rk.query("SELECT * FROM heart")', "QueryRejected", "SELECT *"),
    ],
)
def test_known_errors_are_one_line(
    shared_datasite: RunningDatasite,
    local_kernel: LocalKernel,  # noqa: F811
    code: str,
    name: str,
    says: str,
) -> None:
    setup = (
        "import remote_kernel as rk\n"
        f"URL = {shared_datasite.url!r}\n"
        f"rk.connect(URL, token={shared_datasite.tokens['alice']!r}, name='cleveland')\n"
    )
    assert error_of(local_kernel.run(setup + "1/0"))["ename"] == "ZeroDivisionError"
    error = error_of(local_kernel.run(code))
    assert error["ename"] == name
    lines = shown(error)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{name}: ") and says in lines[0]
    assert "client.py" not in lines[0] and "Traceback" not in lines[0]


def test_other_errors_keep_their_traceback(local_kernel: LocalKernel) -> None:  # noqa: F811
    error = error_of(local_kernel.run("def f(d):\n    return d['missing']\nf({})"))
    assert error["ename"] == "KeyError"
    lines = shown(error)
    assert len(lines) > 3
    assert any("return d['missing']" in line for line in lines)


def test_side_errors_take_their_category_status() -> None:
    """Errors of one side map through their category in the one table."""
    from remote_kernel.checks.policy import PolicyError
    from remote_kernel.datasite.config import ConfigError
    from remote_kernel.datasite.kernels import KernelDied, SandboxUnavailable
    from remote_kernel.protocol.errors import (
        DatasetError,
        NoValue,
        QueryRejected,
        TooLarge,
        TooManyRequests,
        UnknownDataset,
    )

    expected = {
        UnknownDataset("x"): 404,
        NoValue("x"): 404,
        QueryRejected("x"): 400,
        DatasetError("x"): 400,
        ConfigError("x"): 400,
        PolicyError("x"): 400,
        TooLarge("x"): 413,
        TooManyRequests("x", 3): 429,
        KernelDied("x"): 500,
        SandboxUnavailable("x"): 503,
        ValueError("not ours"): None,
    }
    assert {type(e).__name__: http_status(e) for e in expected} == {
        type(e).__name__: s for e, s in expected.items()
    }
    assert HTTP_STATUS[RemoteKernelError] == 500
