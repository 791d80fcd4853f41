"""JSON views of store rows, per role: the single place that decides what a caller sees.

Every API route and websocket event builds its payload here, so invariant 1
("no researcher-facing endpoint returns unreleased content") is enforced in
one function, :func:`output_view`, and tested against every route.

Variants (a datasite-made, suppressed form of a kernel table) are invisible to
researchers until one is released; then it takes its original's place: same id
and seq, so the researcher's placeholder for that output is replaced
(:func:`researcher_outputs`). Reviewers see them under their original's
``variants``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from remote_kernel.datasite.dp_tier import DP_MIME, dataset_of
from remote_kernel.datasite.store import BudgetLine, KernelSession, Output, Push, Request
from remote_kernel.protocol.errors import RemoteKernelError
from remote_kernel.protocol.models import OutputState, Role


def _time(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


@dataclass(frozen=True)
class Votes:
    """How the reviews of some outputs stand: the votes each has, and how many it needs.

    ``by_output`` is :meth:`Store.votes_of` of a whole list (one query per queue or
    page); an output absent from it has no votes yet.
    """

    required: int
    by_output: Mapping[int, Sequence[tuple[str, str, str]]] = field(default_factory=dict)

    def voted(self, output_id: int, reviewer: str) -> bool:
        return any(name == reviewer for name, _, _ in self.by_output.get(output_id, ()))

    def view(self, output_id: int) -> dict[str, Any]:
        votes = [
            {"reviewer": name, "decision": decision, **({"comment": comment} if comment else {})}
            for name, decision, comment in self.by_output.get(output_id, ())
        ]
        return {"required_reviews": self.required, "votes": votes}


#: A reviewer sees variants that can still be approved, or the one that was released.
_OFFERED = (OutputState.PENDING.value, OutputState.RELEASED.value)


def output_view(
    output: Output,
    role: Role,
    votes: Votes | None = None,
    variants: Mapping[int, Sequence[Output]] | None = None,
    dp: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An output as ``role`` may see it. Researchers get content only once released.

    Reviewers and admins also get ``required_reviews`` and ``votes`` when ``votes``
    is given, ``variants`` (from ``variants[output.id]``) when that is, and ``dp`` (the
    output's researcher's DP spending and answers, :func:`dp_view`); researchers
    never do (a first vote of two changes nothing they see). A released variant is
    shown to its researcher as the original it replaces (its id); callers pass
    researchers only what :func:`researcher_outputs` keeps.
    """
    if role is Role.RESEARCHER and output.parent_id is not None:
        if output.state != OutputState.RELEASED.value:
            raise ValueError("an unreleased variant has no researcher view")
    shown_id = output.parent_id if role is Role.RESEARCHER and output.parent_id else output.id
    view: dict[str, Any] = {
        "id": shown_id,
        "request_id": output.request_id,
        "seq": output.seq,
        "msg_type": output.msg_type,
        "state": output.state,
        "summary": output.summary,
        "decided_by": output.decided_by,
        "decided_at": _time(output.decided_at),
        "created_at": _time(output.created_at),
    }
    if output.state in (OutputState.DENIED.value, OutputState.CONFLICTED.value):
        view["comment"] = output.comment
    released = output.state == OutputState.RELEASED.value
    if released or role is not Role.RESEARCHER:
        view["content"] = json.loads(output.body)["content"]
        view["sha256"] = output.sha256
        view["size"] = output.size
    if role is not Role.RESEARCHER:
        view["verdict"] = output.verdict
        view["findings"] = output.findings
        view["comment"] = output.comment
        if votes is not None:
            view.update(votes.view(output.id))
        if output.parent_id is not None:
            view["variant_of"] = output.parent_id
        if variants is not None:
            view["variants"] = [
                variant_view(v) for v in variants.get(output.id, ()) if v.state in _OFFERED
            ]
        if dp is not None:
            view["dp"] = dict(dp)
    return view


def variant_view(variant: Output) -> dict[str, Any]:
    """A variant as offered on its original (reviewers): ``{id, kind, content, summary}``,
    with its state and the filter's findings on it."""
    return {
        "id": variant.id,
        "kind": variant.origin,
        "content": json.loads(variant.body)["content"],
        "summary": variant.note or "",
        "state": variant.state,
        "verdict": variant.verdict,
        "findings": variant.findings,
        "sha256": variant.sha256,
    }


