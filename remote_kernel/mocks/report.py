"""How good, and how safe, a mock is: the data owner's report and the researcher's summary.

Fidelity (does code written on the mock behave as on the data?):
per-column Kolmogorov-Smirnov statistic for numbers and dates, total
variation distance for categories and codes, and the difference between the
private and mock Pearson correlation matrices.

Privacy (does the mock give away people?): mock rows equal to a private row
(0 by construction, counted anyway), rare values that reached the mock, the
distance to the closest private record (Gower distance), and a
membership-style check: the same generator is fitted on one half of the
private rows and its rows' distances to that half are compared with their
distances to the other, held-out half. A generator that memorises puts its
rows closer to the training half; "share closer to train" near 0.5 is good.

The full report quotes private facts (correlations, distances) and is for the
data owner only. ``researcher_summary`` keeps what a researcher may see next
to the mock: the level, the date, and per-column scores rounded to 2 decimals.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.mocks.generate import (
    CATEGORICAL_MAX_LEVELS,
    COPULA_FIT_ROWS,
    FIDELITIES,
    MIN_CATEGORY_ROWS,
    _as_numbers,
    comparison_columns,
    generate_mock,
    row_keys,
)

REPORT_JSON = "mock-report.json"
REPORT_HTML = "mock-report.html"
SUMMARY_JSON = "mock-summary.json"

#: Rows on each side of the distance-to-closest-record computations (their cost is rows^2).
DCR_ROWS = 2000
#: The membership check flags a mock whose rows are closer to the training half this often.
MEMBERSHIP_FLAG = 0.6
#: How many of the private table's strongest correlations the report lists.
TOP_PAIRS = 5


# --- fidelity -----------------------------------------------------------------------------------


def is_continuous(column: pd.Series) -> bool:
    """Numbers with many levels and dates get a KS statistic; the rest a TVD."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return True
    if pd.api.types.is_bool_dtype(column.dtype) or not pd.api.types.is_numeric_dtype(column.dtype):
        return False
    return bool(column.nunique() > CATEGORICAL_MAX_LEVELS)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    if len(a) == 0 or len(b) == 0:
        return None
    points = np.concatenate([a, b])
    gap = np.searchsorted(a, points, side="right") / len(a) - np.searchsorted(
        b, points, side="right"
    ) / len(b)
    return float(np.max(np.abs(gap)))


def total_variation(a: pd.Series, b: pd.Series) -> float | None:
    """Half the L1 distance between the two value frequency tables (missing excluded)."""
    a, b = _levels(a.dropna()), _levels(b.dropna())
    if len(a) == 0 or len(b) == 0:
        return None
    p = a.value_counts(normalize=True)
    q = b.value_counts(normalize=True)
    p, q = p.align(q, fill_value=0.0)
    return float(0.5 * np.abs(p - q).sum())


def _levels(series: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series):
        return series.astype(float)
    return series.astype(str)


def column_fidelity(
    private: pd.DataFrame, mock: pd.DataFrame, identifiers: Sequence[str]
) -> list[dict[str, Any]]:
    out = []
    for name in private.columns:
        column, other = private[name], mock[name]
        entry: dict[str, Any] = {
            "name": str(name),
            "missing_private": round(float(column.isna().mean()), 4),
            "missing_mock": round(float(other.isna().mean()), 4) if len(other) else None,
        }
        if name in identifiers:
            entry.update(metric="regenerated", value=None)
        elif is_continuous(column):
            entry.update(metric="ks", value=ks_statistic(_as_numbers(column), _as_numbers(other)))
        else:
            entry.update(metric="tvd", value=total_variation(column, other))
        out.append(entry)
    return out


