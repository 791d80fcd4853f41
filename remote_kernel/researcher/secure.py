"""``rk.secure.query(sql)``: one pooled table computed jointly by the datasites (MPC).

Your kernel sends the same request to every chosen site (``POST /api/secure/query``
through each site's own API and your token there). Each site checks the request on
its own, runs the aggregate on its private data, and the sites combine their parts
by secure multi-party computation (MPyC secret sharing) among themselves: no site's
own numbers are revealed to anyone -- not to you, not to the other sites. Only the
pooled table is opened, and only once every site's policy passed its cells. With
two data sites a third party helps (a site you can reach that does not hold the
dataset, e.g. a trusted third party's datasite).

On the mock (``mock=True``) the same call runs the query on the sites' mocks
pooled together and says what the sites would do.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.protocol.errors import RemoteKernelError, RequestRejected
from remote_kernel.querylang import check_on_tables, check_query, run_on_tables
from remote_kernel.researcher.client import Datasite, sites
from remote_kernel.researcher.data import at_datasite

#: Seconds to wait for the sites' answers (each site's own MPC timeout is shorter).
DEFAULT_TIMEOUT = 180.0


class SecureQueryFailed(RequestRejected):
    """At least one site refused or failed: nothing of the computation is shown.

    ``by_site`` holds each site's own message (never a value of any site).
    """

    def __init__(self, message: str, status: int, by_site: dict[str, str]) -> None:
        super().__init__(message, status)
        self.by_site = by_site


def query(
    sql: str,
    sites: Sequence[str] | None = None,
    helpers: Sequence[str] | None = None,
    mock: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    keys: dict[str, Sequence[Any]] | None = None,
) -> pd.DataFrame:
    """A pooled COUNT/SUM/AVG table over ``sites`` (default: every connected site).

    Group keys range over the public values of the key columns (the sites' mocks,
    or ``keys={"cp": [1, 2, 3, 4]}`` for a key whose values you know), so which keys a
    site has is never revealed; rows with other values count in no cell. ``helpers``:
    sites that compute without data (default: chosen sites that do not hold the dataset).
    """
    if at_datasite():
        raise RemoteKernelError(
            "rk.secure.query runs in your own kernel (it asks every site); not in a remote cell"
        )
    chosen = _choose(sites)
    plan = _plan(sql, chosen, helpers, keys or {})
    if mock:
        return _on_mocks(sql, plan)
    return _ask_sites(plan, chosen, timeout)


def _choose(names: Sequence[str] | None) -> dict[str, Datasite]:
    connected = sites()
    if not connected:
        raise RemoteKernelError("no datasite connected: run rk.connect(url, token=..., name=...)")
    names = list(names) if names is not None else sorted(connected)
    missing = [n for n in names if n not in connected]
    if missing:
        raise RemoteKernelError(
            f"not connected to {', '.join(missing)} (connected: {', '.join(connected)})"
        )
    return {name: connected[name] for name in names}


def _plan(
    sql: str,
    chosen: dict[str, Datasite],
    helpers: Sequence[str] | None,
    keys: dict[str, Sequence[Any]],
) -> dict[str, Any]:
    """The request every site gets, and the mocks it was made from."""
    holders = {n: {d["name"] for d in s.datasets()} for n, s in chosen.items()}
    dataset = check_query(sql, sorted(set().union(*holders.values()))).dataset
    helpers, mocks = _roles(chosen, holders, dataset, helpers)
    parsed = check_on_tables(sql, {dataset: next(iter(mocks.values()))})
    given = {name.lower(): [_plain(v) for v in values] for name, values in keys.items()}
    domain = [given.get(k.text.lower()) or _public_values(mocks, k.text) for k in parsed.keys]
    body = {
        "computation_id": secrets.token_hex(16),
        "sql": sql,
        "dataset": parsed.dataset,
        "parties": [_party_name(chosen[n]) for n in chosen],
        "helpers": [_party_name(chosen[n]) for n in helpers],
        "domain": domain,
    }
    return {"body": body, "mocks": mocks, "dataset": parsed.dataset, "helpers": helpers}


def _roles(
    chosen: dict[str, Datasite],
    holders: dict[str, set[str]],
    dataset: str,
    helpers: Sequence[str] | None,
) -> tuple[list[str], dict[str, pd.DataFrame]]:
    """The helpers (default: chosen sites without the dataset) and the data sites' mocks."""
    helpers = (
        list(helpers) if helpers is not None else [n for n in chosen if dataset not in holders[n]]
    )
    data_sites = [n for n in chosen if n not in helpers]
    lacking = [n for n in data_sites if dataset not in holders[n]]
    if lacking or not data_sites:
        raise RemoteKernelError(
            f"{', '.join(lacking) or 'no chosen site'} holds no dataset {dataset!r}: "
            "choose the sites with sites=[...] and helpers=[...]"
        )
    if len(chosen) < 3 or len(data_sites) < 2:
        raise RemoteKernelError(
            "a joint computation needs at least 3 parties, 2 of them holding the data: "
            "with 2 sites, connect to a helper party too (a site without the dataset)"
        )
    return helpers, {n: chosen[n].mock(dataset) for n in data_sites}


