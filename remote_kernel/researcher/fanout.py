"""One cell, many datasites: submit everywhere at once and gather the released values.

:func:`run_everywhere` is what ``%%remote`` (and any script) calls: it checks
what it can before sending (the datasets the cell names exist at each site,
and have the columns of the mock the cell was tried on), submits to every site
concurrently so that one slow or unreachable site delays nobody, and returns a
:class:`RemoteResult` that follows every site's request live.
"""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from remote_kernel.protocol.errors import NoValue, RemoteKernelError, UnknownDataset
from remote_kernel.researcher.client import Datasite, RemoteRequest

#: ``rk.data("heart")`` / ``remote_kernel.data('heart')`` with a literal name (the fallback
#: for cells Python cannot parse).
DATA_CALL = re.compile(r"""\b(?:rk|remote_kernel)\.data\(\s*(['"])([A-Za-z0-9_.-]+)\1""")
#: The datasets a query reads: what follows FROM or JOIN (quoted or not).
FROM_NAME = re.compile(r"""\b(?:FROM|JOIN)\s+("?)([A-Za-z0-9_.-]+)\1""", re.IGNORECASE)
#: The calls that name a dataset, and which of their arguments does.
NAMING_CALLS = {"data": "name", "crosstab": "dataset", "query": "sql"}


@dataclass
class SiteRun:
    """One site's part of a fan-out: its request, or why it never got one."""

    site: str
    request: RemoteRequest | None = None
    error: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """queued, running, pending review, released, denied, blocked, failed, ..."""
        if self.request is None:
            return "not sent"
        request = self.request
        if not request.finished:
            return "connection lost" if request.connection_lost else request.status
        states = {o.state for o in request.outputs}
        if request.status in ("failed", "interrupted"):
            return request.status
        if "pending" in states:
            return "pending review"
        if states and states <= {"released"}:
            return "released" if request.status == "completed" else f"{request.status} (released)"
        if "denied" in states:
            return "denied"
        if "conflicted" in states:
            return "conflicted"
        if "blocked" in states:
            return "blocked"
        return request.status

    @property
    def done(self) -> bool:
        return self.request is None or self.request.decided


