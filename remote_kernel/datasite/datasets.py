"""Importing private tables into a datasite and making their mocks.

The private file is normalised once, at import, into Parquet inside the
datasite directory: the kernel then loads it with the dtypes the admin saw,
and the mock is written with exactly the same schema.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.datasite.config import ColumnSchema, DatasetEntry, DatasiteConfig, check_name
from remote_kernel.datasite.dp_declaration import (
    check_columns,
    check_not_declared,
    write_declaration,
)
from remote_kernel.protocol.errors import DatasetError

#: Default number of rows in a schema-only mock. Fixed, so the mock does not
#: reveal the private table's size.
DEFAULT_MOCK_ROWS = 300


def read_table(
    path: str | Path,
    columns: list[str] | None = None,
    na_values: list[str] | None = None,
    sep: str = ",",
) -> pd.DataFrame:
    """Read a CSV (with a header, or headerless with ``columns``) or a Parquet file."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no such file: {path}")
    if path.suffix.lower() in {".parquet", ".pq"}:
        frame = pd.read_parquet(path)
        if columns:
            if len(columns) != frame.shape[1]:
                raise DatasetError(
                    f"{path} has {frame.shape[1]} columns but --columns names {len(columns)}"
                )
            frame.columns = columns
        return frame
    try:
        frame = pd.read_csv(
            path,
            header=None if columns else "infer",
            na_values=na_values or None,
            sep=sep,
            skipinitialspace=True,
            index_col=False,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} as CSV: {exc}") from exc
    if columns:
        if frame.shape[1] != len(columns):
            raise DatasetError(
                f"{path} has {frame.shape[1]} columns but --columns names {len(columns)}"
            )
        frame.columns = columns
    return frame


def check_table(frame: pd.DataFrame, path: object) -> None:
    if frame.empty or frame.shape[1] == 0:
        raise DatasetError(f"{path} holds no rows")
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        raise DatasetError(f"{path} has duplicate column names: {names}")


def schema_of(frame: pd.DataFrame) -> list[ColumnSchema]:
    return [ColumnSchema(name=str(c), dtype=str(t)) for c, t in frame.dtypes.items()]


def schema_only_mock(
    frame: pd.DataFrame, rows: int = DEFAULT_MOCK_ROWS, seed: int | None = None
) -> pd.DataFrame:
    """Same columns and dtypes; each column's values drawn independently (fidelity ``schema``).

    Numbers are drawn uniformly from a coarsened range (integers stay
    integers), categories uniformly from the common categories, and each
    column keeps its (coarsened) missing rate; a generated row that still
    equals a private row is redrawn. See ``mocks.py`` for the other levels.
    """
    from remote_kernel.mocks.generate import generate_mock

    return generate_mock(frame, "schema", rows=rows, seed=seed)


