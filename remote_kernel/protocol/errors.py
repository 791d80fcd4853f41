"""One exception root for the whole project, and one table from error to HTTP status.

Every error remote_kernel raises derives from :class:`RemoteKernelError` (so a
notebook can catch them all with ``except rk.RemoteKernelError``) and, through
one of the categories below, maps to an HTTP status in :data:`HTTP_STATUS`: the
datasite's handlers, the JupyterLab server extension and the researcher's
client all read that one table, so a 404 means the same thing on every side
of the boundary. Classes that belong to one side (``DatasetError``,
``KernelDied``…) live in that side's modules and derive from a category here.

The message of every error says what happened and what to do; it is what the
person at the notebook, the panel or the command line reads.
"""

from __future__ import annotations

from typing import Any


class RemoteKernelError(Exception):
    """Base of every error remote_kernel raises; the message says what to do."""

    def _render_traceback_(self) -> list[str]:
        """How IPython shows it in a notebook: one line, name and message, no internals.

        The message already says what happened and what to do; forty lines of the
        client's and the magic's frames above it only bury that. Errors that are not
        ours (a KeyError in the researcher's code, a bug) keep their full traceback.
        """
        return [f"\x1b[0;31m{type(self).__name__}\x1b[0m: {self}"]


# --- categories (each has a status in HTTP_STATUS) -----------------------------------------------
class InputError(RemoteKernelError, ValueError):
    """The request is malformed or over a limit; nothing was changed."""


class TooLarge(InputError):
    """Code, an output or a body over one of the datasite's size limits."""


class AuthenticationError(RemoteKernelError):
    """No token, or a token the datasite does not know (expired, revoked, mistyped)."""


class PermissionDenied(RemoteKernelError):
    """The caller's role or ownership does not allow this."""


class NotFound(RemoteKernelError):
    """No such thing, or (for researchers) someone else's: the same answer either way."""


class Conflict(RemoteKernelError):
    """The thing exists but is in a state that does not allow this (e.g. already decided)."""


class TooManyRequests(RemoteKernelError):
    """Too many failed logins from one address; ``retry_after`` seconds to wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(RemoteKernelError):
    """A part this call needs is not running or cannot be reached."""


class DatasiteUnreachable(Unavailable):
    """The datasite did not answer (down, wrong address, network, TLS)."""


# --- errors both sides raise --------------------------------------------------------------------
class UnknownDataset(NotFound, KeyError):
    """No dataset of that name (here: at any connected site; at the datasite: there)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class QueryRejected(InputError):
    """The query is not an aggregate the datasite can check; the message says why and what to do.

    Raised before any row is read (parse and bind errors, shape checks), or, when the
    query fails while running on the private data, with a fixed message: the text
    never contains private values.
    """


class DatasetError(InputError):
    """A dataset cannot be imported or mocked; the message says why and what to do."""


class NoValue(NotFound, LookupError):
    """A cell's value is not (yet) released; the message says why."""


class BudgetExhausted(PermissionDenied):
    """A DP query needs more privacy budget than the researcher has left (or has none there).

    A PermissionDenied (403), not a Conflict (409): the request is well formed and
    nothing is in a transient state that a retry or the researcher could resolve; what
    the datasite's admin granted does not allow it, and only the admin can grant more.
    Nothing was charged and nothing released; a smaller query may still fit. It is
    defined here, not on the datasite side, so that the researcher side can raise and
    catch it by name (``rk.BudgetExhausted``).
    """


class RequestRejected(RemoteKernelError):
    """The datasite refused a call; ``status`` is the HTTP status it answered with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


#: The one table from error to HTTP status; the most specific class in an error's MRO wins.
HTTP_STATUS: dict[type[RemoteKernelError], int] = {
    InputError: 400,
    AuthenticationError: 401,
    PermissionDenied: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    TooManyRequests: 429,
    RemoteKernelError: 500,
    DatasiteUnreachable: 502,
    Unavailable: 503,
}

#: The ``reason`` word of a JSON error body, per status.
REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    429: "too_many_requests",
    500: "server_error",
    502: "bad_gateway",
    503: "unavailable",
}


def http_status(error: BaseException) -> int | None:
    """The HTTP status of one of our errors (None for anything else: a bug, a 500)."""
    if isinstance(error, RequestRejected):
        return error.status
    for cls in type(error).__mro__:
        status = HTTP_STATUS.get(cls)  # type: ignore[call-overload]
        if status is not None:
            return status
    return None


def error_body(status: int, message: str) -> dict[str, Any]:
    """The JSON body of every error answer: ``{"error": {"status", "reason", "message"}}``."""
    return {"error": {"status": status, "reason": REASONS.get(status, "error"), "message": message}}
