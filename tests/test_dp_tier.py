"""The DP tier end to end: rk.query(sql, epsilon=...) in a datasite kernel, no reviewer.

A real datasite (subprocess, loopback port), real kernels, the policy file and the
budget command an admin uses. The engine's statistics are tested in test_dp_engine.py;
this file proves the order (plan, charge, release), the budget and what each side sees.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator

import pandas as pd
import pytest

from remote_kernel.researcher.client import Datasite

from .conftest import DP_POLICY, RunningDatasite, make_datasite, run_and_view

POLICY = DP_POLICY
FILTERED = "SELECT sex, COUNT(*) AS n FROM heart WHERE age > 50 GROUP BY sex"


@pytest.fixture(scope="module")
def dp_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    site = make_datasite(tmp_path_factory.mktemp("dp"))
    (site.directory / "policy.yaml").write_text(POLICY)
    budget = [sys.executable, "-m", "remote_kernel.cli", "datasite", "budget", str(site.directory)]
    done = subprocess.run(
        [*budget, "alice", "heart", "--epsilon", "0.3"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    site.start()
    yield site
    site.stop()


def test_dp_answers_release_without_a_reviewer_until_the_budget_is_spent(
    dp_site: RunningDatasite,
) -> None:
    client = Datasite(dp_site.url, dp_site.tokens["alice"])
    cell = f'rk.query("{FILTERED}", epsilon=0.1)'
    released = []
    for attempt in range(5):
        request, views = run_and_view(dp_site, client, cell)
        if attempt < 3:
            assert request.status == "completed", request.message
            (table,) = [
                v
                for v in views
                if "application/vnd.remote-kernel.dp+json" in v["content"].get("data", {})
            ]
            assert table["state"] == "released" and table["decided_by"].startswith("policy")
            dp = table["content"]["data"]["application/vnd.remote-kernel.dp+json"]
            assert dp["epsilon"] == pytest.approx(0.1) and len(dp["data"]) == 2
            assert dp["epsilon_left"] == pytest.approx(0.3 - 0.1 * (attempt + 1), abs=1e-6)
            assert "± " in table["content"]["data"]["text/plain"]
            released.append(dp)
        else:  # over budget: refused at once, in words, with nothing of the data
            assert request.status == "error"
            assert "BudgetExhausted" in request.message
            assert not any(v["state"] == "released" and "dp+json" in str(v) for v in views)
            (refusal,) = [
                o for o in request.outputs if o.state == "released" and "refused" in o.text
            ]
            assert "this query needs ε=0.1 on heart; you have ε=0.0 left of 0.3" in refusal.text
    # The researcher's own view of the released table carries the cost, never the evidence.
    mine = client.requests()
    assert sum(1 for r in mine for o in r.outputs if o.state == "released") >= 3
    store = dp_site.store()
    (line,) = store.budgets("alice")
    assert line.epsilon_spent == pytest.approx(0.3) and line.charges == 3
    charges = [e for e in store.audit_entries() if e.action == "budget.charge"]
    assert len(charges) == 3 and store.verify_audit() == []
    store.close()
    client.close()


def test_refusals_cost_nothing(dp_site: RunningDatasite) -> None:
    client = Datasite(dp_site.url, dp_site.tokens["carol"])  # carol has no budget
    request, _ = run_and_view(dp_site, client, f'rk.query("{FILTERED}", epsilon=0.1)')
    assert request.status == "error" and "BudgetExhausted" in request.message
    assert any("no privacy budget on heart" in o.text for o in request.outputs if o.text)
    before = dp_site.store()
    spent = [line.epsilon_spent for line in before.budgets()]
    before.close()
    unbounded = 'rk.query("SELECT AVG(thalach) FROM heart", epsilon=0.1)'
    request, _ = run_and_view(dp_site, Datasite(dp_site.url, dp_site.tokens["alice"]), unbounded)
    assert request.status == "error" and "QueryRejected" in request.message
    after = dp_site.store()
    assert [line.epsilon_spent for line in after.budgets()] == spent
    after.close()
    client.close()


def test_the_mock_gives_the_exact_answer_and_says_so(dp_site: RunningDatasite) -> None:
    import remote_kernel as rk

    rk.connect(dp_site.url, token=dp_site.tokens["alice"], name="dp-mock")
    try:
        table = rk.query("SELECT MEDIAN(age) AS m FROM heart", epsilon=0.1)
        mock = rk.data("heart")
        assert float(table["m"][0]) == pytest.approx(float(mock["age"].median()))
    finally:
        rk.disconnect("dp-mock")


def test_budgets_are_visible_to_their_researcher_and_to_reviewers(
    dp_site: RunningDatasite,
) -> None:
    import remote_kernel as rk

    alice = Datasite(dp_site.url, dp_site.tokens["alice"])
    carol = Datasite(dp_site.url, dp_site.tokens["carol"])
    bob = Datasite(dp_site.url, dp_site.tokens["bob"])
    try:
        (mine,) = alice.budget()
        assert mine["user"] == "alice" and mine["dataset"] == "heart"
        assert mine["epsilon_total"] == pytest.approx(0.3)
        assert mine["epsilon_left"] == pytest.approx(0.3 - mine["epsilon_spent"])
        assert carol.budget() == []  # carol has none, and never sees alice's
        assert [line["user"] for line in bob.budget()] == ["alice"]
        rk.connect(dp_site.url, token=dp_site.tokens["alice"], name="dp-budget")
        table = rk.budget()
        row = table[table.site == "dp-budget"].iloc[0]
        assert row.dataset == "heart" and row.epsilon_left == pytest.approx(mine["epsilon_left"])
    finally:
        rk.disconnect("dp-budget")
        for client in (alice, carol, bob):
            client.close()


def test_a_refusal_does_not_say_whether_a_patient_exists(dp_site: RunningDatasite) -> None:
    ages = set(
        pd.read_parquet(dp_site.directory / "datasets" / "heart" / "private.parquet")
        .age.dropna()
        .astype(int)
    )
    present, absent = min(ages), next(a for a in range(20, 100) if a not in ages)
    notes = []
    for age in (present, absent):
        sql = (
            "SELECT COUNT(*) AS n FROM heart WHERE "
            f"CAST(CASE WHEN age = {age} THEN 'x' ELSE '1' END AS INTEGER) = 1"
        )
        client = Datasite(dp_site.url, dp_site.tokens["carol"])  # no budget: all refused
        request, _ = run_and_view(dp_site, client, f'rk.query("{sql}", epsilon=0.1)')
        notes.append([o.text for o in request.outputs if o.state == "released"])
        client.close()
    assert notes[0] == notes[1]


JOIN_POLICY = (
    DP_POLICY
    + """  patients:
    dp:
      privacy_unit: {id: pid, max_contributions: 1, name: patient}
      bounds: {age: [20, 80]}
      public_categories: {sex: [0, 1]}
  visits:
    dp:
      privacy_unit: {id: pid, max_contributions: 4, name: patient}
      bounds: {cost: [0, 1000]}
