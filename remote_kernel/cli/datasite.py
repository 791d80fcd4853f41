"""``remote-kernel datasite …``: the admin commands, run on a datasite directory.

init, add-dataset, remock, mock-report, add-user, revoke, users, budget, serve,
audit and migrate; none of them needs a running server (serve starts one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from remote_kernel.cli.common import CliError, Subparsers
from remote_kernel.datasite import migrations
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.datasets import add_dataset, remock_dataset
from remote_kernel.datasite.dp_declaration import read_declaration
from remote_kernel.datasite.store import BudgetLine, Store
from remote_kernel.mocks.generate import FIDELITIES
from remote_kernel.mocks.report import format_report, load_report
from remote_kernel.protocol.errors import NotFound
from remote_kernel.protocol.models import Role


def add_parser(top: Subparsers) -> None:
    """The ``datasite`` group and its commands, on the top-level subparsers ``top``."""
    site = top.add_parser("datasite", help="create and run a datasite (admin)")
    cmds = site.add_subparsers(title="datasite commands")

    p = cmds.add_parser("init", help="create a datasite directory")
    p.add_argument("directory")
    p.add_argument("--name", required=True, help="the datasite's name, e.g. cleveland")
    p.add_argument(
        "--store",
        metavar="URL",
        help="keep state in this database, e.g. postgresql+psycopg://USER:PASSWORD@HOST/DB "
        "(default: SQLite, datasite.db in the directory); see docs/operators.md",
    )
    p.set_defaults(func=cmd_init)

    _add_dataset_parser(cmds)
    _add_remock_parser(cmds)

    p = cmds.add_parser("mock-report", help="a dataset mock's fidelity and privacy report")
    p.add_argument("directory")
    p.add_argument("name", help="the dataset")
    p.add_argument("--json", action="store_true", help="the full report as JSON")
    p.set_defaults(func=cmd_mock_report)

    _add_user_parsers(cmds)
    _add_budget_parser(cmds)
    _add_serve_parser(cmds)
    _add_audit_parser(cmds)

    p = cmds.add_parser(
        "migrate",
        help="upgrade the store's schema to the newest revision (init, serve and every "
        "command do it too; this says what it did)",
    )
    p.add_argument("directory")
    p.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if an upgrade is due"
    )
    p.add_argument(
        "--sql",
        action="store_true",
        help="change nothing; print the SQL that makes the schema in an empty database "
        "(for a DBA to review or run)",
    )
    p.set_defaults(func=cmd_migrate)


def fidelity_arg(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--fidelity",
        choices=list(FIDELITIES),
        default=default,
        help="schema (types and coarse ranges), marginal (each column's distribution; "
        "the default) or joint (also the correlations); see docs/mocks.md",
    )


def _add_dataset_parser(cmds: Subparsers) -> None:
    p = cmds.add_parser("add-dataset", help="import a private table and its mock")
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
    p.add_argument(
        "--dp",
        metavar="FILE",
        help="the dataset's DP metadata (YAML: bounds, public_categories, privacy_unit), "
        "checked against its columns and put in policy.yaml (docs/policy.md)",
    )
    p.set_defaults(func=cmd_add_dataset)


def _add_remock_parser(cmds: Subparsers) -> None:
    p = cmds.add_parser("remock", help="generate a dataset's mock (and its report) again")
    p.add_argument("directory")
    p.add_argument("name", help="the dataset")
    fidelity_arg(p, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed, for the same mock every time")
    p.add_argument("--rows", type=int, default=None, help="rows in the mock (default 1000)")
    p.add_argument("--identifier", action="append", default=[], help="an identifier column")
    p.set_defaults(func=cmd_remock)


def _add_user_parsers(cmds: Subparsers) -> None:
    p = cmds.add_parser("add-user", help="add a user and print their token once")
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

    p = cmds.add_parser("revoke", help="revoke a user's token (their history stays)")
    p.add_argument("directory")
    p.add_argument("name")
    p.set_defaults(func=cmd_revoke)

    p = cmds.add_parser("users", help="list users (never their tokens)")
    p.add_argument("directory")
    p.set_defaults(func=cmd_users)


def _add_budget_parser(cmds: Subparsers) -> None:
    p = cmds.add_parser(
        "budget",
        help="set a researcher's privacy budget on a dataset (with --epsilon), "
        "or list budgets: spent and left per user and dataset",
    )
    p.add_argument("directory")
    p.add_argument("user", nargs="?", help="the researcher (alone: list only theirs)")
    p.add_argument("dataset", nargs="?", help="the dataset")
    p.add_argument("--epsilon", type=float, help="the researcher's total epsilon on the dataset")
    p.add_argument(
        "--delta", type=float, help="the total delta (default: unchanged; 0 for a new budget)"
    )
    p.set_defaults(func=cmd_budget)


def _add_serve_parser(cmds: Subparsers) -> None:
    p = cmds.add_parser("serve", help="serve the datasite API")
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


def _add_audit_parser(cmds: Subparsers) -> None:
    p = cmds.add_parser(
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


# --- handlers -----------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> None:
    config = DatasiteConfig.create(args.directory, args.name, store=args.store)
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
        dp=read_declaration(args.dp) if args.dp else None,
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


def cmd_budget(args: argparse.Namespace) -> None:
    """Set one budget (USER DATASET --epsilon E [--delta D]) or list them."""
    config = DatasiteConfig.load(args.directory)
    setting = args.epsilon is not None or args.delta is not None
    if setting and (args.dataset is None or args.epsilon is None):
        raise CliError(
            "to set a budget give the researcher, the dataset and the total: "
            f"remote-kernel datasite budget {args.directory} USER DATASET --epsilon E [--delta D]"
        )
    if args.dataset is not None:
        config.dataset(args.dataset)  # UnknownDataset names the ones there are
    store = Store(config.database_url)
    try:
        if args.user is not None and args.user not in {user.name for user in store.users()}:
            raise CliError(
                f"no user {args.user!r} at {config.name} (see: remote-kernel datasite users "
                f"{args.directory})"
            )
        if setting:
            line = store.set_budget(args.user, args.dataset, args.epsilon, args.delta)
        else:
            lines = store.budgets(args.user, args.dataset)
    finally:
        store.close()
    if setting:
        _print_budget_set(line, config.name)
    else:
        _print_budgets(lines, config.name)


def _print_budget_set(line: BudgetLine, site: str) -> None:
    print(
        f"privacy budget of {line.user!r} on {line.dataset} at {site}: "
        f"ε={line.epsilon_total}, δ={line.delta_total} "
        f"(spent ε={line.epsilon_spent}, δ={line.delta_spent}; "
        f"left ε={line.epsilon_left}, δ={line.delta_left})"
    )
    over = [
        f"{sign}={spent}"
        for sign, spent, total in (
            ("ε", line.epsilon_spent, line.epsilon_total),
            ("δ", line.delta_spent, line.delta_total),
        )
        if spent > total
    ]
    if over:
        print(
            f"{line.user!r} has already spent {' and '.join(over)}, more than the new total: "
            "no DP query fits until it is raised (what was spent stays spent)"
        )


def _print_budgets(lines: list[BudgetLine], site: str) -> None:
    """One row per researcher and dataset; amounts as stored (exact decimals)."""
    if not lines:
        print(
            f"no privacy budgets at {site} (that match): no researcher can make DP queries "
            "until one is set with --epsilon"
        )
        return
    head = ("user", "dataset", "ε spent", "ε left", "ε total", "δ spent", "δ left", "δ total")
    rows = [
        (
            line.user, line.dataset,
            str(line.epsilon_spent), str(line.epsilon_left), str(line.epsilon_total),
            str(line.delta_spent), str(line.delta_left), str(line.delta_total),
            str(line.charges),
        )
        for line in lines
    ]  # fmt: skip
    table = [(*head, "queries"), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


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
            _export_audit(store)
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


def _export_audit(store: Store) -> None:
    """The audit log as JSON lines, oldest first."""
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


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade (or with --check only inspect) the store's schema; say from what to what."""
    config = DatasiteConfig.load(args.directory)
    if args.sql:
        from alembic import command

        command.upgrade(migrations.alembic_config(url=config.database_url), "head", sql=True)
        return 0
    store = Store(config.database_url, upgrade=False)
    where = store.engine.url.render_as_string(hide_password=True)
    try:
        if args.check:
            with store.engine.connect() as conn:
                found = migrations.current_revision(conn)
            due = found != migrations.HEAD
            state = "an upgrade is due" if due else "up to date"
            print(f"store {where}: revision {found or 'none'}, newest {migrations.HEAD}: {state}")
            return 1 if due else 0
        before, after = migrations.upgrade(store.engine)
    finally:
        store.close()
    if before == after:
        print(f"store {where}: already at the newest revision {after}")
    else:
        print(f"store {where}: upgraded from revision {before or 'none'} to {after}")
    return 0
