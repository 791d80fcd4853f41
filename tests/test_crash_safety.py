"""Invariant 6 under fire: SIGKILL the datasite server at random moments, again and again.

A driver thread plays a researcher and a reviewer over HTTP (submissions, status
polls, approvals and denials) and writes down everything the server acknowledged.
The server is killed with SIGKILL at a random moment (its kernels are left behind
as orphans, as in a real crash), the store is checked while it is down, and it is
started again. It runs twice: with the default SQLite store and with a PostgreSQL
store (the server's connections die with it; the database server stays up). After
every restart the test checks, against the real database and through the
researcher's own view:

- every acknowledged submission is there, with its code;
- every acknowledged decision is there (the output's state and who decided);
- no released output is lost or changed (same state, same SHA-256 as seen released);
- no output is both released and pending: its state and the audit log agree (an
  ``output.released`` entry exists exactly for released outputs, with their hash);
- requests that were queued or running when the server died are ``interrupted``,
  with the restart message, in what the researcher sees; none stays queued/running;
- the audit chain verifies.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.core import RESTART_MESSAGE
from remote_kernel.datasite.store import Store

from .conftest import RunningDatasite, make_datasite, wait_finished

CYCLES = 50
TIME_BUDGET = 360.0  # seconds for all cycles; a run that takes longer fails
FINISHED = {"completed", "error", "failed", "interrupted"}
SEED_OUTPUTS = 400
SEED = f"from IPython.display import display\nfor i in range({SEED_OUTPUTS}):\n    display(i)"
CELLS = (
    "print('a', 1)",
    "from IPython.display import display\ndisplay('b')\ndisplay('c')",
    "import time\ntime.sleep(0.4)\nprint('slow')",
    "print(sum(range(10)))",
)


@dataclass
class Ledger:
    """What the server acknowledged to the clients (only ever added to)."""

    submitted: dict[int, str] = field(default_factory=dict)  # request id -> code
    decided: dict[int, tuple[str, str]] = field(default_factory=dict)  # output -> state, by
    released: dict[int, str] = field(default_factory=dict)  # output id -> sha256 seen
    last_status: dict[int, str] = field(default_factory=dict)
    reviewable: set[int] = field(default_factory=set)  # outputs seen pending
    seeds: set[int] = field(default_factory=set)  # requests not worth polling
    interrupted_seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def drive(site: RunningDatasite, session: str, ledger: Ledger, stop: threading.Event) -> None:
    alice, bob = site.headers("alice"), site.headers("bob")
    rng = random.Random()
    with httpx.Client(base_url=site.url, timeout=3) as http:
        while not stop.is_set():
            try:
                unfinished = [r for r, s in ledger.last_status.items() if s not in FINISHED]
                if len(unfinished) < 3:
                    code = rng.choice(CELLS)
                    response = http.post(
                        f"/api/sessions/{session}/requests", json={"code": code}, headers=alice
                    )
                    if response.status_code == 201:
                        view = response.json()
                        with ledger.lock:
                            ledger.submitted[view["id"]] = code
                            ledger.last_status[view["id"]] = view["status"]
                with ledger.lock:
                    undecided = sorted(ledger.reviewable - set(ledger.decided))
                for output_id in rng.sample(undecided, min(3, len(undecided))):
                    approve = rng.random() < 0.7
                    body = {"decision": "approve" if approve else "deny", "comment": "crash test"}
                    response = http.post(f"/api/outputs/{output_id}/review", json=body, headers=bob)
                    if response.status_code == 200:
                        decided = response.json()
                        with ledger.lock:
                            ledger.decided[decided["id"]] = (decided["state"], "bob")
                            if decided["state"] == "released":
                                ledger.released[decided["id"]] = decided["sha256"]
                for request_id in sorted(ledger.last_status)[-4:]:
                    if request_id in ledger.seeds:
                        continue
                    view = http.get(f"/api/requests/{request_id}", headers=alice).json()
                    with ledger.lock:
                        ledger.last_status[request_id] = view["status"]
                        for output in view["outputs"]:
                            if output["state"] == "pending":
                                ledger.reviewable.add(output["id"])
                            if output["state"] == "released":
                                ledger.released[output["id"]] = output["sha256"]
                time.sleep(0.05)
            except (httpx.HTTPError, ValueError, KeyError):
                time.sleep(0.02)  # the server is being killed or restarted


def rows(db: str, sql: str) -> list[Any]:
    """Rows of ``sql`` read from the store's database directly (not through the store)."""
    engine = sa.create_engine(db)
    try:
        with engine.connect() as con:
            return [row._mapping for row in con.execute(sa.text(sql))]
    finally:
        engine.dispose()


