"""The ``remote-kernel`` command line: datasite admin, reviewers, connections, demo.

Admin commands work on a datasite directory (no server needed); reviewer
commands talk to a running datasite with a reviewer token (``--url`` and
``--token``, or ``REMOTE_KERNEL_URL`` and ``REMOTE_KERNEL_TOKEN``).

This module holds ``main`` (the error handling) and the top-level parser; each
command group lives in its own module with its parser and handlers:
``datasite`` (admin), ``review`` (reviewers), ``connect`` (connect, disconnect,
connections) and ``demo``.
"""

from __future__ import annotations

import argparse
import sys

from remote_kernel.cli import connect, datasite, demo, review
from remote_kernel.cli.common import CliError
from remote_kernel.protocol.errors import RemoteKernelError

__all__ = ["CliError", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RemoteKernelError as exc:  # ours: the message says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remote-kernel",
        description="Run notebook cells next to private data; release only checked outputs.",
    )
    top = parser.add_subparsers(title="commands")
    datasite.add_parser(top)
    review.add_parser(top)
    connect.add_parser(top)
    demo.add_parser(top)
    return parser


if __name__ == "__main__":
    sys.exit(main())
