"""Fitted models checked before they leave, and DP models charged to the budget.

Unit tests of the safe model encoding (``protocol/model_values.py``) and of the model
rules (``checks/models.py``) through the real filter and leak index; then a real
served datasite with real kernels: a k-NN fitted on the private data is blocked and
no training row reaches the researcher, a tree with one-row leaves is held with its
leaf sizes, a DP model the datasite fits is released and charged (and refused when
the budget is short or the bounds are missing), and forged model payloads are refused.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from remote_kernel.checks.filter import RuleBasedFilter
from remote_kernel.checks.leaks import PrivateIndex
from remote_kernel.checks.models import model_findings
from remote_kernel.checks.policy import DatasetPolicy, Policy, Thresholds
from remote_kernel.datasite.datasets import synthetic_heart
from remote_kernel.protocol.model_values import (
    ModelDecodeError,
    build_model,
    describe_model,
    read_model,
)
from remote_kernel.protocol.models import OutputItem, Verdict
from remote_kernel.protocol.values import VALUE_MIME
from remote_kernel.researcher.client import Datasite
from remote_kernel.researcher.values import decode_value, encode_value

from .conftest import RunningDatasite, make_datasite, run_and_view, with_dp

FEATURES = ["age", "chol", "thalach"]


@pytest.fixture(scope="module")
def heart() -> pd.DataFrame:
    return synthetic_heart(300, seed=3).dropna(subset=[*FEATURES, "sex"])


def fitted(model: Any, heart: pd.DataFrame, target: str = "sex") -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(heart[FEATURES], heart[target])


def roundtrip(payload: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(payload))


# --- the safe encoding -----------------------------------------------------------------------
def _models() -> list[Any]:
    from diffprivlib import models as dp
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.linear_model import Lasso, LinearRegression, LogisticRegression, Ridge
    from sklearn.naive_bayes import GaussianNB
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    return [
        (LogisticRegression(max_iter=500), "sex"),
        (LogisticRegression(max_iter=500), "cp"),
        (LinearRegression(), "trestbps"),
        (Ridge(), "trestbps"),
        (Lasso(), "trestbps"),
        (GaussianNB(), "cp"),
        (DecisionTreeClassifier(min_samples_leaf=5, random_state=0), "cp"),
        (DecisionTreeRegressor(max_depth=4, random_state=0), "trestbps"),
        (RandomForestClassifier(n_estimators=15, min_samples_leaf=5, random_state=0), "cp"),
        (RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0), "trestbps"),
        (dp.LogisticRegression(epsilon=1.0, data_norm=700), "sex"),
        (dp.LinearRegression(epsilon=1.0, bounds_X=(0, 600), bounds_y=(80, 200)), "trestbps"),
        (dp.GaussianNB(epsilon=1.0, bounds=([20, 100, 60], [80, 600, 210])), "sex"),
    ]


@pytest.mark.parametrize("index", range(13))
def test_every_supported_model_travels_as_data_and_predicts_the_same(
    index: int, heart: pd.DataFrame
) -> None:
    model, target = _models()[index]
    model = fitted(model, heart, target)
    payload = roundtrip(encode_value(model))
    assert payload["kind"] == "model" and payload["supported"] is True
    assert "pickle" not in json.dumps(payload)
    rebuilt = decode_value(payload)
    assert type(rebuilt) is type(model) and rebuilt is not model
    expected, got = model.predict(heart[FEATURES]), rebuilt.predict(heart[FEATURES])
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(got, expected)
    else:
        assert (got == expected).all()
    if hasattr(model, "predict_proba"):
        np.testing.assert_allclose(
            rebuilt.predict_proba(heart[FEATURES]), model.predict_proba(heart[FEATURES])
        )


def test_unsupported_models_are_described_not_carried(heart: pd.DataFrame) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    knn = fitted(KNeighborsClassifier(3), heart)
    payload = roundtrip(encode_value(knn))
    assert payload["supported"] is False and "_fit_X" in payload["attributes"]
    assert str(int(heart["chol"].iloc[0])) not in json.dumps(payload["attributes"])
    with pytest.raises(ModelDecodeError, match="supported models are: diffprivlib"):
        decode_value(payload)


def test_a_model_the_allow_list_cannot_describe_is_carried_as_a_description(
    heart: pd.DataFrame,
) -> None:
    from sklearn.tree import DecisionTreeRegressor

    two = DecisionTreeRegressor(max_depth=3).fit(heart[FEATURES], heart[["trestbps", "chol"]])
    payload = roundtrip(encode_value(two))
    assert payload["supported"] is False and "arrays" not in payload
    (finding,) = model_findings(payload, Thresholds())
    assert finding.check == "model-unsupported" and "multi-output" in finding.message


def test_an_unfitted_estimator_attaches_no_value() -> None:
    from sklearn.linear_model import LogisticRegression

    assert encode_value(LogisticRegression()) is None


# --- the rules -------------------------------------------------------------------------------
def findings_of(model: Any, thresholds: Thresholds | None = None, origin: str = "kernel") -> Any:
    return model_findings(roundtrip(describe_model(model)), thresholds or Thresholds(), origin)


def test_instance_based_models_are_blocked_with_what_to_use_instead(heart: pd.DataFrame) -> None:
    from sklearn.neighbors import KernelDensity, KNeighborsRegressor
    from sklearn.svm import SVC

    for model in (KNeighborsRegressor(), SVC(), KernelDensity()):
        model = fitted(model, heart)
        (finding,) = findings_of(model)
        assert finding.check == "model-instance-based" and finding.verdict is Verdict.BLOCK
        assert "training rows" in finding.message and "LogisticRegression" in finding.message


def test_a_class_outside_the_allow_list_is_blocked_listing_the_supported(
    heart: pd.DataFrame,
) -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    (finding,) = findings_of(fitted(GradientBoostingClassifier(n_estimators=3), heart))
    assert finding.check == "model-unsupported" and finding.verdict is Verdict.BLOCK
    assert "sklearn.tree.DecisionTreeClassifier" in finding.message


def test_small_leaves_are_held_with_their_sizes(heart: pd.DataFrame) -> None:
    from sklearn.tree import DecisionTreeClassifier

    deep = fitted(DecisionTreeClassifier(random_state=0), heart)
    (finding,) = findings_of(deep)
    assert finding.check == "model-small-leaves" and finding.verdict is Verdict.REVIEW
    shown = re.findall(r"(\d+) x(\d+)", finding.message)
    leaves = deep.tree_.n_node_samples[deep.tree_.children_left < 0]
    small = [int(n) for n in leaves if n < 10]
    assert {int(s): int(c) for s, c in shown} == {n: small.count(n) for n in set(small)}
    assert findings_of(fitted(DecisionTreeClassifier(min_samples_leaf=10), heart)) == []
    lower = Thresholds(min_cell_count=1)
    assert findings_of(deep, lower) == []


def test_a_forest_with_small_leaves_is_held_with_every_tree_counted(heart: pd.DataFrame) -> None:
    from sklearn.ensemble import RandomForestClassifier

    forest = fitted(RandomForestClassifier(n_estimators=10, random_state=0), heart)
    (finding,) = findings_of(forest)
    assert finding.check == "model-small-leaves" and finding.verdict is Verdict.REVIEW
    small = [
        int(n)
        for tree in forest.estimators_
        for n in tree.tree_.n_node_samples[tree.tree_.children_left < 0]
        if n < 10
    ]
    shown = re.findall(r"(\d+) x(\d+)", finding.message)
    assert {int(s): int(c) for s, c in shown} == {n: small.count(n) for n in set(small)}
    safe = RandomForestClassifier(n_estimators=10, min_samples_leaf=10, random_state=0)
    assert findings_of(fitted(safe, heart)) == []


def test_naive_bayes_with_a_small_class_is_held(heart: pd.DataFrame) -> None:
    from sklearn.naive_bayes import GaussianNB

    rare = heart.assign(label=["rare" if i < 3 else "common" for i in range(len(heart))])
    (finding,) = findings_of(fitted(GaussianNB(), rare, "label"))
    assert finding.check == "model-small-class" and "counts: 3" in finding.message


def test_dp_models_from_the_kernel_are_reviewed_and_without_bounds_blocked(
    heart: pd.DataFrame,
) -> None:
    from diffprivlib.models import LogisticRegression

    model = fitted(LogisticRegression(epsilon=1.0, data_norm=700), heart)
    (finding,) = findings_of(model)
    assert finding.check == "dp-model-in-kernel" and finding.verdict is Verdict.REVIEW
    assert findings_of(model, origin="query") == []
    payload = roundtrip(describe_model(model))
    payload["params"]["data_norm"] = None
    (finding,) = model_findings(payload, Thresholds())
    assert finding.check == "dp-model-no-bounds" and finding.verdict is Verdict.BLOCK


# --- forged payloads through the real filter and leak index ----------------------------------
def value_item(payload: Any) -> OutputItem:
    data = {"text/plain": "a model", VALUE_MIME: payload}
    return OutputItem("execute_result", {"data": data, "metadata": {}, "execution_count": 1})


def verdict_and_checks(item: OutputItem, heart: pd.DataFrame) -> tuple[Verdict, set[str]]:
    scanner = PrivateIndex.build({"heart": heart}, {"heart": DatasetPolicy()})
    decision = RuleBasedFilter(Policy(), scanner).check(item)
    return decision.verdict, {f.check for f in decision.findings}


def logistic_payload(heart: pd.DataFrame) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    return roundtrip(describe_model(fitted(LogisticRegression(max_iter=500), heart)))


def test_an_honest_model_is_held_for_review_not_blocked(heart: pd.DataFrame) -> None:
    verdict, checks = verdict_and_checks(value_item(logistic_payload(heart)), heart)
    assert verdict is Verdict.REVIEW and "kernel-output" in checks


@pytest.mark.parametrize(
    "forgery", ["wrong-class", "long-coef", "extra-array", "huge", "pickle", "tree-cycle"]
)
def test_forged_model_payloads_are_blocked(forgery: str, heart: pd.DataFrame) -> None:
    payload = logistic_payload(heart)
    rows = heart[FEATURES].to_numpy(dtype=float)
    if forgery == "wrong-class":
        payload["class"] = "sklearn.neighbors.KNeighborsClassifier"
    elif forgery == "long-coef":  # training rows where one row of coefficients belongs
        payload["arrays"]["coef_"] = {
            "dtype": "<f8",
            "shape": list(rows.shape),
            "data": rows.tolist(),
        }
    elif forgery == "extra-array":
        payload["arrays"]["_fit_X"] = {
            "dtype": "<f8",
            "shape": list(rows.shape),
            "data": rows.tolist(),
        }
    elif forgery == "huge":
        payload["arrays"]["coef_"] = {
            "dtype": "|i1",
            "shape": [1, 250_000],
            "data": [[0] * 250_000],
        }
    elif forgery == "pickle":
        payload["params"]["C"] = {"py/object": "os.system"}
    else:  # a tree whose "nodes" loop instead of branching
        from sklearn.tree import DecisionTreeClassifier

        tree = fitted(DecisionTreeClassifier(max_depth=2, random_state=0), heart)
        payload = roundtrip(describe_model(tree))
        payload["arrays"]["children_left"]["data"][1] = 1
    verdict, checks = verdict_and_checks(value_item(payload), heart)
    assert verdict is Verdict.BLOCK and "value-undecodable" in checks
    with pytest.raises(ModelDecodeError):
        build_model(read_model(payload))


def test_private_rows_in_a_well_shaped_model_are_found_by_the_leak_scan(
    heart: pd.DataFrame,
) -> None:
    """40 'classes' make room for 40 rows of coefficients: the shapes pass, the scan does not."""
    numeric = [c for c in heart.columns if pd.api.types.is_numeric_dtype(heart[c])]
    rows = heart[numeric].dropna().head(40).to_numpy(dtype=float)
    payload = logistic_payload(heart)
    payload["n_features"], payload["feature_names"] = len(numeric), numeric
    payload["arrays"] = {
        "classes_": {"dtype": "<i8", "shape": [40], "data": list(range(40))},
        "coef_": {"dtype": "<f8", "shape": list(rows.shape), "data": rows.tolist()},
        "intercept_": {"dtype": "<f8", "shape": [40], "data": [0.0] * 40},
    }
    read_model(payload)  # well formed
    verdict, checks = verdict_and_checks(value_item(payload), heart)
    assert verdict is Verdict.BLOCK, checks


# --- a real datasite -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    site = make_datasite(tmp_path_factory.mktemp("models"))
    with_dp(site, {"alice": 0.6})
    site.start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def private(site: RunningDatasite) -> pd.DataFrame:
    return pd.read_parquet(site.directory / "datasets" / "heart" / "private.parquet")


@pytest.fixture(scope="module")
def alice(site: RunningDatasite) -> Iterator[Datasite]:
    client = Datasite(site.url, site.tokens["alice"])
    yield client
    client.close()


def received_by_researcher(site: RunningDatasite, request_id: int) -> str:
    """Every byte the researcher can fetch about a request: its view and each output's."""
    headers = site.headers("alice")
    texts = [httpx.get(f"{site.url}/api/requests/{request_id}", headers=headers).text]
    texts.append(httpx.get(f"{site.url}/api/requests", headers=headers).text)
    for output in json.loads(texts[0]).get("outputs", []):
        texts.append(httpx.get(f"{site.url}/api/outputs/{output['id']}", headers=headers).text)
    return "\n".join(texts)


