"""``rk.query(sql, epsilon=...)`` at the datasite: plan, charge, then release with noise.

The order is the whole point. The engine (:mod:`remote_kernel.checks.dp`) plans the
query first -- every refusal happens there, before any noise is drawn, and costs
nothing -- and says exactly what one release spends. That amount is charged to the
researcher's budget on the dataset in one committed transaction
(:meth:`~remote_kernel.datasite.store.Store.charge_budget`: atomic, audited,
durable); only then is the noise drawn and the table recorded as a datasite-made
output of the running cell, released by the policy without a reviewer. A charge is
never refunded: if anything fails after it, the budget is spent, never overspent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import TYPE_CHECKING, Any

import pandas as pd

from remote_kernel.checks.filter import QUERY_MIME
from remote_kernel.protocol.errors import InputError, QueryRejected
from remote_kernel.protocol.models import Finding, OutputItem, Verdict
from remote_kernel.querylang import serialize_sql

if TYPE_CHECKING:
    from remote_kernel.checks.dp.answer import DPAnswer
    from remote_kernel.checks.dp.metadata import DPMetadata
    from remote_kernel.datasite.core import DatasiteCore
    from remote_kernel.datasite.store import Charge

#: Mime type of a DP answer: the noisy table, its error bars and what it cost.
DP_MIME = "application/vnd.remote-kernel.dp+json"


async def run_dp_query(
    core: DatasiteCore, session_id: str, sql: str, epsilon: float, delta: float = 0.0
) -> dict[str, Any]:
    """Answer one DP query of the cell running in ``session_id`` (see the module docstring)."""
    try:
        from remote_kernel.checks.dp.engine import plan_dp_query
    except ImportError:
        raise InputError(
            "this datasite has no DP engine installed, so DP queries are refused: its admin "
            "installs it with pip install 'remote_kernel[dp]'"
        ) from None

    request = core.running_request(session_id)
    user = core.store.user_name(request.user_id)
    dataset = dataset_of(sql)
    metadata = metadata_of(core, dataset)
    try:
        plan = await asyncio.to_thread(
            plan_dp_query, sql, core.private_tables(), metadata, epsilon, delta
        )
    except QueryRejected as exc:
        raise InputError(str(exc)) from None
    spent_epsilon, spent_delta = plan.spent
    what = f"request:{request.id} sql-sha256:{hashlib.sha256(sql.encode()).hexdigest()}"
    charge = core.store.charge_budget(user, dataset, spent_epsilon, spent_delta, what=what)
    answer: DPAnswer = await asyncio.to_thread(plan.release)
    finding = Finding("dp-tier", Verdict.RELEASE, cost_line(charge))
    output = core.record_datasite_output(request, dp_output_item(sql, answer, charge), (finding,))
    return {
        "output_id": output.id,
        "summary": output.summary,
        "result": json.loads(answer.table.to_json(orient="split", index=False)),
        "epsilon": charge.epsilon,
        "epsilon_left": charge.epsilon_left,
    }


def dataset_of(sql: str) -> str:
    """The one dataset a query reads, from DuckDB's parse (the engine checks the rest)."""
    document = serialize_sql(sql)
    try:
        table = document["statements"][0]["node"]["from_table"]
        if table.get("type") == "BASE_TABLE" and table.get("table_name"):
            return str(table["table_name"])
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    raise InputError(
        "a DP query reads one dataset: SELECT ... FROM <dataset> [WHERE ...] [GROUP BY ...]"
    )


def metadata_of(core: DatasiteCore, dataset: str) -> DPMetadata:
    """The owner's DP declarations for ``dataset``; without them no DP query runs there."""
    if dataset not in core.config.datasets:
        available = ", ".join(sorted(core.config.datasets)) or "none"
        raise InputError(f"this datasite has no dataset {dataset!r} (available: {available})")
    metadata = core.policy.dataset(dataset).dp
    if metadata is None:
        raise InputError(
            f"{dataset!r} has no DP metadata, so DP queries on it are refused: the datasite "
            f"admin declares its bounds and public categories under datasets.{dataset}.dp "
            "in policy.yaml (see the policy documentation)"
        )
    return metadata


def cost_line(charge: Charge) -> str:
    """What the researcher reads under the table: the cost and what is left."""
    delta = f", δ={charge.delta:g}" if charge.delta else ""
    return (
        f"differential privacy: ε={charge.epsilon:g}{delta} spent on {charge.dataset}; "
        f"ε={charge.epsilon_left:g} left"
    )


def dp_output_item(sql: str, answer: DPAnswer, charge: Charge) -> OutputItem:
    """The released table: noisy values with their error bars, and its cost (text, HTML, JSON)."""
    shown: pd.DataFrame = answer.error_bars()
    notes = [cost_line(charge), *answer.notes]
    split = json.loads(answer.table.to_json(orient="split", index=False))
    errors = json.loads(answer.error.to_json(orient="split", index=False))
    data = {
        "text/plain": shown.to_string(index=False) + "\n" + "\n".join(notes),
        "text/html": shown.to_html(index=False)
        + "".join(f"<p><small>{_escape(n)}</small></p>" for n in notes),
        QUERY_MIME: {"sql": sql, "columns": split["columns"], "data": split["data"]},
        DP_MIME: {
            "sql": sql,
            "epsilon": charge.epsilon,
            "delta": charge.delta,
            "epsilon_left": charge.epsilon_left,
            "confidence": answer.confidence,
            "columns": split["columns"],
            "data": split["data"],
            "error": errors["data"],
            "notes": list(answer.notes),
        },
    }
    return OutputItem("display_data", {"data": data, "metadata": {}, "transient": {}})


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
