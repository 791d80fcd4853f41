"""``rk.query(sql)`` and ``rk.crosstab(...)``: aggregates the datasite computes itself.

At the datasite, the kernel only *asks*: the datasite runs the query on the
private data (DuckDB, read-only, no external access), computes each cell's
evidence, and releases the table automatically when every cell passes its
policy. The released table appears as an output of the cell; the call also
returns the true result to the kernel for further work (what the kernel then
prints is an ordinary output, checked like any other).

In the researcher's own kernel the same calls run on the mock data, with the
same validation, so a query that would be rejected fails here first.

With ``epsilon=`` the datasite answers with differential privacy instead (no
reviewer; the cost is charged to the researcher's budget), and the table returned
carries its provenance in ``.attrs["dp"]`` (SQL, ε spent and left, error bars).
``rk.exact(answer)`` then asks for the exact answer of that DP answer: the exact
tier as above, held for a data owner unless every cell passes, with the DP answer
it came from shown to the reviewer ("noisy now, exact later").
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from remote_kernel.protocol.errors import (
    QueryRejected,
    RemoteKernelError,
)
from remote_kernel.protocol.kernel_env import SITE_ENV
from remote_kernel.querylang import crosstab_sql, open_connection, run_on_tables
from remote_kernel.querylang.engine import refusing_errors
from remote_kernel.researcher.client import dp_attrs, sites
from remote_kernel.researcher.data import at_datasite
from remote_kernel.researcher.kernel_api import post_to_datasite


class DatasiteTable(pd.DataFrame):
    """A query result inside a datasite kernel.

    The datasite already shows the checked table as an output of the cell, so
    this frame displays nothing itself (no second, unchecked copy to review).
    Anything derived from it is a plain DataFrame and displays normally.
    """

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        return pd.DataFrame

    def _ipython_display_(self) -> None:
        return None


def query(
    sql: str, site: str | None = None, epsilon: float | None = None, delta: float = 0.0
) -> pd.DataFrame:
    """Run an aggregate SQL query: on the mock here, by the datasite there.

    With ``epsilon`` the datasite answers with differential privacy: noise calibrated
    to the query, charged to your budget on that dataset, released without a reviewer.
    Here, on the mock, the same call gives the exact mock answer and says so.
    """
    if epsilon is not None:
        check_loss(epsilon, delta)
    if at_datasite():
        loss = {} if epsilon is None else {"epsilon": float(epsilon), "delta": float(delta)}
        body = {"sql": sql, **loss}
        return _ask_datasite(body)
    tables = _mock_tables(site)
    if epsilon is None:
        return run_on_tables(sql, tables)
    result = _mock_dp(sql, tables, epsilon)
    mock = {"sql": sql, "epsilon": epsilon, "delta": delta, "output_id": None, "mock": True}
    result.attrs["dp"] = {**mock, "site": site}
    return result


def exact(answer: pd.DataFrame, site: str | None = None) -> pd.DataFrame:
    """The exact answer of a DP answer (the table ``rk.query(sql, epsilon=...)`` returned).

    In a remote cell the datasite runs the same SQL on its exact tier: released at
    once if every cell passes its policy, otherwise held for a data owner, who sees
    which DP answer it came from and what that cost. Here, on the mock, it gives the
    mock's exact answer and says so. Either way it costs no privacy budget.
    """
    facts = answer.attrs.get("dp") if isinstance(answer, pd.DataFrame) else None
    if not isinstance(facts, dict) or not isinstance(facts.get("sql"), str):
        raise QueryRejected(
            "rk.exact takes a DP answer: the table rk.query(sql, epsilon=...) returned "
            "(its .attrs['dp'] names the query)"
        )
    if at_datasite():
        if facts.get("output_id") is None:
            raise QueryRejected(
                "this table was not answered by this datasite (a mock answer?): call "
                "rk.exact on the table rk.query(sql, epsilon=...) returned in a remote cell"
            )
        return _ask_datasite({"sql": facts["sql"], "exact_of": facts["output_id"]})
    result = run_on_tables(facts["sql"], _mock_tables(site or facts.get("site")))
    print(
        "(mock data: the exact answer. At the datasite, rk.exact asks for the exact answer "
        "of the DP answer: released if every cell passes the policy, otherwise held for a "
        f"data owner, who sees the DP answer (ε={facts.get('epsilon')}) it came from)"
    )
    return result


def crosstab(
    dataset: str,
    index: str | Sequence[str],
    columns: str | Sequence[str] | None = None,
    values: str | None = None,
    aggfunc: str = "count",
    site: str | None = None,
    epsilon: float | None = None,
    delta: float = 0.0,
) -> pd.DataFrame:
    """A cross-tabulation computed as an aggregate query (released as a long table)."""
    sql = crosstab_sql(dataset, index, columns=columns, values=values, aggfunc=aggfunc)
    return query(sql, site=site, epsilon=epsilon, delta=delta)


def check_loss(epsilon: Any, delta: Any) -> None:
    """ε must be a finite number above 0 and δ a finite number from 0, checked here first.

    NaN and infinity cannot even be sent (JSON has no such numbers: the kernel would fail
    with "Out of range float values are not JSON compliant"); the datasite checks again,
    with its own limits (ε ≤ 10, δ ≤ 1e-5).
    """
    for name, value, least in (("epsilon", epsilon, "positive"), ("delta", delta, "0 or more")):
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or value < 0 or (name == "epsilon" and not value):
            raise QueryRejected(  # an InputError the datasite's error summary can name
                f"{name} must be a finite number, {least} (e.g. epsilon=0.1, delta=1e-6); "
                f"got {value!r}"
            )


def _mock_dp(sql: str, tables: dict[str, pd.DataFrame], epsilon: float) -> pd.DataFrame:
    """A DP query on the mock: exact (the mock is public), in the locked-down engine.

    The DP tier takes shapes the exact tier refuses (MEDIAN, quantiles), so the
    query runs as written; what the datasite's DP tier refuses is refused there.
    """
    con = open_connection(tables)
    try:
        with refusing_errors(private=False):
            result = con.execute(sql).df()
    finally:
        con.close()
    print(
        f"(mock data: the exact answer, no noise. At the datasite: a DP answer with ε={epsilon:g} "
        "charged to your budget on the dataset, released without a reviewer, with error bars; "
        "rk.budget() shows what you have left)"
    )
    return result


def _ask_datasite(body: dict[str, Any]) -> pd.DataFrame:
    """POST a query to this kernel's datasite; the table it answers (with ``attrs["dp"]``
    for a DP answer), or the refusal raised as BudgetExhausted / QueryRejected."""
    answer = post_to_datasite("/kernel/query", body)
    split = answer["result"]
    table = DatasiteTable(split["data"], columns=split["columns"])
    if isinstance(answer.get("dp"), dict):
        payload = {**answer["dp"], **split}
        table.attrs["dp"] = dp_attrs(payload, answer.get("output_id"), os.environ.get(SITE_ENV))
    return table


def _mock_tables(site: str | None) -> dict[str, pd.DataFrame]:
    connected = sites()
    if not connected:
        raise RemoteKernelError("no datasite connected: run rk.connect(url, token=..., name=...)")
    if site is not None and site not in connected:
        raise RemoteKernelError(f"not connected to {site!r} (connected: {', '.join(connected)})")
    chosen = connected[site] if site else next(iter(connected.values()))
    return {d["name"]: chosen.mock(d["name"]) for d in chosen.datasets()}
