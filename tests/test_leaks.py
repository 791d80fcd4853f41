"""Leak detection against the private data: recall on exfiltration formats, precision on aggregates.

Two private datasets are indexed together, as a datasite would:

* ``heart``: the four UCI Heart Disease files when this machine has them
  (920 rows, 14 columns, '?' for missing), else generated heart-shaped rows;
* ``patients``: generated heart-shaped rows with identifier columns added
  (``patient_id`` like "P-000123", ``name``, ``dob``), whose policy declares
  those identifiers and five quasi-identifiers.

Every exfiltration format of the issue must produce a ``block``; record-like
tables of rows that are not private (the mock, perturbed rows) must be reviewed,
not blocked; safe aggregates (counts, means, describe, crosstabs, correlations,
as text and as HTML) must produce no ``block`` at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from remote_kernel.checks.leaks import PrivateIndex, html_to_text, item_texts, unwrap_pandas
from remote_kernel.checks.policy import DatasetPolicy
from remote_kernel.datasite.datasets import (
    HEART_COLUMNS,
    UCI_HEART_FILES,
    find_uci_heart_dir,
    read_table,
    schema_only_mock,
    synthetic_heart,
)
from remote_kernel.protocol.models import Finding, OutputItem, Verdict

QUASI = ("age", "sex", "trestbps", "chol", "thalach")
FIRST = ["Anna", "Erik", "Maria", "Johan", "Sofia", "Lars", "Ingrid", "Nils", "Karin", "Olof"]
LAST = ["Berg", "Lindqvist", "Holm", "Sandberg", "Ek", "Nyström", "Dahl", "Lund", "Strand", "Wik"]


def load_heart() -> pd.DataFrame:
    folder = find_uci_heart_dir()
    if folder is None:
        return synthetic_heart(300, seed=0)
    frames = [
        read_table(folder / name, columns=HEART_COLUMNS, na_values=["?"])
        for name in UCI_HEART_FILES.values()
    ]
    return pd.concat(frames, ignore_index=True)


def make_patients() -> pd.DataFrame:
    frame = synthetic_heart(300, seed=7)
    rng = np.random.default_rng(7)
    frame.insert(0, "patient_id", [f"P-{i:06d}" for i in range(100, 400)])
    frame.insert(1, "name", [f"{FIRST[i % 10]} {LAST[(i * 7) % 10]}-{i}" for i in range(300)])
    births = pd.Timestamp("1940-01-01") + pd.to_timedelta(rng.integers(0, 20000, 300), unit="D")
    frame.insert(2, "dob", births)
    return frame


@pytest.fixture(scope="module")
def heart() -> pd.DataFrame:
    return load_heart()


@pytest.fixture(scope="module")
def patients() -> pd.DataFrame:
    return make_patients()


@pytest.fixture(scope="module")
def index(heart: pd.DataFrame, patients: pd.DataFrame) -> PrivateIndex:
    policies = {
        "heart": DatasetPolicy(),
        "patients": DatasetPolicy(
            identifiers=("patient_id", "name", "dob"), quasi_identifiers=QUASI
        ),
    }
    return PrivateIndex.build({"heart": heart, "patients": patients}, policies)


def blocks(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.verdict is Verdict.BLOCK]


def checks(findings: list[Finding], verdict: Verdict) -> set[str]:
    return {f.check for f in findings if f.verdict is verdict}


def notebook_repr(frame: pd.DataFrame) -> str:
    """What print(df) and a DataFrame's text/plain look like in a notebook kernel."""
    with pd.option_context("display.width", 80, "display.max_columns", 20):
        return repr(frame)


def stream(text: str) -> OutputItem:
    return OutputItem("stream", {"name": "stdout", "text": text})


def display(data: dict[str, object]) -> OutputItem:
    return OutputItem("display_data", {"data": data, "metadata": {}})


def error(evalue: str, traceback: list[str]) -> OutputItem:
    return OutputItem("error", {"ename": "ValueError", "evalue": evalue, "traceback": traceback})


# --- recall: private records in every format ---------------------------------------------------

ROWS = slice(10, 15)


def _row_values(frame: pd.DataFrame, i: int) -> list[float]:
    return [float(v) for v in frame.iloc[i].tolist()]


