"""Mocks at three fidelity levels, their reports, and the researcher's summary.

Real files only: the four UCI heart-disease tables when they are on this
machine (generated heart-shaped tables otherwise), generated tables, real
datasite directories and the real CLI. The bounds asserted here are the ones
docs/mocks.md states.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remote_kernel.cli import main
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.datasets import (
    HEART_COLUMNS,
    UCI_HEART_FILES,
    add_dataset,
    find_uci_heart_dir,
    read_table,
    remock_dataset,
    synthetic_heart,
)
from remote_kernel.mocks.generate import (
    FIDELITIES,
    MAX_COLUMNS,
    MAX_JOINT_COLUMNS,
    MIN_CATEGORY_ROWS,
    MockError,
    generate_mock,
)
from remote_kernel.mocks.report import (
    REPORT_HTML,
    REPORT_JSON,
    SUMMARY_JSON,
    build_report,
    column_fidelity,
    researcher_summary,
)
from remote_kernel.protocol.errors import DatasetError
from tests.conftest import RunningDatasite

#: The stated bounds (docs/mocks.md), for a 2000-row marginal mock.
MARGINAL_MAX_KS = 0.12
#: TVD may exceed the mass of the suppressed rare levels by at most this.
MARGINAL_MAX_TVD_EXCESS = 0.06
MARGINAL_MAX_MISSING_DIFF = 0.05
#: Joint: the private table's 3 strongest correlations, in a 5000-row mock.
JOINT_TOP3_MEAN_DIFF = 0.1
JOINT_TOP3_MAX_DIFF = 0.15


def private_tables() -> dict[str, pd.DataFrame]:
    uci = find_uci_heart_dir()
    tables = {}
    for i, (site, file) in enumerate(sorted(UCI_HEART_FILES.items())):
        if uci is not None:
            tables[site] = read_table(uci / file, columns=HEART_COLUMNS, na_values=["?"])
        else:
            tables[site] = synthetic_heart(300, seed=i)
    tables["generated"] = synthetic_heart(3000, seed=5)
    return tables


TABLES = private_tables()


def row_set(frame: pd.DataFrame) -> set[tuple[str, ...]]:
    return set(map(tuple, frame.astype(str).to_numpy()))


# --- never a private row ------------------------------------------------------------------------


@pytest.mark.parametrize("fidelity", FIDELITIES)
@pytest.mark.parametrize("table", sorted(TABLES))
def test_no_mock_row_equals_a_private_row(table: str, fidelity: str) -> None:
    private = TABLES[table]
    mock = generate_mock(private, fidelity, rows=1500, seed=3)
    assert list(mock.columns) == list(private.columns)
    assert mock.dtypes.tolist() == private.dtypes.tolist()
    assert len(mock) > 1400  # rows equal to private ones were redrawn, not just dropped
    assert not row_set(mock) & row_set(private)
    report = build_report(private, mock, dataset=table, fidelity=fidelity, seed=3)
    assert report["privacy"]["exact_copies"] == 0
    assert report["privacy"]["rare_values_exposed"] == {}


def test_a_tiny_table_is_mocked_without_its_rows() -> None:
    private = pd.DataFrame({"a": [1, 2], "b": ["x", "y"], "c": [0.5, 1.5]})
    for fidelity in FIDELITIES:
        mock = generate_mock(private, fidelity, rows=200, seed=0)
        assert not row_set(mock) & row_set(private)
        assert not set(mock["b"]) & {"x", "y"}  # held by one row each: placeholders instead


# --- fidelity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("table", sorted(TABLES))
def test_marginal_fidelity_within_stated_bounds(table: str) -> None:
    private = TABLES[table]
    mock = generate_mock(private, "marginal", rows=2000, seed=1)
    for column in column_fidelity(private, mock, []):
        name = column["name"]
        assert abs(column["missing_private"] - column["missing_mock"]) <= (
            MARGINAL_MAX_MISSING_DIFF
        ), column
        if column["metric"] == "ks":
            assert column["value"] <= MARGINAL_MAX_KS, column
        else:
            counts = private[name].dropna().value_counts()
            suppressed = counts[counts < MIN_CATEGORY_ROWS].sum() / counts.sum()
            assert (column["value"] or 0.0) <= suppressed + MARGINAL_MAX_TVD_EXCESS, column


def test_marginal_does_not_reproduce_rare_extremes_and_keeps_integers() -> None:
    private = synthetic_heart(2000, seed=2)
    private["chol"] = private["chol"].astype("int64")
    private.loc[0, "chol"] = 999  # one extreme patient
    mock = generate_mock(private, "marginal", rows=3000, seed=0)
    assert mock["chol"].dtype == np.int64
    ordered = np.sort(private["chol"].to_numpy())
    assert mock["chol"].max() <= ordered[-MIN_CATEGORY_ROWS]
    assert mock["chol"].min() >= ordered[MIN_CATEGORY_ROWS - 1]
    assert (mock["age"] == mock["age"].round()).all()  # age is whole years in the private data
    assert (mock["oldpeak"] == mock["oldpeak"].round(1)).all()


def test_schema_level_publishes_coarse_bounds_only() -> None:
    private = synthetic_heart(500, seed=4)
    mock = generate_mock(private, "schema", rows=2000, seed=0)
    for column in ("chol", "trestbps", "thalach"):
        low, high = mock[column].min(), mock[column].max()
        assert low not in set(private[column]) or low % 5 == 0
        assert high not in set(private[column]) or high % 5 == 0


def strongest_pairs(frame: pd.DataFrame, mock: pd.DataFrame, count: int = 3) -> list[float]:
    private_r, mock_r = frame.corr(), mock.corr()
    pairs = []
    names = list(private_r.columns)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if not np.isnan(private_r.loc[a, b]) and not np.isnan(mock_r.loc[a, b]):
                pairs.append(
                    (abs(private_r.loc[a, b]), abs(private_r.loc[a, b] - mock_r.loc[a, b]))
                )
    return [diff for _, diff in sorted(pairs, reverse=True)[:count]]


@pytest.mark.parametrize("table", sorted(TABLES))
def test_joint_keeps_the_strongest_correlations(table: str) -> None:
    private = TABLES[table]
    joint = generate_mock(private, "joint", rows=5000, seed=2)
    diffs = strongest_pairs(private, joint)
    assert max(diffs) <= JOINT_TOP3_MAX_DIFF, diffs
    assert np.mean(diffs) <= JOINT_TOP3_MEAN_DIFF, diffs
    marginal = generate_mock(private, "marginal", rows=5000, seed=2)
    joint_report = build_report(private, joint, dataset=table, fidelity="joint", seed=2)
    marginal_report = build_report(private, marginal, dataset=table, fidelity="marginal", seed=2)
    assert (
        joint_report["correlations"]["mean_abs_diff"]
        < marginal_report["correlations"]["mean_abs_diff"]
    )


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_the_same_seed_gives_the_same_mock(fidelity: str) -> None:
    private = TABLES["cleveland"]
    first = generate_mock(private, fidelity, seed=11)
    assert first.equals(generate_mock(private, fidelity, seed=11))
    assert not first.equals(generate_mock(private, fidelity, seed=12))


# --- identifiers, dates, text -------------------------------------------------------------------


def patients(rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    frame = synthetic_heart(rows, seed=11)
    frame.insert(0, "patient_id", np.arange(5000, 5000 + rows))
    frame.insert(1, "name", [f"Patient Name-{i:03d}" for i in range(rows)])
    days = rng.integers(0, 365 * 40, rows)
    frame.insert(2, "dob", pd.Timestamp("1930-01-01") + pd.to_timedelta(days, "D"))
    frame.insert(3, "ward", rng.choice(["north", "south", "east"], rows).astype(object))
    frame.loc[:4, "ward"] = "isolation"  # five rows only: rare
    frame.insert(4, "admitted", pd.Timestamp("2020-01-01") + pd.to_timedelta(days % 700, "D"))
    return frame


@pytest.mark.parametrize("fidelity", FIDELITIES)
def test_identifiers_are_regenerated_and_dates_sampled(fidelity: str) -> None:
    private = patients()
    ids = ["patient_id", "name", "dob"]
    mock = generate_mock(private, fidelity, rows=800, seed=1, identifiers=ids)
    assert mock.dtypes.tolist() == private.dtypes.tolist()
    for column in ids:
        assert not set(mock[column].astype(str)) & set(private[column].astype(str)) - set(
            mock["dob"].astype(str)
        ), column
    assert mock["patient_id"].is_unique and mock["name"].is_unique
    assert "isolation" not in set(mock["ward"])
    if fidelity != "schema":
        assert "other" in set(mock["ward"])  # the rare ward is merged, not shown
    admitted = mock["admitted"].dropna()
    assert (admitted == admitted.dt.normalize()).all()  # dates stay dates
    report = build_report(private, mock, dataset="p", fidelity=fidelity, seed=1, identifiers=ids)
    metrics = {c["name"]: c["metric"] for c in report["columns"]}
    assert [metrics[c] for c in ids] == ["regenerated"] * 3
    assert metrics["admitted"] == "ks"


def test_identifiers_stay_unique_when_rows_are_redrawn() -> None:
    # Two binary columns where only (a=1, b=1) is not a private row: most generated rows
    # equal a private row and are redrawn, many times.
    a = np.array([0, 1] * 20)
    b = ((a == 0) & (np.arange(40) < 20)).astype(int)
    private = pd.DataFrame({"pid": [f"P{i}" for i in range(40)], "a": a, "b": b})
    mock = generate_mock(private, "marginal", rows=50, seed=0, identifiers=["pid"])
    assert len(mock) > 40 and set(zip(mock["a"], mock["b"], strict=True)) == {(1, 1)}
    assert mock["pid"].is_unique and not set(mock["pid"]) & set(private["pid"])


def test_a_category_dtype_lists_only_public_categories() -> None:
    values = ["common"] * 50 + ["rare-diagnosis"] * 3
    private = pd.DataFrame({"dx": pd.Categorical(values), "x": np.arange(53)})
    for fidelity in FIDELITIES:
        mock = generate_mock(private, fidelity, rows=200, seed=0)
        assert isinstance(mock["dx"].dtype, pd.CategoricalDtype)
        assert "rare-diagnosis" not in list(mock["dx"].cat.categories)
        assert mock["dx"].notna().all()


def test_unicode_column_names_round_trip(tmp_path: Path) -> None:
    private = pd.DataFrame(
        {"âge (années)": np.arange(60) % 40 + 20, "診断": ["はい", "いいえ"] * 30, "💊": 1.5}
    )
    path = tmp_path / "unicode.parquet"
    private.to_parquet(path)
    config = DatasiteConfig.create(tmp_path / "site", "site")
    entry = add_dataset(config, "unicode", path, fidelity="joint", seed=0)
    mock = pd.read_parquet(config.directory / entry.mock)
    assert list(mock.columns) == list(private.columns)
    html = (config.directory / "datasets/unicode" / REPORT_HTML).read_text()
    assert "診断" in html


# --- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "fidelity", "message"),
    [
        (pd.DataFrame({"a": []}), "marginal", "no rows"),
        (pd.DataFrame({"a": [1.0]}), "marginal", "single row"),
        (pd.DataFrame({"a": [1, 2, 3], "b": [np.nan] * 3}), "marginal", "'b' is entirely missing"),
        (pd.DataFrame({"a": [1, "x", 2.5]}, dtype=object), "schema", "'a' mixes value types"),
        (pd.DataFrame(np.zeros((3, MAX_COLUMNS + 1))), "marginal", "columns"),
        (pd.DataFrame(np.zeros((3, MAX_JOINT_COLUMNS + 1))), "joint", "--fidelity marginal"),
        (pd.DataFrame({"a": [1, 2]}), "exact", "unknown fidelity"),
    ],
)
def test_bad_inputs_get_clear_errors(frame: pd.DataFrame, fidelity: str, message: str) -> None:
    with pytest.raises(MockError, match=re.escape(message)):
        generate_mock(frame, fidelity)


def test_failures_leave_nothing_half_written(tmp_path: Path) -> None:
    config = DatasiteConfig.create(tmp_path / "site", "site")
    pd.DataFrame({"a": [1, 2, 3], "empty": [None] * 3}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DatasetError, match="entirely missing"):
        add_dataset(config, "bad", tmp_path / "bad.csv")
    assert list(config.datasets_dir.iterdir()) == []
    assert "bad" not in DatasiteConfig.load(config.directory).datasets

    TABLES["cleveland"].to_parquet(tmp_path / "heart.parquet")
    add_dataset(config, "heart", tmp_path / "heart.parquet", seed=1)
    folder = config.datasets_dir / "heart"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(DatasetError, match="identifier"):
        remock_dataset(config, "heart", identifiers=["no-such-column"])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# --- property: any small table ------------------------------------------------------------------

small_tables = st.integers(min_value=2, max_value=60).flatmap(
    lambda rows: st.fixed_dictionaries(
        {
            "int": st.lists(st.integers(-5, 500), min_size=rows, max_size=rows),
            "float": st.lists(
                st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False)),
                min_size=rows,
                max_size=rows,
            ).filter(lambda v: any(x is not None for x in v)),
            "text": st.lists(st.sampled_from("abc"), min_size=rows, max_size=rows),
            "code": st.lists(st.sampled_from([0, 1]), min_size=rows, max_size=rows),
        }
    )
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=small_tables, fidelity=st.sampled_from(FIDELITIES), seed=st.integers(0, 2**16))
def test_any_small_table_gets_a_mock_without_private_rows(
    data: dict[str, list[object]], fidelity: str, seed: int
) -> None:
    private = pd.DataFrame(data)
    private["float"] = private["float"].astype(float)
    mock = generate_mock(private, fidelity, rows=100, seed=seed)
    assert list(mock.columns) == list(private.columns)
    assert mock.dtypes.tolist() == private.dtypes.tolist()
    assert not row_set(mock) & row_set(private)
    counts = private["text"].value_counts()
    assert not set(mock["text"]) & set(counts[counts < MIN_CATEGORY_ROWS].index)


# --- the command line ---------------------------------------------------------------------------


def test_cli_add_dataset_remock_and_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    site = str(tmp_path / "site")
    assert main(["datasite", "init", site, "--name", "site"]) == 0
    TABLES["cleveland"].to_csv(tmp_path / "heart.csv", index=False)
    private_csv = str(tmp_path / "heart.csv")
    args = ["datasite", "add-dataset", site, "heart", "--private", private_csv]
    assert main([*args, "--fidelity", "joint", "--seed", "3"]) == 0
    assert "generated (joint)" in capsys.readouterr().out
    folder = tmp_path / "site/datasets/heart"
    assert {REPORT_JSON, REPORT_HTML, SUMMARY_JSON, "mock.parquet"} <= {
        p.name for p in folder.iterdir()
    }
    first = (folder / "mock.parquet").read_bytes()

    assert main(["datasite", "mock-report", site, "heart"]) == 0
    table = capsys.readouterr().out
    assert "fidelity joint" in table and "equal to a private row: 0" in table
    assert re.search(r"^chol\s+ks\s+0\.\d{3}", table, re.MULTILINE)

    assert main(["datasite", "remock", site, "heart", "--seed", "3"]) == 0
    assert "new joint mock" in capsys.readouterr().out
    assert (folder / "mock.parquet").read_bytes() == first  # same seed, same mock
    assert main(["datasite", "remock", site, "heart", "--fidelity", "schema", "--seed", "4"]) == 0
    capsys.readouterr()
    assert main(["datasite", "mock-report", site, "heart", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fidelity"] == "schema" and report["seed"] == 4
    assert report["privacy"]["exact_copies"] == 0
    assert report["privacy"]["membership"]["share_closer_to_train"] < 0.75

    # A hand-made mock still works, and gets a report too.
    TABLES["cleveland"].head(0).to_csv(tmp_path / "empty-mock.csv", index=False)
    mock_csv = tmp_path / "mock.csv"
    generate_mock(TABLES["cleveland"], "schema", rows=50, seed=9).to_csv(mock_csv, index=False)
    assert main(["datasite", "add-dataset", site, "given", "--private", private_csv,
                 "--mock", str(mock_csv)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["datasite", "mock-report", site, "given", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fidelity"] == "given"

    # Bad input: the CLI's error convention (exit 2, one 'error:' line, nothing written).
    pd.DataFrame({"a": [1.0]}).to_csv(tmp_path / "one.csv", index=False)
    assert (
        main(["datasite", "add-dataset", site, "one", "--private", str(tmp_path / "one.csv")]) == 2
    )
    assert "error: the table has a single row" in capsys.readouterr().err
    assert not (tmp_path / "site/datasets/one").exists()
    assert main(["datasite", "mock-report", site, "nope"]) == 2


# --- what researchers see -----------------------------------------------------------------------


def test_researcher_dataset_view_has_the_summary_and_no_private_values(
    shared_datasite: RunningDatasite,
) -> None:
    headers = {"Authorization": f"Bearer {shared_datasite.tokens['alice']}"}
    view = httpx.get(f"{shared_datasite.url}/api/datasets/heart", headers=headers).json()
    summary = view["mock_summary"]
    assert summary["fidelity"] == "marginal" and summary["exact_copies"] == 0
    assert set(summary) == {
        "fidelity",
        "generated_on",
        "rows",
        "columns",
        "correlation_mean_abs_diff",
        "exact_copies",
    }
    assert [c["name"] for c in summary["columns"]] == [c["name"] for c in view["columns"]]
    for column in summary["columns"]:
        assert column["value"] is None or (
            0 <= column["value"] <= 1 and round(column["value"], 2) == column["value"]
        )
    private = pd.read_parquet(shared_datasite.directory / "datasets/heart/private.parquet")
    text = json.dumps(summary)
    for name in ("chol", "trestbps", "thalach"):
        for value in (private[name].min(), private[name].max(), private[name].median()):
            assert not re.search(rf"\b{value:g}\b", text), (name, value)
    assert "seed" not in text and str(len(private)) not in re.findall(r"\d+", text)
    # The listing stays as it was: no summary there.
    (listed,) = httpx.get(f"{shared_datasite.url}/api/datasets", headers=headers).json()
    assert "mock_summary" not in listed


def test_summary_is_a_whitelist_of_the_report() -> None:
    private = patients()
    mock = generate_mock(private, "joint", rows=300, seed=1, identifiers=["patient_id"])
    report = build_report(private, mock, dataset="p", fidelity="joint", seed=1)
    summary = json.dumps(researcher_summary(report))
    assert "private_r" not in summary and "dcr" not in summary and "private_rows" not in summary
