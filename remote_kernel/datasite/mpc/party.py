"""One site's MPyC party for a pooled query: ``python -m remote_kernel.datasite.mpc.party JOB``.

The datasite writes the job file (0600, in a private directory): this site's party
number, the parties' addresses and pinned certificates, the digest of the
computation every site verified, this site's thresholds, and -- for a data site --
the vectors its own query produced (numbers only; nothing of the researcher's
request is run here). The program then:

1. connects to every party over mutual TLS (:mod:`.tls`);
2. sends its digest and thresholds in the clear and checks that every party has
   the same digest and is who it should be (a request changed at any one site
   fails here, at every party, before any input is shared);
3. secret-shares its vectors (MPyC, Shamir, threshold ``(m-1)//2``): the helper
   shares zeros of the same shape;
4. computes the pooled sums and, on the shares, whether every pooled cell passes
   every party's thresholds; opens only one bit per rule;
5. if all pass, opens exactly the cells of the pooled table (AVG divided on the
   shares); otherwise opens nothing more;
6. synchronises shutdown, then writes its result file -- so a party that stops
   early leaves every other party without a result, never half of one.

Every party's secure numbers are declared with the same ``integral`` flag by
position (counts integral, sums not), whatever the data: a mismatch would hang.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from remote_kernel.datasite.mpc.shares import BITS, FRACTIONAL, share

#: Stand-ins for the minimum / maximum of a cell without contributors.
BIG = float(2**35)
RULES = ("small-cells", "dominance", "p-percent", "negative-values", "all-values-same")


def mpyc_argv(job: dict[str, Any]) -> list[str]:
    """MPyC's command line for this party (it reads ``sys.argv`` when imported)."""
    argv = [sys.argv[0], "-I", str(job["pid"]), "--no-log", "-L", str(BITS)]
    for host, port in job["addresses"]:
        argv += ["-P", f"{host}:{port}"]
    return argv


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    result = _Result(Path(job["result"]))
    limit = 2 * job["timeout"]
    late = {"error": f"the joint computation did not finish within {limit:g} s"}
    # MPyC's scheduling can keep the event loop busy past a cancellation: a hard stop.
    watchdog = threading.Timer(limit + 1, lambda: os._exit(result.write(late)))
    watchdog.daemon = True
    watchdog.start()
    sys.argv = mpyc_argv(job)
    try:
        outcome = asyncio.run(asyncio.wait_for(_run(job), limit))
    except asyncio.TimeoutError:
        outcome = late
    except ConnectionError as exc:
        outcome = {"error": str(exc)}
    except Exception as exc:  # the site reads a fixed kind, never a value
        outcome = {"error": f"the MPC party failed ({exc.__class__.__name__})"}
    return result.write(outcome)


class _Result:
    """The result file, written once (by the computation or by the watchdog, not both)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.written = False

    def write(self, outcome: dict[str, Any]) -> int:
        """Write ``outcome`` unless something was written already; the exit status."""
        with self.lock:
            if not self.written:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(outcome))
                os.replace(tmp, self.path)
                self.written = True
        return 0 if "error" not in outcome else 1


class JsonCodec:
    """What MPyC's runtime gets in place of :mod:`pickle`: JSON, plain data only.

    MPyC 0.11 unpickles what peers send through ``transfer`` (used by ``shutdown``
    and by our agreement step) and for secure NumPy arrays. A party must never
    unpickle bytes from another organisation: a peer that is compromised would run
    code here. Our programs exchange plain numbers, strings, lists and dicts, and
    share only lists of field elements (which MPyC serialises with ``to_bytes``), so
    JSON carries everything they send; anything else fails loudly instead.
    """

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, allow_nan=False).encode()

    @staticmethod
    def loads(data: bytes) -> Any:
        return json.loads(data.decode("utf-8"))


def forbid_pickle() -> None:
    """Make MPyC's runtime module use :class:`JsonCodec` instead of pickle."""
    import mpyc.runtime

    mpyc.runtime.pickle = JsonCodec  # type: ignore[assignment]


