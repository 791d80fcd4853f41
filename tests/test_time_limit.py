"""A cell's wall-clock limit: a runaway cell is interrupted, a stubborn one loses its kernel.

A real datasite (subprocess, loopback port), real kernels, and the policy file an
admin writes. Limits are seconds here so that the suite stays fast; the default is
30 minutes (``max_cell_seconds: 1800``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from remote_kernel.checks.policy import Policy, PolicyError, Thresholds, parse_policy
from remote_kernel.researcher.client import Datasite

from .conftest import RunningDatasite, make_datasite

POLICY = """
preset: strict
overrides:
  researchers:
    alice: {max_cell_seconds: 4}
datasets:
  heart: {max_cell_seconds: 2}
"""


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    site = make_datasite(tmp_path_factory.mktemp("timed"), interrupt_grace_seconds=3)
    (site.directory / "policy.yaml").write_text(POLICY)
    site.start()
    yield site
    site.stop()


def run(site: RunningDatasite, client: Datasite, code: str) -> tuple[Any, str, float]:
    """Run a cell; the request, its stdout (read as the reviewer) and how long it took."""
    started = time.monotonic()
    request = client.run(code)
    request.wait(120, until="finished")
    took = time.monotonic() - started
    views = [
        httpx.get(f"{site.url}/api/outputs/{o.id}", headers=site.headers("bob")).json()
        for o in request.outputs
    ]
    text = "".join(v["content"].get("text", "") for v in views if v["msg_type"] == "stream")
    return request, text, took


def test_a_runaway_cell_is_interrupted_and_the_kernel_kept(timed: RunningDatasite) -> None:
    client = Datasite(timed.url, timed.tokens["alice"])
    assert run(timed, client, "x = 41")[0].status == "completed"
    request, _, took = run(timed, client, "import time\ntime.sleep(120)")
    assert request.status == "failed"
    assert request.message.startswith("stopped after 4 s: this datasite's time limit")
    assert "interrupted (the kernel and its variables are kept)" in request.message
    assert took < 30
    after, text, _ = run(timed, client, "print(x + 1)")
    assert after.status == "completed" and text == "42\n"
    client.close()


def test_a_cell_that_ignores_interrupts_loses_its_kernel(timed: RunningDatasite) -> None:
    client = Datasite(timed.url, timed.tokens["alice"])
    run(timed, client, "y = 1")
    stubborn = (
        "import time\nwhile True:\n    try:\n        time.sleep(0.2)\n"
        "    except KeyboardInterrupt:\n        pass"
    )
    request, _, took = run(timed, client, stubborn)
    assert request.status == "failed"
    assert "did not stop when interrupted, so its kernel was stopped" in request.message
    assert took < 40
    after, text, _ = run(timed, client, "print('y' in globals())")
    assert after.status == "completed" and text == "False\n"  # a new kernel
    client.close()


def test_a_dataset_limit_applies_to_cells_that_name_it(timed: RunningDatasite) -> None:
    client = Datasite(timed.url, timed.tokens["carol"])  # carol: the default 30 min
    slow = "import time\ntime.sleep(5)\nprint('done')"
    request, text, _ = run(timed, client, slow)
    assert request.status == "completed" and text == "done\n"
    request, _, _ = run(timed, client, 'df = rk.data("heart")\n' + slow)
    assert request.status == "failed" and request.message.startswith("stopped after 2 s")
    client.close()
    store = timed.store()
    fired = [e for e in store.audit_entries() if e.action == "request.time_limit"]
    assert len(fired) >= 3 and store.verify_audit() == []
    store.close()


def test_limits_in_the_policy_file() -> None:
    policy = parse_policy({"datasets": {"heart": {"max_cell_seconds": 60}}})
    assert Thresholds().max_cell_seconds == 1800
    assert policy.cell_seconds("alice", "researcher", "print(1)") == 1800
    assert policy.cell_seconds("alice", "researcher", "rk.data('heart')") == 60
    assert policy.cell_seconds("alice", "researcher", "rk.data('heartbeat')") == 1800
    unlimited = parse_policy({"thresholds": {"max_cell_seconds": 0}})
    assert unlimited.cell_seconds("alice", "researcher", "x") == 0
    assert Policy().cell_seconds("a", "researcher", "x") == 1800
    for bad in (-1, True, "ten"):
        with pytest.raises(PolicyError, match="max_cell_seconds"):
            parse_policy({"thresholds": {"max_cell_seconds": bad}})
    for bad in (0, -5, "1h"):
        with pytest.raises(PolicyError, match="max_cell_seconds"):
            parse_policy({"datasets": {"heart": {"max_cell_seconds": bad}}})


def test_the_example_policy_documents_the_limit() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()
    assert "max_cell_seconds" in docs
