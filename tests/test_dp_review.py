"""The DP tier as reviewers and researchers see it, against a real served datasite.

* The reviewer's view of any output carries the researcher's DP spending and the DP
  answers they already hold (``dp``), on the API and in ``remote-kernel review show``.
* "Noisy now, exact later": ``rk.exact(answer)`` asks for the exact answer of a DP
  answer; it is held for a data owner, who sees which DP answer it came from.
* Each DP output carries ε spent, ε left and error bars a person reads, in the
  rendered output and in the DataFrame (``.attrs["dp"]``); ``rk.crosstab`` too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pandas as pd
import pytest

from remote_kernel.checks.filter import decision
from remote_kernel.datasite.dp_tier import DP_MIME as SERVER_DP_MIME
from remote_kernel.datasite.dp_tier import error_bar
from remote_kernel.datasite.store import Store
from remote_kernel.datasite.views import DP_ANSWERS_SHOWN, dp_view
from remote_kernel.protocol.models import Finding, OutputItem, Role, Verdict
from remote_kernel.researcher.client import DP_MIME, Datasite
from remote_kernel.researcher.display import output_bundle

from .conftest import DP_POLICY, RunningDatasite, make_datasite, run_and_view

POLICY = DP_POLICY
FILTERED = "SELECT sex, COUNT(*) AS n FROM heart WHERE age > 50 GROUP BY sex"
MEAN_AGE = "SELECT sex, AVG(age) AS mean_age FROM heart GROUP BY sex"
#: "57.3 ± 4.1 at 95%": digits, never an exponent.
ERROR_BAR = re.compile(r"^-?\d+(\.\d+)? ± \d+(\.\d+)? at 95%$")
#: Researchers of their own per test, so that budgets and answers do not mix.
RESEARCHERS = ("dave", "erin", "frank", "gina")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    running = make_datasite(tmp_path_factory.mktemp("dp-review"))
    (running.directory / "policy.yaml").write_text(POLICY)
    store = running.store()
    for name in RESEARCHERS:
        _, running.tokens[name] = store.create_user(name, Role.RESEARCHER)
        store.set_budget(name, "heart", 1.0)
    store.close()
    running.start()
    yield running
    running.stop()


def as_bob(site: RunningDatasite, path: str) -> Any:
    response = httpx.get(site.url + path, headers=site.headers("bob"), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def dp_outputs(request: Any) -> list[Any]:
    return [o for o in request.outputs if o.released and DP_MIME in o.data]


def test_the_reviewer_sees_the_researchers_dp_spending_and_answers(site: RunningDatasite) -> None:
    dave = Datasite(site.url, site.tokens["dave"])
    first, _ = run_and_view(site, dave, f'rk.query("{FILTERED}", epsilon=0.1)')
    second, _ = run_and_view(site, dave, f'rk.query("{MEAN_AGE}", epsilon=0.2)')
    answers = [dp_outputs(first)[0], dp_outputs(second)[0]]
    held, views = run_and_view(site, dave, 'rk.data("heart").groupby("sex").size()')
    (pending,) = [v for v in views if v["state"] == "pending"]

    dp = as_bob(site, f"/api/outputs/{pending['id']}")["dp"]
    assert dp["spending"] == [
        {
            "dataset": "heart",
            "epsilon_total": 1.0,
            "epsilon_spent": pytest.approx(0.3),
            "epsilon_left": pytest.approx(0.7),
            "charges": 2,
        }
    ]
    newest_first = [
        (a["output_id"], a["request_id"], a["dataset"], a["sql"], a["epsilon"])
        for a in dp["answers"]
    ]
    assert newest_first == [
        (answers[1].id, second.id, "heart", MEAN_AGE, pytest.approx(0.2)),
        (answers[0].id, first.id, "heart", FILTERED, pytest.approx(0.1)),
    ]
    assert all(datetime.fromisoformat(a["created"].removesuffix("Z")) for a in dp["answers"])
    # The same section in the review queue, on a request's outputs, and after a vote.
    (queued,) = [i for i in as_bob(site, "/api/reviews") if i["id"] == pending["id"]]
    assert queued["dp"] == dp
    request_view = as_bob(site, f"/api/requests/{held.id}")
    assert all(o["dp"] == dp for o in request_view["outputs"])
    listed = as_bob(site, "/api/requests?outputs=true")
    daves = [o for r in listed if r["user"] == "dave" for o in r["outputs"]]
    assert len(daves) >= 3 and all(o["dp"] == dp for o in daves)
    # Another researcher's output shows theirs (none), never dave's.
    carol = Datasite(site.url, site.tokens["carol"])
    _, carol_views = run_and_view(site, carol, "1 + 1")
    carols = as_bob(site, f"/api/outputs/{carol_views[0]['id']}")["dp"]
    assert carols == {"spending": [], "answers": []}
    # The researcher's own views keep their shape: no "dp" section anywhere.
    own = httpx.get(f"{site.url}/api/outputs/{answers[0].id}", headers=site.headers("dave"))
    assert own.status_code == 200 and "dp" not in own.json()
    mine = httpx.get(f"{site.url}/api/requests/{held.id}", headers=site.headers("dave")).json()
    assert all("dp" not in o for o in mine["outputs"])
    for client in (dave, carol):
        client.close()


def test_review_show_prints_the_dp_section(site: RunningDatasite) -> None:
    erin = Datasite(site.url, site.tokens["erin"])
    answered, _ = run_and_view(site, erin, f'rk.query("{FILTERED}", epsilon=0.25)')
    (answer,) = dp_outputs(answered)
    _, views = run_and_view(site, erin, 'print(rk.data("heart").age.max())')
    (pending,) = [v for v in views if v["state"] == "pending"]
    shown = subprocess.run(
        [sys.executable, "-m", "remote_kernel.cli", "review", "show", str(pending["id"])],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "REMOTE_KERNEL_URL": site.url,
            "REMOTE_KERNEL_TOKEN": site.tokens["bob"],
        },
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    section = shown.stdout.split("--- differential privacy: what erin spent and holds here ---")[1]
    assert "budget on heart: ε=0.25 spent of 1 (0.75 left), 1 charge(s)" in section
    assert f"output {answer.id} (request {answered.id}, " in section
    assert f"ε=0.25 on heart: {FILTERED}" in section
    erin.close()


def test_noisy_now_exact_later(site: RunningDatasite, private_heart_dp: pd.DataFrame) -> None:
    frank = Datasite(site.url, site.tokens["frank"])
    noisy, _ = run_and_view(site, frank, f'answer = rk.query("{FILTERED}", epsilon=0.1)\nanswer')
    (answer,) = dp_outputs(noisy)
    # Nothing of the kernel's own display: the DatasiteTable shows nothing itself.
    assert [o for o in noisy.outputs if o.msg_type == "execute_result"] == []
    exact, views = run_and_view(site, frank, "exact = rk.exact(answer)")
    assert exact.status == "completed", exact.message
    (held,) = [v for v in views if v["state"] == "pending"]
    (origin,) = [f for f in held["findings"] if f["check"] == "exact-of-dp"]
    assert f"DP answer #{answer.id} (ε=0.1 on heart)" in origin["message"]
    assert held["dp"]["answers"][0]["output_id"] == answer.id
    # The researcher sees only that it waits (no content, no hash) until a reviewer decides.
    (placeholder,) = [o for o in exact.outputs if o.id == held["id"]]
    assert placeholder.state == "pending" and placeholder.content is None
    bob = Datasite(site.url, site.tokens["bob"])
    bob.approve(held["id"], "exact counts are fine here")
    exact.wait(60, until="decided")
    table = exact.value()
    truth = private_heart_dp[private_heart_dp.age > 50].groupby("sex").size()
    got = dict(zip(table["sex"].astype(int), table["n"].astype(int), strict=True))
    assert got == {int(k): int(v) for k, v in truth.items()}
    assert "dp" not in table.attrs  # the exact table is not a DP answer
    # The exact answer cost nothing.
    (line,) = [b for b in bob.budget() if b["user"] == "frank"]
    assert line["epsilon_spent"] == pytest.approx(0.1) and line["charges"] == 1
    for client in (frank, bob):
        client.close()


def test_exact_refuses_anything_but_ones_own_dp_answer(site: RunningDatasite) -> None:
    frank_answers = as_bob(site, "/api/requests?outputs=true")
    franks = [
        o["id"]
        for r in frank_answers
        if r["user"] == "frank"
        for o in r["outputs"]
        if DP_MIME in (o.get("content") or {}).get("data", {})
    ]
    assert franks, "run after test_noisy_now_exact_later"
    gina = Datasite(site.url, site.tokens["gina"])
    ask = "from remote_kernel.researcher.query import _ask_datasite\n_ask_datasite({})"
    cases = {
        "someone else's answer": f'{{"sql": "{FILTERED}", "exact_of": {franks[0]}}}',
        "no such output": f'{{"sql": "{FILTERED}", "exact_of": 999999}}',
        "a plain table": "rk.exact(pd.DataFrame({'n': [1]}))",
        # A malformed body (rk.exact never sends one) is refused before anything runs.
        "an id that is not a number": f'{{"sql": "{FILTERED}", "exact_of": "{franks[0]}"}}',
    }
    for what, arg in cases.items():
        code = arg if arg.startswith("rk.") else ask.format(arg)
        code = "import pandas as pd\n" + code
        request, _ = run_and_view(site, gina, code)
        assert request.status == "error" and "QueryRejected" in request.message, what
        if what in ("someone else's answer", "no such output"):  # the same words either way
            (note,) = [o for o in request.outputs if "rk.query refused" in o.text]
            assert "is not a DP answer of yours" in note.text, what
    gina.close()


def test_each_dp_output_carries_its_cost_and_error_bars(site: RunningDatasite) -> None:
    gina = Datasite(site.url, site.tokens["gina"])
    request, _ = run_and_view(site, gina, 'rk.crosstab("heart", "sex", epsilon=0.2)')
    assert request.status == "completed", request.message
    (output,) = dp_outputs(request)
    facts = output.data[DP_MIME]
    left = facts["epsilon_left"]
    assert facts["epsilon"] == pytest.approx(0.2) and facts["dataset"] == "heart"
    # The rendered output: error bars and the cost, in text and HTML, and in the label.
    plain, html = output.data["text/plain"], output.data["text/html"]
    cost = f"ε=0.2 spent on heart; ε={left:g} left"
    assert cost in plain and cost in html
    bars = [row[-1] for row in facts["error_bars"]]
    assert len(bars) == 2 and all(ERROR_BAR.match(bar) for bar in bars), bars
    assert all(bar in plain and bar in html for bar in bars)
    bundle, _ = output_bundle(request, output)
    assert f"differential privacy: ε=0.2 spent on heart, ε={left:g} left" in bundle["text/plain"]
    # The DataFrame the researcher pulls carries the same facts.
    table = request.value()
    dp = table.attrs["dp"]
    assert dp["epsilon"] == pytest.approx(0.2) and dp["epsilon_left"] == pytest.approx(left)
    (column,) = dp["error_bars"]
    assert dp["error_bars"][column] == bars and len(dp["error"][column]) == len(table)
    assert dp["output_id"] == output.id and dp["site"] == request.site
    # In the datasite kernel, the returned table says it too.
    _, views = run_and_view(
        site, gina, 't = rk.crosstab("heart", "sex", epsilon=0.1)\nprint(t.attrs["dp"])'
    )
    (printed,) = [v for v in views if v["msg_type"] == "stream"]
    text = printed["content"]["text"]
    assert "'epsilon': 0.1" in text and "at 95%" in text and "'output_id': " in text
    gina.close()


def test_the_mock_says_what_exact_will_do(
    site: RunningDatasite, capsys: pytest.CaptureFixture[str]
) -> None:
    import remote_kernel as rk

    rk.connect(site.url, token=site.tokens["gina"], name="dp-review-mock")
    try:
        answer = rk.query(FILTERED, epsilon=0.1)
        assert answer.attrs["dp"]["mock"] is True
        assert "At the datasite: a DP answer with ε=0.1 charged" in capsys.readouterr().out
        exact = rk.exact(answer)
        said = capsys.readouterr().out
        assert "held for a data owner" in said and "ε=0.1" in said
        mock = rk.data("heart")
        truth = mock[mock.age > 50].groupby("sex").size()
        assert dict(zip(exact["sex"], exact["n"], strict=True)) == dict(truth.items())
        with pytest.raises(rk.QueryRejected, match=r"rk\.exact takes a DP answer"):
            rk.exact(mock)
        # A shape only the DP tier answers has no exact answer: refused here first.
        median = rk.query("SELECT MEDIAN(age) AS m FROM heart", epsilon=0.1)
        with pytest.raises(rk.QueryRejected):
            rk.exact(median)
    finally:
        rk.disconnect("dp-review-mock")


@pytest.mark.parametrize(
    ("value", "error", "shown"),
    [
        (57.31, 4.13, "57.3 ± 4.1 at 95%"),
        (1234.5, 123.4, "1234 ± 123 at 95%"),
        (0.4567, 0.0123, "0.457 ± 0.012 at 95%"),
        (3.2e6, 2.5e4, "3200000 ± 25000 at 95%"),
        (54.5, float("nan"), "54.5 (no error bar for this statistic)"),
        (float("nan"), 1.0, "no estimate (too few rows)"),
    ],
)
def test_error_bars_read_without_exponents(value: float, error: float, shown: str) -> None:
    assert error_bar(value, error, "95%") == shown


@pytest.fixture
def private_heart_dp(site: RunningDatasite) -> pd.DataFrame:
    return pd.read_parquet(site.directory / "datasets" / "heart" / "private.parquet")


def _dp_item(sql: str, epsilon: float, dataset: str | None = "heart") -> OutputItem:
    payload: dict[str, Any] = {"sql": sql, "epsilon": epsilon, "columns": ["n"], "data": [[1]]}
    if dataset is not None:
        payload["dataset"] = dataset
    data = {"text/plain": "n", SERVER_DP_MIME: payload}
    return OutputItem("display_data", {"data": data, "metadata": {}, "transient": {}})


def test_dp_view_on_each_store_backend(store_url: str) -> None:
    """Only released datasite-made DP answers of that researcher, newest first, capped;
    a kernel output carrying the DP mime type (researcher code can print anything) is not
    one. Runs on SQLite and PostgreSQL (the LIKE is portable)."""
    assert SERVER_DP_MIME == DP_MIME  # the researcher's client mirrors the datasite's name
    store = Store(store_url)
    alice, _ = store.create_user("alice", Role.RESEARCHER)
    carol, _ = store.create_user("carol", Role.RESEARCHER)
    store.set_budget("alice", "heart", 2.0)
    store.charge_budget("alice", "heart", 0.5)
    release = filter_decision(Verdict.RELEASE)
    ids = {}
    for who in (alice, carol):
        store.create_session(f"s-{who.name}", who)
        ids[who.name] = store.create_request(f"s-{who.name}", who, "rk.query(...)").id
    answers = []
    for i in range(DP_ANSWERS_SHOWN + 3):
        sql = f"SELECT COUNT(*) AS n FROM heart WHERE age > {i}"
        out = store.add_output(
            ids["alice"], _dp_item(sql, 0.01, None if i == 0 else "heart"), origin="query"
        )
        answers.append(store.apply_filter_decision(out.id, release, "test").id)
    forged = store.add_output(ids["alice"], _dp_item("SELECT 1", 9.0), origin="kernel")
    store.apply_filter_decision(forged.id, release, "test")
    held = store.add_output(ids["alice"], _dp_item("SELECT 2", 9.0), origin="query")
    store.apply_filter_decision(held.id, filter_decision(Verdict.REVIEW), "test")
    theirs = store.add_output(ids["carol"], _dp_item("SELECT 3", 9.0), origin="query")
    store.apply_filter_decision(theirs.id, release, "test")

    found = store.released_datasite_outputs(alice.id, SERVER_DP_MIME, DP_ANSWERS_SHOWN)
    view = dp_view(store.budgets("alice"), found)
    assert [a["output_id"] for a in view["answers"]] == answers[::-1][:DP_ANSWERS_SHOWN]
    assert {a["epsilon"] for a in view["answers"]} == {0.01}
    assert view["spending"] == [
        {
            "dataset": "heart",
            "epsilon_total": 2.0,
            "epsilon_spent": 0.5,
            "epsilon_left": 1.5,
            "charges": 1,
        }
    ]
    # An answer whose payload predates "dataset" still names it (from its SQL).
    oldest = store.released_datasite_outputs(alice.id, SERVER_DP_MIME, 100)[-1]
    assert dp_view([], [oldest])["answers"][0]["dataset"] == "heart"
    assert dp_view(store.budgets("carol"), []) == {"spending": [], "answers": []}
    store.close()


def filter_decision(verdict: Verdict) -> Any:
    """What the output filter would hand the store, with one finding of ``verdict``."""
    return decision([Finding("test", verdict, "set by the test")])
