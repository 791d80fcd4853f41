"""Mock tables at three fidelity levels: schema, marginal, joint.

Researchers write and debug every cell against the mock, so it should behave
like the data; but it is handed to anyone with a researcher token, so it must
not carry private records or rare values. The levels trade one for the other
(see docs/mocks.md):

* ``schema``: column names, dtypes, coarsened ranges, common categories and
  (coarsened) missing rates; values uniform and independent.
* ``marginal``: each column's own distribution. Numbers are drawn from
  equal-frequency quantile bins with uniform jitter inside the bin, between
  the 10th smallest and 10th largest value, so no rare extreme is reproduced;
  categories held by fewer than 10 rows are merged into ``"other"`` (text) or
  dropped (codes, booleans).
* ``joint``: the marginal columns tied together by a Gaussian copula fitted on
  ranks (our own, on numpy only: see docs/mocks.md for why not ``copulas``).

Every model maps a uniform number ``u`` in (0, 1) to a value (an inverse CDF),
so the marginal level feeds it independent uniforms and the joint level feeds
it the copula's correlated ones. Declared identifier columns are regenerated,
never fitted. Whatever the level, a generated row equal to a private row (on
the non-identifier columns) is redrawn, and dropped if it keeps clashing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.protocol.errors import DatasetError

#: A text value must be held by at least this many private rows to appear in a mock.
MIN_CATEGORY_ROWS = 10

#: Integer columns with at most this many distinct values are treated as codes.
CATEGORICAL_MAX_LEVELS = 12

FIDELITIES = ("schema", "marginal", "joint")
DEFAULT_FIDELITY = "marginal"

#: Rows in a generated mock. Fixed, so the mock does not reveal the private table's size.
MOCK_ROWS = 1000
#: Most quantile bins per numeric column (each bin holds at least MIN_CATEGORY_ROWS rows).
MAX_BINS = 20
#: Fewest private rows in a quantile bin.
MIN_BIN_ROWS = MIN_CATEGORY_ROWS
#: Wider tables are refused: a mock of thousands of columns is not something to prototype on.
MAX_COLUMNS = 2000
#: The copula's correlation matrix is columns x columns; beyond this, use ``marginal``.
MAX_JOINT_COLUMNS = 200
#: The copula's rank correlations are estimated on at most this many rows (plenty for 2 decimals).
COPULA_FIT_ROWS = 200_000
#: Rounds and rows of the joint level's calibration of its copula to the private correlations.
CALIBRATION_ROUNDS = 4
CALIBRATION_ROWS = 20_000
#: Label of merged rare text categories.
OTHER = "other"
#: How often a batch of rows equal to private rows is redrawn before those rows are dropped.
REDRAW_ATTEMPTS = 20

_NS_PER_DAY = 86_400 * 10**9


class MockError(DatasetError):
    """The table cannot be mocked as asked; the message says why and what to do instead."""


# --- column models ------------------------------------------------------------------------------


@dataclass
class ColumnModel:
    """How to make one column: ``values(u)`` maps uniforms in (0, 1) to values, in rank order."""

    name: Any
    dtype: Any
    missing: float

    def values(self, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def fit_scores(self, column: pd.Series) -> np.ndarray | None:
        """Private values as numbers in the order ``values`` uses (for the copula), or None."""
        return None

    def finish(self, values: np.ndarray, rng: np.random.Generator) -> pd.Series:
        """Apply the missing rate and the private column's dtype."""
        series = pd.Series(values)
        if self.missing > 0:
            series = series.where(rng.random(len(series)) >= self.missing)
        try:
            return series.astype(self.dtype)
        except (TypeError, ValueError):
            return series


