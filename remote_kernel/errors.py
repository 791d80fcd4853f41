"""Domain errors shared by the store, the datasite core and the API (mapped to 4xx there)."""

from __future__ import annotations


class StoreError(Exception):
    """A store operation that cannot be done as asked (bad state, unknown id)."""


class NotFound(StoreError):
    """No such thing, or (for researchers) someone else's: the same answer either way."""


class Conflict(StoreError):
    """The thing exists but is in a state that does not allow this (e.g. already decided)."""


class PermissionDenied(Exception):
    """The caller's role or ownership does not allow this."""


class InputError(ValueError):
    """The request is malformed or over a limit; nothing was changed."""