def check_store_while_down(site: RunningDatasite, ledger: Ledger) -> None:
    db = DatasiteConfig.load(site.directory).database_url
    requests = {r["id"]: r for r in rows(db, "SELECT id, code, status FROM requests")}
    outputs = {r["id"]: r for r in rows(db, "SELECT * FROM outputs")}
    with ledger.lock:
        submitted = dict(ledger.submitted)
        decided = dict(ledger.decided)
        released = dict(ledger.released)
    for request_id, code in submitted.items():
        assert request_id in requests, f"acknowledged request {request_id} is lost"
        assert requests[request_id]["code"] == code
    for output_id, (state, by) in decided.items():
        assert outputs[output_id]["state"] == state, f"decision on output {output_id} lost"
        assert outputs[output_id]["decided_by"] == by
    for output_id, sha in released.items():
        assert outputs[output_id]["state"] == "released", f"released output {output_id} lost"
        assert outputs[output_id]["sha256"] == sha

    audit = rows(
        db,
        "SELECT action, target, CAST(detail AS TEXT) AS detail FROM audit "
        "WHERE action LIKE 'output.%'",
    )
    released_in_log = Counter(
        int(a["target"].split(":")[1]) for a in audit if a["action"] == "output.released"
    )
    decided_in_log = Counter(
        int(a["target"].split(":")[1])
        for a in audit
        if a["action"] in {"output.released", "output.denied", "output.blocked"}
    )
    for output_id, output in outputs.items():
        state = output["state"]
        assert state in {"pending", "released", "denied", "blocked", "conflicted"}
        # one state per output, and the log says the same thing as the row
        assert released_in_log[output_id] == (1 if state == "released" else 0), output_id
        assert decided_in_log[output_id] == (0 if state == "pending" else 1), output_id
    hashes = {
        int(a["target"].split(":")[1]): a["detail"]
        for a in audit
        if a["action"] == "output.released"
    }
    for output_id, detail in hashes.items():
        assert outputs[output_id]["sha256"] in detail
    store = Store(db)
    try:
        assert store.verify_audit() == []
    finally:
        store.close()


def check_after_restart(site: RunningDatasite, ledger: Ledger) -> None:
    """Nothing queued or running survives a restart; the researcher is told why."""
    with ledger.lock:
        unfinished = [r for r, s in ledger.last_status.items() if s not in FINISHED]
    db = DatasiteConfig.load(site.directory).database_url
    stuck = rows(db, "SELECT id FROM requests WHERE status IN ('queued', 'running')")
    # requests submitted by the driver after this restart may legitimately be queued
    assert not [r["id"] for r in stuck if r["id"] in unfinished], stuck
    with httpx.Client(base_url=site.url, timeout=10, headers=site.headers("alice")) as http:
        for request_id in unfinished:
            view = http.get(f"/api/requests/{request_id}").json()
            assert view["status"] in FINISHED, view
            if view["status"] == "interrupted":
                assert view["message"] == RESTART_MESSAGE
                with ledger.lock:
                    ledger.interrupted_seen += 1
            with ledger.lock:
                ledger.last_status[request_id] = view["status"]


@pytest.mark.timeout(TIME_BUDGET + 120)
def test_sigkill_at_random_moments_loses_nothing_acknowledged(
    tmp_path: Path, store_url: str
) -> None:
    site = make_datasite(tmp_path, store=store_url if store_url.startswith("postgres") else None)
    site.start()
    session = httpx.post(
        site.url + "/api/sessions", headers=site.headers("alice"), timeout=10
    ).json()["id"]
    ledger = Ledger()
    # Outputs waiting for review before the first kill, so that decisions happen in
    # every cycle (a new kernel after each restart takes seconds to produce any).
    seed = httpx.post(
        f"{site.url}/api/sessions/{session}/requests",
        json={"code": SEED},
        headers=site.headers("alice"),
        timeout=10,
    ).json()
    ledger.submitted[seed["id"]] = SEED
    ledger.seeds.add(seed["id"])
    view = wait_finished(
        lambda path: httpx.get(site.url + path, headers=site.headers("alice")).json(), seed["id"]
    )
    assert view["status"] == "completed" and len(view["outputs"]) == SEED_OUTPUTS
    ledger.last_status[seed["id"]] = "completed"
    ledger.reviewable.update(o["id"] for o in view["outputs"] if o["state"] == "pending")
    rng = random.Random(8)
    began = time.monotonic()
    try:
        for cycle in range(CYCLES):
            if cycle:
                site.start()
                check_after_restart(site, ledger)
            stop = threading.Event()
            driver = threading.Thread(target=drive, args=(site, session, ledger, stop))
            driver.start()
            # Mostly short windows (kills during kernel start-up and submissions), some
            # long enough for cells to finish and reviewers to decide.
            time.sleep(rng.uniform(0.1, 0.8) if rng.random() < 0.7 else rng.uniform(1.5, 3.0))
            site.kill_server_only()
            stop.set()
            driver.join(timeout=10)
            check_store_while_down(site, ledger)
            assert time.monotonic() - began < TIME_BUDGET, f"only {cycle + 1} cycles in time"
        site.start()
        check_after_restart(site, ledger)
    finally:
        site.stop()  # SIGTERM: the last server cleans up its kernels and sandbox

    # The run exercised what it claims to: submissions, releases, denials, interruptions.
    states = Counter(state for state, _ in ledger.decided.values())
    assert len(ledger.submitted) >= CYCLES, summary(ledger)
    assert states["released"] >= 50 and states["denied"] >= 20, states
    assert ledger.interrupted_seen >= 10, ledger.interrupted_seen
    assert len(ledger.released) >= 50


def summary(ledger: Ledger) -> dict[str, Any]:
    return {
        "submitted": len(ledger.submitted),
        "decided": Counter(s for s, _ in ledger.decided.values()),
        "released": len(ledger.released),
        "interrupted": ledger.interrupted_seen,
    }