@dataclass
class NumericModel(ColumnModel):
    """Piecewise-uniform inverse CDF over quantile bins (one bin = uniform over a range)."""

    edges: np.ndarray = field(default_factory=lambda: np.zeros(2))
    probs: np.ndarray = field(default_factory=lambda: np.ones(1))
    decimals: int | None = None
    datetime_tz: Any = None
    is_datetime: bool = False

    def values(self, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cum = np.cumsum(self.probs)
        cum[-1] = 1.0
        which = np.minimum(np.searchsorted(cum, u, side="right"), len(self.probs) - 1)
        start = np.concatenate([[0.0], cum[:-1]])[which]
        within = np.clip((u - start) / self.probs[which], 0.0, 1.0)
        low, high = self.edges[which], self.edges[which + 1]
        out = low + within * (high - low)
        if self.is_datetime:
            step = _NS_PER_DAY if self.decimals == 0 else 10**9
            ns = (np.round(out / step) * step).astype("int64")
            stamps = pd.to_datetime(ns, unit="ns")
            if self.datetime_tz is not None:
                stamps = stamps.tz_localize("UTC").tz_convert(self.datetime_tz)
            return np.asarray(stamps)
        if self.decimals is not None:
            out = np.round(out, self.decimals)
        return out

    def fit_scores(self, column: pd.Series) -> np.ndarray | None:
        return _as_numbers(column)

    def finish(self, values: np.ndarray, rng: np.random.Generator) -> pd.Series:
        if self.is_datetime:
            values = pd.DatetimeIndex(values)  # type: ignore[assignment]
        return super().finish(values, rng)


@dataclass
class LevelsModel(ColumnModel):
    """A discrete distribution over public levels (codes, booleans, common text values)."""

    levels: np.ndarray = field(default_factory=lambda: np.array([]))
    probs: np.ndarray = field(default_factory=lambda: np.array([]))
    #: Private value -> position in ``levels`` order, for the copula (text only).
    order: dict[str, float] | None = None

    def values(self, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cum = np.cumsum(self.probs)
        cum[-1] = 1.0
        which = np.minimum(np.searchsorted(cum, u, side="right"), len(self.levels) - 1)
        return self.levels[which]

    def fit_scores(self, column: pd.Series) -> np.ndarray | None:
        if self.order is None:
            return _as_numbers(column)
        keys = column.astype(str).where(column.notna())
        return keys.map(self.order).to_numpy(dtype=float)


@dataclass
class IdentifierModel(ColumnModel):
    """A declared identifier: fresh values, never any private one."""

    private_values: frozenset[str] = frozenset()
    kind: str = "text"  # text | number | datetime
    low: float = 0.0
    high: float = 1.0

    def values(self, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rows = len(u)
        if self.kind == "datetime":
            ns = self.low + u * (self.high - self.low)
            return np.asarray(pd.to_datetime(np.round(ns / _NS_PER_DAY) * _NS_PER_DAY, unit="ns"))
        if self.kind == "number":
            ids = 10**8 + rng.choice(9 * 10**8, size=rows, replace=False)
            taken = np.isin(ids.astype(str), list(self.private_values))
            ids[taken] = ids[taken] + 10**9  # outside the 9-digit range drawn from
            return ids
        name = str(self.name)
        made = np.array([f"{name}-{i:06d}" for i in range(1, rows + 1)], dtype=object)
        taken = np.isin(made, list(self.private_values))
        made[taken] = [f"{m}-mock" for m in made[taken]]
        return made

    def finish(self, values: np.ndarray, rng: np.random.Generator) -> pd.Series:
        series = pd.Series(values)
        try:
            return series.astype(self.dtype)
        except (TypeError, ValueError):
            return series


@dataclass
class MockModel:
    """A fitted generator: column models, and for ``joint`` the copula's correlation factor."""

    fidelity: str
    columns: list[ColumnModel]
    #: Lower-triangular factor of the copula correlation, over ``copula_columns`` (joint only).
    factor: np.ndarray | None = None
    copula_columns: list[int] = field(default_factory=list)

    def sample(self, rows: int, rng: np.random.Generator) -> pd.DataFrame:
        uniforms = rng.random((rows, len(self.columns)))
        if self.factor is not None and self.copula_columns:
            uniforms[:, self.copula_columns] = _copula_uniforms(self.factor, rows, rng)
        data = {}
        for j, model in enumerate(self.columns):
            data[model.name] = model.finish(model.values(uniforms[:, j], rng), rng)
        return pd.DataFrame(data, columns=[m.name for m in self.columns])


# --- checks -------------------------------------------------------------------------------------


def check_mockable(frame: pd.DataFrame, fidelity: str) -> None:
    """Refuse, with a reason and a way out, the tables no mock can be made of."""
    if fidelity not in FIDELITIES:
        raise MockError(f"unknown fidelity {fidelity!r}: use one of {', '.join(FIDELITIES)}")
    if frame.shape[1] == 0 or frame.shape[0] == 0:
        raise MockError("the table holds no rows (or no columns): there is nothing to mock")
    if frame.shape[0] == 1:
        raise MockError(
            "the table has a single row: any mock of it would be that row; "
            "give a hand-made mock with --mock FILE"
        )
    if frame.shape[1] > MAX_COLUMNS:
        raise MockError(
            f"the table has {frame.shape[1]} columns, more than the {MAX_COLUMNS} a mock is "
            "made for; select the columns researchers need, or give --mock FILE"
        )
    if fidelity == "joint" and frame.shape[1] > MAX_JOINT_COLUMNS:
        raise MockError(
            f"a joint mock models every pair of columns; {frame.shape[1]} columns is over "
            f"the limit of {MAX_JOINT_COLUMNS}: use --fidelity marginal"
        )
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        raise MockError(f"duplicate column names: {names}")
    for name in frame.columns:
        column = frame[name]
        if column.isna().all():
            raise MockError(
                f"column {name!r} is entirely missing: drop it before importing "
                "(a mock cannot learn anything about it)"
            )
        if column.dtype == object:
            kinds = {type(v).__name__ for v in column.dropna().head(100_000)}
            if len(kinds) > 1 and not kinds <= {"int", "float"}:
                raise MockError(
                    f"column {name!r} mixes value types ({', '.join(sorted(kinds))}): "
                    "convert it to one type (e.g. text) before importing"
                )


# --- fitting ------------------------------------------------------------------------------------


def fit_schema(frame: pd.DataFrame, identifiers: Sequence[str] = ()) -> MockModel:
    """Schema only: coarsened ranges, common levels with equal weights, no dependence."""
    return MockModel("schema", [_fit_column(frame[c], "schema", identifiers) for c in frame])


def fit_marginal(frame: pd.DataFrame, identifiers: Sequence[str] = ()) -> MockModel:
    """Each column's own distribution (quantile bins, common levels with their frequencies)."""
    return MockModel("marginal", [_fit_column(frame[c], "marginal", identifiers) for c in frame])


def fit_joint(
    frame: pd.DataFrame, identifiers: Sequence[str] = (), seed: int | None = None
) -> MockModel:
    """The marginal models plus a Gaussian copula fitted on rank (Spearman) correlations.

    For a Gaussian copula, Pearson correlation of the latent normals is
    ``2 sin(pi * rho_s / 6)`` of the Spearman correlation, so ranks are all the
    fit needs (no normal quantile function, hence no scipy). Missing values
    are left out pair by pair (``_pairwise_correlation``).
    """
    model = fit_marginal(frame, identifiers)
    model.fidelity = "joint"
    rng = np.random.default_rng(seed)
    sample = frame
    if len(frame) > COPULA_FIT_ROWS:
        sample = frame.iloc[np.sort(rng.choice(len(frame), COPULA_FIT_ROWS, replace=False))]
    picked, ranks, scores_of = [], [], []
    for j, column_model in enumerate(model.columns):
        if isinstance(column_model, LevelsModel) and len(column_model.levels) < 2:
            continue
        scores = column_model.fit_scores(sample[column_model.name])
        if scores is None or np.count_nonzero(~np.isnan(scores)) < 2 or np.nanstd(scores) == 0:
            continue
        picked.append(j)
        ranks.append(_centred_ranks(scores))
        scores_of.append(scores)
    if len(picked) < 2:
        return model
    spearman = _pairwise_correlation(np.column_stack(ranks))
    latent = _nearest_correlation(2.0 * np.sin(np.pi * spearman / 6.0))
    model.copula_columns = picked
    # Codes, booleans and missing values weaken the correlations a copula of this latent
    # matrix produces; nudge it until the mock's Pearson correlations match the private ones.
    target = _pairwise_correlation(np.column_stack([_standardised(s) for s in scores_of]))
    for _ in range(CALIBRATION_ROUNDS):
        model.factor = np.linalg.cholesky(latent)
        uniforms = _copula_uniforms(model.factor, CALIBRATION_ROWS, rng)
        trial = [
            _standardised(_value_scores(model.columns[j], uniforms[:, i], rng))
            for i, j in enumerate(picked)
        ]
        achieved = _pairwise_correlation(np.column_stack(trial))
        latent = _nearest_correlation(np.clip(latent + (target - achieved), -0.995, 0.995))
    model.factor = np.linalg.cholesky(latent)
    return model


def _value_scores(model: ColumnModel, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Generated values of one column as the numbers its ``fit_scores`` gives private ones."""
    values = model.values(u, rng)
    if isinstance(model, LevelsModel) and model.order is not None:
        return pd.Series(values).astype(str).map(model.order).to_numpy(dtype=float)
    if isinstance(model, NumericModel) and model.is_datetime:
        return _as_numbers(pd.Series(pd.DatetimeIndex(values)))
    return np.asarray(values, dtype=float)


def _standardised(scores: np.ndarray) -> np.ndarray:
    spread = np.nanstd(scores)
    return (scores - np.nanmean(scores)) / (spread if spread > 0 else 1.0)


def fit_mock(
    frame: pd.DataFrame,
    fidelity: str = DEFAULT_FIDELITY,
    identifiers: Sequence[str] = (),
    seed: int | None = None,
) -> MockModel:
    check_mockable(frame, fidelity)
    unknown = [c for c in identifiers if c not in frame.columns]
    if unknown:
        raise MockError(f"identifier column(s) {unknown} are not in the table")
    if fidelity == "schema":
        return fit_schema(frame, identifiers)
    if fidelity == "marginal":
        return fit_marginal(frame, identifiers)
    return fit_joint(frame, identifiers, seed=seed)


def generate_mock(
    frame: pd.DataFrame,
    fidelity: str = DEFAULT_FIDELITY,
    *,
    rows: int = MOCK_ROWS,
    seed: int | None = None,
    identifiers: Sequence[str] = (),
) -> pd.DataFrame:
    """Fit a model of ``frame`` at ``fidelity`` and draw ``rows`` rows, none equal to a private row.

    The same ``seed`` gives the same mock.
    """
    if rows < 1:
        raise MockError(f"a mock needs at least one row (asked for {rows})")
    model = fit_mock(frame, fidelity, identifiers, seed=seed)
    rng = np.random.default_rng(seed)
    mock = drop_private_copies(model.sample(rows, rng), frame, model, rng, identifiers)
    # Redrawn rows got identifiers of their own batch; make them once more for the final
    # table so that they stay unique.
    for column in model.columns:
        if isinstance(column, IdentifierModel):
            mock[column.name] = column.finish(column.values(rng.random(len(mock)), rng), rng)
    return mock


def _fit_column(column: pd.Series, fidelity: str, identifiers: Sequence[str]) -> ColumnModel:
    observed = column.dropna()
    missing = _coarse_rate(float(column.isna().mean()))
    if column.name in identifiers:
        return _fit_identifier(column, observed)
    if pd.api.types.is_bool_dtype(column.dtype):
        return _fit_levels(column, observed, missing, fidelity, drop_rare=True)
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        return _fit_numeric(column, _as_numbers(observed), missing, fidelity, is_datetime=True)
    if pd.api.types.is_numeric_dtype(column.dtype):
        if observed.nunique() <= CATEGORICAL_MAX_LEVELS:
            return _fit_levels(column, observed, missing, fidelity, drop_rare=True)
        return _fit_numeric(column, observed.to_numpy(dtype=float), missing, fidelity)
    return _fit_levels(column, observed.astype(str), missing, fidelity, drop_rare=False)


def _fit_identifier(column: pd.Series, observed: pd.Series) -> IdentifierModel:
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        low, high = _coarse_bounds(_as_numbers(observed), _NS_PER_DAY * 365)
        return IdentifierModel(column.name, column.dtype, 0.0, kind="datetime", low=low, high=high)
    kind = "number" if pd.api.types.is_numeric_dtype(column.dtype) else "text"
    text = observed.astype(str) if kind == "text" else observed.astype("int64").astype(str)
    return IdentifierModel(column.name, column.dtype, 0.0, frozenset(text), kind=kind)


def _fit_levels(
    column: pd.Series, observed: pd.Series, missing: float, fidelity: str, drop_rare: bool
) -> LevelsModel:
    """Common levels only: a level held by fewer than MIN_CATEGORY_ROWS rows never appears.

    Rare text values are merged into ``"other"``; rare codes and booleans are
    dropped (``"other"`` would break the dtype). With no common level at all,
    codes keep every level with equal weight (a code book, as the schema
    level always did) and text gets made-up placeholders.
    """
    counts = observed.value_counts()
    common = counts[counts >= MIN_CATEGORY_ROWS]
    text = not drop_rare
    if len(common) == 0:
        if text:
            levels = np.array([f"{column.name}-{i:04d}" for i in range(1, 101)], dtype=object)
        elif pd.api.types.is_bool_dtype(column.dtype):
            levels = np.array([False, True])
        elif not pd.api.types.is_integer_dtype(column.dtype):
            # Every code is rare: a float column can say "unknown" instead of showing any.
            return LevelsModel(column.name, column.dtype, 1.0, np.array([np.nan]), np.ones(1))
        else:
            low, high = _coarse_bounds(counts.index.to_numpy(dtype=float))
            levels = np.arange(math.floor(low), math.ceil(high) + 1)
        dtype = column.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            dtype = pd.CategoricalDtype(list(levels))
        return LevelsModel(column.name, dtype, missing, levels, _equal(len(levels)), None)
    rare_rows = int(counts.sum() - common.sum())
    if text:
        # Most frequent first, so that the copula's ranks follow frequency.
        levels_list = list(common.index)
        weights = list(common.to_numpy(dtype=float))
        if rare_rows > 0 and fidelity != "schema":  # the schema level lists common values only
            levels_list.append(OTHER)
            weights.append(float(rare_rows))
        levels = np.array(levels_list, dtype=object)
        order = {str(v): float(i) for i, v in enumerate(levels_list)}
        order.setdefault(OTHER, float(len(levels_list) - 1))
        for value in counts.index[counts < MIN_CATEGORY_ROWS]:
            order[str(value)] = float(len(levels_list) - 1)
    else:
        common = common.sort_index()
        levels = common.index.to_numpy()
        weights = list(common.to_numpy(dtype=float))
        order = None
    probs = np.asarray(weights) / np.sum(weights)
    if fidelity == "schema":
        probs = _equal(len(levels))
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        # The dtype itself lists categories: only the public ones may be in the mock's.
        dtype = pd.CategoricalDtype(list(levels), ordered=dtype.ordered)
    return LevelsModel(column.name, dtype, missing, levels, probs, order)


def _fit_numeric(
    column: pd.Series, values: np.ndarray, missing: float, fidelity: str, is_datetime: bool = False
) -> NumericModel:
    """Quantile bins between the MIN_CATEGORY_ROWS-th smallest and largest values.

    Each bin holds at least MIN_CATEGORY_ROWS private rows, and values are
    jittered uniformly inside it, so a mock value never points at a single
    person. Ties make zero-width bins: a value shared by many rows (0 for
    ST depression) is kept as a point mass. The schema level keeps only the
    trimmed range, rounded outward to a coarse step.
    """
    values = np.sort(values)
    n = len(values)
    k = MIN_CATEGORY_ROWS
    decimals = _day_precision(values) if is_datetime else _decimals(column, values)
    tz = getattr(column.dtype, "tz", None)
    if fidelity == "schema" or n < 2 * k:
        step = None
        if is_datetime:
            step = float(_NS_PER_DAY * 30)
        low, high = _coarse_bounds(_trimmed(values), step)
        edges = np.array([low, high])
        probs = np.ones(1)
    else:
        bins = max(1, min(MAX_BINS, n // MIN_BIN_ROWS))
        edges = np.quantile(values, np.linspace(0.0, 1.0, bins + 1))
        edges = np.clip(edges, values[k - 1], values[n - k])
        probs = _equal(bins)
    return NumericModel(
        column.name,
        column.dtype,
        missing,
        edges=edges.astype(float),
        probs=probs,
        decimals=decimals,
        datetime_tz=tz,
        is_datetime=is_datetime,
    )


# --- the copula ---------------------------------------------------------------------------------


def _centred_ranks(scores: np.ndarray) -> np.ndarray:
    """Average ranks scaled to (-0.5, 0.5), centred on their mean; NaN where missing."""
    out = np.full(len(scores), np.nan)
    present = ~np.isnan(scores)
    ranks = pd.Series(scores[present]).rank(method="average").to_numpy()
    ranks = ranks / (present.sum() + 1)
    out[present] = ranks - ranks.mean()
    return out


def _pairwise_correlation(ranks: np.ndarray) -> np.ndarray:
    """Correlation of each pair of columns over the rows where both are present.

    Matrix products over zero-filled values and presence masks, so it costs
    rows x columns^2 multiply-adds and no Python loop over pairs. (Columns are
    centred over all their present values, not per pair: close enough, and
    far better than counting missing values as middle ranks.)
    """
    present = (~np.isnan(ranks)).astype(float)
    values = np.nan_to_num(ranks)
    squares = values**2
    cross = values.T @ values
    var_left = squares.T @ present
    var_right = present.T @ squares
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cross / np.sqrt(var_left * var_right)
    corr = np.nan_to_num(np.clip(corr, -1.0, 1.0))
    np.fill_diagonal(corr, 1.0)
    return corr


def _nearest_correlation(matrix: np.ndarray) -> np.ndarray:
    """Clip negative eigenvalues and rescale to a unit diagonal (pairwise estimates need it)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    fixed = (vectors * np.maximum(values, 1e-6)) @ vectors.T
    scale = np.sqrt(np.diag(fixed))
    return fixed / np.outer(scale, scale)


def _copula_uniforms(factor: np.ndarray, rows: int, rng: np.random.Generator) -> np.ndarray:
    """Correlated normals, turned into uniforms through their ranks within the sample.

    The rank transform is monotone, so it keeps the Gaussian copula, and it
    makes each column's uniforms exactly evenly spread (no normal CDF needed).
    """
    latent = rng.standard_normal((rows, factor.shape[0])) @ factor.T
    order = np.argsort(latent, axis=0)
    uniforms = np.empty_like(latent)
    jitter = rng.random(latent.shape)
    for j in range(latent.shape[1]):
        uniforms[order[:, j], j] = (np.arange(rows) + jitter[:, j]) / rows
    return uniforms


# --- never a private row ------------------------------------------------------------------------


def comparison_columns(frame: pd.DataFrame, identifiers: Sequence[str] = ()) -> list[Any]:
    """The columns on which a mock row 'is' a private row: all but the regenerated identifiers."""
    kept = [c for c in frame.columns if c not in identifiers]
    return kept or list(frame.columns)


def row_keys(frame: pd.DataFrame, columns: Sequence[Any]) -> np.ndarray:
    """A hash per row that is equal for equal values whatever the dtype (1 == 1.0, NaN == NaN)."""
    parts = {}
    for i, name in enumerate(columns):
        column = frame[name]
        if pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_numeric_dtype(column.dtype):
            parts[i] = pd.to_numeric(column, errors="coerce").astype("float64")
        elif pd.api.types.is_datetime64_any_dtype(column.dtype):
            parts[i] = pd.Series(_as_numbers(column))
        else:
            parts[i] = column.astype(str).where(column.notna(), "\x00missing")
    normal = pd.DataFrame({i: p.reset_index(drop=True) for i, p in parts.items()})
    return pd.util.hash_pandas_object(normal, index=False).to_numpy()


def drop_private_copies(
    mock: pd.DataFrame,
    private: pd.DataFrame,
    model: MockModel,
    rng: np.random.Generator,
    identifiers: Sequence[str] = (),
) -> pd.DataFrame:
    """Redraw mock rows equal to a private row; drop the few that keep clashing."""
    columns = comparison_columns(private, identifiers)
    private_keys = row_keys(private, columns)
    mock = mock.reset_index(drop=True)
    for _ in range(REDRAW_ATTEMPTS):
        clash = np.isin(row_keys(mock, columns), private_keys)
        if not clash.any():
            return mock
        fresh = model.sample(int(clash.sum()), rng)
        fresh.index = np.flatnonzero(clash)
        mock = pd.concat([mock.loc[~clash], fresh]).sort_index()
        mock = mock.astype(fresh.dtypes.to_dict(), errors="ignore")
    clash = np.isin(row_keys(mock, columns), private_keys)
    return mock.loc[~clash].reset_index(drop=True)


# --- small helpers ------------------------------------------------------------------------------


def _as_numbers(column: pd.Series) -> np.ndarray:
    """Numbers (float64) for numeric, boolean and datetime columns (nanoseconds, NaN for NaT)."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        stamps = column
        if getattr(column.dtype, "tz", None) is not None:
            stamps = column.dt.tz_convert("UTC").dt.tz_localize(None)
        as_ns = stamps.to_numpy().astype("datetime64[ns]")
        out = as_ns.astype("int64").astype(float)
        out[np.isnat(as_ns)] = np.nan
        return out
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)


def _equal(count: int) -> np.ndarray:
    return np.full(count, 1.0 / count)


def _coarse_rate(rate: float) -> float:
    """Missing rates to 2 decimals, but never 0 when something is missing (code must cope)."""
    if rate <= 0:
        return 0.0
    return max(round(rate, 2), 0.01)


def _trimmed(values: np.ndarray) -> np.ndarray:
    """Without the MIN_CATEGORY_ROWS - 1 most extreme values at each end, when there are enough."""
    k = MIN_CATEGORY_ROWS
    if len(values) >= 4 * k:
        return values[k - 1 : len(values) - k + 1]
    return values


def _coarse_bounds(values: np.ndarray, step: float | None = None) -> tuple[float, float]:
    """min and max rounded outward to a step of half the range's order of magnitude.

    Age 29..77 becomes 25..80: the published bounds are never a private value
    unless that value is itself a round number.
    """
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if step is None:
        span = max(high - low, abs(high), abs(low), 1e-12)
        step = 10.0 ** math.floor(math.log10(span)) / 2
    low = math.floor(low / step) * step
    high = math.ceil(high / step) * step
    if high == low:
        high = low + step
    return low, high


def _decimals(column: pd.Series, values: np.ndarray) -> int | None:
    """How many decimals the private values carry (0 for integers); None for full precision."""
    if pd.api.types.is_integer_dtype(column.dtype):
        return 0
    probe = values[:10_000]
    for decimals in range(7):
        if np.allclose(np.round(probe, decimals), probe, rtol=0, atol=1e-9):
            return decimals
    return None


def _day_precision(values: np.ndarray) -> int:
    """0 when every timestamp is a whole day (dates), else 1 (second resolution)."""
    return 0 if np.all(np.mod(values[:10_000], _NS_PER_DAY) == 0) else 1
