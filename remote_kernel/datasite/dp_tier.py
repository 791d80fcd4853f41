"""``rk.query(sql, epsilon=...)`` at the datasite: plan, charge, then release with noise.

The order is the whole point. The engine (:mod:`remote_kernel.checks.dp`) plans the
query first -- every refusal happens there, before any noise is drawn, and costs
nothing -- and says exactly what one release spends. That amount is charged to the
researcher's budget on *each* dataset the query reads (a join over a declared privacy
unit reads two) in one committed transaction
(:meth:`~remote_kernel.datasite.store.Store.charge_budgets`: atomic -- every charge or
none --, audited, durable); only then is the noise drawn and the table recorded as a datasite-made
output of the running cell, released by the policy without a reviewer. A charge is
never refunded: if anything fails after it, the budget is spent, never overspent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from remote_kernel.checks.filter import QUERY_MIME
from remote_kernel.protocol.errors import InputError, NotFound, QueryRejected
from remote_kernel.protocol.models import Finding, OutputItem, OutputState, Verdict
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
        from remote_kernel.checks.dp.join import datasets_of
    except ImportError:
        raise InputError(
            "this datasite has no DP engine installed, so DP queries are refused: its admin "
            "installs it with pip install 'remote_kernel[dp]'"
        ) from None

    request = core.running_request(session_id)
    user = core.store.user_name(request.user_id)
    datasets = list(dict.fromkeys(datasets_of(sql))) or [dataset_of(sql)]
    metadata = {dataset: metadata_of(core, dataset) for dataset in datasets}
    try:
        plan = await asyncio.to_thread(
            plan_dp_query, sql, core.private_tables(), metadata, epsilon, delta
        )
    except QueryRejected as exc:
        raise InputError(str(exc)) from None
    spent_epsilon, spent_delta = plan.spent
    what = f"request:{request.id} sql-sha256:{hashlib.sha256(sql.encode()).hexdigest()}"
    charges = core.store.charge_budgets(user, datasets, spent_epsilon, spent_delta, what=what)
    answer: DPAnswer = await asyncio.to_thread(plan.release)
    item = dp_output_item(sql, answer, charges)
    finding = Finding("dp-tier", Verdict.RELEASE, cost_line(charges))
    output = core.record_datasite_output(request, item, (finding,))
    facts = item.content["data"][DP_MIME]
    return {
        "output_id": output.id,
        "summary": output.summary,
        "result": {"columns": facts["columns"], "data": facts["data"]},
        "dp": {k: v for k, v in facts.items() if k not in ("columns", "data")},
        "epsilon": facts["epsilon"],
        "epsilon_left": facts["epsilon_left"],
    }


async def run_exact_of(
    core: DatasiteCore, session_id: str, sql: str, answer_id: int
) -> dict[str, Any]:
    """``rk.exact(answer)``: the exact answer of one of the researcher's DP answers.

    It runs on the exact tier as any ``rk.query(sql)`` does (released if every cell
    passes, else held for a data owner); a finding tells the reviewer which DP answer it
    came from and what that cost, so they can weigh the two side by side. Only the
    researcher's own released DP answer with the same SQL can be named: anything else
    is "not a DP answer of yours", so other people's ids cannot be probed.
    """
    request = core.running_request(session_id)
    facts = own_dp_answer(core, request.user_id, answer_id)
    if facts is None or facts.get("sql") != sql:
        raise InputError(
            f"output {answer_id} is not a DP answer of yours with this SQL: rk.exact takes "
            "the table rk.query(sql, epsilon=...) returned"
        )
    delta = f", δ={facts['delta']:g}" if facts.get("delta") else ""
    finding = Finding(
        "exact-of-dp",
        Verdict.RELEASE,
        f"the exact answer of DP answer #{answer_id} (ε={facts['epsilon']:g}{delta} on "
        f"{facts.get('dataset') or dataset_of(sql)}), which the researcher already holds: "
        "compare the two before releasing this one",
    )
    return await core.run_query(session_id, sql, extra=(finding,))


def own_dp_answer(core: DatasiteCore, user_id: int, output_id: int) -> dict[str, Any] | None:
    """The DP payload of ``output_id`` if it is a released DP answer of ``user_id``'s."""
    try:
        output = core.store.get_output(output_id)
    except NotFound:
        return None
    released = output.state == OutputState.RELEASED.value and output.origin == "query"
    if not released or core.store.get_request(output.request_id).user_id != user_id:
        return None
    payload = json.loads(output.body)["content"].get("data", {}).get(DP_MIME)
    return payload if isinstance(payload, dict) else None


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