def add_dataset(
    config: DatasiteConfig,
    name: str,
    private_path: str | Path,
    *,
    columns: list[str] | None = None,
    na_values: list[str] | None = None,
    sep: str = ",",
    mock_path: str | Path | None = None,
    description: str = "",
    seed: int | None = None,
    fidelity: str | None = None,
    mock_rows: int | None = None,
    identifiers: Sequence[str] = (),
    dp: Mapping[str, Any] | None = None,
) -> DatasetEntry:
    """Import a private file (and a hand-made mock, or generate one) into the datasite.

    A generated mock is made at ``fidelity`` (default ``marginal``) with a
    report beside it (:mod:`remote_kernel.mocks`). Identifier columns are
    those given here plus those declared for the dataset in ``policy.yaml``.
    Nothing is left in the datasets folder when any step fails. ``dp``: the dataset's
    DP metadata (:mod:`remote_kernel.datasite.dp_declaration`), checked against the
    table's columns before anything is written, then put in ``policy.yaml``.
    """
    from remote_kernel.mocks.generate import DEFAULT_FIDELITY, MOCK_ROWS, generate_mock
    from remote_kernel.mocks.report import build_report, mock_files, write_files

    check_name("dataset", name)
    if name in config.datasets:
        raise DatasetError(f"dataset {name!r} already exists at {config.name}")
    private = read_table(private_path, columns=columns, na_values=na_values, sep=sep)
    check_table(private, private_path)
    if dp is not None:
        check_not_declared(config.directory, name)
        check_columns(dp, private.columns, f"the DP metadata of {name!r}")
    identifiers = _identifiers(config, name, private, identifiers)
    if mock_path is not None:
        if fidelity is not None:
            raise DatasetError("--fidelity applies to generated mocks, not to --mock FILE")
        mock = _given_mock(private, mock_path, columns=columns, na_values=na_values, sep=sep)
        level = "given"
    else:
        level = fidelity or DEFAULT_FIDELITY
        mock = generate_mock(
            private, level, rows=mock_rows or MOCK_ROWS, seed=seed, identifiers=identifiers
        )
    report = build_report(
        private, mock, dataset=name, fidelity=level, seed=seed, identifiers=identifiers
    )
    files = mock_files(mock, report)
    buffer = _parquet_bytes(private)

    target = config.datasets_dir / name
    target.mkdir(parents=True, exist_ok=False)
    try:
        write_files(target, {"private.parquet": buffer, **files})
    except Exception:
        shutil.rmtree(target, ignore_errors=True)
        raise
    entry = DatasetEntry(
        name=name,
        private=f"datasets/{name}/private.parquet",
        mock=f"datasets/{name}/mock.parquet",
        columns=schema_of(private),
        description=description,
        source=str(Path(private_path).resolve()),
    )
    config.datasets[name] = entry
    config.save()
    if dp is not None:
        write_declaration(config.directory, name, dp)
    return entry


def _given_mock(
    private: pd.DataFrame,
    mock_path: str | Path,
    *,
    columns: list[str] | None,
    na_values: list[str] | None,
    sep: str,
) -> pd.DataFrame:
    """A hand-made mock, read like the private file and held to its columns and dtypes."""
    mock = read_table(mock_path, columns=columns, na_values=na_values, sep=sep)
    check_table(mock, mock_path)
    if list(mock.columns) != list(private.columns):
        raise DatasetError(
            f"the mock's columns {list(mock.columns)} differ from the private "
            f"columns {list(private.columns)}"
        )
    return mock.astype(private.dtypes.to_dict(), errors="ignore")


def remock_dataset(
    config: DatasiteConfig,
    name: str,
    *,
    fidelity: str | None = None,
    seed: int | None = None,
    mock_rows: int | None = None,
    identifiers: Sequence[str] = (),
) -> dict[str, Any]:
    """Generate a dataset's mock again (same level as before unless given); return its report.

    The new mock, report and summary replace the old ones only once all of
    them are made and written, so a failure leaves the previous mock in place.
    """
    from remote_kernel.mocks.generate import DEFAULT_FIDELITY, MOCK_ROWS, generate_mock
    from remote_kernel.mocks.report import build_report, load_report, mock_files, write_files

    entry = config.dataset(name)
    directory = (config.directory / entry.mock).parent
    private = pd.read_parquet(config.directory / entry.private)
    previous = load_report(directory) or {}
    if fidelity is None:
        fidelity = previous.get("fidelity")
        if fidelity in (None, "given"):
            fidelity = DEFAULT_FIDELITY
    known = [str(c) for c in previous.get("identifiers", [])] + list(identifiers)
    identifiers = _identifiers(config, name, private, known)
    mock = generate_mock(
        private, fidelity, rows=mock_rows or MOCK_ROWS, seed=seed, identifiers=identifiers
    )
    report = build_report(
        private, mock, dataset=name, fidelity=fidelity, seed=seed, identifiers=identifiers
    )
    write_files(directory, mock_files(mock, report))
    return report


def _identifiers(
    config: DatasiteConfig, name: str, private: pd.DataFrame, given: Sequence[str]
) -> list[str]:
    """Given identifier columns plus those ``policy.yaml`` declares; unknown names are an error."""
    from remote_kernel.checks.policy import PolicyError, load_policy

    try:
        declared = load_policy(config.directory).dataset(name).identifiers
    except PolicyError as exc:
        raise DatasetError(str(exc)) from None
    given = list(dict.fromkeys([*given, *declared]))
    unknown = [c for c in given if c not in private.columns]
    if unknown:
        raise DatasetError(
            f"identifier column(s) {unknown} are not columns of {name!r} "
            f"(columns: {[str(c) for c in private.columns]})"
        )
    return given


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    try:
        frame.to_parquet(buffer, index=False)
    except (ValueError, TypeError) as exc:  # e.g. pyarrow on a column of mixed types
        raise DatasetError(f"cannot store the table as Parquet: {exc}") from exc
    return buffer.getvalue()


