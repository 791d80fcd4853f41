"""What every command group shares: the command line's error and the subparsers type.

A handler raises :class:`CliError` with the message the person at the terminal
reads; ``main`` prints it as ``error: …`` and exits with status 2.
"""

from __future__ import annotations

import argparse

from remote_kernel.protocol.errors import RemoteKernelError

#: What each group's ``add_parser`` adds its commands to (``parser.add_subparsers()``).
Subparsers = argparse._SubParsersAction  # argparse has no public name for it


class CliError(RemoteKernelError):
    """Printed as 'error: …' with exit status 2."""
