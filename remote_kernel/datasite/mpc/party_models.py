"""Pooled models in the party process: least squares, and logistic regression by Newton.

Both first open two bits -- do the pooled rows pass every party's ``min_cell_count``,
and the residual degrees of freedom every party's ``min_dof`` -- and stop there if
not. Each returns ``{"released": True, "values": [n, *coefficients, *covariance]}``
on the scaled design (:mod:`.fit` maps them back).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from remote_kernel.datasite.mpc.shares import BITS, FRACTIONAL, share_and_add, solve

#: Newton steps of a logistic fit (from zero, on a centred and scaled design) and the
#: step below which it has converged; every party sees the same steps, so all stop together.
NEWTON_STEPS, CONVERGED = 25, 1e-7


async def _passes(mpc: Any, n: Any, q: int, thresholds: list[dict[str, Any]]) -> list[str]:
    """The rules the pooled row count fails (two bits opened)."""
    min_rows = max(t["min_cell_count"] for t in thresholds)
    min_dof = max(t["min_dof"] for t in thresholds)
    bits = await mpc.output([n < min_rows, n - q < min_dof])
    rules = ("small-cells", "degrees-of-freedom")
    return [r for r, b in zip(rules, bits, strict=True) if round(float(b)) > 0]


async def linear(mpc: Any, job: dict[str, Any], thresholds: list[dict[str, Any]]) -> dict[str, Any]:
    """The normal equations on the pooled ``Z'Z``, ``Z'y``, ``y'y`` and row count."""
    secfxp = mpc.SecFxp(BITS, FRACTIONAL)
    pooled = share_and_add(mpc, secfxp, job)
    q = job["q"]
    n, gram, zy, yy = pooled[0], pooled[1 : 1 + q * q], pooled[1 + q * q : -1], pooled[-1]
    failed = await _passes(mpc, n, q, thresholds)
    if failed:
        return {"released": False, "failed": failed}
    beta, inverse = solve(secfxp, gram, zy, q)
    residual = yy - mpc.sum([b * c for b, c in zip(beta, zy, strict=True)])
    sigma2 = residual / (n - q)
    opened = await mpc.output([n, *beta, *[sigma2 * v for v in inverse]])
    return {"released": True, "values": [float(v) for v in opened]}


def newton_sums(rows: np.ndarray | None, beta: np.ndarray, q: int) -> list[float] | None:
    """This site's Hessian ``Z'WZ`` (row-major) and gradient ``Z'(y - p)`` at ``beta``."""
    if rows is None:
        return None
    y, z = rows[:, 0], np.hstack([np.ones((len(rows), 1)), rows[:, 1:]])
    p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -30, 30)))
    hessian = (z * (p * (1 - p))[:, None]).T @ z
    return [*hessian.ravel().tolist(), *(z.T @ (y - p)).tolist()]


async def logistic(
    mpc: Any, job: dict[str, Any], thresholds: list[dict[str, Any]]
) -> dict[str, Any]:
    """Newton's method: each step, every site adds its Hessian and gradient at the current
    coefficients as shares, the parties solve for the step on the shares and open it to
    the parties (the path of pooled coefficients; no site's own sums)."""
    secfxp = mpc.SecFxp(BITS, FRACTIONAL)
    q = job["q"]
    rows = np.array(job["rows"], dtype=np.float64) if job["rows"] is not None else None
    count = [float(len(rows))] if rows is not None else None
    (n,) = share_and_add(mpc, secfxp, {**job, "layout": ["count"], "vector": count})
    failed = await _passes(mpc, n, q, thresholds)
    if failed:
        return {"released": False, "failed": failed}
    layout = ["value"] * (q * q + q)
    beta = np.zeros(q)
    for _ in range(NEWTON_STEPS):
        sums = newton_sums(rows, beta, q)
        pooled = share_and_add(mpc, secfxp, {**job, "layout": layout, "vector": sums})
        step, _ = solve(secfxp, pooled[: q * q], pooled[q * q :], q)
        opened = np.array([float(v) for v in await mpc.output(step)])
        beta = beta + opened
        if np.abs(opened).max() < CONVERGED:
            break
    sums = newton_sums(rows, beta, q)
    pooled = share_and_add(mpc, secfxp, {**job, "layout": layout, "vector": sums})
    _, inverse = solve(secfxp, pooled[: q * q], pooled[q * q :], q)
    opened_n, *covariance = await mpc.output([n, *inverse])
    return {"released": True, "values": [float(opened_n), *beta.tolist(), *map(float, covariance)]}
