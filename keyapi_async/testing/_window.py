"""The emulator's QPS window: at most ``qps`` accepted requests in any sliding second."""

from __future__ import annotations

import collections
import math

__all__ = ["QpsWindow"]


class QpsWindow:
    """Accepted arrival times within the sliding window, and the cap they are held to.

    A ``qps`` under 1 is one request per ``1 / qps`` seconds. Pure: every
    method takes the time it is asked about.
    """

    __slots__ = ("_accepted", "cap", "window")

    def __init__(self) -> None:
        self._accepted: collections.deque[float] = collections.deque()
        self.cap: int | None = None
        """Accepted requests allowed per window (None: no cap)."""
        self.window = 1.0
        """The window's length in seconds."""

    def configure(self, qps: float | None) -> None:
        """Hold later requests to ``qps`` (the history of accepted ones is kept)."""
        if qps is None:
            self.cap, self.window = None, 1.0
        elif qps >= 1:
            self.cap, self.window = math.floor(qps), 1.0
        else:
            self.cap, self.window = 1, 1.0 / qps

    def admit(self, now: float) -> bool:
        """Whether a request arriving at ``now`` fits (then it counts), else False (a 429)."""
        cap = self.cap
        if cap is None:
            return True
        accepted = self._accepted
        horizon = now - self.window
        while accepted and accepted[0] <= horizon:
            accepted.popleft()
        if len(accepted) >= cap:
            return False
        accepted.append(now)
        return True

    def retry_after(self, now: float) -> int:
        """Whole seconds until the window frees a place (at least 1), for ``Retry-After``."""
        cap, accepted = self.cap, self._accepted
        if cap is None or len(accepted) < cap:
            return 1
        # The window frees a slot when the entry `cap` places from the end expires.
        frees_at = accepted[len(accepted) - cap] + self.window
        return max(1, math.ceil(frees_at - now))