def rows_found(text: str, rows: np.ndarray) -> int:
    """How many of ``rows`` appear in ``text`` as consecutive numbers (any spelling)."""
    numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", text)]
    width = rows.shape[1]
    runs = {tuple(numbers[i : i + width]) for i in range(len(numbers) - width + 1)}
    return sum(tuple(float(v) for v in row) in runs for row in rows)


KNN = """
from sklearn.neighbors import KNeighborsClassifier
train = rk.data("heart").dropna(subset=["age", "chol", "thalach", "sex"])
knn = KNeighborsClassifier(3).fit(train[["age", "chol", "thalach"]], train["sex"])
display(knn)
knn
"""


def test_a_knn_is_blocked_and_no_training_row_reaches_the_researcher(
    site: RunningDatasite, alice: Datasite, private: pd.DataFrame
) -> None:
    request, views = run_and_view(site, alice, KNN)
    assert request.status == "completed", request.message
    models = [v for v in views if VALUE_MIME in v["content"].get("data", {})]
    assert len(models) == 2  # display(knn) and the cell's value: both paths checked
    for view in models:
        assert view["state"] == "blocked"
        assert "model-instance-based" in {f["check"] for f in view["findings"]}
    rows = private[FEATURES].dropna().to_numpy(dtype=float)
    received = received_by_researcher(site, request.id)
    assert rows_found(json.dumps(rows.tolist()), rows) == len(rows)  # the search works
    assert rows_found(received, rows) == 0
    assert "model-instance-based" in received  # the researcher is told why


