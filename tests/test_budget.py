"""The privacy-budget ledger: exact amounts, no overspending, durable charges, the CLI.

Every store test runs twice: on a real SQLite file and on a real PostgreSQL database
(conftest's ``store_url``). Concurrency is tested both ways it happens at a datasite:
many threads of one server, and several processes (the server and the admin's command
line, or server replicas) on one database.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.datasets import add_dataset
from remote_kernel.datasite.store import EPSILON_UNIT, Store, to_units
from remote_kernel.protocol.errors import (
    BudgetExhausted,
    InputError,
    NotFound,
    PermissionDenied,
    http_status,
)
from remote_kernel.protocol.models import Role

#: A process that waits for a go-file, tries N charges of 0.1 and prints how many fit.
CHARGER = """
import sys, time
from pathlib import Path
from remote_kernel.datasite.store import Store
from remote_kernel.protocol.errors import BudgetExhausted
url, go, tries = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
store = Store(url)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
fitted = 0
for i in range(tries):
    try:
        store.charge_budget("alice", "heart", 0.1, what=f"process {i}")
        fitted += 1
    except BudgetExhausted:
        pass
print(fitted, flush=True)
"""

#: A process that charges once, says so, and waits to be killed.
CHARGE_THEN_HANG = """
import sys, time
from remote_kernel.datasite.store import Store
charge = Store(sys.argv[1]).charge_budget("alice", "heart", 0.1, what=sys.argv[2])
print(charge.id, flush=True)
time.sleep(120)
"""


@pytest.fixture
def url(store_url: str) -> str:
    """A store with researcher alice (ε=0.3 on heart) and reviewer bob, on each backend."""
    database = store_url
    store = Store(database)
    store.create_user("alice", Role.RESEARCHER)
    store.create_user("bob", Role.REVIEWER)
    store.set_budget("alice", "heart", 0.3)
    store.close()
    return database


@pytest.fixture
def store(url: str) -> Store:
    s = Store(url)
    yield s
    s.close()


def _spent(store: Store) -> tuple[float, float, int]:
    (line,) = store.budgets("alice", "heart")
    return line.epsilon_spent, line.epsilon_left, line.charges


def test_thirty_threads_against_three_charges_left(store: Store) -> None:
    start = threading.Barrier(30)
    fitted, refused = [], []

    def charge(i: int) -> None:
        start.wait()
        try:
            fitted.append(store.charge_budget("alice", "heart", 0.1, what=f"thread {i}"))
        except BudgetExhausted as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=charge, args=(i,)) for i in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(fitted), len(refused)) == (3, 27)
    assert sorted(c.epsilon_left for c in fitted) == [0.0, 0.1, 0.2]
    assert _spent(store) == (0.3, 0.0, 3)
    assert "you have ε=0.0 left of 0.3" in refused[0]
    charges = [e for e in store.audit_entries() if e.action == "budget.charge"]
    assert len(charges) == 3
    assert store.verify_audit() == []


def test_six_processes_against_three_charges_left(url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHARGER, url, str(go), "5"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        go.touch()
        fitted = [int(process.communicate(timeout=60)[0]) for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert sum(fitted) == 3
    store = Store(url)
    assert _spent(store) == (0.3, 0.0, 3)
    assert store.verify_audit() == []
    store.close()


def test_a_charge_survives_sigkill_right_after_it_returns(url: str) -> None:
    for attempt in range(3):
        process = subprocess.Popen(
            [sys.executable, "-c", CHARGE_THEN_HANG, url, f"request:{attempt}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        charge_id = int(process.stdout.readline())
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        store = Store(url)
        spent, _, charges = _spent(store)
        assert (spent, charges, charge_id) == (
            pytest.approx(0.1 * (attempt + 1)),
            attempt + 1,
            attempt + 1,
        )
        last = store.audit_entries()[-1]
        assert (last.action, last.detail["what"]) == ("budget.charge", f"request:{attempt}")
        assert store.verify_audit() == []
        store.close()


def test_a_refusal_changes_nothing_and_a_smaller_query_still_fits(store: Store) -> None:
    store.set_budget("alice", "heart", 1.0)
    store.charge_budget("alice", "heart", 0.95)
    audit_before = len(store.audit_entries())
    for _ in range(3):  # refused again and again: never locked out
        with pytest.raises(BudgetExhausted) as refused:
            store.charge_budget("alice", "heart", 0.1)
    assert str(refused.value) == (
        "this query needs ε=0.1 on heart; you have ε=0.05 left of 1.0 "
        "— ask the datasite admin for more"
    )
    assert _spent(store) == (0.95, pytest.approx(0.05), 1)
    assert len(store.audit_entries()) == audit_before
    assert store.charge_budget("alice", "heart", 0.05).epsilon_left == 0.0
    assert _spent(store) == (1.0, 0.0, 2)


def test_delta_is_budgeted_too_and_no_budget_means_no_dp_queries(store: Store) -> None:
    with pytest.raises(
        BudgetExhausted, match=re.escape("needs δ=0.000001 on heart; you have δ=0.0 left")
    ):
        store.charge_budget("alice", "heart", 0.1, delta=1e-6)
    store.set_budget("alice", "heart", 0.3, delta=1e-6)
    charge = store.charge_budget("alice", "heart", 0.1, delta=1e-6)
    assert (charge.delta, charge.delta_left) == (1e-6, 0.0)
    with pytest.raises(BudgetExhausted, match="no privacy budget on lungs, so DP queries"):
        store.charge_budget("alice", "lungs", 0.01)
    with pytest.raises(BudgetExhausted):  # ε is per dataset: heart's does not pay for lungs
        store.charge_budget("alice", "lungs", 0.01)


def test_amounts_add_up_exactly(store: Store) -> None:
    store.set_budget("alice", "heart", 1.0)
    for _ in range(10):
        store.charge_budget("alice", "heart", 0.1)
    assert _spent(store) == (1.0, 0.0, 10)
    assert to_units(0.1 + 0.2, EPSILON_UNIT, charge=True) == 300_000  # float error forgiven
    assert to_units(1 / 3, EPSILON_UNIT, charge=True) == 333_334  # else a charge rounds up
    assert to_units(1 / 3, EPSILON_UNIT, charge=False) == 333_333  # and a total down
    assert to_units(1e-7, EPSILON_UNIT, charge=True) == 1  # never a free query


@pytest.mark.parametrize("amount", [-0.1, math.nan, math.inf, True, "0.1", 2e6])
def test_bad_amounts_are_refused_before_anything_changes(store: Store, amount: object) -> None:
    before = (store.budgets(), len(store.audit_entries()))
    calls = [
        lambda: store.charge_budget("alice", "heart", amount),
        lambda: store.charge_budget("alice", "heart", 0.1, delta=amount),
        lambda: store.set_budget("alice", "heart", amount),
        lambda: store.set_budget("alice", "heart", 0.3, delta=amount),
    ]
    for call in calls:
        with pytest.raises(InputError):
            call()
    with pytest.raises(InputError, match="must spend a positive epsilon"):
        store.charge_budget("alice", "heart", 0.0)
    assert (store.budgets(), len(store.audit_entries())) == before


def test_who_may_hold_a_budget_and_the_error_category(store: Store) -> None:
    with pytest.raises(NotFound, match="no user 'carol'"):
        store.set_budget("carol", "heart", 1.0)
    with pytest.raises(InputError, match="'bob' is a reviewer; privacy budgets are for"):
        store.set_budget("bob", "heart", 1.0)
    error = BudgetExhausted("no budget")
    assert isinstance(error, PermissionDenied) and http_status(error) == 403


def test_every_set_and_charge_is_audited(store: Store) -> None:
    store.set_budget("alice", "heart", 0.5, delta=1e-5, actor="root")
    store.charge_budget("alice", "heart", 0.2, delta=1e-6, what="request:7 sql:ab12")
    entries = [e for e in store.audit_entries() if e.action.startswith("budget.")]
    assert [(e.action, e.actor) for e in entries] == [
        ("budget.set", "admin-cli"),
        ("budget.set", "root"),
        ("budget.charge", "alice"),
    ]
    assert entries[1].detail == {
        "user": "alice",
        "dataset": "heart",
        "epsilon": 0.5,
        "delta": 1e-5,
        "previous_epsilon": 0.3,
        "previous_delta": 0.0,
    }
    charged = entries[2].detail
    assert (charged["epsilon"], charged["delta"], charged["what"]) == (
        0.2,
        1e-6,
        "request:7 sql:ab12",
    )
    assert store.verify_audit() == []


# --- the command line --------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "remote_kernel.cli", "datasite", "budget", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def site(tmp_path: Path, store_url: str) -> Path:
    """A datasite directory with dataset heart, researcher alice and reviewer bob."""
    config = DatasiteConfig.create(tmp_path / "cleveland", "cleveland")
    config.db_url = store_url if store_url.startswith("postgresql") else None
    config.save()
    table = tmp_path / "heart.csv"
    table.write_text("age,sex\n" + "".join(f"{40 + i % 30},{i % 2}\n" for i in range(40)))
    add_dataset(config, "heart", table, mock_path=table)
    store = Store(config.database_url)
    store.create_user("alice", Role.RESEARCHER)
    store.create_user("bob", Role.REVIEWER)
    store.close()
    return config.directory


def test_cli_sets_and_lists_budgets(site: Path) -> None:
    empty = _cli(str(site))
    assert empty.returncode == 0 and "no privacy budgets at cleveland" in empty.stdout
    done = _cli(str(site), "alice", "heart", "--epsilon", "0.3", "--delta", "1e-6")
    assert done.returncode == 0, done.stderr
    assert "privacy budget of 'alice' on heart at cleveland: ε=0.3, δ=1e-06" in done.stdout
    store = Store(DatasiteConfig.load(site).database_url)
    store.charge_budget("alice", "heart", 0.2)
    store.close()
    listed = _cli(str(site)).stdout.splitlines()
    assert listed[0].split() == [
        "user", "dataset", "ε", "spent", "ε", "left", "ε", "total",
        "δ", "spent", "δ", "left", "δ", "total", "queries",
    ]  # fmt: skip
    assert listed[1].split() == [
        "alice",
        "heart",
        "0.2",
        "0.1",
        "0.3",
        "0.0",
        "1e-06",
        "1e-06",
        "1",
    ]
    lowered = _cli(str(site), "alice", "heart", "--epsilon", "0.1")
    assert lowered.returncode == 0
    assert "δ=1e-06" in lowered.stdout  # --delta left out: unchanged
    assert "'alice' has already spent ε=0.2, more than the new total: no DP query fits" in (
        lowered.stdout
    )


CLI_ERRORS = [
    (("carol", "heart", "--epsilon", "1"), "error: no user 'carol' at cleveland"),
    (("alice", "lungs", "--epsilon", "1"), "error: datasite 'cleveland' has no dataset 'lungs'"),
    (("bob", "heart", "--epsilon", "1"), "error: 'bob' is a reviewer; privacy budgets"),
    (("alice", "--epsilon", "1"), "error: to set a budget give the researcher, the dataset"),
    (("alice", "heart", "--epsilon", "-1"), "error: epsilon must be a number from 0"),
]


def test_cli_errors_are_one_line_and_change_nothing(site: Path) -> None:
    command = [sys.executable, "-m", "remote_kernel.cli", "datasite", "budget", str(site)]
    running = [  # at once: each start of the command line takes about a second
        subprocess.Popen(
            [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args, _ in CLI_ERRORS
    ]
    for process, (_, message) in zip(running, CLI_ERRORS, strict=True):
        stdout, stderr = process.communicate(timeout=60)
        assert process.returncode == 2
        assert stderr.startswith(message) and stderr.count("\n") == 1
        assert stdout == ""
    store = Store(DatasiteConfig.load(site).database_url)
    assert store.budgets() == []
    assert store.verify_audit() == []
    store.close()
