"""One site's side of a pooled query, from the researcher's request to its answer.

HTTP-free: the handler hands in the parsed body and the user; this module verifies
the request (:mod:`.spec`), computes the site's own vectors (:mod:`.local`), runs
this site's MPyC party as a subprocess (:mod:`.party`) under a deadline, writes one
audit entry whatever happens, and returns the pooled table or raises the reason
nothing was released. The party process gets numbers and public facts only, in a
0600 job file; the researcher's SQL never reaches it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from remote_kernel.datasite.mpc.errors import (
    ComputationBusy,
    JointComputationFailed,
    NotOptedIn,
    PooledResultWithheld,
)
from remote_kernel.datasite.mpc.fit import (
    FitSpec,
    design_rows,
    local_sums,
    unscale,
    verify_fit,
)
from remote_kernel.datasite.mpc.fit import layout as fit_layout
from remote_kernel.datasite.mpc.local import local_vector
from remote_kernel.datasite.mpc.plan import Plan, build_plan, key_cells
from remote_kernel.datasite.mpc.spec import (
    SecureRequest,
    parse_request,
    verify_parties,
    verify_query,
)
from remote_kernel.protocol.errors import RemoteKernelError

if TYPE_CHECKING:
    from remote_kernel.checks.policy import Thresholds
    from remote_kernel.datasite.core import DatasiteCore
    from remote_kernel.datasite.store import User
    from remote_kernel.querylang import ParsedQuery

#: Seconds the party process gets beyond the computation's own timeout to write its result.
GRACE = 5.0
#: One joint computation at a time per site: its party listens on one configured port.
_busy = asyncio.Lock()


@dataclass
class Prepared:
    """What this site's party computes with: public layout, and its own numbers."""

    request: SecureRequest
    thresholds: Thresholds
    layout: list[str]
    vector: list[float] | None  # None at a helper
    parsed: ParsedQuery | None = None  # a query's (None for a fit)
    plan: Plan | None = None
    rows: list[list[float]] | None = None  # a logistic fit's own rows (None at a helper)


async def secure_query(core: DatasiteCore, user: User, body: Any) -> dict[str, Any]:
    """Verify, compute jointly, audit; the pooled table, or the reason nothing was released."""
    request: SecureRequest | None = None
    try:
        if not core.config.mpc.enabled:
            raise NotOptedIn(
                f"datasite {core.config.name!r} takes part in no joint computations "
                "(its datasite.yaml has no mpc: section)"
            )
        request = parse_request(body)
        prepared = await _prepare(core, user, request)
        if _busy.locked():
            raise ComputationBusy(
                f"{core.config.name} is in another joint computation; try again shortly"
            )
        async with _busy:
            outcome = await _run_party(core, prepared)
        answer = _answer(core, prepared, outcome)
    except RemoteKernelError as exc:
        opened = (
            "one pass/fail bit per rule" if isinstance(exc, PooledResultWithheld) else "nothing"
        )
        _audit(
            core,
            user,
            request,
            "mpc.failed",
            outcome=f"{exc.__class__.__name__}: {exc}",
            opened=opened,
        )
        raise
    except Exception as exc:  # a bug: audited too, by its kind only (a message may quote data)
        _audit(core, user, request, "mpc.failed", outcome=exc.__class__.__name__, opened="nothing")
        raise
    _audit(core, user, request, "mpc.released", opened=answer["opened"], sha256=answer["sha256"])
    return answer


async def _prepare(core: DatasiteCore, user: User, request: SecureRequest) -> Prepared:
    config = core.config
    verify_parties(request, config.name, config.mpc)
    thresholds = core.policy.for_researcher(user.name)
    helper = config.name in request.helpers
    tables = None if helper else core.private_tables()
    opted_in = {name: entry.mpc for name, entry in config.datasets.items()}
    vector = None
    if request.fit is not None:
        spec = request.fit
        verify_fit(spec, request.dataset, tables, opted_in, thresholds)
        if tables is None:
            return Prepared(request, thresholds, fit_layout(spec), None)
        frame = tables[request.dataset]
        if spec.kind == "logistic":
            rows = await asyncio.to_thread(design_rows, spec, frame)
            return Prepared(request, thresholds, [], None, rows=rows)
        vector = await asyncio.to_thread(local_sums, spec, frame)
        return Prepared(request, thresholds, fit_layout(spec), vector)
    parsed = verify_query(request, tables, opted_in, thresholds)
    domain = [list(values) for values in request.domain]
    plan = build_plan(parsed, len(key_cells(domain)))
    if tables is not None:
        vector = await asyncio.to_thread(local_vector, parsed, tables, domain, plan)
    return Prepared(request, thresholds, plan.layout, vector, parsed, plan)