def cost_line(charges: Sequence[Charge]) -> str:
    """What the researcher reads under the table: the cost on each dataset and what is left.

    ``ε=0.1 spent on heart; ε=0.2 left``, or for a join (charged on each dataset it read)
    ``ε=0.1 spent on each of patients and visits; ε=0.9 left on patients, ε=0.4 left on
    visits``.
    """
    first = charges[0]
    delta = f", δ={first.delta:g}" if first.delta else ""
    if len(charges) == 1:
        return (
            f"differential privacy: ε={first.epsilon:g}{delta} spent on {first.dataset}; "
            f"ε={first.epsilon_left:g} left"
        )
    names = " and ".join(c.dataset for c in charges)
    left = ", ".join(f"ε={c.epsilon_left:g} left on {c.dataset}" for c in charges)
    return f"differential privacy: ε={first.epsilon:g}{delta} spent on each of {names}; {left}"


def dp_output_item(sql: str, answer: DPAnswer, charges: Sequence[Charge]) -> OutputItem:
    """The released table: noisy values with their error bars, and its cost (text, HTML, JSON).

    ``error_bars`` in the JSON is the table as shown ("57.3 ± 4.1 at 95%" per aggregate
    cell), so the kernel's DataFrame and the rendered output say the same thing.
    ``dataset`` names every dataset charged ("patients, visits"); ``epsilon_left`` and
    ``delta_left`` are the least left among them, ``charges`` says each.
    """
    shown = error_bar_table(answer)
    notes = [cost_line(charges), *answer.notes]
    charge = min(charges, key=lambda c: (c.epsilon_left, c.delta_left))
    split = json.loads(answer.table.to_json(orient="split", index=False))
    errors = json.loads(answer.error.to_json(orient="split", index=False))
    data = {
        "text/plain": shown.to_string(index=False) + "\n" + "\n".join(notes),
        "text/html": shown.to_html(index=False)
        + "".join(f"<p><small>{_escape(n)}</small></p>" for n in notes),
        QUERY_MIME: {"sql": sql, "columns": split["columns"], "data": split["data"]},
        DP_MIME: {
            "sql": sql,
            "dataset": ", ".join(c.dataset for c in charges),
            "datasets": [c.dataset for c in charges],
            "charges": [
                {"dataset": c.dataset, "epsilon_left": c.epsilon_left, "delta_left": c.delta_left}
                for c in charges
            ],
            "epsilon": charge.epsilon,
            "delta": charge.delta,
            "epsilon_left": charge.epsilon_left,
            "delta_left": charge.delta_left,
            "confidence": answer.confidence,
            "columns": split["columns"],
            "data": split["data"],
            "error": errors["data"],
            "error_bars": shown.to_numpy().tolist(),
            "keys": list(answer.keys),
            "notes": notes,
        },
    }
    return OutputItem("display_data", {"data": data, "metadata": {}, "transient": {}})


def error_bar_table(answer: DPAnswer) -> pd.DataFrame:
    """The noisy table with each aggregate cell as "57.3 ± 4.1 at 95%" (keys as they are)."""
    shown = answer.table.copy()
    level = f"{answer.confidence * 100:g}%"
    for column in answer.aggregate_columns:
        pairs = zip(answer.table[column], answer.error[column], strict=True)
        shown[column] = [error_bar(value, error, level) for value, error in pairs]
    return shown


def error_bar(value: Any, error: Any, level: str) -> str:
    """One cell for a person: the error to 2 significant digits (whole numbers kept whole)
    and the value to the same decimal place, never in exponent notation ("57.3 ± 4.1 at
    95%", "1234 ± 123 at 95%", "0.457 ± 0.012 at 95%")."""
    if pd.isna(value) or not math.isfinite(float(value)):
        return "no estimate (too few rows)"
    value = float(value)
    if pd.isna(error):
        return f"{_plain(value, 4)} (no error bar for this statistic)"
    if math.isinf(float(error)):
        return f"{_plain(value, 4)} ± unbounded at {level}"
    error = float(error)
    if error <= 0:
        return f"{_plain(value, 4)} ± 0 at {level}"
    places = max(0, 1 - math.floor(math.log10(error)))
    return f"{value:.{places}f} ± {round(error, places):.{places}f} at {level}"


def _plain(value: float, digits: int) -> str:
    """``value`` to about ``digits`` significant digits, without an exponent."""
    if value == 0:
        return "0"
    places = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    shown = f"{value:.{places}f}"
    return shown.rstrip("0").rstrip(".") if "." in shown else shown


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