EXFILTRATIONS: dict[str, Callable[[pd.DataFrame], OutputItem]] = {
    "print(df)": lambda df: stream(notebook_repr(df) + "\n"),
    "print(df.head())": lambda df: stream(notebook_repr(df.iloc[ROWS]) + "\n"),
    "df.head() as execute_result": lambda df: OutputItem(
        "execute_result",
        {
            "data": {
                "text/plain": notebook_repr(df.iloc[ROWS]),
                "text/html": df.iloc[ROWS].to_html(),
            },
            "metadata": {},
            "execution_count": 3,
        },
    ),
    "to_string": lambda df: stream(df.iloc[ROWS].to_string()),
    "to_string without index": lambda df: stream(df.iloc[ROWS].to_string(index=False)),
    "to_html": lambda df: display({"text/html": df.iloc[ROWS].to_html()}),
    "Styler.to_html": lambda df: display({"text/html": df.iloc[ROWS].style.to_html()}),
    "to_csv": lambda df: stream(df.iloc[ROWS].to_csv()),
    "to_json records": lambda df: stream(df.iloc[ROWS].to_json(orient="records")),
    "to_json split": lambda df: stream(df.iloc[ROWS].to_json(orient="split")),
    "to_json values": lambda df: stream(df.iloc[ROWS].to_json(orient="values")),
    "application/json": lambda df: display(
        {"application/json": json.loads(df.iloc[ROWS].to_json(orient="records"))}
    ),
    "f-string of row values": lambda df: stream(
        "\n".join(
            "patient: " + ", ".join(f"{v}" for v in _row_values(df, i)) for i in range(10, 13)
        )
    ),
    "json.dumps of rows": lambda df: stream(
        "\n".join(json.dumps(df.iloc[i].to_dict()) for i in range(10, 13))
    ),
    "row in an exception message": lambda df: error(
        f"bad rows {[_row_values(df, i) for i in range(10, 13)]}",
        [
            "\x1b[0;31m---------------------------------------------------------------\x1b[0m",
            "\x1b[0;31mValueError\x1b[0m Traceback (most recent call last)",
            "Cell \x1b[0;32mIn[4], line 2\x1b[0m",
            f"\x1b[0;31mValueError\x1b[0m: bad rows {[_row_values(df, i) for i in range(10, 13)]}",
        ],
    ),
    "a Series printed (one row, vertical)": lambda df: stream(
        "\n\n".join(repr(df.iloc[i]) for i in range(10, 13))
    ),
    "values of a row in another column order": lambda df: stream(
        "\n".join(
            " | ".join(f"{k}={v}" for k, v in df.iloc[i].sample(frac=1, random_state=i).items())
            for i in range(10, 13)
        )
    ),
    "itertuples": lambda df: stream(str(list(df.iloc[ROWS].itertuples()))),
    "all values on one line": lambda df: stream(
        " ".join(map(str, df.iloc[ROWS].to_numpy().ravel()))
    ),
}


@pytest.mark.parametrize("how", sorted(EXFILTRATIONS))
def test_private_records_are_blocked_in_every_format(
    index: PrivateIndex, heart: pd.DataFrame, how: str
) -> None:
    findings = index.scan_item(EXFILTRATIONS[how](heart))
    leaked = [f for f in blocks(findings) if f.check == "leak-record"]
    assert leaked, f"{how}: {findings}"
    assert "'heart'" in leaked[0].message and leaked[0].location


def test_a_subset_of_columns_with_the_quasi_identifiers_is_a_record(
    index: PrivateIndex, patients: pd.DataFrame
) -> None:
    # patients declares five quasi-identifiers: those plus anything else is a record.
    subset = patients[["num", "thalach", "age", "chol", "sex", "trestbps"]].iloc[20:25]
    findings = index.scan_text(subset.to_string())
    assert any(f.check == "leak-record" and "'patients'" in f.message for f in blocks(findings))
    # Without one of them (and without identifiers) it is not, by that policy.
    without = patients[["age", "sex", "chol", "thalach", "num"]].iloc[20:25]
    assert not [
        f for f in blocks(index.scan_text(without.to_string())) if "'patients'" in f.message
    ]


def test_messages_say_where_and_do_not_quote_values(
    index: PrivateIndex, heart: pd.DataFrame
) -> None:
    text = "summary first\n" + heart.iloc[40:43].to_string()
    (finding,) = [f for f in index.scan_text(text) if f.check == "leak-record"]
    assert "lines 3, 4, 5" in finding.message and finding.location == "output lines 3, 4, 5"
    for value in heart.iloc[40:43]["chol"].dropna():
        assert f"{value:g}" not in finding.message.replace("lines 3, 4, 5", "")


