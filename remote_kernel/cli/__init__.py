"""The ``remote-kernel`` command line: datasite admin, reviewers, demo.

Admin commands work on a datasite directory (no server needed); reviewer
commands talk to a running datasite with a reviewer token (``--url`` and
``--token``, or ``REMOTE_KERNEL_URL`` and ``REMOTE_KERNEL_TOKEN``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from remote_kernel.datasite.config import ConfigError, DatasiteConfig
from remote_kernel.datasite.datasets import add_dataset, remock_dataset
from remote_kernel.datasite.store import Conflict, Store
from remote_kernel.mocks.generate import FIDELITIES
from remote_kernel.mocks.report import format_report, load_report
from remote_kernel.protocol.errors import DatasetError, RemoteKernelError
from remote_kernel.protocol.models import Role


class CliError(RemoteKernelError):
    """Printed as 'error: …' with exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CliError, ConfigError, DatasetError, Conflict, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def fidelity_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--fidelity",
        choices=list(FIDELITIES),
        default=default,
        help="schema (types and coarse ranges), marginal (each column's distribution; "
        "the default) or joint (also the correlations); see docs/mocks.md",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remote-kernel",
        description="Run notebook cells next to private data; release only checked outputs.",
    )
    top = parser.add_subparsers(title="commands")

    # --- datasite (admin) ---
    site = top.add_parser("datasite", help="create and run a datasite (admin)")
    site_cmds = site.add_subparsers(title="datasite commands")

    p = site_cmds.add_parser("init", help="create a datasite directory")
    p.add_argument("directory")
    p.add_argument("--name", required=True, help="the datasite's name, e.g. cleveland")
    p.set_defaults(func=cmd_init)

    p = site_cmds.add_parser("add-dataset", help="import a private table and its mock")
    p.add_argument("directory")
    p.add_argument("name", help="the dataset's name, used as rk.data(name)")
    p.add_argument("--private", required=True, help="CSV (with header) or Parquet file")
    p.add_argument(
        "--mock",
        default="auto",
        help="'auto' (default) to generate the mock, or a hand-made mock file with the same "
        "columns",
    )
    fidelity_arg(p, default=None)
    p.add_argument("--rows", type=int, default=None, help="rows in a generated mock (default 1000)")
    p.add_argument(
        "--identifier",
        action="append",
        default=[],
        help="an identifier column, regenerated in the mock, never copied (repeatable; "
        "policy.yaml's identifiers count too)",
    )
    p.add_argument("--columns", help="comma-separated column names for a headerless CSV")
    p.add_argument("--na", action="append", help="a value that means missing (repeatable)")
    p.add_argument("--sep", default=",", help="CSV separator (default ',')")
    p.add_argument("--description", default="")
    p.add_argument("--seed", type=int, default=None, help="seed for the generated mock")
    p.set_defaults(func=cmd_add_dataset)

    p = site_cmds.add_parser("remock", help="generate a dataset's mock (and its report) again")
    p.add_argument("directory")
    p.add_argument("name", help="the dataset")
    fidelity_arg(p, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed, for the same mock every time")
    p.add_argument("--rows", type=int, default=None, help="rows in the mock (default 1000)")
    p.add_argument("--identifier", action="append", default=[], help="an identifier column")
    p.set_defaults(func=cmd_remock)

    p = site_cmds.add_parser("mock-report", help="a dataset mock's fidelity and privacy report")
    p.add_argument("directory")
    p.add_argument("name", help="the dataset")
    p.add_argument("--json", action="store_true", help="the full report as JSON")
    p.set_defaults(func=cmd_mock_report)

    p = site_cmds.add_parser("add-user", help="add a user and print their token once")
    p.add_argument("directory")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=[r.value for r in Role])
    p.add_argument(
        "--expires-in",
        type=float,
        metavar="DAYS",
        help="the token stops working after this many days (default: never)",
    )
    p.set_defaults(func=cmd_add_user)

    p = site_cmds.add_parser("revoke", help="revoke a user's token (their history stays)")
    p.add_argument("directory")
    p.add_argument("name")
    p.set_defaults(func=cmd_revoke)

    p = site_cmds.add_parser("users", help="list users (never their tokens)")
    p.add_argument("directory")
    p.set_defaults(func=cmd_users)

    p = site_cmds.add_parser("serve", help="serve the datasite API")
    p.add_argument("directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--certfile", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--keyfile", help="the certificate's PEM private key")
    p.add_argument(
        "--behind-proxy",
        action="store_true",
        help="trust X-Forwarded-For/X-Real-IP from a reverse proxy for client addresses "
        "(only when the port is reachable from the proxy alone; see docs/security.md)",
    )
    p.add_argument(
        "--insecure-release-all",
        action="store_true",
        help="BENCHMARKS ONLY: release every output without review",
    )
    p.set_defaults(func=cmd_serve)

    p = site_cmds.add_parser(
        "audit",
        help="check the hash-chained audit log (verify), print it as JSON lines (export), "
        "or print its head to record somewhere else (head)",
    )
    p.add_argument("action", choices=["verify", "export", "head"])
    p.add_argument("directory")
    p.add_argument(
        "--head",
        metavar="HASH",
        help="verify: also require this earlier head hash (from 'audit head') in the chain; "
        "catches a cut-off tail or a rewritten chain",
    )
    p.set_defaults(func=cmd_audit)

    # --- review (reviewers) ---
    review = top.add_parser("review", help="review pending outputs (reviewer token)")
    review_cmds = review.add_subparsers(title="review commands")

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

    p = review_cmds.add_parser("list", help="pending outputs")
    reviewer_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_review_list)

    p = review_cmds.add_parser("show", help="one output with its code and findings")
    p.add_argument("output_id", type=int)
    reviewer_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--save-images",
        metavar="DIR",
        help="write the output's images (plots) to DIR to look at them",
    )
    p.set_defaults(func=cmd_review_show)

    p = review_cmds.add_parser("approve", help="release an output to its researcher")
    p.add_argument("output_id", type=int)
    reviewer_args(p)
    p.add_argument("--comment", default="")
    p.set_defaults(func=cmd_review_decide, approve=True)

    p = review_cmds.add_parser("deny", help="refuse an output, with a comment for the researcher")
    p.add_argument("output_id", type=int)
    reviewer_args(p)
    p.add_argument("--comment", required=True)
    p.set_defaults(func=cmd_review_decide, approve=False)

    # --- demo ---
    p = top.add_parser(
        "connect", help="save a datasite connection and install its kernel 'Remote: NAME'"
    )
    p.add_argument("url", help="the datasite's URL, e.g. https://datasite.example.org")
    p.add_argument("--token", required=True, help="your token from the datasite's admin")
    p.add_argument("--name", help="a short name for the site (default: the site's own name)")
    p.add_argument(
        "--prefix", help="install the kernelspec under this prefix (e.g. sys.prefix) not per user"
    )
    p.set_defaults(func=cmd_connect)

    p = top.add_parser("disconnect", help="forget a saved connection and remove its kernel")
    p.add_argument("name")
    p.set_defaults(func=cmd_disconnect)

    p = top.add_parser("connections", help="list saved datasite connections (never tokens)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_connections)

    p = top.add_parser(
        "demo", help="four hospital datasites with heart-disease data, and JupyterLab on the study"
    )
    p.add_argument("--dir", default="remote-kernel-demo", help="where the demo's files live")
    p.add_argument(
        "--port", type=int, default=8765, help="first datasite port (the four use PORT..PORT+3)"
    )
    p.add_argument("--data-dir", default=None, help="folder with the UCI heart-disease files")
    p.add_argument("--no-lab", action="store_true", help="do not start JupyterLab")
    p.add_argument("--no-browser", action="store_true", help="print JupyterLab's URL only")
    p.add_argument("--lab-port", type=int, default=8888)
    p.set_defaults(func=cmd_demo)
    return parser


# --- datasite commands ------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> None:
    config = DatasiteConfig.create(args.directory, args.name)
    Store(config.database_url).close()
    print(f"created datasite {config.name!r} in {config.directory}")
    print(f"next: remote-kernel datasite add-dataset {args.directory} NAME --private FILE")


def cmd_add_dataset(args: argparse.Namespace) -> None:
    config = DatasiteConfig.load(args.directory)
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    given = None if args.mock in (None, "auto") else args.mock
    entry = add_dataset(
        config,
        args.name,
        args.private,
        columns=columns,
        na_values=args.na,
        sep=args.sep,
        mock_path=given,
        description=args.description,
        seed=args.seed,
        fidelity=args.fidelity,
        mock_rows=args.rows,
        identifiers=args.identifier,
    )
    report = load_report((config.directory / entry.mock).parent) or {}
    store = Store(config.database_url)
    store.audit(
        "admin-cli",
        "dataset.add",
        f"dataset:{entry.name}",
        columns=[c.name for c in entry.columns],
        mock=report.get("fidelity", "given"),
    )
    store.close()
    mock = "from " + given if given else f"generated ({report.get('fidelity')})"
    print(
        f"added dataset {entry.name!r} to {config.name}: {len(entry.columns)} columns; mock {mock}"
    )
    print(f"mock report: remote-kernel datasite mock-report {args.directory} {entry.name}")


def cmd_remock(args: argparse.Namespace) -> None:
    config = DatasiteConfig.load(args.directory)
    report = remock_dataset(
        config,
        args.name,
        fidelity=args.fidelity,
        seed=args.seed,
        mock_rows=args.rows,
        identifiers=args.identifier,
    )
    store = Store(config.database_url)
    store.audit("admin-cli", "dataset.remock", f"dataset:{args.name}", fidelity=report["fidelity"])
    store.close()
    print(
        f"new {report['fidelity']} mock of {args.name!r}: {report['rows']} rows, "
        f"{report['privacy']['exact_copies']} equal to a private row"
    )


def cmd_mock_report(args: argparse.Namespace) -> None:
    config = DatasiteConfig.load(args.directory)
    entry = config.dataset(args.name)
    report = load_report((config.directory / entry.mock).parent)
    if report is None:
        raise CliError(
            f"dataset {args.name!r} has no mock report (imported before reports existed); "
            f"make one with: remote-kernel datasite remock {args.directory} {args.name}"
        )
    print(json.dumps(report, indent=2) if args.json else format_report(report))


def cmd_add_user(args: argparse.Namespace) -> None:
    config = DatasiteConfig.load(args.directory)
    from datetime import timedelta

    if args.expires_in is not None and not args.expires_in > 0:
        raise CliError("--expires-in must be a positive number of days")
    lifetime = timedelta(days=args.expires_in) if args.expires_in is not None else None
    store = Store(config.database_url)
    try:
        user, token = store.create_user(args.name, Role(args.role), expires_in=lifetime)
    finally:
        store.close()
    until = f", valid until {user.expires_at:%Y-%m-%d %H:%M} UTC" if user.expires_at else ""
    print(f"added {user.role} {user.name!r} to {config.name}{until}.")
    print("Their token (shown only once):")
    print(token)


def cmd_revoke(args: argparse.Namespace) -> None:
    from remote_kernel.protocol.errors import NotFound

    config = DatasiteConfig.load(args.directory)
    store = Store(config.database_url)
    try:
        user = store.revoke_user(args.name)
    except NotFound as exc:
        raise CliError(str(exc)) from None
    finally:
        store.close()
    print(f"revoked the token of {user.role} {user.name!r} at {config.name}")


def cmd_users(args: argparse.Namespace) -> None:
    config = DatasiteConfig.load(args.directory)
    store = Store(config.database_url)
    for user in store.users():
        state = user.token_state()
        if state == "active" and user.expires_at:
            state = f"active until {user.expires_at:%Y-%m-%d %H:%M} UTC"
        print(f"{user.name}\t{user.role}\t{state}")
    store.close()


def cmd_serve(args: argparse.Namespace) -> None:
    import logging

    from remote_kernel.checks.filter import InsecureFilterRefused
    from remote_kernel.datasite.http.app import run_server
    from remote_kernel.datasite.kernels import SandboxUnavailable

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    filter_name = "insecure-release-all" if args.insecure_release_all else None
    if args.insecure_release_all:
        print(
            "WARNING: --insecure-release-all releases every output WITHOUT REVIEW. "
            "Benchmarks only; never with real data.",
            file=sys.stderr,
        )

    def ready(url: str) -> None:
        print(f"datasite serving at {url} (Ctrl-C to stop)", flush=True)

    if bool(args.certfile) != bool(args.keyfile):
        raise CliError("give both --certfile and --keyfile (or neither)")
    try:
        asyncio.run(
            run_server(
                args.directory,
                args.host,
                args.port,
                allow_insecure=args.insecure_release_all,
                filter_name=filter_name,
                ready=ready,
                certfile=args.certfile,
                keyfile=args.keyfile,
                behind_proxy=args.behind_proxy,
            )
        )
    except (InsecureFilterRefused, SandboxUnavailable) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot serve on {args.host}:{args.port}: {exc}") from None


def cmd_audit(args: argparse.Namespace) -> int:
    config = DatasiteConfig.load(args.directory)
    store = Store(config.database_url)
    try:
        if args.action == "export":
            for entry in store.audit_entries():
                print(
                    json.dumps(
                        {
                            "id": entry.id,
                            "at": entry.at.isoformat() + "Z",
                            "actor": entry.actor,
                            "action": entry.action,
                            "target": entry.target,
                            "detail": entry.detail,
                            "prev_hash": entry.prev_hash,
                            "hash": entry.hash,
                        }
                    )
                )
            return 0
        entries = store.audit_entries()
        if args.action == "head":
            last = entries[-1].hash if entries else "0" * 64
            print(f"{len(entries)} {last}")
            return 0
        problems = store.verify_audit()
    finally:
        store.close()
    if args.head and args.head not in {entry.hash for entry in entries}:
        problems.append(
            f"the recorded head {args.head} is not in the chain: entries were removed "
            "from its end, or the chain was rewritten"
        )
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"audit log intact ({len(entries)} entries)")
    return 0


