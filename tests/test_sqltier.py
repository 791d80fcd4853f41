"""The sound auto-release tier (checks.sqltier) and its rules (checks.rules).

Three suites:

* utility: safe aggregate queries on heart data (synthetic, and the real UCI
  files when they are on this machine) are released automatically under the
  ``acro`` preset, with exactly the values pandas computes;
* attacks and rules: queries that could reveal a person are refused or held, the
  cell rules fire on the cases they exist for, suppression and OpenSAFELY rounding
  give exact tables, and every preset behaves;
* properties (hypothesis) of the pure rule functions, and of the evidence DuckDB
  computes against a numpy reference.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from fractions import Fraction

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from remote_kernel.checks import rules
from remote_kernel.checks.policy import PRESETS, Thresholds
from remote_kernel.checks.sqltier import (
    EVIDENCE_PREFIX,
    check_query,
    crosstab_sql,
    open_connection,
    run_query,
    to_wide,
)
from remote_kernel.datasite.datasets import (
    HEART_COLUMNS,
    UCI_HEART_FILES,
    find_uci_heart_dir,
    synthetic_heart,
)
from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.protocol.models import Verdict

ACRO = PRESETS["acro"]
STRICT = PRESETS["strict"]
OPENSAFELY = PRESETS["opensafely"]
SUPPRESS = dataclasses.replace(ACRO, failing_cells="suppress")


# --- data -----------------------------------------------------------------------------------


def _uci() -> pd.DataFrame | None:
    directory = find_uci_heart_dir()
    if directory is None:
        return None
    frames = [
        pd.read_csv(directory / name, header=None, names=HEART_COLUMNS, na_values="?")
        for name in UCI_HEART_FILES.values()
    ]
    return pd.concat(frames, ignore_index=True)


SYNTHETIC = synthetic_heart(3000, seed=11)
UCI = _uci()
HEART_DATA = [pytest.param(SYNTHETIC, id="synthetic")] + (
    [pytest.param(UCI, id="uci")]
    if UCI is not None
    else [pytest.param(None, id="uci", marks=pytest.mark.skip(reason="UCI files not found"))]
)


def with_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """The heart data with a unique patient id: the identifier an attacker wants."""
    out = frame.copy()
    out["pid"] = [f"P{i:05d}" for i in range(len(out))]
    return out


def assert_same_table(released: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    """Same cells as pandas, in any row order (SQL without ORDER BY has none)."""
    assert released.shape == expected.shape, (released, expected)
    got = released.copy()
    want = expected.copy()
    got.columns = want.columns = range(got.shape[1])
    positions = [list(expected.columns).index(k) for k in keys]
    if positions:
        got = got.sort_values(positions, na_position="last").reset_index(drop=True)
        want = want.sort_values(positions, na_position="last").reset_index(drop=True)
    for column in got.columns:
        a = pd.to_numeric(got[column], errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(want[column], errors="coerce").to_numpy(dtype=float)
        if np.isnan(a).all() and got[column].notna().any():  # text keys
            assert got[column].tolist() == want[column].tolist()
        else:
            np.testing.assert_allclose(a, b, rtol=1e-9, equal_nan=True)


def band(age: pd.Series) -> pd.Series:
    return pd.Series(
        np.select([age < 45, age < 55, age < 65], ["<45", "45-54", "55-64"], "65+"),
        index=age.index,
    )


BAND_SQL = (
    "CASE WHEN age < 45 THEN '<45' WHEN age < 55 THEN '45-54' "
    "WHEN age < 65 THEN '55-64' ELSE '65+' END"
)


def by(frame: pd.DataFrame, keys: list[str] | pd.Series | list[pd.Series]):
    return frame.groupby(keys, dropna=False)


# Each case: (query, the same table computed with pandas, key columns of the result).
UTILITY: list[tuple[str, Callable[[pd.DataFrame], pd.DataFrame], list[str]]] = [
    (
        "SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex",
        lambda d: by(d, ["sex"]).size().rename("n").reset_index(),
        ["sex"],
    ),
    (
        "SELECT num, COUNT(*) AS n FROM heart GROUP BY num",
        lambda d: by(d, ["num"]).size().rename("n").reset_index(),
        ["num"],
    ),
    (
        "SELECT cp, COUNT(*) AS n FROM heart GROUP BY cp ORDER BY cp",
        lambda d: by(d, ["cp"]).size().rename("n").reset_index(),
        ["cp"],
    ),
    (
        "SELECT sex, exang, COUNT(*) AS n FROM heart WHERE exang IS NOT NULL GROUP BY sex, exang",
        lambda d: by(d[d.exang.notna()], ["sex", "exang"]).size().rename("n").reset_index(),
        ["sex", "exang"],
    ),
    (
        "SELECT sex, AVG(chol) AS mean_chol FROM heart GROUP BY sex",
        lambda d: by(d, ["sex"])["chol"].mean().rename("mean_chol").reset_index(),
        ["sex"],
    ),
    (
        "SELECT sex, SUM(thalach) AS s, AVG(thalach) AS m, COUNT(thalach) AS c FROM heart "
        "GROUP BY sex",
        lambda d: by(d, ["sex"])["thalach"].agg(["sum", "mean", "count"]).reset_index(),
        ["sex"],
    ),
    (
        "SELECT COUNT(*) AS n, AVG(age) AS mean_age, SUM(age) AS total_age FROM heart",
        lambda d: pd.DataFrame(
            {"n": [len(d)], "mean_age": [d.age.mean()], "total_age": [d.age.sum()]}
        ),
        [],
    ),
    (
        f"SELECT {BAND_SQL} AS band, COUNT(*) AS n FROM heart GROUP BY band",
        lambda d: d.groupby(band(d.age)).size().rename("n").rename_axis("band").reset_index(),
        ["band"],
    ),
    (
        f"SELECT sex, {BAND_SQL} AS band, COUNT(*) AS n, AVG(trestbps) AS bp FROM heart "
        f"GROUP BY sex, band",
        lambda d: (
            d.assign(band=band(d.age))
            .groupby(["sex", "band"], dropna=False)["trestbps"]
            .agg(n="size", bp="mean")
            .reset_index()
        ),
        ["sex", "band"],
    ),
    (
        crosstab_sql("heart", "sex", "cp"),
        lambda d: by(d, ["sex", "cp"]).size().rename("n").reset_index(),
        ["sex", "cp"],
    ),
    (
        crosstab_sql("heart", "cp", values="trestbps", aggfunc="mean"),
        lambda d: by(d, ["cp"])["trestbps"].mean().reset_index(),
        ["cp"],
    ),
    (
        crosstab_sql("heart", ["sex"], ["cp"], values="age", aggfunc="sum"),
        lambda d: by(d, ["sex", "cp"])["age"].sum().reset_index(),
        ["sex", "cp"],
    ),
    (
        crosstab_sql("heart", "cp", values="thalach", aggfunc="count"),
        lambda d: by(d, ["cp"])["thalach"].count().reset_index(),
        ["cp"],
    ),
    (
        "SELECT num > 0 AS disease, sex, COUNT(*) AS n, AVG(age) AS mean_age FROM heart "
        "GROUP BY 1, 2",
        lambda d: (
            d.assign(disease=d.num > 0)
            .groupby(["disease", "sex"])["age"]
            .agg(n="size", mean_age="mean")
            .reset_index()
        ),
        ["disease", "sex"],
    ),
    (
        "SELECT sex, COUNT(*) AS n FROM heart WHERE age >= 50 GROUP BY sex ORDER BY sex",
        lambda d: by(d[d.age >= 50], ["sex"]).size().rename("n").reset_index(),
        ["sex"],
    ),
    (
        "SELECT sex, cp, COUNT(*) AS n FROM heart GROUP BY ALL",
        lambda d: by(d, ["sex", "cp"]).size().rename("n").reset_index(),
        ["sex", "cp"],
    ),
    (
        "SELECT cp, COUNT(*) AS n FROM heart GROUP BY cp ORDER BY n DESC LIMIT 2",
        lambda d: by(d, ["cp"]).size().rename("n").reset_index().nlargest(2, "n"),
        ["cp"],
    ),
    (
        "SELECT fbs, AVG(age) AS mean_age, MEAN(trestbps) AS bp FROM heart GROUP BY fbs",
        lambda d: (
            by(d, ["fbs"]).agg(mean_age=("age", "mean"), bp=("trestbps", "mean")).reset_index()
        ),
        ["fbs"],
    ),
    (
        "SELECT FLOOR(age / 10) * 10 AS decade, COUNT(*) AS n FROM heart "
        "WHERE age >= 40 AND age < 70 GROUP BY decade",
        lambda d: (
            d[(d.age >= 40) & (d.age < 70)]
            .groupby((d.age // 10) * 10)
            .size()
            .rename("n")
            .rename_axis("decade")
            .reset_index()
        ),
        ["decade"],
    ),
]


@pytest.mark.parametrize("data", HEART_DATA)
@pytest.mark.parametrize(("sql", "expected", "keys"), UTILITY, ids=[u[0][:60] for u in UTILITY])
def test_safe_aggregates_are_released_with_pandas_values(data, sql, expected, keys) -> None:
    assert len(UTILITY) >= 15
    outcome = run_query(sql, {"heart": data}, ACRO)
    assert outcome.verdict is Verdict.RELEASE, (outcome.summary, outcome.findings)
    assert outcome.summary.startswith("released by policy")
    assert outcome.released is not None
    assert not [c for c in outcome.released.columns if str(c).startswith(EVIDENCE_PREFIX)]
    assert_same_table(outcome.released, expected(data), keys)
    assert_same_table(outcome.result, expected(data), keys)
    assert all(f.verdict is Verdict.RELEASE for f in outcome.findings)


def test_order_by_and_limit_are_kept() -> None:
    outcome = run_query(
        "SELECT cp, COUNT(*) AS n FROM heart GROUP BY cp ORDER BY n DESC LIMIT 2",
        {"heart": SYNTHETIC},
        ACRO,
    )
    expected = SYNTHETIC.groupby("cp").size().sort_values(ascending=False).head(2)
    assert outcome.released is not None
    assert outcome.released["n"].tolist() == expected.tolist()
    assert outcome.released["cp"].tolist() == expected.index.tolist()


def test_order_by_all_orders_by_every_result_column() -> None:
    outcome = run_query(
        "SELECT sex, cp, COUNT(*) AS n FROM heart GROUP BY ALL ORDER BY ALL DESC",
        {"heart": SYNTHETIC},
        ACRO,
    )
    expected = SYNTHETIC.groupby(["sex", "cp"]).size().rename("n").reset_index()
    expected = expected.sort_values(["sex", "cp", "n"], ascending=False)
    assert outcome.released is not None
    assert (
        outcome.released[["sex", "cp"]].values.tolist() == expected[["sex", "cp"]].values.tolist()
    )
    for star in ("*", "COLUMNS(*)"):  # these are not ORDER BY ALL
        with pytest.raises(QueryRejected, match="not allowed"):
            run_query(f"SELECT sex, COUNT(*) FROM heart GROUP BY sex ORDER BY {star}",
                      {"heart": SYNTHETIC}, ACRO)  # fmt: skip


def test_mock_mode_runs_without_checks() -> None:
    mock = synthetic_heart(50, seed=3)
    outcome = run_query(
        "SELECT sex, num, COUNT(*) AS n FROM heart GROUP BY sex, num", {"heart": mock}, None
    )
    assert outcome.verdict is Verdict.RELEASE
    assert outcome.summary == "mock data"
    assert outcome.released is outcome.result
    assert outcome.result["n"].sum() == 50
    with pytest.raises(QueryRejected):  # refused locally exactly as at the datasite
        run_query("SELECT age FROM heart", {"heart": mock}, None)


def test_crosstab_to_wide() -> None:
    outcome = run_query(crosstab_sql("heart", "sex", "cp"), {"heart": SYNTHETIC}, ACRO)
    wide = to_wide(outcome.released, "sex", "cp")
    expected = pd.crosstab(SYNTHETIC.sex, SYNTHETIC.cp)
    np.testing.assert_array_equal(wide.to_numpy(), expected.to_numpy())


# --- what must never be released ------------------------------------------------------------

REJECTED = [
    ("SELECT * FROM heart", "SELECT *"),
    ("FROM heart", "SELECT *"),
    ("SELECT heart.* FROM heart", "SELECT *"),
    ("SELECT COLUMNS('c.*') FROM heart", "COLUMNS"),
    ("SELECT pid, age FROM heart", "neither a GROUP BY key nor an aggregate"),
    ("SELECT age, chol FROM heart GROUP BY age", "neither a GROUP BY key"),
    ("SELECT MIN(chol) FROM heart", "one person's actual value"),
    ("SELECT sex, MAX(chol) FROM heart GROUP BY sex", "one person's actual value"),
    ("SELECT MEDIAN(age) FROM heart", "one person's actual value"),
    ("SELECT QUANTILE_CONT(age, 0.5) FROM heart", "one person's actual value"),
    ("SELECT sex, MODE(age) FROM heart GROUP BY sex", "one person's actual value"),
    ("SELECT FIRST(pid) FROM heart", "one person's actual value"),
    ("SELECT LAST(pid) FROM heart", "one person's actual value"),
    ("SELECT ANY_VALUE(pid) FROM heart", "one person's actual value"),
    ("SELECT ARBITRARY(pid) FROM heart", "one person's actual value"),
    ("SELECT ARG_MAX(pid, chol) FROM heart", "one person's actual value"),
    ("SELECT LIST(pid) FROM heart", "individual values themselves"),
    ("SELECT STRING_AGG(pid, ',') FROM heart", "individual values themselves"),
    ("SELECT ARRAY_AGG(chol) FROM heart", "individual values themselves"),
    ("SELECT HISTOGRAM(chol) FROM heart", "individual values themselves"),
    ("SELECT STDDEV(chol) FROM heart", "not one of the aggregates"),
    ("SELECT ROUND(AVG(chol), 1) FROM heart", "only on their own"),
    ("SELECT COUNT(*) FROM heart JOIN other USING (age)", "joins"),
    ("SELECT COUNT(*) FROM heart, other", "joins"),
    ("SELECT COUNT(*) FROM (SELECT * FROM heart)", "subqueries"),
    ("SELECT COUNT(*) FROM heart WHERE chol > (SELECT AVG(chol) FROM heart)", "subqueries"),
    ("SELECT COUNT(*) FROM heart WHERE pid IN (SELECT pid FROM other)", "subqueries"),
    ("SELECT COUNT(*) FROM heart WHERE EXISTS (SELECT 1 FROM other)", "subqueries"),
    ("WITH h AS (SELECT * FROM heart) SELECT COUNT(*) FROM h", "WITH"),
    ("SELECT COUNT(*) FROM heart UNION SELECT COUNT(*) FROM other", "UNION"),
    ("SELECT sex, COUNT(*) FROM heart GROUP BY sex EXCEPT SELECT 1, 1", "UNION"),
    ("SELECT COUNT(*) FROM read_csv('/etc/passwd')", "table functions"),
    ("SELECT COUNT(*) FROM read_text('/etc/passwd')", "table functions"),
    ("SELECT COUNT(*) FROM '/etc/passwd'", "unknown dataset"),
    ("COPY heart TO '/tmp/rk-leak.csv'", "only a single SELECT"),
    ("COPY (SELECT * FROM heart) TO '/tmp/rk-leak.csv'", "only a single SELECT"),
    ("ATTACH '/tmp/rk-leak.db' AS leak", "only a single SELECT"),
    ("PRAGMA version", "only a single SELECT"),
    ("SET enable_external_access = true", "only a single SELECT"),
    ("INSTALL httpfs", "only a single SELECT"),
    ("CREATE OR REPLACE VIEW heart AS SELECT 1 AS sex", "only a single SELECT"),
    ("SELECT COUNT(*) FROM heart; SELECT 1", "exactly one SELECT"),
    ("SELECT COUNT(*) FROM heart; DROP VIEW heart", "only a single SELECT"),
    ("SELECT sex, SUM(chol) OVER () FROM heart", "window functions"),
    ("SELECT sex, ROW_NUMBER() OVER () FROM heart GROUP BY sex", "window functions"),
    ("SELECT DISTINCT pid FROM heart", "DISTINCT"),
    ("SELECT COUNT(DISTINCT chol) FROM heart", "DISTINCT"),
    ("SELECT SUM(chol) FILTER (WHERE pid = 'P00001') FROM heart", "FILTER"),
    ("SELECT SUM(CASE WHEN pid = 'P00001' THEN chol ELSE 0 END) FROM heart", "plain column"),
    ("SELECT COUNT(*) FROM heart USING SAMPLE 10", "SAMPLE"),
    ("SELECT sex, COUNT(*) FROM heart GROUP BY sex QUALIFY 1 = 1", "QUALIFY"),
    ("SELECT sex, COUNT(*) FROM heart GROUP BY sex HAVING COUNT(*) > 5", "HAVING"),
    ("SELECT sex, COUNT(*) FROM heart GROUP BY ROLLUP (sex)", "ROLLUP"),
    ("SELECT sex, COUNT(*) FROM heart GROUP BY sex ORDER BY MAX(chol)", "ORDER BY"),
    ("SELECT sex, COUNT(*) FROM heart GROUP BY sex ORDER BY chol", "ORDER BY"),
    ("SELECT chol + 1 AS q, SUM(q) FROM heart GROUP BY 1", "not a column"),
    ("SELECT FLOOR(age / 10) AS age, COUNT(*) FROM heart GROUP BY age", "also a column"),
    ("SELECT AVG(pid) FROM heart", "numeric column"),
    ("SELECT heart, COUNT(*) FROM heart GROUP BY heart", "whole rows"),
    ("SELECT h, COUNT(*) FROM heart AS h GROUP BY h", "whole rows"),
    ("SELECT COUNT(heart) FROM heart", "not a column"),
    ("SELECT COUNT(*) FROM main.heart", "schema"),
    ("SELECT COUNT(*) FROM nosuch", "unknown dataset"),
    ("SELECT COUNT(*) FROM heart WHERE current_setting('threads') > 0", "not allowed"),
    ("SELECT 1", "FROM"),
    ("SUMMARIZE heart", "FROM must name one dataset"),
    ("SELEC nonsense", "cannot be parsed"),
    ("", "empty"),
]


@pytest.mark.parametrize(("sql", "why"), REJECTED, ids=[r[0][:50] for r in REJECTED])
def test_unsafe_queries_are_rejected_with_a_reason(sql, why) -> None:
    tables = {"heart": with_ids(SYNTHETIC), "other": with_ids(SYNTHETIC.head(20))}
    with pytest.raises(QueryRejected) as info:
        run_query(sql, tables, ACRO)
    assert why.lower() in str(info.value).lower()
    # Refused before anything ran: the message quotes the query, never the data.
    assert "P0000" not in str(info.value).replace("'P00001'", "")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT CAST(pid AS INTEGER) AS x, COUNT(*) FROM heart GROUP BY 1",
        "SELECT COUNT(*) FROM heart WHERE regexp_matches('x', pid || '(')",
        "SELECT COUNT(*) FROM heart WHERE CAST(chol AS VARCHAR) || pid = CAST(pid AS INTEGER)",
    ],
)
def test_expressions_failing_on_private_rows_are_answered_not_refused(sql) -> None:
    """A refusal would say "some row fails" (issue 15); under TRY the row is NULL instead,
    the table quotes no value, and the mock answers the same way."""
    data = with_ids(SYNTHETIC)
    outcome = run_query(sql, {"heart": data}, ACRO)
    shown = outcome.result.to_string() + outcome.summary + str(outcome.findings)
    assert "P0" not in shown
    mock = run_query(sql, {"heart": data}, None)
    pd.testing.assert_frame_equal(mock.result, outcome.result.iloc[:, : mock.result.shape[1]])


@pytest.mark.parametrize("name", ["error", "sleep_ms", "current_setting", "getvariable"])
def test_functions_that_exfiltrate_or_time_are_refused(name) -> None:
    args = {"error": "CAST(chol AS VARCHAR)", "sleep_ms": "chol"}.get(name, "'threads'")
    sql = f"SELECT COUNT(*) FROM heart WHERE {name}({args}) IS NULL"
    with pytest.raises(QueryRejected, match="not allowed"):
        check_query(sql, ["heart"])


def test_strict_summary_does_not_answer_questions_about_a_person() -> None:
    data = with_ids(SYNTHETIC)
    sql = "SELECT pid = '{}' AND chol > 200 AS hit, COUNT(*) AS n FROM heart GROUP BY 1"
    present = run_query(sql.format(data.pid.iloc[data.chol.argmax()]), {"heart": data}, STRICT)
    absent = run_query(sql.format("nobody"), {"heart": data}, STRICT)
    assert present.verdict is absent.verdict is Verdict.REVIEW
    assert present.summary == absent.summary == "held for review: computed group key needs review"
    # The reviewer still sees everything.
    assert any(f.check == "small-cells" for f in present.findings)


def test_binder_errors_become_query_rejected() -> None:
    with pytest.raises(QueryRejected, match=r"DuckDB refused.*nosuchfunc"):
        run_query(
            "SELECT sex, COUNT(*) FROM heart WHERE nosuchfunc(age) GROUP BY sex",
            {"heart": SYNTHETIC},
            ACRO,
        )
    with pytest.raises(QueryRejected, match="not a column"):
        run_query(
            "SELECT sex, COUNT(*) FROM heart GROUP BY sex, nosuch", {"heart": SYNTHETIC}, ACRO
        )


def test_group_by_an_identifier_is_never_released() -> None:
    tables = {"heart": with_ids(SYNTHETIC)}
    sql = "SELECT pid, COUNT(*) AS n FROM heart GROUP BY pid"
    outcome = run_query(sql, tables, ACRO)
    assert outcome.verdict is Verdict.REVIEW and outcome.released is None
    assert "3000 cell(s) below 10" in outcome.summary
    assert "P0" not in outcome.summary
    checks = {f.check for f in outcome.findings}
    assert {"small-cells", "too-many-levels"} <= checks
    # A reviewer sees where; the list stays readable.
    assert (
        sum(f.check == "small-cells" for f in outcome.findings) == rules.DEFAULT_FINDING_LIMIT + 1
    )
    located = [f.location for f in outcome.findings if f.check == "small-cells" and f.location]
    assert len(located) == rules.DEFAULT_FINDING_LIMIT
    assert all(re.fullmatch(r"row \d+ \(pid=P\d{5}\), column n", loc) for loc in located)

    # Keys alone (no aggregate, or a constant pretending to be a count) are checked too.
    for sql in (
        "SELECT pid FROM heart GROUP BY pid",
        "SELECT pid, 100 AS n FROM heart GROUP BY pid",
    ):
        outcome = run_query(sql, tables, ACRO)
        assert outcome.verdict is Verdict.REVIEW and outcome.released is None

    # Suppression leaves every group out; nothing released or said names an id.
    for thresholds in (SUPPRESS, OPENSAFELY):
        outcome = run_query("SELECT pid, COUNT(*) AS n FROM heart GROUP BY pid", tables, thresholds)
        if outcome.released is not None:
            assert outcome.released.empty
            assert not any("P0" in (f.message + (f.location or "")) for f in outcome.findings)
            assert "P0" not in outcome.summary


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) AS n FROM heart WHERE pid = 'P00017'",
        "SELECT sex, AVG(chol) FROM heart WHERE pid = 'P00017' GROUP BY sex",
        "SELECT pid = 'P00017' AS me, AVG(chol) AS m FROM heart GROUP BY 1",
    ],
)
def test_isolating_one_person_is_held(sql) -> None:
    outcome = run_query(sql, {"heart": with_ids(SYNTHETIC)}, ACRO)
    assert outcome.verdict is Verdict.REVIEW and outcome.released is None
    assert any(f.check == "small-cells" for f in outcome.findings)


def test_real_small_cells_are_held_and_located() -> None:
    data = UCI if UCI is not None else SYNTHETIC
    outcome = run_query(
        "SELECT sex, num, COUNT(*) AS n FROM heart GROUP BY sex, num", {"heart": data}, ACRO
    )
    assert outcome.verdict is Verdict.REVIEW and outcome.released is None
    counts = data.groupby(["sex", "num"]).size()
    small = counts[counts < 10]
    assert outcome.summary == f"held for review: {len(small)} cell(s) below 10"
    located = [f.location for f in outcome.findings if f.check == "small-cells"]
    for (sex, num), _ in small.items():
        assert any(f"(sex={sex:g}, num={num:g}), column n" in loc for loc in located)


def _group_frame(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(g, v) for g, vs in values.items() for v in vs], columns=["g", "v"]
    ).astype({"v": float})


def test_dominance() -> None:
    data = _group_frame({"a": [1_000_000.0] + [10.0] * 19, "b": [10.0 + i for i in range(20)]})
    outcome = run_query("SELECT g, SUM(v) AS s FROM t GROUP BY g", {"t": data}, ACRO)
    assert outcome.verdict is Verdict.REVIEW
    (finding,) = [f for f in outcome.findings if f.check == "nk-dominance"]
    assert "g=a" in finding.location and "column s" in finding.location
    assert "also fails: p-percent" in finding.message
    assert outcome.summary == "held for review: 1 cell(s) dominated (N-K)"


def test_p_percent_alone() -> None:
    # The two largest hold 97% (passes N-K at 99%), but what is left (5) is less than
    # 10% of the largest (100): the second largest could estimate the largest.
    thresholds = dataclasses.replace(ACRO, dominance_k=0.99)
    data = _group_frame({"a": [100.0, 50.0] + [0.5] * 10, "b": [10.0 + i for i in range(12)]})
    outcome = run_query("SELECT g, AVG(v) AS m FROM t GROUP BY g", {"t": data}, thresholds)
    assert outcome.verdict is Verdict.REVIEW
    assert [f.check for f in outcome.findings] == ["p-percent"]
    assert "g=a" in outcome.findings[0].location


def test_zeros_negative_and_same_values() -> None:
    data = _group_frame(
        {
            "zero": [0.0] * 12,
            "neg": [-5.0] + [10.0 + i for i in range(11)],
            "same": [7.0] * 12,
            "fine": [10.0 + i for i in range(12)],
        }
    )
    outcome = run_query("SELECT g, SUM(v) AS s FROM t GROUP BY g", {"t": data}, ACRO)
    assert outcome.verdict is Verdict.REVIEW
    where = {f.check: f.location for f in outcome.findings}
    assert "g=zero" in where["zeros"]
    assert "g=neg" in where["negative-values"]
    assert "g=same" in where["all-values-same"]
    assert not any("g=fine" in (f.location or "") for f in outcome.findings)
    # opensafely releases zeros (their risk is its policy's call); negatives stay held.
    relaxed = dataclasses.replace(ACRO, zeros="release")
    outcome = run_query("SELECT g, SUM(v) AS s FROM t GROUP BY g", {"t": data}, relaxed)
    assert {f.check for f in outcome.findings} == {"negative-values"}


def test_zero_counts_read_like_small_counts() -> None:
    # Whether a filtered-out person exists must not show in the summary: a count of
    # 0 and a count of 1 are both "below 10".
    data = with_ids(SYNTHETIC)
    present = run_query("SELECT COUNT(*) FROM heart WHERE pid = 'P00001'", {"heart": data}, ACRO)
    absent = run_query("SELECT COUNT(*) FROM heart WHERE pid = 'nobody'", {"heart": data}, ACRO)
    assert present.summary == absent.summary == "held for review: 1 cell(s) below 10"
    assert [f.check for f in present.findings] == [f.check for f in absent.findings]


def test_missing_combinations_are_zero_cells() -> None:
    rows = [("x", "p")] * 15 + [("x", "q")] * 15 + [("y", "p")] * 15  # (y, q) never occurs
    data = pd.DataFrame(rows, columns=["a", "b"])
    sql = "SELECT a, b, COUNT(*) AS n FROM t GROUP BY a, b"
    outcome = run_query(sql, {"t": data}, ACRO)
    assert outcome.verdict is Verdict.REVIEW
    assert [f.check for f in outcome.findings] == ["zeros"]
    assert "1 of the 4 combinations" in outcome.findings[0].message
    assert (
        run_query(sql, {"t": data}, dataclasses.replace(ACRO, zeros="release")).released is not None
    )
    # Under suppression a missing row may be a small group left out: absence is no zero.
    assert run_query(sql, {"t": data}, SUPPRESS).verdict is Verdict.RELEASE


def test_an_empty_grouped_table_is_a_zero() -> None:
    sql = "SELECT sex, COUNT(*) AS n FROM heart WHERE age > 200 GROUP BY sex"
    held = run_query(sql, {"heart": SYNTHETIC}, ACRO)
    assert held.verdict is Verdict.REVIEW and held.summary == "held for review: no rows (a zero)"
    relaxed = run_query(sql, {"heart": SYNTHETIC}, dataclasses.replace(ACRO, zeros="release"))
    assert relaxed.verdict is Verdict.RELEASE and relaxed.released is not None
    assert relaxed.released.empty


def test_too_many_levels() -> None:
    data = pd.DataFrame({"k": np.repeat(np.arange(50), 20)})
    outcome = run_query("SELECT k, COUNT(*) AS n FROM t GROUP BY k", {"t": data}, ACRO)
    assert outcome.verdict is Verdict.REVIEW
    assert [f.check for f in outcome.findings] == ["too-many-levels"]
    assert "50 distinct values" in outcome.findings[0].message
    more = dataclasses.replace(ACRO, max_levels=50)
    assert (
        run_query("SELECT k, COUNT(*) AS n FROM t GROUP BY k", {"t": data}, more).released
        is not None
    )


def test_strict_sends_filters_and_computed_keys_to_review() -> None:
    tables = {"heart": SYNTHETIC}
    plain = run_query("SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex", tables, STRICT)
    assert plain.verdict is Verdict.RELEASE
    where = run_query(
        "SELECT sex, COUNT(*) AS n FROM heart WHERE age > 50 GROUP BY sex", tables, STRICT
    )
    assert where.verdict is Verdict.REVIEW and where.released is None
    (finding,) = where.findings
    assert finding.check == "where-clause" and "differ" in finding.message
    computed = run_query(
        f"SELECT {BAND_SQL} AS band, COUNT(*) AS n FROM heart GROUP BY band", tables, STRICT
    )
    assert computed.verdict is Verdict.REVIEW
    assert [f.check for f in computed.findings] == ["computed-group-key"]


def test_suppress_blanks_failing_cells_exactly() -> None:
    data = _group_frame(
        {
            "A": [float(i) for i in range(1, 16)],  # 15 rows, sum 120: passes
            "B": [1.0] * 5,  # 5 rows: the group is left out
            "C": [1000.0] + [1.0] * 11,  # 12 rows, dominated: SUM blanked, COUNT kept
        }
    )
    sql = "SELECT g, COUNT(*) AS n, SUM(v) AS s FROM t GROUP BY g ORDER BY g"
    outcome = run_query(sql, {"t": data}, SUPPRESS)
    assert outcome.verdict is Verdict.RELEASE
    released = outcome.released
    assert released is not None
    assert released["g"].tolist() == ["A", "C"]
    assert released["n"].tolist() == [15, 12]
    assert released["s"].iloc[0] == 120.0 and np.isnan(released["s"].iloc[1])
    suppressed = [f for f in outcome.findings if f.check == "suppressed"]
    assert [f.location for f in suppressed] == ["row 1 (g=C), column s"]
    assert "N-K" in suppressed[0].message
    messages = " ".join(f.message for f in outcome.findings)
    assert "No secondary suppression" in messages
    assert all(f.verdict is Verdict.RELEASE for f in outcome.findings)
    assert "no secondary suppression" in outcome.summary
    # Nothing the researcher may see says that group B exists, or how many were left out.
    assert "B" not in " ".join((f.location or "") for f in outcome.findings)
    assert "1 group" not in messages + outcome.summary
    assert outcome.result["g"].tolist() == ["A", "B", "C"]  # the true table, for reviewers


def test_suppress_resorts_when_the_order_depended_on_a_blank() -> None:
    data = _group_frame(
        {
            "A": [float(i) for i in range(1, 16)],
            "C": [1000.0] + [1.0] * 11,
            "D": [2.0] * 3 + [3.0] * 9,
        }
    )
    sql = "SELECT g, SUM(v) AS s FROM t GROUP BY g ORDER BY s DESC"
    outcome = run_query(sql, {"t": data}, SUPPRESS)
    assert outcome.released is not None
    assert outcome.released["g"].tolist() == ["A", "C", "D"]  # by released values, blank last
    assert np.isnan(outcome.released["s"].iloc[1])
    held = run_query(sql + " LIMIT 1", {"t": data}, SUPPRESS)
    assert held.verdict is Verdict.REVIEW
    assert any(f.check == "order-reveals-suppressed" for f in held.findings)


def test_redact_round_is_opensafely_exact() -> None:
    sizes = {"A": 23, "B": 8, "C": 7, "D": 12, "E": 3}
    data = pd.DataFrame({"g": [g for g, n in sizes.items() for _ in range(n)]})
    data["x"] = np.where(np.arange(len(data)) % 4 == 0, 1.0, np.nan)  # COUNT(x) is small
    data["v"] = 50.0 + np.arange(len(data)) % 7
    sql = "SELECT g, COUNT(*) AS n, COUNT(x) AS cx, AVG(v) AS m FROM t GROUP BY g ORDER BY g"
    outcome = run_query(sql, {"t": data}, OPENSAFELY)
    assert outcome.verdict is Verdict.RELEASE
    released = outcome.released
    assert released is not None
    assert released["g"].tolist() == ["A", "B", "D"]  # groups of 7 or fewer left out
    assert released["n"].tolist() == [25.0, 10.0, 10.0]  # 23 -> 25, 8 -> 10, 12 -> 10
    true_cx = data.groupby("g")["x"].count()  # A 6, B 2, D 3: all redacted
    assert (true_cx[["A", "B", "D"]] <= 7).all() and released["cx"].isna().all()
    means = data.groupby("g")["v"].mean()
    np.testing.assert_allclose(released["m"], means[["A", "B", "D"]].to_numpy())
    assert "counts rounded to 5" in outcome.summary
    redacted = [f.location for f in outcome.findings if f.check == "suppressed"]
    assert redacted == [f"row {i} (g={g}), column cx" for i, g in enumerate("ABD")]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset(preset) -> None:
    thresholds = PRESETS[preset]
    tables = {"heart": with_ids(SYNTHETIC)}
    safe = run_query("SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex", tables, thresholds)
    assert safe.verdict is Verdict.RELEASE and safe.released is not None
    counts = SYNTHETIC.groupby("sex").size().to_numpy()
    if thresholds.failing_cells == "redact_round":
        counts = np.floor(counts / thresholds.round_to + 0.5) * thresholds.round_to
    np.testing.assert_array_equal(safe.released.sort_values("sex")["n"].to_numpy(), counts)

    filtered = run_query(
        "SELECT sex, COUNT(*) AS n FROM heart WHERE age > 50 GROUP BY sex", tables, thresholds
    )
    assert (filtered.verdict is Verdict.REVIEW) == (not thresholds.allow_where)

    ids = run_query("SELECT pid, COUNT(*) AS n FROM heart GROUP BY pid", tables, thresholds)
    released_ids = ids.released["pid"].tolist() if ids.released is not None else []
    assert released_ids == []

    dominated = _group_frame({"a": [1e6] + [1.0] * 19, "b": [5.0 + i for i in range(20)]})
    outcome = run_query("SELECT g, SUM(v) AS s FROM t GROUP BY g", {"t": dominated}, thresholds)
    if outcome.released is not None:
        assert np.isnan(outcome.released.set_index("g").loc["a", "s"])
    else:
        assert outcome.verdict is Verdict.REVIEW


# --- the connection and the query text ------------------------------------------------------


def test_connection_cannot_reach_files_settings_or_python() -> None:
    secret = pd.DataFrame({"x": [1, 2, 3]})  # a local a replacement scan would find
    assert len(secret) == 3
    con = open_connection({"heart": SYNTHETIC})
    try:
        assert con.execute("SELECT COUNT(*) FROM heart").fetchall() == [(3000,)]
        for sql in (
            "SELECT * FROM read_csv('/etc/passwd')",
            "COPY (SELECT 1) TO '/tmp/rk-leak.csv'",
            "ATTACH '/tmp/rk-leak.db' AS leak",
        ):
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql)
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access = true")
        with pytest.raises(duckdb.CatalogException):
            con.execute("SELECT * FROM secret")
        with pytest.raises(duckdb.Error):
            con.execute("INSERT INTO heart (age) VALUES (1)")
    finally:
        con.close()
    other = open_connection({})
    try:  # each query's tables are its own
        with pytest.raises(duckdb.CatalogException):
            other.execute("SELECT COUNT(*) FROM heart")
    finally:
        other.close()


def test_queries_do_not_change_the_data() -> None:
    data = with_ids(SYNTHETIC)
    before = data.copy()
    for sql, _, _ in UTILITY:
        run_query(sql, {"heart": data}, ACRO)
    pd.testing.assert_frame_equal(data, before)


def test_crosstab_sql_quotes_names() -> None:
    data = pd.DataFrame({'odd "name"; DROP': ["a"] * 12 + ["b"] * 12, "v w": np.arange(24.0) + 1})
    sql = crosstab_sql("my table", 'odd "name"; DROP', values="v w", aggfunc="mean")
    parsed = check_query(sql, ["my table"])
    assert parsed.dataset == "my table" and len(parsed.aggregates) == 1
    outcome = run_query(sql, {"my table": data}, ACRO)
    assert outcome.released is not None
    np.testing.assert_allclose(outcome.released.iloc[:, 1], [6.5, 18.5])
    with pytest.raises(QueryRejected, match="median"):
        crosstab_sql("heart", "sex", values="chol", aggfunc="median")
    with pytest.raises(QueryRejected, match="values"):
        crosstab_sql("heart", "sex", aggfunc="sum")


def test_check_query_records_the_shape() -> None:
    parsed = check_query(
        f"SELECT sex, {BAND_SQL} AS band, COUNT(*) AS n, AVG(chol) FROM heart "
        "WHERE age > 30 GROUP BY sex, band ORDER BY n LIMIT 5",
        ["heart"],
    )
    assert parsed.dataset == "heart" and parsed.has_where and parsed.has_limit
    assert [k.computed for k in parsed.keys] == [False, True]
    assert [(a.function, a.column) for a in parsed.aggregates] == [
        ("count_star", None),
        ("avg", "chol"),
    ]
    assert parsed.orders_by_aggregate


def test_evidence_costs_at_most_a_few_pandas_groupbys() -> None:
    """Regression guard (the benchmark proper is in the report): checked query vs pandas."""
    data = synthetic_heart(300_000, seed=5)
    sql = "SELECT sex, num, AVG(chol) AS m FROM heart GROUP BY sex, num"

    def best(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    plain = best(lambda: data.groupby(["sex", "num"])["chol"].mean())
    checked = best(lambda: run_query(sql, {"heart": data}, ACRO))
    assert checked <= 4 * plain + 0.01, (checked, plain)


# --- properties of the rules ----------------------------------------------------------------

counts_strategy = st.lists(st.integers(0, 10_000), min_size=0, max_size=60)


@given(counts_strategy, st.integers(0, 30), st.integers(1, 25))
def test_redact_and_round_never_shows_a_small_number(counts, threshold, round_to) -> None:
    out = rules.redact_and_round(counts, threshold, round_to)
    assert out.shape == (len(counts),)
    for count, value in zip(counts, out, strict=True):
        if np.isnan(value):
            continue
        assert value > threshold
        assert value % round_to == 0
        assert abs(value - count) <= round_to / 2
        assert count > threshold
    for count, value in zip(counts, out, strict=True):
        nearest = np.floor(count / round_to + 0.5) * round_to
        if count > threshold and nearest > threshold:
            assert value == nearest


@given(counts_strategy, st.integers(0, 50), st.integers(0, 50))
def test_small_cells_is_monotone_in_the_threshold(counts, a, b) -> None:
    low, high = sorted((a, b))
    small_low, small_high = rules.small_cells(counts, low), rules.small_cells(counts, high)
    assert not (small_low & ~small_high).any()
    assert (small_high == (np.array(counts, dtype=float) < high)).all()


groups_strategy = st.lists(
    st.lists(st.integers(0, 1_000), min_size=1, max_size=15), min_size=1, max_size=8
)


def _evidence(groups: list[list[int]], top_n: int) -> dict[str, np.ndarray]:
    codes = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    values = np.concatenate([np.array(g, dtype=float) for g in groups])
    return rules.group_evidence(codes, values, len(groups), top_n)


@given(groups_strategy, st.integers(1, 4), st.floats(0.05, 1.0))
def test_dominance_flags_exactly_when_the_top_n_share_exceeds_k(groups, n, k) -> None:
    evidence = _evidence(groups, n)
    flags = rules.nk_dominance(evidence["top"], evidence["total"], n, k)
    for group, flag in zip(groups, flags, strict=True):
        total = sum(group)
        if total == 0:
            assert not flag
            continue
        share = Fraction(sum(sorted(group, reverse=True)[:n]), total)
        assume(abs(share - Fraction(k)) > Fraction(1, 10**9))
        assert flag == (share > Fraction(k))


@given(groups_strategy, st.floats(0.0, 1.0))
def test_p_percent_matches_its_definition(groups, p) -> None:
    evidence = _evidence(groups, 2)
    flags = rules.p_percent(evidence["top"], evidence["total"], p)
    for group, flag in zip(groups, flags, strict=True):
        ordered = [*sorted(group, reverse=True), 0]
        total = sum(group)
        if total == 0:
            assert not flag
            continue
        rest = Fraction(total - ordered[0] - ordered[1])
        assume(abs(rest - Fraction(p) * ordered[0]) > Fraction(1, 10**9))
        assert flag == (rest < Fraction(p) * ordered[0])


@given(groups_strategy, st.lists(st.booleans(), min_size=8, max_size=8))
def test_negative_values_always_flag(groups, negative) -> None:
    evidence = _evidence(groups, 2)
    negative = np.array(negative[: len(groups)])
    assert (
        rules.nk_dominance(evidence["top"], evidence["total"], 2, 0.9, negative) >= negative
    ).all()
    assert (rules.p_percent(evidence["top"], evidence["total"], 0.1, negative) >= negative).all()


@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(-50, 50))),
        min_size=1,
        max_size=80,
    ),
    st.integers(1, 4),
)
def test_group_evidence_matches_a_plain_computation(rows, top_n) -> None:
    codes = np.array([c for c, _ in rows])
    values = np.array([np.nan if v is None else float(v) for _, v in rows])
    groups = 6
    evidence = rules.group_evidence(codes, values, groups, top_n)
    for g in range(groups):
        members = [v for c, v in rows if c == g and v is not None]
        assert evidence["count"][g] == len(members)
        assert evidence["total"][g] == sum(members)
        if members:
            assert evidence["minimum"][g] == min(members)
            assert evidence["maximum"][g] == max(members)
        else:
            assert np.isnan(evidence["minimum"][g])
        top = sorted((abs(v) for v in members), reverse=True)[:top_n]
        assert evidence["top"][g].tolist() == top + [0.0] * (top_n - len(top))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 200)), min_size=1, max_size=60),
    st.sampled_from([2, 3]),
)
def test_datasite_evidence_agrees_with_the_numpy_reference(rows, n) -> None:
    """DuckDB's evidence (computed in the query) gives the same flags as numpy's."""
    data = pd.DataFrame(rows, columns=["g", "v"]).astype({"v": float})
    thresholds = Thresholds(min_cell_count=1, dominance_n=n, zeros="release")
    outcome = run_query("SELECT g, SUM(v) AS s FROM t GROUP BY g", {"t": data}, thresholds)
    codes, labels = pd.factorize(outcome.result["g"])
    del codes
    row_codes = pd.Categorical(data["g"], categories=labels).codes
    evidence = rules.group_evidence(row_codes, data["v"], len(labels), max(n, 2))
    dominated = rules.nk_dominance(evidence["top"], evidence["total"], n, 0.9)
    p_fail = rules.p_percent(evidence["top"], evidence["total"], 0.1)
    expected = {labels[i] for i in np.flatnonzero(dominated | p_fail)}
    flagged = {
        f.location.split("(g=")[1].split(")")[0]
        for f in outcome.findings
        if f.check in ("nk-dominance", "p-percent")
    }
    assert flagged == expected
    assert (outcome.verdict is Verdict.RELEASE) == (not expected)


def test_mask_findings_locations_and_limit() -> None:
    keys = pd.DataFrame({"sex": [1.0, 0.0, 1.0], "num": [2, 3, None]})
    mask = np.array([[False, True], [False, False], [True, False]])
    findings = rules.mask_findings(
        mask,
        check="small-cells",
        verdict=Verdict.REVIEW,
        message="m",
        keys=keys,
        columns=["n", "s"],
    )
    assert [f.location for f in findings] == [
        "row 0 (sex=1, num=2), column s",
        "row 2 (sex=1, num=NULL), column n",
    ]
    many = rules.mask_findings(
        np.ones(500, dtype=bool), check="c", verdict=Verdict.REVIEW, message="m"
    )
    assert len(many) == rules.DEFAULT_FINDING_LIMIT + 1
    assert "450 more" in many[-1].message