def test_numbers_are_normalised(index: PrivateIndex, heart: pd.DataFrame) -> None:
    # 63, 63.0 and "63.00" are one value: the same rows spelled each way are caught each way.
    rows = heart.dropna().iloc[3:6]
    for fmt in ("{:g}", "{:.1f}", "{:.2f}", "{:.6f}", '"{:.2f}"'):
        lines = [" ".join(fmt.format(v) for v in row) for row in rows.itertuples(index=False)]
        assert blocks(index.scan_text("\n".join(lines))), fmt


# --- identifiers anywhere -------------------------------------------------------------------------


def _identifier_blocks(findings: list[Finding], column: str) -> list[Finding]:
    return [
        f for f in blocks(findings) if f.check == "leak-identifier" and repr(column) in f.message
    ]


def test_identifier_values_are_caught_in_text_html_json_and_tracebacks(
    index: PrivateIndex, patients: pd.DataFrame
) -> None:
    person = patients.iloc[42]
    pid, name, dob = person["patient_id"], person["name"], person["dob"]
    cases = {
        "patient_id": [
            stream(f"the outlier is {pid}."),
            display({"text/html": f"<p>see <b>{pid}</b></p>"}),
            display({"application/json": {"worst": pid, "n": 3}}),
            error(f"KeyError: '{pid}'", [f"\x1b[0;31mKeyError\x1b[0m: '{pid}'"]),
            stream(pid.lower()),
        ],
        "name": [
            stream(f"contact:   {name.upper().replace(' ', '    ')}"),
            display({"text/html": f"<td>{name.split()[0]}</td><td>{name.split()[1]}</td>"}),
        ],
        "dob": [
            stream(f"born {dob:%Y-%m-%d}"),
            stream(f"born {dob:%d/%m/%Y}"),
            stream(patients.iloc[[42]][["dob"]].to_json()),  # epoch milliseconds
        ],
    }
    for column, items in cases.items():
        for item in items:
            found = _identifier_blocks(index.scan_item(item), column)
            assert found, (column, item.content)
            assert str(pid) not in found[0].message and name not in found[0].message


def test_short_and_common_identifier_values_are_not_indexed() -> None:
    frame = pd.DataFrame({"code": ["7", "ab", "none", "Q-17", "12345"], "x": [1, 2, 3, 4, 5]})
    index = PrivateIndex.build({"t": frame}, {"t": DatasetPolicy(identifiers=("code",))})
    assert index.stats["identifier_values_not_indexed"] == {"t.code": 3}
    assert not blocks(index.scan_text("7 patients, ab testing, none missing"))
    assert blocks(index.scan_text("case q-17")) and blocks(index.scan_text("id 12345"))


def test_a_policy_naming_a_missing_column_is_refused() -> None:
    frame = pd.DataFrame({"a": [1, 2]})
    with pytest.raises(ValueError, match="pid"):
        PrivateIndex.build({"t": frame}, {"t": DatasetPolicy(identifiers=("pid",))})


# --- record-like tables of rows that are not private: review ------------------------------------


def test_mock_rows_are_reviewed_not_blocked(index: PrivateIndex, heart: pd.DataFrame) -> None:
    for seed in range(3):
        mock = schema_only_mock(heart, seed=seed).head(30)
        for text, markup in ((mock.to_string(), False), (mock.to_html(), True)):
            findings = index.scan_text(text, markup=markup)
            assert not blocks(findings), findings
            assert checks(findings, Verdict.REVIEW) & {"record-like-table", "leak-record-suspected"}


def test_perturbed_rows_are_reviewed_not_blocked(index: PrivateIndex, heart: pd.DataFrame) -> None:
    rng = np.random.default_rng(3)
    perturbed = heart.iloc[:40].copy()
    for column in ("age", "trestbps", "chol", "thalach"):
        perturbed[column] += rng.choice([-3.0, -2.0, 2.0, 3.0], len(perturbed))
    for column in ("sex", "cp", "fbs", "restecg", "exang", "slope", "ca", "thal", "num"):
        perturbed[column] = rng.permutation(perturbed[column].to_numpy())
    perturbed["oldpeak"] = (perturbed["oldpeak"] + 0.3).round(1)
    findings = index.scan_item(display({"text/html": perturbed.to_html()}))
    assert not blocks(findings), findings
    assert "record-like-table" in checks(findings, Verdict.REVIEW)