# --- reviewer commands ------------------------------------------------------------------------
def _reviewer(args: argparse.Namespace) -> Any:
    from remote_kernel.protocol.errors import RemoteKernelError
    from remote_kernel.researcher.client import Datasite

    if not args.url or not args.token:
        raise CliError("give --url and --token (or set REMOTE_KERNEL_URL and REMOTE_KERNEL_TOKEN)")
    try:
        return Datasite(args.url, args.token)
    except RemoteKernelError as exc:
        raise CliError(str(exc)) from None


def _remote(call: Any) -> Any:
    from remote_kernel.protocol.errors import RemoteKernelError

    try:
        return call()
    except RemoteKernelError as exc:
        raise CliError(str(exc)) from None


def cmd_review_list(args: argparse.Namespace) -> None:
    site = _reviewer(args)
    queue = _remote(site.review_queue)
    if args.json:
        print(json.dumps(queue, indent=2))
        return
    if not queue:
        print(f"nothing pending at {site.remote_name}")
        return
    print(f"{'output':>6}  {'request':>7}  {'researcher':<12} {'type':<15} summary")
    for item in queue:
        request = item["request"]
        votes = vote_tally(item)
        print(
            f"{item['id']:>6}  {request['id']:>7}  {request['user']:<12} "
            f"{item['msg_type']:<15} {item['summary']}" + (f" [{votes}]" if votes else "")
        )


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
    print("\n--- content ---")
    print(render_text(output["msg_type"], output.get("content") or {}))
    value = render_value((output.get("content") or {}).get("data") or {})
    if value:
        print("\n--- the value the researcher receives as an object ---")
        print(value)
    if args.save_images:
        for path in save_images(output, Path(args.save_images)):
            print(f"image written to {path}")


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


