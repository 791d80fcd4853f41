"""``remote-kernel review …``: reviewers decide on pending outputs at a running datasite.

list, show, approve and deny, with a reviewer token (``--url`` and ``--token``,
or ``REMOTE_KERNEL_URL`` and ``REMOTE_KERNEL_TOKEN``); and how an output is
shown on a terminal (its text, its attached value, its images).
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from remote_kernel.cli.attack import add_attack_parser
from remote_kernel.cli.common import CliError, Subparsers
from remote_kernel.protocol.errors import RemoteKernelError


def add_parser(top: Subparsers) -> None:
    """The ``review`` group and its commands, on the top-level subparsers ``top``."""
    review = top.add_parser("review", help="review pending outputs (reviewer token)")
    cmds = review.add_subparsers(title="review commands")

    p = cmds.add_parser("list", help="pending outputs")
    reviewer_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_review_list)

    p = cmds.add_parser("show", help="one output with its code and findings")
    p.add_argument("output_id", type=int)
    reviewer_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--save-images",
        metavar="DIR",
        help="write the output's images (plots) to DIR to look at them",
    )
    p.set_defaults(func=cmd_review_show)

    p = cmds.add_parser("approve", help="release an output to its researcher")
    p.add_argument("output_id", type=int)
    reviewer_args(p)
    p.add_argument("--comment", default="")
    p.set_defaults(func=cmd_review_decide, approve=True)

    p = cmds.add_parser("deny", help="refuse an output, with a comment for the researcher")
    p.add_argument("output_id", type=int)
    reviewer_args(p)
    p.add_argument("--comment", required=True)
    p.set_defaults(func=cmd_review_decide, approve=False)

    add_attack_parser(cmds)


def reviewer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=os.environ.get("REMOTE_KERNEL_URL"),
        help="datasite URL (or REMOTE_KERNEL_URL)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("REMOTE_KERNEL_TOKEN"),
        help="reviewer token (or REMOTE_KERNEL_TOKEN)",
    )


def _reviewer(args: argparse.Namespace) -> Any:
    from remote_kernel.researcher.client import Datasite

    if not args.url or not args.token:
        raise CliError("give --url and --token (or set REMOTE_KERNEL_URL and REMOTE_KERNEL_TOKEN)")
    try:
        return Datasite(args.url, args.token)
    except RemoteKernelError as exc:
        raise CliError(str(exc)) from None


def _remote(call: Any) -> Any:
    try:
        return call()
    except RemoteKernelError as exc:
        raise CliError(str(exc)) from None


# --- handlers -----------------------------------------------------------------------------------
def cmd_review_list(args: argparse.Namespace) -> None:
    site = _reviewer(args)
    queue = _remote(site.review_queue)
    if args.json:
        print(json.dumps(queue, indent=2))
        return
    if not queue:
        print(f"nothing pending at {site.remote_name}")
        return
    name = site.remote_name
    width = max(len("site"), len(name))
    print(
        f"{'output':>6}  {'request':>7}  {'site':<{width}}  {'age':>6}  "
        f"{'researcher':<12} {'type':<15} summary"
    )
    for item in queue:
        request = item["request"]
        votes = vote_tally(item)
        print(
            f"{item['id']:>6}  {request['id']:>7}  {name:<{width}}  "
            f"{age(item.get('created_at')):>6}  {request['user']:<12} "
            f"{item['msg_type']:<15} {item['summary']}" + (f" [{votes}]" if votes else "")
        )


def cmd_review_show(args: argparse.Namespace) -> None:
    site = _reviewer(args)
    output = _remote(lambda: site.output(args.output_id))
    request = _remote(lambda: site.request_json(output["request_id"]))
    if args.json:
        print(json.dumps({"output": output, "request": request}, indent=2))
        return
    print(
        f"output {output['id']} of request {request['id']} by {request['user']} "
        f"- {output['state']} ({output['msg_type']})"
    )
    print("\n--- code ---")
    print(request["code"])
    if request.get("pushes"):
        print("\n--- objects the researcher pushed into the kernel (cloudpickle) ---")
        for push in request["pushes"]:
            print(f"{push['name']}: {push['type']}, {push['size']} bytes, sha256 {push['sha256']}")
    votes = vote_tally(output)
    if votes:
        print(f"\n--- votes ---\n{votes}")
        for vote in output.get("votes") or []:
            if vote.get("comment"):
                print(f"{vote['reviewer']}: {vote['comment']}")
    print("\n--- findings ---")
    for finding in output.get("findings") or []:
        where = f" at {finding['location']}" if finding.get("location") else ""
        print(f"[{finding['verdict']}] {finding['check']}: {finding['message']}{where}")
    if "dp" in output:
        print(f"\n--- differential privacy: what {request['user']} spent and holds here ---")
        print(dp_text(output["dp"]))
    print("\n--- content ---")
    print(render_text(output["msg_type"], output.get("content") or {}))
    value = render_value((output.get("content") or {}).get("data") or {})
    if value:
        print("\n--- the value the researcher receives as an object ---")
        print(value)
    if args.save_images:
        for path in save_images(output, Path(args.save_images)):
            print(f"image written to {path}")
    print_variants(output)


def print_variants(output: dict[str, Any]) -> None:
    """The datasite's variants of an output (approve one by its id to release it instead)."""
    for variant in output.get("variants") or []:
        print(
            f"\n--- variant {variant['id']} ({variant['kind']}, {variant.get('state', '?')}): "
            f"{variant['summary']} ---"
        )
        print(render_text("display_data", variant.get("content") or {}))
        if variant.get("state") == "pending":
            print(f"(release it instead: remote-kernel review approve {variant['id']})")


