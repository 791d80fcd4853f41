"""Pooled regressions (``rk.secure.fit("linear" | "logistic", ...)``): each site's part.

Ordinary least squares needs only sums over rows: the Gram matrix ``Z'Z`` of the
design ``Z = [1, (x - center) / scale]``, ``Z'y``, ``y'y`` and the row count. Each
data site computes them on its complete rows; the parties add them as secret shares
and solve the normal equations on the shares (:func:`remote_kernel.datasite.mpc.party`),
opening only the coefficients, their covariance matrix and the row count, once the
pooled fit passes every party's thresholds (rows and residual degrees of freedom).
``center`` and ``scale`` are public (the researcher's kernel takes them from the
mocks); they keep the fixed-point numbers near 1 and change nothing in the fit.

A logistic fit needs the rows at every Newton step: the site hands its complete rows
(``y``, scaled ``x``) to its own party process, which adds the Hessian and gradient at
each step's coefficients as shares (:mod:`.party_models`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.checks.policy import Thresholds
from remote_kernel.datasite.mpc.errors import NotOptedIn, SecureQueryRefused
from remote_kernel.protocol.errors import InputError

#: Regressors a pooled fit may have (the secure solve costs about 2 q^3 multiplications).
MAX_FEATURES = 12
KINDS = ("linear", "logistic")


@dataclass(frozen=True)
class FitSpec:
    kind: str
    y: str
    x: tuple[str, ...]
    center: tuple[float, ...]  # for y, then each x
    scale: tuple[float, ...]

    @property
    def size(self) -> int:
        """Columns of the design matrix (the intercept and each regressor)."""
        return len(self.x) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "y": self.y,
            "x": list(self.x),
            "center": list(self.center),
            "scale": list(self.scale),
        }


def parse_fit(raw: Any) -> FitSpec:
    """The ``fit`` field of a request; :class:`InputError` says what is wrong."""
    if not isinstance(raw, dict):
        raise InputError("field 'fit' must be an object")
    kind, y, x = raw.get("kind"), raw.get("y"), raw.get("x")
    if kind not in KINDS:
        raise InputError(f"fit.kind must be one of {', '.join(KINDS)}")
    if not isinstance(y, str) or not isinstance(x, list) or not all(isinstance(c, str) for c in x):
        raise InputError("fit.y must be a column name and fit.x a list of column names")
    if not 1 <= len(x) <= MAX_FEATURES or len(set(x) | {y}) != len(x) + 1:
        raise InputError(f"fit.x must name 1 to {MAX_FEATURES} distinct columns other than y")
    center, scale = raw.get("center"), raw.get("scale")
    for name, values in (("center", center), ("scale", scale)):
        if not isinstance(values, list) or len(values) != len(x) + 1:
            raise InputError(f"fit.{name} must hold one number for y and each x")
        if not all(_finite(v) for v in values):
            raise InputError(f"fit.{name} must hold finite numbers")
    if any(float(s) <= 0 for s in scale):  # type: ignore[union-attr]
        raise InputError("fit.scale must be positive")
    return FitSpec(kind, y, tuple(x), tuple(map(float, center)), tuple(map(float, scale)))  # type: ignore[arg-type]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def verify_fit(
    spec: FitSpec,
    dataset: str,
    tables: Mapping[str, pd.DataFrame] | None,
    opted_in: Mapping[str, bool],
    thresholds: Thresholds,
) -> None:
    """The fit is possible and allowed here (``tables=None``: a helper, which has no data)."""
    if tables is None:
        return
    if dataset not in tables:
        raise SecureQueryRefused(f"no dataset {dataset!r} here")
    if not opted_in.get(dataset, False):
        raise NotOptedIn(
            f"dataset {dataset!r} is not opted into joint computations here "
            "(its owner sets mpc: true for it in datasite.yaml)"
        )
    frame = tables[dataset]
    for column in (spec.y, *spec.x):
        if column not in frame.columns or not pd.api.types.is_numeric_dtype(frame[column]):
            raise SecureQueryRefused(f"{column!r} is not a numeric column of {dataset!r}")
    if thresholds.min_dof < 1:
        raise SecureQueryRefused("this site's policy sets no residual degrees of freedom")
    if spec.kind == "logistic":
        outcome = pd.to_numeric(frame[spec.y], errors="coerce").dropna()
        if not outcome.isin([0, 1]).all():
            raise SecureQueryRefused(f"a logistic fit needs {spec.y!r} to be 0 or 1 in every row")


def layout(spec: FitSpec) -> list[str]:
    """n, then Z'Z (q x q, row-major), Z'y (q) and y'y: the same at every party."""
    q = spec.size
    return ["count"] + ["value"] * (q * q + q + 1)


def local_sums(spec: FitSpec, frame: pd.DataFrame) -> list[float]:
    """This site's sums over its complete rows, in :func:`layout`'s order."""
    columns = [spec.y, *spec.x]
    rows = frame[columns].apply(pd.to_numeric, errors="coerce").dropna()
    values = (rows.to_numpy(dtype=np.float64) - np.array(spec.center)) / np.array(spec.scale)
    y, z = values[:, 0], np.hstack([np.ones((len(values), 1)), values[:, 1:]])
    return [float(len(values)), *(z.T @ z).ravel().tolist(), *(z.T @ y).tolist(), float(y @ y)]


def design_rows(spec: FitSpec, frame: pd.DataFrame) -> list[list[float]]:
    """A logistic fit's complete rows at this site: ``y`` (0/1), then the scaled ``x``."""
    rows = frame[[spec.y, *spec.x]].apply(pd.to_numeric, errors="coerce").dropna()
    values = rows.to_numpy(dtype=np.float64, copy=True)
    values[:, 1:] = (values[:, 1:] - np.array(spec.center[1:])) / np.array(spec.scale[1:])
    return values.tolist()


def unscale(spec: FitSpec, beta: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and covariance on the original scale, from those of the scaled fit.

    ``y = cy + sy * (b0 + sum_j bj (xj - cj) / sj)``: a linear map ``coef = T @ beta``.
    """
    cy, sy = (spec.center[0], spec.scale[0]) if spec.kind == "linear" else (0.0, 1.0)
    c, s = np.array(spec.center[1:]), np.array(spec.scale[1:])
    q = spec.size
    t = np.zeros((q, q))
    t[0, 0] = sy
    t[0, 1:] = -sy * c / s
    t[1:, 1:] = np.diag(sy / s)
    coef = t @ beta
    coef[0] += cy
    return coef, t @ cov @ t.T
