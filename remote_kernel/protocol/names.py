"""Names both sides use in URLs, paths and kernelspec names: sites, datasets, connections."""

from __future__ import annotations

import re

from remote_kernel.protocol.errors import InputError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a boring name (lowercase, digits, ``-``, ``_``), else :class:`InputError`.

    Names end up in URLs, kernelspec names (``remote-<site>``) and paths, so they
    are kept to a set that is safe in all three.
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InputError(
            f"{kind} name {name!r} is not allowed: use lowercase letters, digits, '-' or '_' "
            "(at most 63 characters, starting with a letter or digit)"
        )
    return name
