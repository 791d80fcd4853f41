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
    with pytest.raises(DPMetadataError, match=r"public_categories\.sex"):
        parse_metadata({"public_categories": {"sex": []}})
    assert issubclass(DPMetadataError, InputError)


def test_bad_epsilon_is_an_input_error(heart, metadata):
    with pytest.raises(InputError, match="epsilon"):
        plan_dp_query("SELECT COUNT(*) FROM heart", heart, metadata, 0)