def load_private_tables(config: DatasiteConfig) -> dict[str, pd.DataFrame]:
    """Every private dataset of a datasite, for the datasite process itself (never a researcher)."""
    return {
        name: pd.read_parquet(config.directory / entry.private)
        for name, entry in config.datasets.items()
    }


# --- generated heart-shaped data -------------------------------------------------------------

HEART_COLUMNS = [
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
]


def synthetic_heart(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    """Heart-disease-shaped data for when the UCI files are not at hand.

    Same 14 columns and value ranges as the UCI "processed" files, with a
    plausible dependence of diagnosis (``num``) on age, sex and exercise
    angina, so aggregates look like a real study. Not derived from any real
    patient.
    """
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(54, 9, rows).round(), 28, 77)
    sex = (rng.random(rows) < 0.68).astype(float)
    cp = rng.choice([1.0, 2.0, 3.0, 4.0], rows, p=[0.08, 0.17, 0.28, 0.47])
    trestbps = np.clip(rng.normal(132, 18, rows).round(), 90, 200)
    chol = np.clip(rng.normal(245, 50, rows).round(), 120, 560)
    fbs = (rng.random(rows) < 0.15).astype(float)
    restecg = rng.choice([0.0, 1.0, 2.0], rows, p=[0.5, 0.02, 0.48])
    thalach = np.clip(rng.normal(150 - 0.6 * (age - 54), 22, rows).round(), 70, 202)
    exang = (rng.random(rows) < 0.33).astype(float)
    oldpeak = np.clip(np.round(rng.gamma(1.2, 0.9, rows), 1), 0, 6.2)
    slope = rng.choice([1.0, 2.0, 3.0], rows, p=[0.47, 0.46, 0.07])
    ca = rng.choice([0.0, 1.0, 2.0, 3.0], rows, p=[0.58, 0.22, 0.13, 0.07])
    thal = rng.choice([3.0, 6.0, 7.0], rows, p=[0.55, 0.06, 0.39])
    risk = -5 + 0.06 * age + 1.2 * sex + 1.4 * exang + 0.5 * oldpeak + rng.normal(0, 1, rows)
    num = np.digitize(risk, [0.5, 1.5, 2.3, 3.0]).astype(int)
    frame = pd.DataFrame(
        dict(
            zip(
                HEART_COLUMNS,
                [
                    age,
                    sex,
                    cp,
                    trestbps,
                    chol,
                    fbs,
                    restecg,
                    thalach,
                    exang,
                    oldpeak,
                    slope,
                    ca,
                    thal,
                    num,
                ],
                strict=True,
            )
        )
    )
    # Missing values, as in the real files.
    for column, rate in (("ca", 0.02), ("thal", 0.01)):
        frame.loc[rng.random(rows) < rate, column] = np.nan
    return frame


# --- the UCI Heart Disease files ---------------------------------------------------------------

#: Site name → file name of the four UCI "processed" files (headerless, '?' for missing).
UCI_HEART_FILES = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va-long-beach": "processed.va.data",
}


def find_uci_heart_dir(explicit: str | Path | None = None) -> Path | None:
    """Where the UCI files are: an explicit folder, $REMOTE_KERNEL_HEART_DATA, or shared/ beside
    the checkout. None when they are not on this machine (callers fall back to synthetic data)."""
    import os

    candidates = [explicit, os.environ.get("REMOTE_KERNEL_HEART_DATA")]
    checkout = Path(__file__).resolve().parents[2]
    candidates += [
        checkout.parent / "shared" / "data" / "heart-disease",
        Path.cwd().parent / "shared" / "data" / "heart-disease",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / UCI_HEART_FILES["cleveland"]).exists():
            return Path(candidate).resolve()
    return None
