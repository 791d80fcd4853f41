"""A researcher's own error: its type and their cell's lines at once, the message held.

Against a real datasite and kernel: a KeyError on a private value releases, at
once and without a reviewer, a datasite-written output with the exception's type
and the lines of the researcher's cell (quoted from the code they submitted),
while the kernel's error output, whose message carries the private value, waits
for a reviewer. What the kernel's traceback can forge is bounded: unit tests
of :func:`error_facts` below.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest

from remote_kernel.checks.errors import MAX_FRAMES, error_facts, error_release_item
from remote_kernel.researcher.client import Datasite

from .conftest import RunningDatasite, make_datasite, wait_finished

KEY_ERROR = (
    'h = rk.data("heart")\n'
    "def lookup(table, key):\n"
    "    return table[key]\n"
    'name = f"patient-{h.chol.iloc[0]}-{h.age.iloc[0]}"\n'
    "lookup({}, name)\n"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    running = make_datasite(tmp_path_factory.mktemp("errors"), "cleveland")
    running.start()
    yield running
    running.stop()


def get(site: RunningDatasite, user: str, path: str) -> dict:
    response = httpx.get(site.url + path, headers=site.headers(user), timeout=30)
    response.raise_for_status()
    return response.json()


def run(site: RunningDatasite, code: str) -> dict:
    researcher = Datasite(site.url, site.tokens["alice"])
    try:
        request = researcher.run(code)
    finally:
        researcher.close()
    return wait_finished(lambda path: get(site, "alice", path), request.id)


def private_key(site: RunningDatasite) -> str:
    frame = pd.read_parquet(site.directory / "datasets" / "heart" / "private.parquet")
    return f"patient-{frame.chol.iloc[0]}-{frame.age.iloc[0]}"


def test_a_key_error_releases_type_and_lines_and_holds_the_message(site):
    view = run(site, KEY_ERROR)
    assert view["status"] == "error"
    assert view["message"].startswith("KeyError at line 3 of your cell")
    by_type = {o["msg_type"]: o for o in view["outputs"]}
    held, made = by_type["error"], by_type["display_data"]
    assert held["state"] == "pending" and "content" not in held
    assert made["state"] == "released" and made["decided_by"].startswith("policy:")
    text = made["content"]["data"]["text/plain"]
    assert text.splitlines() == [
        "KeyError in your cell; the message and values are held for review",
        "  line 5: lookup({}, name)",
        "  line 3:     return table[key]",
    ]
    secret = private_key(site)
    assert secret not in json.dumps(view)
    # The reviewer has the message; the audit has the released bytes' hash.
    reviewer = get(site, "bob", f"/api/outputs/{held['id']}")
    assert secret in reviewer["content"]["evalue"]
    store = site.store()
    try:
        entries = {(e.target, e.action): e.detail for e in store.audit_entries()}
    finally:
        store.close()
    released = entries[(f"output:{made['id']}", "output.released")]
    assert released["released_sha256"] == made["sha256"]
    body = json.dumps({"content": made["content"], "msg_type": "display_data"},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # fmt: skip
    assert hashlib.sha256(body.encode()).hexdigest() == made["sha256"]


def test_an_exception_class_named_at_run_time_is_not_named(site):
    code = (
        'h = rk.data("heart")\n'
        'Leak = type(f"Patient_{h.chol.iloc[0]}_{h.age.iloc[0]}", (Exception,), {})\n'
        "raise Leak('x')\n"
    )
    frame = pd.read_parquet(site.directory / "datasets" / "heart" / "private.parquet")
    secret = f"Patient_{frame.chol.iloc[0]}_{frame.age.iloc[0]}"
    view = run(site, code)
    made = next(o for o in view["outputs"] if o["msg_type"] == "display_data")
    text = made["content"]["data"]["text/plain"]
    assert secret not in json.dumps(view)
    assert text.startswith("An exception (its type is not on this datasite's list")
    assert "line 3: raise Leak('x')" in text  # their own code, quoted


def test_an_interrupt_releases_its_type(site):
    researcher = Datasite(site.url, site.tokens["alice"])
    try:
        request = researcher.run("import time\nfor _ in range(600):\n    time.sleep(0.1)\n")
        for _ in range(100):
            if get(site, "alice", f"/api/requests/{request.id}")["status"] == "running":
                break
            httpx.Client().close()
        researcher.interrupt()
    finally:
        researcher.close()
    view = wait_finished(lambda path: get(site, "alice", path), request.id)
    made = [o for o in view["outputs"] if o["msg_type"] == "display_data"]
    if view["status"] != "error" or not made:
        pytest.skip(f"the kernel ended the cell as {view['status']}")
    assert made[0]["content"]["data"]["text/plain"].startswith("KeyboardInterrupt in your cell")


def traceback(*entries: str) -> dict:
    return {"ename": "KeyError", "evalue": "'x'", "traceback": [*entries]}


def test_only_this_cells_frames_within_its_lines_are_read():
    code = "a = 1\nb = 2\nc = 3\n"
    content = traceback(
        "-----",
        "Cell In[7], line 2\n----> 2 f()",  # an earlier cell: other code
        "Cell In[9], line 3\n----> 3 c",
        "Cell In[9], line 99\n",  # outside the cell: forged
        "KeyError: 'Cell In[9], line 1'",  # the message is never read
    )
    facts = error_facts(content, code)
    assert facts.name == "KeyError" and facts.lines == (3,)
    many = traceback("-", *[f"Cell In[1], line {i % 3 + 1}" for i in range(50)], "KeyError: x")
    assert len(error_facts(many, code).lines) == MAX_FRAMES
    item = error_release_item(error_facts(content, code), code)
    assert "'x'" not in json.dumps(item.content)