class RemoteResult:
    """The handle of one fan-out: per-site requests, live status and released values.

    ``result.values()`` → ``{site: object}`` for every site whose value was
    released; ``result.missing()`` says why the others have none yet.
    """

    def __init__(self, code: str, runs: dict[str, SiteRun]) -> None:
        self.code = code
        self.runs = runs
        self.started = time.monotonic()

    @property
    def requests(self) -> dict[str, RemoteRequest]:
        return {name: run.request for name, run in self.runs.items() if run.request is not None}

    def wait(self, timeout: float | None = None, until: str = "decided") -> RemoteResult:
        """Wait for every site that got the cell (``until``: "finished" or "decided")."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for request in self.requests.values():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            request.wait(timeout=remaining, until=until)
        return self

    def value(self, site: str) -> Any:
        """The value released at ``site``; raises :class:`NoValue` saying why not."""
        run = self.runs.get(site)
        if run is None:
            raise NoValue(f"this cell was not sent to {site!r} (sent to: {', '.join(self.runs)})")
        if run.request is None:
            raise NoValue(f"the cell never reached {site}: {run.error}")
        return run.request.value()

    def values(self, wait: bool = False, timeout: float | None = None) -> dict[str, Any]:
        """``{site: value}`` for every site whose value is released (see :meth:`missing`)."""
        if wait:
            self.wait(timeout=timeout)
        result = {}
        for site in self.runs:
            try:
                result[site] = self.value(site)
            except NoValue:
                continue
        return result

    def missing(self) -> dict[str, str]:
        """``{site: reason}`` for every site without a released value."""
        reasons = {}
        for site in self.runs:
            try:
                self.value(site)
            except NoValue as exc:
                reasons[site] = str(exc)
        return reasons

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for name, run in self.runs.items():
            request = run.request
            rows.append(
                {
                    "site": name,
                    "request": request.id if request else None,
                    "state": run.state,
                    "outputs": len(request.outputs) if request else 0,
                    "message": run.error or (request.message if request else ""),
                    "warnings": list(run.warnings),
                }
            )
        return rows

    def __repr__(self) -> str:
        parts = [f"{row['site']}: {row['state']}" for row in self.status()]
        return f"<RemoteResult {'; '.join(parts)}>"

    def _repr_html_(self) -> str:
        from remote_kernel.researcher.display import fanout_table_html

        return fanout_table_html(self, time.monotonic() - self.started)


def datasets_named(code: str) -> list[str]:
    """The datasets a cell names with literals: ``rk.data("heart")``,
    ``rk.crosstab("heart", ...)`` and the FROM of ``rk.query("... FROM heart ...")``.

    Checked at each site before the cell is sent, so that a dataset a site lacks is an
    error at once, not a refusal that waits for a reviewer. Names built at run time
    are not seen (the cell then fails at the site, as it would anyway).
    """
    try:
        tree = ast.parse(_python_source(code))
    except SyntaxError:
        return sorted({match.group(2) for match in DATA_CALL.finditer(code)})
    names: set[str] = set()
    for node in ast.walk(tree):
        literal = _naming_argument(node)
        if literal is None:
            continue
        function, text = literal
        if function == "query":
            names.update(match.group(2) for match in FROM_NAME.finditer(text))
        else:
            names.add(text)
    return sorted(names)


def _python_source(code: str) -> str:
    """The cell as Python (IPython's ``%magics`` and ``!shell`` lines turned into calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return str(TransformerManager().transform_cell(code))


def _naming_argument(node: ast.AST) -> tuple[str, str] | None:
    """``("query", "SELECT ...")`` for ``rk.query("SELECT ...")``; None for other nodes."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return None
    owner, function = node.func.value, node.func.attr
    if function not in NAMING_CALLS or not (
        isinstance(owner, ast.Name) and owner.id in ("rk", "remote_kernel")
    ):
        return None
    argument = node.args[0] if node.args else None
    for keyword in node.keywords:
        if keyword.arg == NAMING_CALLS[function]:
            argument = keyword.value
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return function, argument.value
    return None


Schemas = dict[str, list[dict[str, str]]]


def preflight(site: Datasite, code: str, mock_schemas: Schemas) -> list[str]:
    """Warnings a researcher can act on before the cell runs; raises if it cannot run.

    A dataset the cell names that the site does not have is an error (the cell
    would only fail there); columns that differ from the mock the cell was tried
    on are a warning (the cell may still work).
    """
    names = datasets_named(code)
    if not names:
        return []
    available = {d["name"]: d for d in site.datasets()}
    missing = [n for n in names if n not in available]
    if missing:
        raise UnknownDataset(
            f"{site.name} has no dataset {', '.join(repr(n) for n in missing)} "
            f"(available: {', '.join(sorted(available)) or 'none'})"
        )
    warnings = []
    for name in names:
        expected = mock_schemas.get(name)
        if expected is None:
            continue
        differences = schema_differences(expected, available[name].get("columns") or [])
        if differences:
            detail = "; ".join(differences)
            warnings.append(f"{name!r} at {site.name} differs from the mock you ran on: {detail}")
    return warnings


def schema_differences(
    expected: Iterable[dict[str, str]], actual: Iterable[dict[str, str]]
) -> list[str]:
    want = {c["name"]: c.get("dtype", "") for c in expected}
    have = {c["name"]: c.get("dtype", "") for c in actual}
    out = []
    if missing := [n for n in want if n not in have]:
        out.append(f"missing columns {missing}")
    if extra := [n for n in have if n not in want]:
        out.append(f"extra columns {extra}")
    changed = [
        f"{n} is {have[n]}, not {want[n]}"
        for n in want
        if n in have and _kind(want[n]) != _kind(have[n])
    ]
    if changed:
        out.append(", ".join(changed))
    return out


def _kind(dtype: str) -> str:
    """int64 at one hospital and float64 at another are both numbers: not worth a warning."""
    dtype = dtype.lower()
    if dtype.startswith(("int", "uint", "float")):
        return "number"
    if dtype.startswith(("datetime", "timedelta", "period")):
        return "time"
    if dtype.startswith("bool"):
        return "bool"
    return "text"


def run_everywhere(
    code: str,
    targets: list[Datasite],
    push: dict[str, Any] | None = None,
    mock_schemas: Schemas | None = None,
) -> RemoteResult:
    """Submit ``code`` to every target at once; a site that fails is reported, not fatal."""

    def submit(site: Datasite) -> SiteRun:
        run = SiteRun(site.name)
        try:
            run.warnings = preflight(site, code, mock_schemas or {})
            run.request = site.run(code, push=push)
        except RemoteKernelError as exc:
            run.error = str(exc)
        return run

    if len(targets) == 1:
        runs = [submit(targets[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
            runs = list(pool.map(submit, targets))
    return RemoteResult(code, {run.site: run for run in runs})


# --- the last fan-out of this process: rk.last() ------------------------------------------------
_last: RemoteResult | None = None


def remember(result: RemoteResult) -> None:
    global _last
    _last = result


def last() -> RemoteResult:
    """The result of the most recent ``%%remote`` cell in this kernel."""
    if _last is None:
        raise RemoteKernelError("no remote cell has run in this kernel yet")
    return _last