def dp_text(dp: dict[str, Any], shown: int = 10) -> str:
    """The review's DP section, compactly: budgets per dataset, then the newest answers."""
    lines = [
        f"budget on {b['dataset']}: ε={b['epsilon_spent']:g} spent of {b['epsilon_total']:g} "
        f"({b['epsilon_left']:g} left), {b['charges']} charge(s)"
        for b in dp.get("spending") or []
    ] or ["no privacy budget here"]
    answers = dp.get("answers") or []
    if answers:
        lines.append("DP answers they hold, newest first:")
    for answer in answers[:shown]:
        when = str(answer.get("created") or "")[:16].replace("T", " ")
        lines.append(
            f"  output {answer['output_id']} (request {answer['request_id']}, {when}): "
            f"ε={answer['epsilon']:g} on {answer['dataset']}: {_one_line(answer['sql'])}"
        )
    if len(answers) > shown:
        lines.append(f"  ... and {len(answers) - shown} older (see --json)")
    if not answers:
        lines.append("no DP answers released to them")
    return "\n".join(lines)


def _one_line(sql: str, width: int = 100) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_review_decide(args: argparse.Namespace) -> None:
    site = _reviewer(args)
    if args.approve:
        output = _remote(lambda: site.approve(args.output_id, args.comment))
    else:
        output = _remote(lambda: site.deny(args.output_id, args.comment))
    print(f"output {output['id']} {output['state']}")


# --- how an output reads on a terminal ----------------------------------------------------------
def age(created_at: str | None, now: datetime | None = None) -> str:
    """How long ago a datasite time (ISO, UTC) was: "40 s", "3 min", "2 h", "5 d"."""
    if not created_at:
        return "?"
    then = datetime.fromisoformat(created_at.removesuffix("Z")).replace(tzinfo=timezone.utc)
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def vote_tally(output: dict[str, Any]) -> str:
    """'1 of 2 approvals: bob approved' under the two-person rule, else ''."""
    required = output.get("required_reviews") or 1
    votes = output.get("votes") or []
    if required <= 1 and not votes:
        return ""
    approvals = sum(1 for vote in votes if vote["decision"] == "approve")
    cast = ", ".join(
        f"{vote['reviewer']} {'approved' if vote['decision'] == 'approve' else 'denied'}"
        for vote in votes
    )
    return f"{approvals} of {required} approvals" + (f": {cast}" if cast else "")


IMAGE_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/svg+xml": ".svg",
}


def save_images(output: dict[str, Any], directory: Path) -> list[Path]:
    """Write an output's images to files so a reviewer can look at them."""
    import base64

    data = (output.get("content") or {}).get("data") or {}
    written = []
    for mime, suffix in IMAGE_SUFFIXES.items():
        if mime in data:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"output-{output['id']}{suffix}"
            value = str(data[mime])
            path.write_bytes(value.encode() if mime == "image/svg+xml" else base64.b64decode(value))
            written.append(path)
    return written


def render_value(data: dict[str, Any]) -> str:
    """What a cell's attached value decodes to (tables in full; pickles described, never loaded)."""
    from remote_kernel.protocol.values import VALUE_MIME, ValueDecodeError, describe, read_table

    payload = data.get(VALUE_MIME)
    if payload is None:
        return ""
    text = describe(payload)
    kind = payload.get("kind") if isinstance(payload, dict) else None
    try:
        if kind in ("dataframe", "series", "ndarray"):
            text += "\n" + read_table(payload).to_string()
        elif kind == "json":
            text += "\n" + json.dumps(payload.get("data"), indent=2)
    except ValueDecodeError as exc:
        text += f"\n(cannot decode: {exc})"
    return text


def render_text(msg_type: str, content: dict[str, Any]) -> str:
    if msg_type == "stream":
        return str(content.get("text", ""))
    if msg_type == "error":
        import re

        return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", "\n".join(content.get("traceback") or []))
    data = content.get("data") or {}
    others = sorted(set(data) - {"text/plain", "application/vnd.remote-kernel.value+json"})
    text = str(data.get("text/plain", ""))
    if others:
        text += f"\n(also: {', '.join(others)}; see --json)"
    return text
