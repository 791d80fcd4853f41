"""Secret-sharing the sites' vectors, and solving linear systems on shares (MPyC).

Used by the party process only (:mod:`.party`, :mod:`.party_models`); MPyC itself is
never imported here, the runtime is handed in.
"""

from __future__ import annotations

from typing import Any

#: Bits and fractional bits of the secure fixed-point numbers: sums up to ~5e11, and
#: MPyC divides fixed-point numbers only with half the bits fractional.
BITS, FRACTIONAL = 80, 40


def share_and_add(mpc: Any, secfxp: Any, job: dict[str, Any]) -> list[Any]:
    """Every data site's vector secret-shared, and the sums per position (the pooled vector)."""
    return [mpc.sum(list(column)) for column in share(mpc, secfxp, job)]


def share(mpc: Any, secfxp: Any, job: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every data site's vector secret-shared: per position, one share per data site.

    Counts and values go in two inputs: MPyC gives every number of one ``input`` call
    the ``integral`` flag of its first, and a value wrongly flagged integral is
    multiplied without truncation (garbage).
    """
    layout = job["layout"]  # "count" | "value" per position, the same at every party
    own = job["vector"] if job["vector"] is not None else [0] * len(layout)
    data = [pid for pid, name in enumerate(job["names"]) if name not in job["helpers"]]
    where = {kind: [i for i, k in enumerate(layout) if k == kind] for kind in ("count", "value")}
    columns: list[tuple[Any, ...]] = [()] * len(layout)
    for kind, positions in where.items():
        if not positions:
            continue
        integral = kind == "count"
        mine = [secfxp(value_of(own[i], kind), integral=integral) for i in positions]
        shared = mpc.input(mine, senders=data)
        for i, column in zip(positions, zip(*shared, strict=True), strict=True):
            columns[i] = column
    return columns


def value_of(raw: Any, kind: str) -> int | float:
    return int(raw) if kind == "count" else float(raw)


def solve(secfxp: Any, matrix: list[Any], rhs: list[Any], q: int) -> tuple[list[Any], list[Any]]:
    """``matrix @ x = rhs`` on the shares (q x q, row-major, positive definite): the
    solution and the inverse (row-major), by Gauss-Jordan without pivoting."""
    one, zero = secfxp(1.0), secfxp(0.0)
    rows = [
        [matrix[i * q + j] for j in range(q)]
        + [rhs[i]]
        + [one if i == j else zero for j in range(q)]
        for i in range(q)
    ]
    for k in range(q):
        inverse = 1 / rows[k][k]
        rows[k] = [value * inverse for value in rows[k]]
        for i in range(q):
            if i != k:
                factor = rows[i][k]
                rows[i] = [a - factor * b for a, b in zip(rows[i], rows[k], strict=True)]
    solution = [rows[i][q] for i in range(q)]
    return solution, [rows[i][q + 1 + j] for i in range(q) for j in range(q)]