def correlation_fidelity(
    private: pd.DataFrame, mock: pd.DataFrame, identifiers: Sequence[str]
) -> dict[str, Any]:
    """Pearson correlations of the numeric columns, private vs mock."""
    names = [
        c
        for c in private.columns
        if c not in identifiers
        and (
            pd.api.types.is_numeric_dtype(private[c].dtype)
            or pd.api.types.is_datetime64_any_dtype(private[c].dtype)
        )
    ]
    if len(names) < 2 or len(mock) < 3:
        return {"columns": [str(c) for c in names], "max_abs_diff": None, "mean_abs_diff": None}
    sample = private
    if len(private) > COPULA_FIT_ROWS:
        sample = private.sample(COPULA_FIT_ROWS, random_state=0)
    p = _numeric_frame(sample, names).corr().to_numpy()
    q = _numeric_frame(mock, names).corr().to_numpy()
    upper = np.triu_indices(len(names), 1)
    diffs = np.abs(p - q)[upper]
    pairs = []
    for i, j in zip(*upper, strict=True):
        if not np.isnan(p[i, j]):
            pairs.append(
                {
                    "a": str(names[i]),
                    "b": str(names[j]),
                    "private_r": round(float(p[i, j]), 3),
                    "mock_r": None if np.isnan(q[i, j]) else round(float(q[i, j]), 3),
                }
            )
    pairs.sort(key=lambda x: -abs(x["private_r"]))
    valid = diffs[~np.isnan(diffs)]
    return {
        "columns": [str(c) for c in names],
        "max_abs_diff": float(valid.max()) if len(valid) else None,
        "mean_abs_diff": float(valid.mean()) if len(valid) else None,
        "top_pairs": pairs[:TOP_PAIRS],
    }


def _numeric_frame(frame: pd.DataFrame, names: Sequence[Any]) -> pd.DataFrame:
    return pd.DataFrame({i: _as_numbers(frame[c]) for i, c in enumerate(names)})


# --- privacy ------------------------------------------------------------------------------------


def exact_copies(private: pd.DataFrame, mock: pd.DataFrame, identifiers: Sequence[str]) -> int:
    columns = comparison_columns(private, identifiers)
    if len(mock) == 0:
        return 0
    return int(np.isin(row_keys(mock, columns), row_keys(private, columns)).sum())


def rare_values_exposed(
    private: pd.DataFrame, mock: pd.DataFrame, identifiers: Sequence[str]
) -> dict[str, int]:
    """Per column: distinct mock values that fewer than MIN_CATEGORY_ROWS private rows hold."""
    exposed = {}
    for name in private.columns:
        if name in identifiers or is_continuous(private[name]):
            continue
        counts = _levels(private[name].dropna()).value_counts()
        rare = set(counts[counts < MIN_CATEGORY_ROWS].index)
        shown = set(_levels(mock[name].dropna()).unique()) & rare
        if shown:
            exposed[str(name)] = len(shown)
    return exposed


class GowerSpace:
    """Mixed-type rows as arrays for the Gower distance (numbers scaled, categories coded).

    Numbers are divided by the private 5-95% range and capped at 1 per column,
    categories score 0 or 1, missing against present scores 1; the distance
    is the mean over columns, so it lies in [0, 1].
    """

    def __init__(self, reference: pd.DataFrame, columns: Sequence[Any]) -> None:
        self.columns = list(columns)
        self.numeric = [
            not (
                pd.api.types.is_object_dtype(reference[c].dtype)
                or isinstance(reference[c].dtype, pd.CategoricalDtype)
                or pd.api.types.is_string_dtype(reference[c].dtype)
            )
            for c in self.columns
        ]
        self.scales = []
        self.codes: list[dict[str, int]] = []
        for c, numeric in zip(self.columns, self.numeric, strict=True):
            scale = 1.0
            self.codes.append({} if numeric else _code_book(reference[c]))
            if numeric:
                values = _as_numbers(reference[c])
                values = values[~np.isnan(values)]
                if len(values):
                    low, high = np.percentile(values, [5, 95])
                    scale = float(high - low) or float(values.max() - values.min()) or 1.0
            self.scales.append(scale)

    def encode(self, frame: pd.DataFrame) -> list[np.ndarray]:
        out = []
        for c, numeric, book in zip(self.columns, self.numeric, self.codes, strict=True):
            if numeric:
                out.append(_as_numbers(frame[c]))
            else:
                # Integer codes (not strings) so that comparing is fast; -1 = not a private value.
                text = frame[c].astype(str).where(frame[c].notna(), "\x00")
                out.append(text.map(book).fillna(-1).to_numpy(dtype=float))
        return out

    def closest(self, rows: list[np.ndarray], records: list[np.ndarray]) -> np.ndarray:
        """For each row, the Gower distance to its closest record."""
        count = len(rows[0]) if rows else 0
        best = np.empty(count)
        for start in range(0, count, 256):
            stop = min(count, start + 256)
            total = np.zeros((stop - start, len(records[0])))
            for a, b, numeric, scale in zip(rows, records, self.numeric, self.scales, strict=True):
                x, y = a[start:stop, None], b[None, :]
                if numeric:
                    d = np.minimum(np.abs(x - y) / scale, 1.0)
                    nan_x, nan_y = np.isnan(x), np.isnan(y)
                    d = np.where(nan_x | nan_y, np.where(nan_x & nan_y, 0.0, 1.0), d)
                else:
                    d = (x != y).astype(float)
                total += d
            best[start:stop] = total.min(axis=1) / len(self.columns)
        return best