async def _run(job: dict[str, Any]) -> dict[str, Any]:
    forbid_pickle()
    from mpyc.runtime import mpc

    from remote_kernel.datasite.mpc import party_models as models
    from remote_kernel.datasite.mpc.tls import start_runtime

    deadline = time.monotonic() + job["timeout"]  # to connect; twice that to finish
    await start_runtime(
        mpc,
        job["names"],
        job["certificate"],
        job["key"],
        job["peer_certificates"],
        job["listen_host"],
        deadline,
    )
    said = await mpc.transfer(
        {"name": job["names"][job["pid"]], "digest": job["digest"], "t": job["thresholds"]}
    )
    problem = _disagreement(job, said)
    if problem:
        await mpc.shutdown()
        return {"error": problem}
    compute = {"linear": models.linear, "logistic": models.logistic}.get(job["task"], _pooled)
    outcome = await compute(mpc, job, [s["t"] for s in said])
    await mpc.shutdown()
    return outcome


def _disagreement(job: dict[str, Any], said: list[Any]) -> str:
    """Why the parties cannot compute together (empty if they agree); the same at every party."""
    names = job["names"]
    for pid, entry in enumerate(said):
        if not isinstance(entry, dict) or entry.get("name") != names[pid]:
            return f"party {pid} is not {names[pid]}"
    differ = [names[pid] for pid, entry in enumerate(said) if entry["digest"] != said[0]["digest"]]
    if differ:
        return (
            "the sites were not asked the same computation (different query, key domain or "
            f"party list at {', '.join(differ)} than at {names[0]}): refused at every party"
        )
    return ""


async def _pooled(
    mpc: Any, job: dict[str, Any], thresholds: list[dict[str, Any]]
) -> dict[str, Any]:
    """Share, pool, check on the shares, open the verdict bits, then the table if it passes."""
    secfxp = mpc.SecFxp(BITS, FRACTIONAL)
    columns = share(mpc, secfxp, job)
    pooled = [mpc.sum(list(col)) for col in columns]
    plan = job["plan"]
    fails = _rule_bits(mpc, secfxp, plan, pooled, columns, thresholds)
    bits = await mpc.output([mpc.sum(f) if f else secfxp(0, integral=True) for f in fails])
    failed = [rule for rule, bit in zip(RULES, bits, strict=True) if round(float(bit)) > 0]
    if failed:
        return {"released": False, "failed": failed}
    cells = []
    for agg in plan["aggregates"]:
        for cell in range(plan["cells"]):
            if agg["kind"] == "avg":
                cells.append(pooled[agg["total"] + cell] / pooled[agg["contributors"] + cell])
            else:
                source = agg["rows"] if agg["kind"] == "count_star" else agg["value"]
                cells.append(pooled[source + cell])
    opened = await mpc.output(cells)
    return {"released": True, "values": [float(v) for v in opened]}


def _rule_bits(
    mpc: Any,
    secfxp: Any,
    plan: dict[str, Any],
    pooled: list[Any],
    columns: list[tuple[Any, ...]],
    thresholds: list[dict[str, Any]],
) -> list[list[Any]]:
    """Secure 0/1 per cell and rule (a 1 fails), under every party's thresholds.

    Comparisons are what cost: distinct thresholds are checked once, and only the
    largest ``max(2, dominance_n)`` contributions of each site enter the secure sort.
    """
    cells = plan["cells"]
    min_count = max(t["min_cell_count"] for t in thresholds)
    dominance = sorted({(t["dominance_n"], t["dominance_k"]) for t in thresholds})
    p_ratios = sorted({t["p_ratio"] for t in thresholds})
    need = max(2, *(n for n, _ in dominance))
    fails: list[list[Any]] = [[] for _ in RULES]
    for start in plan["counts"]:
        fails[0] += [pooled[start + c] < min_count for c in range(cells)]
    for num in plan["numeric"]:
        for c in range(cells):
            total = pooled[num["total"] + c]
            positive = total > 0
            first = num["top"] + c * num["top_n"]
            tops = [share for j in range(need) for share in columns[first + j]]
            ranked = mpc.sorted(tops, reverse=True)
            for n, k in dominance:
                fails[1].append(positive * (mpc.sum(ranked[:n]) > k * total))
            for p in p_ratios:
                fails[2].append(positive * (total - ranked[0] - ranked[1] < p * ranked[0]))
            fails[3].append(pooled[num["negative"] + c] > 0)
            low = mpc.min(list(columns[num["min"] + c]))
            high = mpc.max(list(columns[num["max"] + c]))
            fails[4].append(low == high)
    return fails


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