"""
)
JOIN = (
    "SELECT p.sex, COUNT(*) AS n, AVG(v.cost) AS mean_cost FROM patients p "
    "JOIN visits v ON p.pid = v.pid GROUP BY p.sex"
)


@pytest.fixture(scope="module")
def join_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    """Two datasets declaring the same privacy unit (patient), added as an admin does."""
    import numpy as np

    from remote_kernel.datasite.config import DatasiteConfig
    from remote_kernel.datasite.datasets import add_dataset

    tmp = tmp_path_factory.mktemp("dp-join")
    site = make_datasite(tmp)
    rng = np.random.default_rng(7)
    patients = pd.DataFrame(
        {"pid": np.arange(400), "sex": rng.integers(0, 2, 400), "age": rng.integers(20, 80, 400)}
    )
    visits = pd.DataFrame(
        {"pid": rng.integers(0, 400, 1200), "cost": rng.uniform(0, 1000, 1200).round(2)}
    )
    config = DatasiteConfig.load(site.directory)
    for name, frame in (("patients", patients), ("visits", visits)):
        frame.to_parquet(tmp / f"{name}.parquet")
        add_dataset(config, name, tmp / f"{name}.parquet", seed=0)
    (site.directory / "policy.yaml").write_text(JOIN_POLICY)
    budget = [sys.executable, "-m", "remote_kernel.cli", "datasite", "budget", str(site.directory)]
    for user, dataset, epsilon in (
        ("alice", "patients", "1.0"),
        ("alice", "visits", "0.5"),
        ("carol", "patients", "1.0"),
        ("carol", "visits", "0.05"),  # too little for the join: neither is charged
    ):
        done = subprocess.run(
            [*budget, user, dataset, "--epsilon", epsilon], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    site.start()
    yield site
    site.stop()


def test_a_dp_join_charges_each_dataset_it_reads(join_site: RunningDatasite) -> None:
    client = Datasite(join_site.url, join_site.tokens["alice"])
    try:
        request, views = run_and_view(join_site, client, f'rk.query("{JOIN}", epsilon=0.2)')
    finally:
        client.close()
    assert request.status == "completed", request.message
    (table,) = [v for v in views if "application/vnd.remote-kernel.dp+json" in v["content"]["data"]]
    assert table["state"] == "released"
    dp = table["content"]["data"]["application/vnd.remote-kernel.dp+json"]
    assert dp["datasets"] == ["patients", "visits"] and len(dp["data"]) == 2
    assert dp["epsilon"] == pytest.approx(0.2)
    left = {c["dataset"]: c["epsilon_left"] for c in dp["charges"]}
    assert left == pytest.approx({"patients": 0.8, "visits": 0.3})
    assert dp["epsilon_left"] == pytest.approx(0.3)  # the least left among them
    text = table["content"]["data"]["text/plain"]
    assert "ε=0.2 spent on each of patients and visits" in text
    assert "ε=0.8 left on patients, ε=0.3 left on visits" in text
    store = join_site.store()
    try:
        spent = {line.dataset: line.epsilon_spent for line in store.budgets("alice")}
        charges = [e for e in store.audit_entries() if e.action == "budget.charge"]
    finally:
        store.close()
    assert spent == pytest.approx({"patients": 0.2, "visits": 0.2})
    assert len(charges) == 2


def test_a_dp_join_without_budget_on_one_dataset_charges_neither(
    join_site: RunningDatasite,
) -> None:
    client = Datasite(join_site.url, join_site.tokens["carol"])
    try:
        request, _ = run_and_view(join_site, client, f'rk.query("{JOIN}", epsilon=0.2)')
    finally:
        client.close()
    assert request.status == "error" and "BudgetExhausted" in request.message
    (refusal,) = [o for o in request.outputs if o.state == "released" and "refused" in o.text]
    assert "needs ε=0.2 on visits; you have ε=0.05 left" in refusal.text
    store = join_site.store()
    try:
        lines = store.budgets("carol")
    finally:
        store.close()
    assert {line.dataset: line.epsilon_spent for line in lines} == {"patients": 0, "visits": 0}
    assert all(line.charges == 0 for line in lines)


@pytest.mark.parametrize("epsilon", ["float('nan')", "float('inf')", "-0.5", "0"])
def test_non_finite_or_non_positive_epsilon_is_refused_in_the_kernel(
    dp_site: RunningDatasite, epsilon: str
) -> None:
    client = Datasite(dp_site.url, dp_site.tokens["alice"])
    try:
        request, views = run_and_view(dp_site, client, f'rk.query("{FILTERED}", epsilon={epsilon})')
    finally:
        client.close()
    assert request.status == "error" and "QueryRejected" in request.message
    said = json.dumps(views)  # the kernel's error, as the reviewer reads it
    assert "epsilon must be a finite number, positive" in said and "JSON" not in said


def test_charges_on_several_datasets_are_all_or_nothing(store_url: str) -> None:
    """Store.charge_budgets on each backend: both charged, or (one short) neither."""
    from remote_kernel.datasite.store import Store
    from remote_kernel.protocol.errors import BudgetExhausted
    from remote_kernel.protocol.models import Role

    store = Store(store_url)
    try:
        store.create_user("alice", Role.RESEARCHER)
        store.set_budget("alice", "patients", 1.0)
        store.set_budget("alice", "visits", 0.3)
        charges = store.charge_budgets("alice", ["patients", "visits"], 0.2, what="join")
        assert [(c.dataset, c.epsilon_left) for c in charges] == [
            ("patients", pytest.approx(0.8)),
            ("visits", pytest.approx(0.1)),
        ]
        audit = len(store.audit_entries())
        with pytest.raises(
            BudgetExhausted, match=re.escape("needs ε=0.2 on visits; you have ε=0.1")
        ):
            store.charge_budgets("alice", ["patients", "visits"], 0.2)
        spent = {line.dataset: (line.epsilon_spent, line.charges) for line in store.budgets()}
        assert spent == {"patients": (pytest.approx(0.2), 1), "visits": (pytest.approx(0.2), 1)}
        assert len(store.audit_entries()) == audit and store.verify_audit() == []
        (once,) = store.charge_budgets("alice", ["patients", "patients"], 0.1)  # a self-join
        assert once.epsilon_left == pytest.approx(0.7)
    finally:
        store.close()