def test_a_tree_with_one_row_leaves_is_held_with_its_leaf_sizes(
    site: RunningDatasite, alice: Datasite
) -> None:
    code = (
        "from sklearn.tree import DecisionTreeClassifier\n"
        'train = rk.data("heart").dropna(subset=["age", "chol", "thalach", "sex"])\n'
        "DecisionTreeClassifier(min_samples_leaf=1, random_state=0).fit(\n"
        '    train[["age", "chol", "thalach"]], train["sex"])\n'
    )
    request, views = run_and_view(site, alice, code)
    assert request.status == "completed", request.message
    (view,) = [v for v in views if VALUE_MIME in v["content"].get("data", {})]
    assert view["state"] == "pending"
    (leaves,) = [f for f in view["findings"] if f["check"] == "model-small-leaves"]
    assert leaves["verdict"] == "review" and re.search(r"how many: 1 x\d+", leaves["message"])
    assert not any(f["verdict"] == "block" for f in view["findings"])


DP_CELL = """
from diffprivlib.models import LogisticRegression
model = rk.fit_dp(LogisticRegression(epsilon=0.5{bounds}), "heart", ["age", "chol"], "sex")
model
"""


def test_a_dp_model_is_released_and_charged_and_refused_when_short(
    site: RunningDatasite, alice: Datasite, private: pd.DataFrame
) -> None:
    # Without explicit bounds: refused before anything is charged.
    request, _ = run_and_view(site, alice, DP_CELL.format(bounds=""))
    assert request.status == "error" and "QueryRejected" in request.message
    (refusal,) = [o for o in request.outputs if o.state == "released" and "refused" in o.text]
    assert "give data_norm explicitly" in refusal.text
    store = site.store()
    assert [line.epsilon_spent for line in store.budgets("alice")] == [0]
    store.close()

    request, views = run_and_view(site, alice, DP_CELL.format(bounds=", data_norm=700"))
    assert request.status == "completed", request.message
    (model_view,) = [v for v in views if VALUE_MIME in v["content"].get("data", {})]
    assert model_view["state"] == "released" and model_view["decided_by"].startswith("policy")
    assert "ε=0.5 spent on heart" in model_view["content"]["data"]["text/plain"]
    # The researcher fetches it and gets a working model, rebuilt from data.
    mine = httpx.get(f"{site.url}/api/outputs/{model_view['id']}", headers=site.headers("alice"))
    model = decode_value(mine.json()["content"]["data"][VALUE_MIME])
    assert type(model).__module__.startswith("diffprivlib")
    assert set(model.predict(private[["age", "chol"]].dropna())) <= {0, 1}
    assert not [v for v in views if v["msg_type"] == "execute_result"]  # no kernel copy
    same = request.value()  # the cell's value, for the researcher: the released model
    np.testing.assert_array_equal(same.coef_, model.coef_)
    store = site.store()
    (line,) = store.budgets("alice")
    assert line.epsilon_spent == pytest.approx(0.5) and line.charges == 1
    assert [e.action for e in store.audit_entries()].count("budget.charge") == 1
    store.close()

    # 0.1 left: the same model is refused at once, nothing more is charged or released.
    request, views = run_and_view(site, alice, DP_CELL.format(bounds=", data_norm=700"))
    assert request.status == "error" and "BudgetExhausted" in request.message
    assert not any(
        v["state"] == "released" and VALUE_MIME in v["content"].get("data", {}) for v in views
    )
    store = site.store()
    assert store.budgets("alice")[0].epsilon_spent == pytest.approx(0.5)
    store.close()


