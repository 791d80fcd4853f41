"""Why a joint computation did not release anything, as each site says it.

Each is a category of :mod:`remote_kernel.protocol.errors`, so the handler maps it
to its status through the one table. No message carries a value of any site: they
are made from the request, the configuration, the policy and the opened verdict
bits only.
"""

from __future__ import annotations

from remote_kernel.protocol.errors import Conflict, InputError, PermissionDenied, Unavailable


class SecureQueryRefused(InputError):
    """A joint computation this site will not take part in (400); the message says why."""


class NotOptedIn(PermissionDenied):
    """The dataset, or this site, does not take part in joint computations (403)."""


class PooledResultWithheld(PermissionDenied):
    """The pooled table failed a party's thresholds: nothing is released to anyone (403)."""


class JointComputationFailed(Unavailable):
    """A party was down, refused, disagreed or timed out: nothing was released (503)."""


class ComputationBusy(Conflict):
    """This site's MPC party is already in another joint computation (409)."""
