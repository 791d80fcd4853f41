"""Throttling of failed logins, per client address.

Tokens are 256-bit random strings, so guessing one is hopeless; throttling is
about keeping a guesser (or a misconfigured client in a loop) from filling the
audit log and the CPU. After ``max_failed_logins`` failures from one address
within ``failure_window_seconds``, that address gets 429 (with Retry-After) for
``lockout_seconds``, whatever token it sends. State is in memory: a restart
forgets it, which only matters to a guesser who can also restart the server.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from remote_kernel.datasite.config import AuthSettings

#: Addresses remembered at most (oldest forgotten first), so a spray of addresses
#: cannot grow memory without bound.
MAX_TRACKED = 10000


class AuthThrottle:
    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def retry_after(self, address: str) -> float:
        """Seconds ``address`` must still wait (0 when it may try)."""
        until = self._locked_until.get(address)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._locked_until[address]
            return 0.0
        return left

    def failure(self, address: str) -> bool:
        """Record a failed login; True when this failure locks the address out."""
        if self.settings.max_failed_logins <= 0:
            return False
        now = self.clock()
        window = self._failures.pop(address, None) or deque()
        self._failures[address] = window  # most recent last, for the size cap below
        window.append(now)
        while window and now - window[0] > self.settings.failure_window_seconds:
            window.popleft()
        while len(self._failures) > MAX_TRACKED:
            self._failures.pop(next(iter(self._failures)))
        if len(window) >= self.settings.max_failed_logins:
            window.clear()
            self._locked_until[address] = now + self.settings.lockout_seconds
            while len(self._locked_until) > MAX_TRACKED:
                self._locked_until.pop(next(iter(self._locked_until)))
            return True
        return False