def _job(core: DatasiteCore, prepared: Prepared, result: Path) -> dict[str, Any]:
    config, request, t = core.config, prepared.request, prepared.thresholds
    mpc, me = config.mpc, config.name
    addresses, certificates = [], []
    for name in request.parties:
        peer = mpc.peer(name)
        host, port, cert = (
            (mpc.host, mpc.port, mpc.certificate)
            if name == me
            else ((peer.host, peer.port, peer.certificate) if peer else ("", 0, ""))
        )
        addresses.append([host, port])
        certificates.append(str(mpc.path(config.directory, cert)))
    return {
        "pid": request.parties.index(me),
        "names": list(request.parties),
        "helpers": list(request.helpers),
        "addresses": addresses,
        "listen_host": mpc.host,
        "certificate": str(mpc.path(config.directory, mpc.certificate)),
        "key": str(mpc.path(config.directory, mpc.key)),
        "peer_certificates": certificates,
        "digest": request.digest,
        "thresholds": {
            "min_cell_count": t.min_cell_count,
            "dominance_n": t.dominance_n,
            "dominance_k": t.dominance_k,
            "p_ratio": t.p_ratio,
            "min_dof": t.min_dof,
        },
        "task": request.fit.kind if request.fit else "query",
        "rows": prepared.rows,
        "q": request.fit.size if request.fit else 0,
        "layout": prepared.layout,
        "plan": prepared.plan.to_json() if prepared.plan else None,
        "vector": prepared.vector,
        "timeout": mpc.timeout_seconds,
        "result": str(result),
    }


async def _run_party(core: DatasiteCore, prepared: Prepared) -> dict[str, Any]:
    """Run this site's party; its result, or :class:`JointComputationFailed`."""
    workdir = Path(tempfile.mkdtemp(prefix="rk-mpc-"))
    try:
        os.chmod(workdir, 0o700)
        job_path, result = workdir / "job.json", workdir / "result.json"
        job_path.write_text(json.dumps(_job(core, prepared, result)))
        os.chmod(job_path, 0o600)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "remote_kernel.datasite.mpc.party",
            str(job_path),
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        timeout = 2 * core.config.mpc.timeout_seconds + GRACE
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
        if not result.exists():
            raise JointComputationFailed(
                f"the joint computation {prepared.request.computation_id[:12]} did not finish "
                f"at {core.config.name}: nothing was released"
            )
        outcome: dict[str, Any] = json.loads(result.read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "error" in outcome:
        raise JointComputationFailed(
            f"joint computation failed at {core.config.name}: {outcome['error']}; "
            "nothing was released"
        )
    return outcome


def _answer(core: DatasiteCore, prepared: Prepared, outcome: dict[str, Any]) -> dict[str, Any]:
    request, parsed, plan = prepared.request, prepared.parsed, prepared.plan
    what = "pooled model" if request.fit else "pooled table"
    if not outcome.get("released"):
        failed = ", ".join(outcome.get("failed", []))
        raise PooledResultWithheld(
            f"the {what} was withheld: it fails {failed} under the thresholds of at least "
            "one party; nothing was released to anyone"
        )
    if request.fit is not None:
        table, opened = _model(request.fit, outcome["values"])
    else:
        assert parsed is not None and plan is not None
        columns, rows = _table(parsed, plan, request, outcome["values"])
        table = {"columns": columns, "data": rows}
        opened = f"the pooled table: {len(rows)} row(s) x {len(parsed.aggregates)} aggregate(s)"
    text = json.dumps(table, sort_keys=True, separators=(",", ":"))
    return {
        "computation_id": request.computation_id,
        "digest": request.digest,
        "parties": list(request.parties),
        "helpers": list(request.helpers),
        "site": core.config.name,
        "result": table,
        "opened": opened,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def _model(spec: FitSpec, values: list[float]) -> tuple[dict[str, Any], str]:
    """Coefficients and standard errors on the data's own scale, and the row count."""
    q = spec.size
    n, beta, cov = values[0], np.array(values[1 : 1 + q]), np.array(values[1 + q :])
    coef, covariance = unscale(spec, beta, cov.reshape(q, q))
    errors = np.sqrt(np.clip(np.diag(covariance), 0, None))
    rows = [
        [term, float(c), float(e)]
        for term, c, e in zip(["Intercept", *spec.x], coef, errors, strict=True)
    ]
    table = {"columns": ["term", "coef", "std_err"], "data": rows, "nobs": round(n)}
    return table, f"the fitted model: {q} coefficients, their covariance and the row count"


def _table(
    parsed: ParsedQuery, plan: Plan, request: SecureRequest, values: list[float]
) -> tuple[list[str], list[list[Any]]]:
    """The pooled table in the query's column order: keys, then aggregates as selected."""
    names = {position: alias for alias, position in parsed.aliases.items()}
    columns: list[str] = [""] * parsed.select_count
    for key in parsed.keys:
        assert key.select_position is not None
        columns[key.select_position] = names.get(key.select_position, key.text)
    for aggregate in parsed.aggregates:
        columns[aggregate.position] = names.get(aggregate.position, aggregate.text)
    rows = []
    for c, combo in enumerate(key_cells([list(v) for v in request.domain])):
        row: list[Any] = [None] * parsed.select_count
        for key, value in zip(parsed.keys, combo, strict=True):
            row[key.select_position] = value  # type: ignore[index]
        for a, aggregate in enumerate(parsed.aggregates):
            value = values[a * plan.cells + c]
            row[aggregate.position] = round(value) if aggregate.is_count else value
        rows.append(row)
    return columns, rows


def _audit(
    core: DatasiteCore, user: User, request: SecureRequest | None, action: str, **detail: Any
) -> None:
    """One entry per joint computation at every site: what, with whom, what was opened."""
    if request is None:
        core.store.audit(user.name, action, "", **detail)
        return
    core.store.audit(
        user.name,
        action,
        request.computation_id,
        sql=request.sql,
        dataset=request.dataset,
        parties=list(request.parties),
        helpers=list(request.helpers),
        fit=request.fit.to_json() if request.fit else None,
        digest=request.digest,
        **detail,
    )