def _party_name(site: Datasite) -> str:
    """The site's own name (what its peers call it), whatever this connection is called."""
    return str(site.api.call(site.http, "GET", "/api/me")["datasite"])


def _public_values(mocks: dict[str, pd.DataFrame], column: str) -> list[Any]:
    """A key column's values across the sites' (public) mocks, sorted; never private data."""
    values: set[Any] = set()
    for frame in mocks.values():
        match = next((c for c in frame.columns if str(c).lower() == column.lower()), None)
        if match is None:
            raise RemoteKernelError(f"group key {column!r} is not a column of every site's mock")
        values |= {_plain(v) for v in frame[match].dropna().unique()}
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return value
    number = float(value)
    return int(number) if number.is_integer() else number


def _on_mocks(sql: str, plan: dict[str, Any]) -> pd.DataFrame:
    body = plan["body"]
    pooled = pd.concat(list(plan["mocks"].values()), ignore_index=True)
    result = run_on_tables(sql, {plan["dataset"]: pooled})
    helpers = f" with {', '.join(body['helpers'])} helping" if body["helpers"] else ""
    print(
        f"(mock data: the query on the {len(plan['mocks'])} sites' mocks pooled. At the sites: "
        f"each of {', '.join(n for n in body['parties'] if n not in body['helpers'])} runs it on "
        f"its private data, the parties {', '.join(body['parties'])}{helpers} add the parts by "
        "MPC, and only the pooled table is opened, once every site's thresholds pass)"
    )
    return result


def _ask_sites(plan: dict[str, Any], chosen: dict[str, Datasite], timeout: float) -> pd.DataFrame:
    body = plan["body"]
    table = _ask(body, chosen, timeout)
    frame = pd.DataFrame(table["data"], columns=table["columns"])
    frame.attrs["computation_id"] = body["computation_id"]
    frame.attrs["parties"] = body["parties"]
    frame.attrs["helpers"] = body["helpers"]
    return frame


def _ask(body: dict[str, Any], chosen: dict[str, Datasite], timeout: float) -> dict[str, Any]:
    """Send ``body`` to every site at once; the one result all of them opened."""

    def ask(site: Datasite) -> Any:
        return site.api.call(site.http, "POST", "/api/secure/query", json=body, timeout=timeout)

    answers: dict[str, Any] = {}
    errors: dict[str, RemoteKernelError] = {}
    with ThreadPoolExecutor(max_workers=len(chosen)) as pool:
        futures = {name: pool.submit(ask, site) for name, site in chosen.items()}
        for name, future in futures.items():
            try:
                answers[name] = future.result()
            except RemoteKernelError as exc:
                errors[name] = exc
    if errors:
        raise _failure(body, errors)
    tables = {json.dumps(a["result"], sort_keys=True) for a in answers.values()}
    if len(tables) != 1:
        raise RemoteKernelError("the sites opened different pooled tables: nothing is shown")
    return dict(next(iter(answers.values()))["result"])


def _failure(body: dict[str, Any], errors: dict[str, RemoteKernelError]) -> SecureQueryFailed:
    lines = [f"  {name}: {exc}" for name, exc in errors.items()]
    statuses = [getattr(exc, "status", 502) for exc in errors.values()]
    return SecureQueryFailed(
        f"the joint computation {body['computation_id'][:12]} released nothing:\n"
        + "\n".join(lines),
        max(statuses),
        {name: str(exc) for name, exc in errors.items()},
    )