def _code_book(column: pd.Series) -> dict[str, int]:
    text = column.astype(str).where(column.notna(), "\x00")
    return {value: i for i, value in enumerate(text.unique())}


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    q = np.percentile(values, [0, 5, 50])
    return {
        "min": round(float(q[0]), 4),
        "p05": round(float(q[1]), 4),
        "median": round(float(q[2]), 4),
    }


def distance_to_closest(
    private: pd.DataFrame, mock: pd.DataFrame, identifiers: Sequence[str], seed: int | None
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    columns = comparison_columns(private, identifiers)
    space = GowerSpace(private, columns)
    records = _subsample(private, DCR_ROWS, rng)
    rows = _subsample(mock, DCR_ROWS, rng)
    if len(rows) == 0:
        return {}
    distances = space.closest(space.encode(rows), space.encode(records))
    return {"mock_rows": len(rows), "private_rows": len(records), **_quantiles(distances)}


def membership_check(
    private: pd.DataFrame, fidelity: str, identifiers: Sequence[str], seed: int | None
) -> dict[str, Any] | None:
    """Fit the same generator on half the rows; are its rows closer to that half than the other?"""
    half = min(len(private) // 2, DCR_ROWS)
    if fidelity not in FIDELITIES or half < 2 * MIN_CATEGORY_ROWS:
        return None
    rng = np.random.default_rng(None if seed is None else seed + 1)
    order = rng.permutation(len(private))
    train = private.iloc[order[:half]].reset_index(drop=True)
    holdout = private.iloc[order[half : 2 * half]].reset_index(drop=True)
    try:
        synthetic = generate_mock(train, fidelity, rows=half, seed=seed, identifiers=identifiers)
    except ValueError as exc:
        return {"skipped": str(exc)}
    columns = comparison_columns(private, identifiers)
    space = GowerSpace(private, columns)
    rows = space.encode(synthetic)
    to_train = space.closest(rows, space.encode(train))
    to_holdout = space.closest(rows, space.encode(holdout))
    closer = float(np.mean(to_train < to_holdout) + 0.5 * np.mean(to_train == to_holdout))
    return {
        "train_rows": half,
        "holdout_rows": half,
        "dcr_train": _quantiles(to_train),
        "dcr_holdout": _quantiles(to_holdout),
        "share_closer_to_train": round(closer, 4),
        "flagged": closer > MEMBERSHIP_FLAG,
    }


def _subsample(frame: pd.DataFrame, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    if len(frame) <= rows:
        return frame
    return frame.iloc[np.sort(rng.choice(len(frame), rows, replace=False))]


# --- the report ---------------------------------------------------------------------------------


def build_report(
    private: pd.DataFrame,
    mock: pd.DataFrame,
    *,
    dataset: str,
    fidelity: str,
    seed: int | None,
    identifiers: Sequence[str] = (),
) -> dict[str, Any]:
    """Everything the data owner should know about ``mock``; ``fidelity`` 'given' = hand-made."""
    identifiers = [c for c in identifiers if c in private.columns]
    columns = column_fidelity(private, mock, identifiers)
    scored = [c["value"] for c in columns if c["value"] is not None]
    return {
        "dataset": dataset,
        "fidelity": fidelity,
        "seed": seed,
        "identifiers": [str(c) for c in identifiers],
        "generated_on": dt.datetime.now(dt.UTC).date().isoformat(),
        "rows": len(mock),
        "private_rows": len(private),
        "columns": columns,
        "worst_column_score": max(scored) if scored else None,
        "correlations": correlation_fidelity(private, mock, identifiers),
        "privacy": {
            "exact_copies": exact_copies(private, mock, identifiers),
            "rare_values_exposed": rare_values_exposed(private, mock, identifiers),
            "distance_to_closest_record": distance_to_closest(private, mock, identifiers, seed),
            "membership": membership_check(private, fidelity, identifiers, seed),
        },
    }


def researcher_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """What a researcher may see beside the mock: no private value, no seed, no table size.

    Per-column scores are rounded to 2 decimals; no minimum, maximum, quantile,
    correlation or distance of the private data is included.
    """
    mean_diff = report["correlations"].get("mean_abs_diff")
    return {
        "fidelity": report["fidelity"],
        "generated_on": report["generated_on"],
        "rows": report["rows"],
        "columns": [
            {
                "name": c["name"],
                "metric": c["metric"],
                "value": None if c["value"] is None else round(float(c["value"]), 2),
            }
            for c in report["columns"]
        ],
        "correlation_mean_abs_diff": None if mean_diff is None else round(float(mean_diff), 2),
        "exact_copies": int(report["privacy"]["exact_copies"]),
    }


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table (``remote-kernel datasite mock-report``)."""
    lines = [
        f"mock of {report['dataset']!r}: fidelity {report['fidelity']}, seed {report['seed']}, "
        f"{report['rows']} rows (private: {report['private_rows']}), made {report['generated_on']}",
        "",
        f"{'column':<24} {'metric':<11} {'value':>6}  {'missing private':>15} {'mock':>6}",
    ]
    for c in report["columns"]:
        value = "-" if c["value"] is None else f"{c['value']:.3f}"
        mock_missing = "-" if c["missing_mock"] is None else f"{c['missing_mock']:.3f}"
        lines.append(
            f"{c['name'][:24]:<24} {c['metric']:<11} {value:>6}  "
            f"{c['missing_private']:>15.3f} {mock_missing:>6}"
        )
    corr = report["correlations"]
    lines.append("")
    if corr.get("max_abs_diff") is not None:
        lines.append(
            f"correlations of {len(corr['columns'])} numeric columns: |private r - mock r| "
            f"max {corr['max_abs_diff']:.3f}, mean {corr['mean_abs_diff']:.3f}"
        )
        for pair in corr.get("top_pairs", []):
            mock_r = "-" if pair["mock_r"] is None else format(pair["mock_r"], "+.3f")
            lines.append(
                f"  {pair['a']} ~ {pair['b']}: private {pair['private_r']:+.3f}, mock {mock_r}"
            )
    privacy = report["privacy"]
    lines += [
        "",
        f"privacy: mock rows equal to a private row: {privacy['exact_copies']}",
        f"  rare values (< {MIN_CATEGORY_ROWS} rows) in the mock: "
        + (
            json.dumps(privacy["rare_values_exposed"]) if privacy["rare_values_exposed"] else "none"
        ),
        f"  distance to closest private record (Gower): {privacy['distance_to_closest_record']}",
    ]
    member = privacy.get("membership")
    if member and "share_closer_to_train" in member:
        verdict = "FLAGGED" if member["flagged"] else "ok"
        lines.append(
            f"  membership check ({member['train_rows']} train / "
            f"{member['holdout_rows']} held out):"
            f" closer to train {member['share_closer_to_train']:.2f} (0.5 ideal, flag over "
            f"{MEMBERSHIP_FLAG}) {verdict}; median distance train {member['dcr_train']['median']}"
            f" vs held out {member['dcr_holdout']['median']}"
        )
    elif member:
        lines.append(f"  membership check skipped: {member.get('skipped')}")
    else:
        lines.append("  membership check: not applicable (hand-made mock or too few rows)")
    return "\n".join(lines)


def render_html(report: Mapping[str, Any]) -> str:
    """A standalone HTML page of the report, for the data owner's browser."""
    e = html.escape

    def number(value: float | None) -> str:
        return "" if value is None else f"{value:.3f}"

    rows = "".join(
        f"<tr><td>{e(c['name'])}</td><td>{e(c['metric'])}</td><td>{number(c['value'])}</td>"
        f"<td>{number(c['missing_private'])}</td><td>{number(c['missing_mock'])}</td></tr>"
        for c in report["columns"]
    )
    pairs = "".join(
        f"<tr><td>{e(p['a'])}</td><td>{e(p['b'])}</td><td>{p['private_r']}</td>"
        f"<td>{p['mock_r']}</td></tr>"
        for p in report["correlations"].get("top_pairs", [])
    )
    privacy = json.dumps(report["privacy"], indent=2, default=str)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Mock report: {e(report["dataset"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:left}}
table{{border-collapse:collapse}}tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>Mock of {e(report["dataset"])}</h1>
<p>For the data owner only: this page quotes facts about the private data.</p>
<p>Fidelity <b>{e(report["fidelity"])}</b>, seed {e(str(report["seed"]))},
{report["rows"]} mock rows from {report["private_rows"]} private rows,
made {e(report["generated_on"])}.</p>
<h2>Columns</h2>
<table><tr><th>column</th><th>metric</th><th>value</th><th>missing (private)</th>
<th>missing (mock)</th></tr>{rows}</table>
<p>KS: Kolmogorov-Smirnov statistic; TVD: total variation distance; both 0 = identical,
1 = disjoint.</p>
<h2>Strongest private correlations</h2>
<table><tr><th>a</th><th>b</th><th>private r</th><th>mock r</th></tr>{pairs}</table>
<p>Mean |private r - mock r|: {report["correlations"].get("mean_abs_diff")}</p>
<h2>Privacy</h2><pre>{e(privacy)}</pre>
</body></html>
"""


# --- files --------------------------------------------------------------------------------------


def mock_files(mock: pd.DataFrame, report: Mapping[str, Any]) -> dict[str, bytes]:
    """The mock and its reports as file name -> bytes, ready to be written together."""
    buffer = io.BytesIO()
    mock.to_parquet(buffer, index=False)
    return {
        "mock.parquet": buffer.getvalue(),
        REPORT_JSON: json.dumps(report, indent=2, default=str).encode(),
        REPORT_HTML: render_html(report).encode(),
        SUMMARY_JSON: json.dumps(researcher_summary(report), indent=2).encode(),
    }


def write_files(directory: Path, files: Mapping[str, bytes]) -> None:
    """Write every file to a temporary name first, then rename: never half a mock on disk."""
    temporary = []
    try:
        for name, data in files.items():
            tmp = directory / f".{name}.tmp"
            tmp.write_bytes(data)
            temporary.append((tmp, directory / name))
        for tmp, final in temporary:
            os.replace(tmp, final)
    finally:
        for tmp, _ in temporary:
            tmp.unlink(missing_ok=True)


def load_report(directory: Path) -> dict[str, Any] | None:
    path = directory / REPORT_JSON
    return json.loads(path.read_text()) if path.exists() else None


def load_summary(directory: Path) -> dict[str, Any] | None:
    """The researcher's summary, or None for a dataset imported before mocks had reports."""
    path = directory / SUMMARY_JSON
    return json.loads(path.read_text()) if path.exists() else None
