"""The rolling 24-hour credit budget of a watch, checked on every poll without a query."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from .schema import DAY

__all__ = ["DailyBudget"]


@dataclass(slots=True)
class DailyBudget:
    """Credits spent in the last 24 h plus those reserved by polls in flight.

    An in-memory mirror of the ``watch_credits`` rows of the last day (loaded
    once at start), so a restart keeps the window and no poll waits for a
    query. Pure: every method takes the time it is asked about.
    """

    limit: int | None
    """The cap on credits in any rolling 24 h (``None``: no cap)."""
    window: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    """``(at, credits)`` of the spends still inside the window, oldest first."""
    spent: int = 0
    """Credits spent in the window."""
    reserved: int = 0
    """Credits held by polls in flight."""

    def load(self, spends: Iterable[tuple[float, int]]) -> None:
        """Add earlier spends (oldest first), e.g. the archive's rows of the last day."""
        for at, credits in spends:
            self.add(at, credits)

    def trim(self, now: float) -> None:
        """Forget the spends that left the window by ``now``."""
        while self.window and self.window[0][0] <= now - DAY:
            self.spent -= self.window.popleft()[1]

    def available_at(self, now: float, credits: int) -> float:
        """When ``credits`` more fit under the limit (``now`` if they do already).

        ``inf`` when the reservations alone exceed it: only a poll settling
        can free room then.
        """
        self.trim(now)
        if self.limit is None:
            return now
        excess = self.spent + self.reserved + credits - self.limit
        if excess <= 0:
            return now
        freed = 0
        for at, spent in self.window:
            freed += spent
            if freed >= excess:
                return at + DAY
        return math.inf

    def room(self, now: float) -> int | None:
        """Credits that may still be reserved now (None: no limit)."""
        self.trim(now)
        if self.limit is None:
            return None
        return max(0, self.limit - self.spent - self.reserved)

    def add(self, at: float, credits: int) -> None:
        """Count a spend of ``credits`` at ``at``."""
        if credits:
            self.window.append((at, credits))
            self.spent += credits