# --- pooled models --------------------------------------------------------------------------------
def fit(
    kind: str,
    dataset: str,
    y: str,
    X: Sequence[str],  # the statistician's name
    sites: Sequence[str] | None = None,
    helpers: Sequence[str] | None = None,
    mock: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> pd.DataFrame:
    """A pooled ``"linear"`` or ``"logistic"`` regression of ``y`` on ``X`` over the
    sites' complete rows.

    Linear: the sites add their sums of squares and cross-products as secret shares and
    solve the normal equations together. Logistic: Newton's method, each step's
    Hessian and gradient added as shares (the coefficients after each step are seen by
    the sites, not by you). Only the coefficients, their standard errors and the row
    count are opened to you, once the pooled fit passes every site's thresholds (rows
    and residual degrees of freedom). Returns one row per term: ``coef``, ``std_err``.
    """
    if at_datasite():
        raise RemoteKernelError(
            "rk.secure.fit runs in your own kernel (it asks every site); not in a remote cell"
        )
    if kind not in ("linear", "logistic"):
        raise RemoteKernelError(f"rk.secure.fit knows 'linear' and 'logistic', not {kind!r}")
    chosen = _choose(sites)
    holders = {n: {d["name"] for d in s.datasets()} for n, s in chosen.items()}
    helpers, mocks = _roles(chosen, holders, dataset, helpers)
    columns = [y, *X]
    pooled_mock = pd.concat([m[columns] for m in mocks.values()], ignore_index=True)
    numbers = pooled_mock.apply(pd.to_numeric, errors="coerce").dropna()
    if mock:
        print(
            f"(mock data: the {kind} fit on the {len(mocks)} sites' mocks pooled. At the sites: "
            "each adds its part of the fit's sums by MPC, and only the "
            "coefficients, standard errors and row count are opened, once every site's "
            "thresholds pass)"
        )
        fitted = _least_squares if kind == "linear" else _logistic
        return fitted(numbers, y, list(X))
    scale = numbers.std(ddof=0).replace(0, 1).fillna(1)
    center = [float(numbers[c].mean()) if len(numbers) else 0.0 for c in columns]
    spread = [float(scale[c]) if len(numbers) else 1.0 for c in columns]
    if kind == "logistic":  # the outcome stays 0/1
        center[0], spread[0] = 0.0, 1.0
    body = {
        "computation_id": secrets.token_hex(16),
        "dataset": dataset,
        "parties": [_party_name(chosen[n]) for n in chosen],
        "helpers": [_party_name(chosen[n]) for n in helpers],
        "fit": {
            "kind": kind,
            "y": y,
            "x": list(X),
            "center": center,
            "scale": spread,
        },
    }
    table = _ask(body, chosen, timeout)
    frame = pd.DataFrame(table["data"], columns=table["columns"]).set_index("term")
    frame.attrs.update(
        nobs=table["nobs"],
        computation_id=body["computation_id"],
        parties=body["parties"],
        helpers=body["helpers"],
    )
    return frame


def _least_squares(rows: pd.DataFrame, y: str, x: list[str]) -> pd.DataFrame:
    """OLS with standard errors, on public (mock) rows."""
    design = np.column_stack([np.ones(len(rows)), rows[x].to_numpy(dtype=float)])
    target = rows[y].to_numpy(dtype=float)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    residual = target - design @ coef
    dof = max(len(rows) - design.shape[1], 1)
    cov = residual @ residual / dof * np.linalg.pinv(design.T @ design)
    terms = ["Intercept", *x]
    frame = pd.DataFrame({"coef": coef, "std_err": np.sqrt(np.diag(cov))}, index=terms)
    frame.index.name = "term"
    frame.attrs["nobs"] = len(rows)
    return frame


def _logistic(rows: pd.DataFrame, y: str, x: list[str]) -> pd.DataFrame:
    """Logistic regression by Newton's method, with standard errors, on public (mock) rows."""
    design = np.column_stack([np.ones(len(rows)), rows[x].to_numpy(dtype=float)])
    target = rows[y].to_numpy(dtype=float)
    beta = np.zeros(design.shape[1])
    hessian = np.eye(design.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -30, 30)))
        hessian = (design * (p * (1 - p))[:, None]).T @ design
        step = np.linalg.lstsq(hessian, design.T @ (target - p), rcond=None)[0]
        beta = beta + step
        if np.abs(step).max() < 1e-10:
            break
    errors = np.sqrt(np.diag(np.linalg.pinv(hessian)))
    frame = pd.DataFrame({"coef": beta, "std_err": errors}, index=["Intercept", *x])
    frame.index.name = "term"
    frame.attrs["nobs"] = len(rows)
    return frame