# --- precision: safe aggregates -----------------------------------------------------------------


def safe_aggregates(df: pd.DataFrame) -> dict[str, pd.DataFrame | pd.Series]:
    return {
        "count by sex x num": df.groupby(["sex", "num"]).size(),
        "crosstab sex x num": pd.crosstab(df["sex"], df["num"]),
        "crosstab cp x exang with margins": pd.crosstab(df["cp"], df["exang"], margins=True),
        "describe": df.describe(),
        "describe transposed": df.describe().T,
        "means by diagnosis": df.groupby("num").mean(),
        "mean/std/count by sex and cp": df.groupby(["sex", "cp"])[["age", "chol"]].agg(
            ["mean", "std", "count"]
        ),
        "value_counts of cp": df["cp"].value_counts(),
        "column means": df.mean(),
        "correlation matrix": df.corr(),
        "medians by sex": df.groupby("sex").median(),
        "quantiles": df.quantile([0.1, 0.25, 0.5, 0.75, 0.9]),
        "mean cholesterol by cp x num": df.pivot_table(
            index="cp", columns="num", values="chol", aggfunc="mean"
        ),
        "age bands x num": pd.crosstab(pd.cut(df["age"], [0, 40, 50, 60, 100]), df["num"]),
    }


def _render(value: pd.DataFrame | pd.Series) -> list[OutputItem]:
    frame = value.to_frame() if isinstance(value, pd.Series) else value
    return [
        stream(value.to_string() + "\n"),
        stream(notebook_repr(frame) + "\n"),
        display({"text/html": frame.to_html(), "text/plain": notebook_repr(frame)}),
    ]


def test_safe_aggregates_are_not_blocked(
    index: PrivateIndex, heart: pd.DataFrame, patients: pd.DataFrame
) -> None:
    for data in (heart, patients[HEART_COLUMNS]):
        outputs = safe_aggregates(data)
        assert len(outputs) >= 10
        for name, value in outputs.items():
            for item in _render(value):
                found = blocks(index.scan_item(item))
                assert not found, f"{name}: {found}"


def test_coincidental_small_codes_are_not_a_record(index: PrivateIndex) -> None:
    for text in ("0 1 1", "1.0 0.0 1.0 2.0", "groups: 0 1 1 0 2 3 1 0", "(1, 0, 1)"):
        assert not blocks(index.scan_text(text)), text


# --- extracting text from output items ----------------------------------------------------------


def test_item_texts_reads_every_text_and_skips_images() -> None:
    item = display(
        {
            "text/plain": "plain",
            "text/html": "<table><tr><td>a&amp;b</td><td>c</td></tr><tr><td>d</td></tr></table>",
            "application/json": {"k": [1, 2]},
            "image/png": "iVBORw0KGgoAAAANSUhEUg==",
            "image/svg+xml": "<svg><text>label 42</text></svg>",
        }
    )
    texts = dict(item_texts(item))
    assert "image/png" not in texts
    assert texts["text/plain"] == "plain"
    assert [line.split() for line in texts["text/html"].split("\n")[:2]] == [["a&b", "c"], ["d"]]
    assert json.loads(texts["application/json"]) == {"k": [1, 2]}
    assert "label 42" in texts["image/svg+xml"]
    traceback = error("boom", ["\x1b[0;31mValueError\x1b[0m: boom"])
    assert dict(item_texts(traceback))["traceback"] == "ValueError\nboom\nValueError: boom"


def test_html_rows_become_lines() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    lines = [line.split() for line in html_to_text(frame.to_html()).split("\n") if line.strip()]
    assert lines == [["a", "b"], ["0", "1", "x"], ["1", "2", "y"]]


def test_wrapped_pandas_blocks_are_joined() -> None:
    frame = pd.DataFrame(np.arange(30.0).reshape(2, 15), columns=[f"column{i}" for i in range(15)])
    text, origin = unwrap_pandas(notebook_repr(frame))
    rows = text.split("\n")
    assert len(rows) == 3 and origin == [1, 2, 3]
    assert rows[1].split() == ["0"] + [f"{v:.1f}" for v in range(15)]
