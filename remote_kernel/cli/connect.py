"""``remote-kernel connect``, ``disconnect`` and ``connections``: the researcher's saved sites.

A connection (URL, token, user, role) goes into the researcher's connections
file, and each one gets its Jupyter kernel 'Remote: NAME'.
"""

from __future__ import annotations

import argparse
import json

from remote_kernel.cli.common import CliError, Subparsers
from remote_kernel.protocol.errors import RemoteKernelError


def add_parser(top: Subparsers) -> None:
    """The connect, disconnect and connections commands, on the top-level subparsers ``top``."""
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


def cmd_connect(args: argparse.Namespace) -> None:
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
