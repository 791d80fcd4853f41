"""Attacks on the exact tier (``rk.query(sql)``) that must fail (issue 15), served for real.

* Error messages as a channel: DuckDB read a pandas categorical as an ENUM and its
  binder errors listed the private categories; every refusal here is fed a private
  table of marker values, and nothing the researcher or the kernel receives holds one.
* Failing as a channel: a query that fails only when some patient has a value
  (a cast, an integer overflow) was refused at once -- released to the researcher --
  while the same query over data without that patient was answered. Now the failing
  row is NULL (DuckDB's TRY) and the researcher sees the same thing either way.

The datasite uses the default ``strict`` preset: every query with a WHERE clause or a
computed key is held for a person, with a summary made from the query text only.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.datasets import add_dataset
from remote_kernel.researcher.client import Datasite

from .conftest import RunningDatasite, make_datasite, run_and_view

MARK = "ZQX"  # every private marker string starts with it; no query below holds it
MARK_NUMBER = "987654"
N = 60
PRESENT_AGE = 44  # exactly one patient of "with" has it
ABSENT_AGE = 45  # no patient of either table has it


def _markers(with_patient: bool) -> pd.DataFrame:
    """Marker values everywhere; ``with_patient`` adds the one patient aged PRESENT_AGE."""
    rng = np.random.default_rng(15)
    ages = [a for a in rng.integers(50, 90, N)]
    frame = pd.DataFrame(
        {
            "pid": [f"{MARK}-P{i:03d}" for i in range(N)],
            "note": [f"{MARK}-NOTE-{i}" for i in range(N)],
            "ward": pd.Categorical([f"{MARK}-WARD-{i % 4}" for i in range(N)]),
            "score": rng.uniform(0, 100, N).round(2),
            "age": ages,
        }
    )
    frame.loc[7, "score"] = 987654.25
    if with_patient:
        extra = {"pid": f"{MARK}-P999", "note": f"{MARK}-X", "ward": f"{MARK}-WARD-0"}
        extra |= {"score": 1.0, "age": PRESENT_AGE}
        frame = pd.concat([frame, pd.DataFrame([extra])], ignore_index=True)
        frame["ward"] = frame["ward"].astype("category")
    return frame


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    tmp = tmp_path_factory.mktemp("exact-attacks")
    site = make_datasite(tmp)
    config = DatasiteConfig.load(site.directory)
    for name, with_patient in (("with_patient", True), ("without", False)):
        path: Path = tmp / f"{name}.parquet"
        _markers(with_patient).to_parquet(path)
        add_dataset(config, name, path, seed=0)
    site.start()
    yield site
    site.stop()


def _cell(queries: dict[str, str]) -> str:
    """A cell that asks every query, keeping what the kernel was given (or told)."""
    lines = ["import remote_kernel as rk", "said = {}"]
    for name, sql in queries.items():
        lines += [
            "try:",
            f"    t = rk.query({sql!r})",
            f"    said[{name!r}] = t.astype(object).where(t.notna(), None).to_dict('split')",
            "except Exception as exc:",
            f"    said[{name!r}] = type(exc).__name__ + ': ' + str(exc)",
        ]
    return "\n".join([*lines, "print(said)"])  # printed: held for a person, read as bob


def _researcher_view(
    site: RunningDatasite, request: Any, user: str = "alice"
) -> list[dict[str, Any]]:
    """Each output of the request as the researcher reads it, without ids and times."""
    views = [
        httpx.get(f"{site.url}/api/outputs/{o.id}", headers=site.headers(user)).json()
        for o in request.outputs
    ]
    volatile = {"id", "request_id", "created_at", "decided_at", "updated_at", "seq"}
    return [{k: v for k, v in view.items() if k not in volatile} for view in views]


def _kernel_was_told(views: list[dict[str, Any]]) -> dict[str, Any]:
    (printed,) = [v for v in views if v["msg_type"] == "stream"]
    return dict(ast.literal_eval(printed["content"]["text"]))


#: Errors DuckDB raises before reading a row; with categoricals as ENUMs these printed
#: the private categories ("sum(ENUM('ZQX-WARD-0', ...))").
REFUSED = {
    "categorical in WHERE": "SELECT COUNT(*) FROM with_patient WHERE ward + 1 = 2",
    "categorical in a key": "SELECT ward + 1 AS w, COUNT(*) FROM with_patient GROUP BY 1",
    "categorical summed": "SELECT SUM(ward) FROM with_patient",
    "text summed": "SELECT SUM(note) FROM with_patient",
}

#: Expressions that fail on some private rows: answered, the failing rows NULL.
ANSWERED = {
    "cast fails on every marker": "SELECT CAST(pid AS INTEGER) AS x, COUNT(*) AS n "
    "FROM with_patient GROUP BY 1",
    "pattern built from a marker": "SELECT COUNT(*) AS n FROM with_patient "
    "WHERE regexp_matches('x', pid || '(')",
    "cast of a categorical": "SELECT COUNT(*) AS n FROM with_patient "
    "WHERE CAST(ward AS INTEGER) > 0",
}


def test_errors_and_failing_rows_never_show_a_marker(site: RunningDatasite) -> None:
    client = Datasite(site.url, site.tokens["alice"])
    try:
        request, views = run_and_view(site, client, _cell({**REFUSED, **ANSWERED}))
        researcher = _researcher_view(site, request)
        listing = httpx.get(f"{site.url}/api/requests", headers=site.headers("alice")).text
    finally:
        client.close()
    assert request.status == "completed", request.message
    said = _kernel_was_told(views)
    for name in REFUSED:
        assert str(said[name]).startswith("QueryRejected"), (name, said[name])
    assert "VARCHAR" in str(said["categorical in WHERE"])  # the type, not the categories
    for name in ANSWERED:
        assert isinstance(said[name], dict), (name, said[name])
    assert said["cast fails on every marker"]["data"] == [[None, N + 1]]
    assert said["pattern built from a marker"]["data"] == [[0]]
    received = json.dumps(researcher) + listing + request.message + json.dumps(said)
    assert MARK not in received and MARK_NUMBER not in received
    refusals = [o for o in researcher if "rk.query refused" in json.dumps(o)]
    assert len(refusals) == len(REFUSED)  # released at once: made of the query and schema


#: Each fails (without TRY) exactly when a patient has the age; {table} and {age} vary.
ORACLES = {
    "failing cast": "SELECT COUNT(*) AS n FROM {table} WHERE "
    "CAST(CASE WHEN age = {age} THEN 'x' ELSE '1' END AS INTEGER) = 1",
    "integer overflow": "SELECT COUNT(*) AS n FROM {table} WHERE "
    "CAST(age AS TINYINT) * CAST(CASE WHEN age = {age} THEN 100 ELSE 1 END AS TINYINT) > 0",
}

#: The same in a group key: the failing row lands in a NULL group (a cell of one).
FAILING_KEY = (
    "SELECT CAST(CASE WHEN age = {age} THEN 'x' ELSE '1' END AS INTEGER) AS k, "
    "COUNT(*) AS n FROM {table} GROUP BY 1"
)


@pytest.mark.parametrize("oracle", list(ORACLES))
def test_a_failing_row_does_not_say_whether_a_patient_exists(
    site: RunningDatasite, oracle: str
) -> None:
    """The same query, on a table with a patient aged PRESENT_AGE and on one without:
    before issue 15 the first was refused at once and the second answered. Now the
    researcher's view of the two (status, outputs, their states and summaries) is the
    same until a reviewer decides, and so is what the kernel got; the one patient whose
    value fails is simply not counted, as if absent."""
    seen = []
    client = Datasite(site.url, site.tokens["carol"])
    try:
        for table in ("with_patient", "without"):
            sql = ORACLES[oracle].format(table=table, age=PRESENT_AGE)
            request, views = run_and_view(site, client, _cell({"q": sql}))
            # The SQL names the table; nothing else may differ.
            view = json.loads(
                json.dumps(_researcher_view(site, request, "carol")).replace(table, "T")
            )
            seen.append((request.status, request.message, view, _kernel_was_told(views)))
    finally:
        client.close()
    (status, _, view, told), other = seen
    assert status == "completed" and isinstance(told["q"], dict), told
    assert seen[0] == other, seen
    assert view and all(o["state"] == "pending" for o in view)  # strict: held for a person
    assert not any("refused" in json.dumps(o) for o in view)
    counted = told["q"]["data"]
    total = sum(row[-1] for row in counted)
    assert total == N  # the patient whose value fails counts nowhere; everyone else does
    assert MARK not in json.dumps(seen)


def _failing_key_views(site: RunningDatasite) -> list[tuple[Any, ...]]:
    seen = []
    client = Datasite(site.url, site.tokens["carol"])
    try:
        for table in ("with_patient", "without"):
            sql = FAILING_KEY.format(table=table, age=PRESENT_AGE)
            request, views = run_and_view(site, client, _cell({"q": sql}))
            view = json.loads(
                json.dumps(_researcher_view(site, request, "carol")).replace(table, "T")
            )
            seen.append((request.status, request.message, view, _kernel_was_told(views)))
    finally:
        client.close()
    return seen


def test_a_failing_key_is_a_null_group_held_like_any_computed_key(site: RunningDatasite) -> None:
    """In a key the failing row is a NULL group: the kernel (inside the datasite) sees a
    cell of one, as it would for ``GROUP BY age = 44``; the researcher sees a held output
    either way, never a refusal."""
    seen = _failing_key_views(site)
    assert seen[0][:2] == seen[1][:2] == ("completed", "")
    for _, _, view, _ in seen:
        assert [o["state"] for o in view] == ["pending", "pending"]
        assert not any("refused" in json.dumps(o) for o in view)
    assert sorted(seen[0][3]["q"]["data"], key=str) == [[1, N], [None, 1]]
    assert seen[1][3]["q"]["data"] == [[1, N]]
    assert MARK not in json.dumps(seen)


def test_a_failing_key_gets_the_same_summary_either_way(site: RunningDatasite) -> None:
    """The summary a researcher sees of a held output names no cell rule (small-cells,
    dominance ...): it depends on the code, not on whether a cell of one exists."""
    seen = _failing_key_views(site)
    assert seen[0][2] == seen[1][2]


def test_a_value_nobody_has_is_answered_like_one_somebody_has(site: RunningDatasite) -> None:
    """The control: asking about an age no patient has, on the table that has the
    PRESENT_AGE patient, is answered like asking about PRESENT_AGE on the table without
    them -- a count over every patient, held for a person."""
    client = Datasite(site.url, site.tokens["carol"])
    try:
        sql = ORACLES["failing cast"].format(table="with_patient", age=ABSENT_AGE)
        request, views = run_and_view(site, client, _cell({"q": sql}))
    finally:
        client.close()
    told = _kernel_was_told(views)
    assert request.status == "completed" and told["q"]["data"] == [[N + 1]]
    assert all(o.state == "pending" for o in request.outputs)
