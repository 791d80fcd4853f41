"""Importing private tables into a datasite and making their mocks.

The private file is normalised once, at import, into Parquet inside the
datasite directory: the kernel then loads it with the dtypes the admin saw,
and the mock is written with exactly the same schema.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from .config import ColumnSchema, DatasetEntry, DatasiteConfig, check_name

#: Default number of rows in a schema-only mock. Fixed, so the mock does not
#: reveal the private table's size.
DEFAULT_MOCK_ROWS = 300

#: A text value must be held by at least this many private rows to appear in a mock.
MIN_CATEGORY_ROWS = 10

#: Integer columns with at most this many distinct values are treated as codes.
CATEGORICAL_MAX_LEVELS = 12


class DatasetError(ValueError):
    """A dataset file cannot be imported; the message says why and what to do."""


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
    """Same columns and dtypes; each column's values drawn independently.

    Numbers are drawn uniformly from the observed range (integers stay
    integers), categories uniformly from the observed categories, and each
    column keeps its missing rate. Columns are sampled independently, so rows
    carry no joint information; any generated row that still equals a private
    row is redrawn.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, pd.Series] = {}
    for name in frame.columns:
        out[name] = _mock_column(frame[name], rows, rng)
    mock = pd.DataFrame(out, columns=frame.columns)
    return _without_private_rows(mock, frame, rng)


def _mock_column(column: pd.Series, rows: int, rng: np.random.Generator) -> pd.Series:
    observed = column.dropna()
    missing_rate = float(column.isna().mean()) if len(column) else 0.0
    if observed.empty:
        return pd.Series([None] * rows, dtype=column.dtype)
    if pd.api.types.is_bool_dtype(column):
        values = rng.random(rows) < 0.5
    elif pd.api.types.is_numeric_dtype(column):
        low, high = float(observed.min()), float(observed.max())
        integral = bool(np.all(np.mod(observed.to_numpy(dtype=float), 1) == 0))
        distinct = observed.unique()
        if integral and len(distinct) <= CATEGORICAL_MAX_LEVELS:
            # Coded values (sex, chest-pain type, thal): only codes that exist.
            values = rng.choice(np.sort(distinct), size=rows)
        elif integral:
            values = rng.integers(int(low), int(high) + 1, size=rows).astype(float)
        else:
            decimals = 1 if observed.abs().max() > 1 else 3
            values = np.round(rng.uniform(low, high, size=rows), decimals)
    elif pd.api.types.is_datetime64_any_dtype(column):
        low, high = observed.min().value, observed.max().value
        values = pd.to_datetime(rng.integers(low, high + 1, size=rows))
    else:
        values = rng.choice(_public_categories(column.name, observed), size=rows)
    series = pd.Series(values)
    if missing_rate > 0:
        series = series.where(rng.random(rows) >= missing_rate)
    try:
        return series.astype(column.dtype)
    except (TypeError, ValueError):
        return series


def _public_categories(name: object, observed: pd.Series) -> np.ndarray:
    """Category values a mock may show: only those shared by many rows.

    A value held by few rows (a rare diagnosis, and every patient id, name or
    date of birth) would identify people, so it never reaches the mock; a
    column with no common value gets made-up placeholders instead.
    """
    counts = observed.astype(str).value_counts()
    common = counts[counts >= MIN_CATEGORY_ROWS].index.to_numpy()
    if len(common) == 0:
        return np.array([f"{name}-{i:04d}" for i in range(1, 101)])
    return common


def _row_keys(frame: pd.DataFrame) -> pd.Series:
    return pd.util.hash_pandas_object(frame.astype(str), index=False)


def _without_private_rows(
    mock: pd.DataFrame, private: pd.DataFrame, rng: np.random.Generator, attempts: int = 20
) -> pd.DataFrame:
    private_keys = set(_row_keys(private).tolist())
    for _ in range(attempts):
        clash = _row_keys(mock).isin(private_keys).to_numpy()
        if not clash.any():
            return mock
        replacement = schema_only_mock_rows(private, int(clash.sum()), rng)
        mock.loc[clash, :] = replacement.to_numpy()
    clash = _row_keys(mock).isin(private_keys).to_numpy()
    return mock.loc[~clash].reset_index(drop=True)


def schema_only_mock_rows(frame: pd.DataFrame, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({c: _mock_column(frame[c], rows, rng) for c in frame.columns})


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
) -> DatasetEntry:
    """Import a private file (and a mock, or make one) into the datasite."""
    check_name("dataset", name)
    if name in config.datasets:
        raise DatasetError(f"dataset {name!r} already exists at {config.name}")
    private = read_table(private_path, columns=columns, na_values=na_values, sep=sep)
    check_table(private, private_path)
    if mock_path is not None:
        mock = read_table(mock_path, columns=columns, na_values=na_values, sep=sep)
        check_table(mock, mock_path)
        if list(mock.columns) != list(private.columns):
            raise DatasetError(
                f"the mock's columns {list(mock.columns)} differ from the private "
                f"columns {list(private.columns)}"
            )
        mock = mock.astype(private.dtypes.to_dict(), errors="ignore")
    else:
        mock = schema_only_mock(private, seed=seed)

    target = config.datasets_dir / name
    target.mkdir(parents=True, exist_ok=False)
    try:
        private.to_parquet(target / "private.parquet", index=False)
        mock.to_parquet(target / "mock.parquet", index=False)
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
    return entry


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
    package_root = Path(__file__).resolve().parents[1]
    candidates += [
        package_root.parent / "shared" / "data" / "heart-disease",
        Path.cwd().parent / "shared" / "data" / "heart-disease",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / UCI_HEART_FILES["cleveland"]).exists():
            return Path(candidate).resolve()
    return None