def researcher_outputs(outputs: Sequence[Output]) -> list[Output]:
    """What a researcher's listing holds: no variant before release; a released variant
    in its original's place (the original, closed as denied, is left out)."""
    replaced = {
        o.parent_id: o for o in outputs if o.parent_id and o.state == OutputState.RELEASED.value
    }
    shown = []
    for output in outputs:
        if output.parent_id is not None:
            continue
        shown.append(replaced.get(output.id, output))
    return shown


def variants_by_original(outputs: Sequence[Output]) -> dict[int, list[Output]]:
    """The variants among ``outputs``, keyed by their original's id."""
    found: dict[int, list[Output]] = {}
    for output in outputs:
        if output.parent_id is not None:
            found.setdefault(output.parent_id, []).append(output)
    return found


def request_view(
    request: Request,
    role: Role,
    user_name: str,
    outputs: list[Output] | None = None,
    pushes: list[Push] | None = None,
    votes: Votes | None = None,
    dp: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A request as ``role`` may see it; ``dp`` (reviewers) goes on each of its outputs."""
    view: dict[str, Any] = {
        "id": request.id,
        "session_id": request.session_id,
        "user": user_name,
        "code": request.code,
        "status": request.status,
        "message": request.message,
        "created_at": _time(request.created_at),
        "started_at": _time(request.started_at),
        "finished_at": _time(request.finished_at),
    }
    if outputs is not None and role is Role.RESEARCHER:
        view["outputs"] = [output_view(o, role) for o in researcher_outputs(outputs)]
    elif outputs is not None:
        # Reviewers see variants under their original's "variants", not as outputs.
        variants = variants_by_original(outputs)
        view["outputs"] = [
            output_view(o, role, votes, variants, dp) for o in outputs if o.parent_id is None
        ]
    if pushes is not None:
        # What was sent, never the bytes: reviewers see names, types, sizes and hashes.
        view["pushes"] = [
            {"name": p.name, "type": p.type_name, "size": p.size, "sha256": p.sha256}
            for p in pushes
        ]
    return view


def session_view(session: KernelSession, kernel_state: str) -> dict[str, Any]:
    return {
        "id": session.id,
        "created_at": _time(session.created_at),
        "closed_at": _time(session.closed_at),
        "kernel": kernel_state,
    }


def budget_view(line: BudgetLine) -> dict[str, Any]:
    """A privacy budget as its researcher (or a reviewer or admin) sees it."""
    return {
        "user": line.user,
        "dataset": line.dataset,
        "epsilon_total": line.epsilon_total,
        "epsilon_spent": line.epsilon_spent,
        "epsilon_left": line.epsilon_left,
        "delta_total": line.delta_total,
        "delta_spent": line.delta_spent,
        "delta_left": line.delta_left,
        "charges": line.charges,
        "updated_at": _time(line.updated_at),
    }


#: How many of a researcher's DP answers a reviewer is shown (newest first).
DP_ANSWERS_SHOWN = 50


def dp_view(lines: Sequence[BudgetLine], answers: Sequence[Output]) -> dict[str, Any]:
    """A researcher's DP spending and the DP answers they hold, as a reviewer sees it.

    Why a reviewer gets it: an exact table can be differenced against noisy answers the
    researcher already holds, and what they spent says how hard they have been asking.
    ``lines`` are :meth:`Store.budgets` of that researcher, ``answers`` their released
    DP outputs (:meth:`Store.released_datasite_outputs` with :data:`DP_MIME`).
    """
    spending = [
        {
            "dataset": line.dataset,
            "epsilon_total": line.epsilon_total,
            "epsilon_spent": line.epsilon_spent,
            "epsilon_left": line.epsilon_left,
            "charges": line.charges,
        }
        for line in lines
    ]
    shown = [fact for fact in map(dp_answer_facts, answers) if fact is not None]
    return {"spending": spending, "answers": shown[:DP_ANSWERS_SHOWN]}


def dp_answer_facts(output: Output) -> dict[str, Any] | None:
    """``{output_id, request_id, dataset, sql, epsilon, created}`` of a DP answer (None if
    ``output`` is not one: the store's LIKE only narrows)."""
    try:
        payload = json.loads(output.body)["content"]["data"][DP_MIME]
        sql, epsilon = str(payload["sql"]), float(payload["epsilon"])
    except (KeyError, TypeError, ValueError):
        return None
    dataset = payload.get("dataset")
    if not isinstance(dataset, str):  # answers released before the payload named it
        try:
            dataset = dataset_of(sql)
        except RemoteKernelError:  # an old body; its SQL was checked when it ran
            dataset = ""
    return {
        "output_id": output.id,
        "request_id": output.request_id,
        "dataset": dataset,
        "sql": sql,
        "epsilon": epsilon,
        "created": _time(output.created_at),
    }