def cmd_review_decide(args: argparse.Namespace) -> None:
    site = _reviewer(args)
    if args.approve:
        output = _remote(lambda: site.approve(args.output_id, args.comment))
    else:
        output = _remote(lambda: site.deny(args.output_id, args.comment))
    print(f"output {output['id']} {output['state']}")


def cmd_connect(args: argparse.Namespace) -> None:
    from remote_kernel.protocol.errors import RemoteKernelError
    from remote_kernel.researcher.client import Datasite
    from remote_kernel.researcher.connections import (
        Connection,
        check_name,
        connections_path,
        save_connection,
    )
    from remote_kernel.researcher.proxy_kernel import install_kernelspec, kernelspec_name

    try:
        site = Datasite(args.url, args.token)  # checks the URL and the token now
    except RemoteKernelError as exc:
        raise CliError(str(exc)) from None
    name = args.name or site.remote_name
    try:
        check_name(name)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    save_connection(Connection(name, site.url, args.token, site.user, site.role))
    site.close()
    where = install_kernelspec(name, prefix=args.prefix)
    print(f"connected to {site.url} as {site.user} ({site.role}), saved as {name!r}")
    print(f"  connection file: {connections_path()} (mode 0600)")
    print(f"  kernel: {kernelspec_name(name)} ('Remote: {name}') in {where}")


def cmd_disconnect(args: argparse.Namespace) -> None:
    from remote_kernel.researcher.connections import remove_connection
    from remote_kernel.researcher.proxy_kernel import remove_kernelspec

    removed = remove_connection(args.name)
    spec_removed = remove_kernelspec(args.name)
    if not (removed or spec_removed):
        raise CliError(f"no saved connection or kernel named {args.name!r}")
    print(f"disconnected {args.name!r}")


def cmd_connections(args: argparse.Namespace) -> None:
    from remote_kernel.researcher.connections import load_connections

    listing = [c.public() for c in load_connections().values()]
    if args.json:
        print(json.dumps(listing, indent=2))
        return
    if not listing:
        print("no saved connections (add one with `remote-kernel connect URL --token T`)")
    for entry in listing:
        print(f"{entry['name']:<16} {entry['url']:<32} {entry['user']} ({entry['role']})")


def cmd_demo(args: argparse.Namespace) -> None:
    from remote_kernel.cli.demo import run_demo

    run_demo(
        args.dir,
        args.port,
        args.data_dir,
        lab=not args.no_lab,
        lab_port=args.lab_port,
        open_browser=not args.no_browser,
    )


if __name__ == "__main__":
    sys.exit(main())