def test_fit_dp_on_the_mock_fits_here_spends_nothing_and_says_so(
    site: RunningDatasite, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffprivlib.models import LogisticRegression

    import remote_kernel as rk

    store = site.store()
    before = [(line.epsilon_spent, line.charges) for line in store.budgets("alice")]
    store.close()
    rk.connect(site.url, token=site.tokens["alice"], name="models-mock")
    try:
        model = rk.fit_dp(
            LogisticRegression(epsilon=0.5, data_norm=700), "heart", ["age", "chol"], "sex"
        )
        mock = rk.data("heart").dropna(subset=["age", "chol", "sex"])
    finally:
        rk.disconnect("models-mock")
    assert set(model.predict(mock[["age", "chol"]])) <= {0, 1}
    assert "mock data: fitted here, no budget spent" in capsys.readouterr().out
    store = site.store()
    assert [(line.epsilon_spent, line.charges) for line in store.budgets("alice")] == before
    store.close()


FORGED = """
from IPython.display import publish_display_data
from sklearn.linear_model import LogisticRegression
from remote_kernel.protocol.model_values import describe_model
train = rk.data("heart").dropna(subset=["age", "chol", "thalach", "sex"])
rows = train[["age", "chol", "thalach"]].to_numpy(dtype=float)
honest = describe_model(LogisticRegression().fit(rows, train["sex"]))
mime = "application/vnd.remote-kernel.value+json"
wrong = dict(honest, **{"class": "sklearn.svm.SVC"})
smuggled = dict(honest, arrays=dict(honest["arrays"], coef_={
    "dtype": "<f8", "shape": list(rows.shape), "data": rows.tolist()}))
huge = dict(honest, arrays=dict(honest["arrays"], coef_={
    "dtype": "|i1", "shape": [1, 250000], "data": [[0] * 250000]}))
for payload in (wrong, smuggled, huge):
    publish_display_data({"text/plain": "a model", mime: payload})
"""


def test_forged_model_payloads_from_a_real_kernel_are_refused(
    site: RunningDatasite, alice: Datasite, private: pd.DataFrame
) -> None:
    request, views = run_and_view(site, alice, FORGED)
    assert request.status == "completed", request.message
    forged = [v for v in views if VALUE_MIME in v["content"].get("data", {})]
    assert len(forged) == 3
    for view in forged:
        assert view["state"] == "blocked", view["findings"]
    rows = private[FEATURES].dropna().to_numpy(dtype=float)
    assert rows_found(received_by_researcher(site, request.id), rows) == 0


# --- SACRO-ML, an optional extra -------------------------------------------------------------
def test_the_attack_command_says_clearly_when_sacroml_is_absent(tmp_path: Any) -> None:
    import importlib.util

    if importlib.util.find_spec("sacroml") is not None:
        pytest.skip("sacroml is installed here; this test is about its absence")
    command = [sys.executable, "-m", "remote_kernel.cli", "review", "attack", "1"]
    done = subprocess.run(
        [*command, "--datasite", str(tmp_path), "--target", "sex"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "SACRO-ML is not installed" in done.stderr and "skipped" in done.stderr
    assert "torch==2.13.0" in done.stderr and "models-attacks" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was written
    bad = subprocess.run(
        [*command, "--datasite", str(tmp_path), "--target", "sex", "--attacks", "nope"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown attack" in bad.stderr


def test_a_dp_fit_request_is_checked_before_anything_runs() -> None:
    """What the kernel sends to rk.fit_dp is researcher-made: every part is checked."""
    from diffprivlib.models import LogisticRegression as DPLogistic
    from sklearn.linear_model import LogisticRegression

    from remote_kernel.datasite.dp_models import _estimator
    from remote_kernel.protocol.errors import InputError

    good = describe_model(DPLogistic(epsilon=0.5, data_norm=700), fitted=False)
    cls, params = _estimator(roundtrip(good))
    assert cls.dp and params["epsilon"] == 0.5 and params["data_norm"] == 700
    refused = {
        "not DP": describe_model(LogisticRegression(), fitted=False),
        "no bounds": describe_model(DPLogistic(epsilon=0.5), fitted=False),
        "object param": {**good, "params": {**good["params"], "C": {"py/object": "os.system"}}},
        "unknown param": {**good, "params": {**good["params"], "accountant": 1}},
        "endless": {**good, "params": {**good["params"], "max_iter": 10**9}},
        "epsilon": {**good, "params": {**good["params"], "epsilon": 50}},
    }
    accepted = []
    for what, payload in refused.items():
        try:
            _estimator(roundtrip(payload))
        except InputError:
            continue
        accepted.append(what)
    assert accepted == []
