"""The DP engine (remote_kernel.checks.dp): utility, error bars, amplification, refusals.

Statistical tests: OpenDP draws its noise from the operating system's CSPRNG and
offers no seed, so each test releases many times from one plan and checks a rate
with a margin of several standard errors, never a single draw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("opendp")

from remote_kernel.checks.dp.engine import dp_query, plan_dp_query
from remote_kernel.checks.dp.metadata import DPMetadataError, parse_metadata
from remote_kernel.datasite.datasets import (
    HEART_COLUMNS,
    UCI_HEART_FILES,
    find_uci_heart_dir,
    read_table,
    synthetic_heart,
)
from remote_kernel.protocol.errors import InputError, QueryRejected

RUNS = 200
EPSILON = 0.5


@pytest.fixture(scope="module")
def heart() -> dict[str, pd.DataFrame]:
    """The UCI Cleveland file when present (as the project loads it), else heart-shaped data."""
    folder = find_uci_heart_dir()
    if folder is None:
        return {"heart": synthetic_heart(300, seed=0)}
    return {"heart": read_table(folder / UCI_HEART_FILES["cleveland"], HEART_COLUMNS, ["?"])}


@pytest.fixture(scope="module")
def metadata():
    return parse_metadata(
        {
            "bounds": {"age": [20, 80], "chol": [100, 600], "trestbps": [80, 200]},
            "public_categories": {"sex": [0, 1], "num": [0, 1, 2, 3, 4]},
        }
    )


def _releases(plan, column: str) -> tuple[np.ndarray, np.ndarray]:
    """RUNS releases of one plan: noisy values and error bars, one row per run."""
    answers = [plan.release() for _ in range(RUNS)]
    values = np.array([a.table[column].to_numpy(dtype=float) for a in answers])
    errors = np.array([a.error[column].to_numpy(dtype=float) for a in answers])
    return values, errors


def test_counts_by_sex_within_ten_percent_and_error_bars_cover(heart, metadata):
    truth = heart["heart"].groupby("sex").size().sort_index().to_numpy(dtype=float)
    plan = plan_dp_query(
        "SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex", heart, metadata, EPSILON
    )
    assert plan.spent == (pytest.approx(EPSILON), 0.0)
    values, errors = _releases(plan, "n")
    assert (np.abs(values - truth) <= 0.1 * truth).all(axis=1).mean() >= 0.95
    assert (np.abs(values - truth) <= errors).mean() >= 0.92  # stated: 95%


def test_count_with_where_within_ten_percent(heart, metadata):
    truth = float((heart["heart"].age > 60).sum())
    plan = plan_dp_query("SELECT COUNT(*) AS n FROM heart WHERE age > 60", heart, metadata, EPSILON)
    values, errors = _releases(plan, "n")
    assert (np.abs(values[:, 0] - truth) <= 0.1 * truth).mean() >= 0.95
    assert (np.abs(values[:, 0] - truth) <= errors[:, 0]).mean() >= 0.92


def test_means_by_computed_key_within_three_years(heart, metadata):
    """Each cell within 3 years in >= 95% of runs (measured: ~98% and ~97% per cell on the
    Cleveland file, ~96% for both cells of a run at once)."""
    if find_uci_heart_dir() is None:
        pytest.skip("the 3-year target is for the Cleveland file (164 and 139 patients)")
    frame = heart["heart"]
    truth = frame.groupby(frame.num > 0).age.mean().sort_index().to_numpy()
    plan = plan_dp_query(
        "SELECT num > 0 AS disease, AVG(age) AS mean_age FROM heart GROUP BY 1",
        heart,
        metadata,
        EPSILON,
    )
    values, errors = _releases(plan, "mean_age")
    assert (np.abs(values - truth) <= 3).mean() >= 0.95
    assert (np.abs(values - truth) <= errors).mean() >= 0.95  # conservative bars


def test_answer_shape_error_bars_and_spending(heart, metadata):
    answer = dp_query(
        "SELECT FLOOR(age / 10) * 10 AS band, COUNT(*) AS n, MEDIAN(chol) AS med, "
        "SUM(chol) FILTER (WHERE sex = 1) AS male_chol FROM heart "
        "WHERE trestbps > 120 GROUP BY band ORDER BY band DESC LIMIT 3",
        heart,
        metadata,
        EPSILON,
    )
    assert list(answer.table.columns) == ["band", "n", "med", "male_chol"]
    assert answer.table.band.tolist() == [80.0, 70.0, 60.0]
    assert answer.epsilon == pytest.approx(EPSILON) and answer.delta == 0.0
    shown = answer.error_bars()
    assert shown.n.str.contains(r"± [\d.e+]+ at 95%").all()
    assert shown.med.str.contains("no error bar").all()  # the exponential mechanism
    assert any("clipped to [100, 600]" in note for note in answer.notes)


def test_amplified_expression_carries_only_the_declared_bounds(heart, metadata):
    """SUM(CASE WHEN <one patient> THEN chol * 10^6 ELSE 0 END): the sensitivity follows the
    expression (bounds [0, 6e8]) so the noise hides any chol in the declared range, and a
    value outside the declaration is clipped, not revealed."""
    frame = heart["heart"].copy()
    patient = frame.iloc[0]
    sql = (
        f"SELECT SUM(CASE WHEN age = {patient.age} AND chol = {patient.chol} AND "
        f"trestbps = {patient.trestbps} THEN chol * 1000000 ELSE 0 END) AS s FROM heart"
    )
    plan = plan_dp_query(sql, {"heart": frame}, metadata, EPSILON)
    assert plan.summary.scale.iloc[0] >= 6e8 / EPSILON * 0.99
    frame.loc[0, "chol"] = 1e9  # breaks the declared bounds: 1e15 inside the SUM
    leaky = sql.replace(f"chol = {patient.chol}", "chol = 1000000000")
    values, _ = _releases(plan_dp_query(leaky, {"heart": frame}, metadata, EPSILON), "s")
    assert np.abs(values).max() < 1e11  # a clipped 6e8 plus Laplace noise of scale 1.2e9


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT SUM(exp(chol)) FROM heart", "exp() has no range rule"),
        ("SELECT SUM(thalach) FROM heart", "no bounds are declared for column 'thalach'"),
        ("SELECT AVG(1 / (age - 50)) FROM heart", "divisor's range includes 0"),
        ("SELECT cp, COUNT(*) FROM heart GROUP BY cp", "public_categories"),
        ("SELECT MAX(age) FROM heart", "no DP version"),
        ("SELECT COUNT(DISTINCT age) FROM heart", "DISTINCT inside an aggregate"),
        ("SELECT age FROM heart", "neither a GROUP BY key nor an aggregate"),
        ("SELECT COUNT(*) FROM heart a JOIN heart b ON a.age = b.age", "joins"),
        ("SELECT SUM(age) OVER () FROM heart", "window functions"),
        ("SELECT QUANTILE_CONT(age, 1.5) FROM heart", "between 0 and 1"),
    ],
)
def test_refused_shapes_say_why(heart, metadata, sql, message):
    with pytest.raises(QueryRejected, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_dp_query(sql, heart, metadata, EPSILON)


def test_non_public_keys_are_thresholded_with_delta(heart, metadata):
    answer = dp_query(
        "SELECT cp, COUNT(*) AS n FROM heart GROUP BY cp", heart, metadata, 1.0, delta=1e-6
    )
    assert 0 < answer.delta <= 1e-6
    assert set(answer.table.cp) <= {1.0, 2.0, 3.0, 4.0}
    assert any("thresholding" in note for note in answer.notes)


def test_id_privacy_unit_truncates_and_scales_the_noise(heart, metadata):
    frame = heart["heart"].assign(pid=np.arange(len(heart["heart"])) // 2)
    unit = parse_metadata({"privacy_unit": {"id": "pid", "max_contributions": 2}})
    rows = dp_query("SELECT COUNT(*) AS n FROM heart", {"heart": frame}, metadata, EPSILON)
    people = plan_dp_query("SELECT COUNT(*) AS n FROM heart", {"heart": frame}, unit, EPSILON)
    assert people.summary.scale.iloc[0] == pytest.approx(2 * rows.mechanisms.scale.iloc[0])


def test_metadata_errors_name_the_entry():
    with pytest.raises(DPMetadataError, match=r"dp.bounds.age: low 90 is above high 10"):
        parse_metadata({"bounds": {"age": [90, 10]}})
    with pytest.raises(DPMetadataError, match="unknown setting"):
        parse_metadata({"bound": {}})
    with pytest.raises(DPMetadataError, match=r"privacy_unit.max_contributions"):
        parse_metadata({"privacy_unit": {"id": "pid", "max_contributions": 0}})
    with pytest.raises(DPMetadataError, match=r"privacy_unit.name"):
        parse_metadata({"privacy_unit": {"id": "pid", "max_contributions": 2, "name": ""}})
    unit = parse_metadata({"privacy_unit": {"id": "PID", "max_contributions": 2}}).privacy_unit
    assert unit.name == "pid"  # by default, the id column's name
    with pytest.raises(DPMetadataError, match=r"public_categories\.sex"):
        parse_metadata({"public_categories": {"sex": []}})
    assert issubclass(DPMetadataError, InputError)


def test_bad_epsilon_is_an_input_error(heart, metadata):
    with pytest.raises(InputError, match="epsilon"):
        plan_dp_query("SELECT COUNT(*) FROM heart", heart, metadata, 0)


# --- joins over a declared privacy unit -------------------------------------------------

JOIN_UNITS = {
    "patients": {
        "privacy_unit": {"id": "pid", "max_contributions": 1, "name": "patient"},
        "bounds": {"age": [20, 80]},
        "public_categories": {"sex": [0, 1]},
    },
    "visits": {
        "privacy_unit": {"id": "pid", "max_contributions": 4, "name": "patient"},
        "bounds": {"cost": [0, 1000]},
    },
}


@pytest.fixture(scope="module")
def clinic() -> dict[str, pd.DataFrame]:
    """Patients and their visits (2 to 4 each), plus one patient with 200 visits."""
    rng = np.random.default_rng(15)
    patients = pd.DataFrame(
        {"pid": np.arange(1000), "age": rng.integers(20, 80, 1000), "sex": rng.integers(0, 2, 1000)}
    )
    visits = pd.DataFrame({"pid": np.repeat(np.arange(1000), rng.integers(2, 5, 1000))})
    visits = pd.concat([visits, pd.DataFrame({"pid": np.full(200, 7)})], ignore_index=True)
    visits["cost"] = rng.uniform(50, 500, len(visits)).round(2)
    return {"patients": patients, "visits": visits}


def _units(**changes: dict) -> dict:
    return {
        name: parse_metadata({**raw, **changes.get(name, {})}) for name, raw in JOIN_UNITS.items()
    }


def test_a_join_over_the_declared_unit_is_answered_with_truncated_contributions(clinic):
    sql = (
        "SELECT p.sex, COUNT(*) AS n, AVG(v.cost) AS mean_cost FROM patients p "
        "JOIN visits v ON p.pid = v.pid WHERE p.age > 40 GROUP BY p.sex"
    )
    plan = plan_dp_query(sql, clinic, _units(), 1.0)  # 3 mechanisms, each at 4 visits
    joined = clinic["patients"].merge(clinic["visits"], on="pid")
    truncated = joined.groupby("pid").head(4)  # patient 7's 200 visits count as 4
    truth = truncated[truncated.age > 40].groupby("sex").agg(n=("cost", "size"))
    values, _ = _releases(plan, "n")
    within = np.abs(values - truth.n.to_numpy()) <= 0.1 * truth.n.to_numpy()
    assert within.all(axis=1).mean() >= 0.95
    assert list(plan.release().table.columns) == ["sex", "n", "mean_cost"]
    assert any("at most 4 joined rows" in note for note in plan.notes)
    # The noise follows 1 x 4 contributions: four times a one-row-per-person count's.
    single = plan_dp_query("SELECT COUNT(*) AS n FROM patients", clinic, _units(), EPSILON)
    both = plan_dp_query(
        "SELECT COUNT(*) AS n FROM patients JOIN visits USING (pid)", clinic, _units(), EPSILON
    )
    assert both.summary.scale.iloc[0] == pytest.approx(4 * single.summary.scale.iloc[0])


@pytest.mark.parametrize(
    ("sql", "changes", "message"),
    [
        ("SELECT COUNT(*) FROM patients p JOIN visits v ON p.age = v.pid", {}, "join condition"),
        ("SELECT COUNT(*) FROM patients p LEFT JOIN visits v ON p.pid = v.pid", {}, "inner"),
        ("SELECT COUNT(*) FROM patients, visits", {}, "inner JOIN"),
        (
            "SELECT COUNT(*) FROM patients p JOIN visits v ON p.pid = v.pid AND p.age > 30",
            {},
            "join condition",
        ),
        (
            "SELECT COUNT(*) FROM patients JOIN visits USING (pid)",
            {"visits": {"privacy_unit": "row"}},
            "declares no privacy unit",
        ),
        (
            "SELECT COUNT(*) FROM patients JOIN visits USING (pid)",
            {"visits": {"privacy_unit": {"id": "pid", "max_contributions": 4, "name": "doctor"}}},
            "may identify different people",
        ),
        (
            "SELECT v.pid, COUNT(*) FROM patients p JOIN visits v ON p.pid = v.pid GROUP BY v.pid",
            {},
            "public_categories",
        ),
    ],
)
def test_joins_without_a_declared_unit_are_refused(clinic, sql, changes, message):
    with pytest.raises(QueryRejected, match=message):
        plan_dp_query(sql, clinic, _units(**changes), EPSILON)


def test_a_join_needs_the_metadata_of_both_datasets(clinic):
    single = _units()["patients"]
    with pytest.raises(QueryRejected, match="has no DP metadata"):
        plan_dp_query("SELECT COUNT(*) FROM patients JOIN visits USING (pid)", clinic, single, 1.0)


@pytest.mark.parametrize(
    ("epsilon", "delta"),
    [(11.0, 0.0), (-1.0, 0.0), (float("nan"), 0.0), (float("inf"), 0.0), (1.0, 0.1), (True, 0)],
)
def test_epsilon_and_delta_out_of_range_are_refused(heart, metadata, epsilon, delta):
    with pytest.raises(InputError, match=r"epsilon|delta"):
        plan_dp_query("SELECT COUNT(*) FROM heart", heart, metadata, epsilon, delta)


def test_errors_never_print_a_categorical_columns_values(metadata):
    """pandas categoricals reach DuckDB as ENUMs whose type names list the (private)
    categories; the DP engine hands DuckDB plain values, so binder errors say VARCHAR."""
    frame = pd.DataFrame({"ward": pd.Categorical(["ZQX-A", "ZQX-B"]), "age": [30, 40]})
    with pytest.raises(QueryRejected) as refused:
        plan_dp_query(
            "SELECT COUNT(*) FROM heart WHERE ward + 1 = 2", {"heart": frame}, metadata, 1.0
        )
    assert "VARCHAR" in str(refused.value) and "ZQX" not in str(refused.value)


def test_exact_tier_errors_never_print_a_categorical_columns_values():
    from remote_kernel.checks.policy import Thresholds
    from remote_kernel.checks.sqltier import run_query

    frame = pd.DataFrame({"ward": pd.Categorical(["ZQX-A", "ZQX-B"]), "age": [30, 40]})
    with pytest.raises(QueryRejected) as refused:
        run_query("SELECT COUNT(*) FROM heart WHERE ward + 1 = 2", {"heart": frame}, Thresholds())
    assert "ZQX" not in str(refused.value)


def test_a_join_on_ids_of_different_types_is_refused(clinic):
    """'007' and 7 could be made equal by a cast: two people under one id."""
    tables = {**clinic, "visits": clinic["visits"].assign(pid=clinic["visits"].pid.astype(str))}
    with pytest.raises(QueryRejected, match="different types"):
        plan_dp_query("SELECT COUNT(*) FROM patients JOIN visits USING (pid)", tables, _units(), 1)
