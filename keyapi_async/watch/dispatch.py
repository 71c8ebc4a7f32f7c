"""Which poll starts next: the earliest due account of either schedule, if pacing and budget allow.

Pure: :meth:`Dispatcher.next` takes the time and answers with a
:class:`Start` or the time to wait until; the watcher does the waiting.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Final

from .budget import DailyBudget
from .events import WatchStats, iso_time
from .schedule import Account, Schedule
from .schema import CREDITS_PER_POLL

__all__ = ["MOST_HIGHLIGHTS", "Dispatcher", "Start"]

logger = logging.getLogger("keyapi_async.watch")

MOST_HIGHLIGHTS: Final = 50
"""Changed highlights one tray poll may fetch (and reserve credits for)."""


@dataclass(frozen=True, slots=True)
class Start:
    """A poll about to start: which schedule, which account, when, and what it holds."""

    lane: Schedule
    """The stories schedule or the trays' one."""
    account: Account
    now: float
    reserve: int
    """Credits held for it until it settles."""
    most_highlights: int | None
    """For a tray poll: how many changed highlights it may fetch (None: no cap)."""


class Dispatcher:
    """Picks the next poll among the stories and (optional) tray schedules, under one budget."""

    __slots__ = ("_waiting_logged", "budget", "stats", "stories", "trays")

    def __init__(
        self,
        stories: Schedule,
        trays: Schedule | None,
        budget: DailyBudget,
        stats: WatchStats,
    ) -> None:
        self.stories = stories
        self.trays = trays
        self.budget = budget
        self.stats = stats
        """Where budget waits are counted."""
        self._waiting_logged: float | None = None

    def lanes(self) -> list[Schedule]:
        """The schedules polled, stories first (a tie goes to the stories)."""
        return [self.stories] if self.trays is None else [self.stories, self.trays]

    def next(self, now: float) -> Start | float:
        """The poll to start at ``now``, or when to look again (``inf``: when woken)."""
        due = []
        for order, lane in enumerate(self.lanes()):
            if (candidate := lane.next_due()) is not None:
                due.append((lane.start_at(candidate), order, lane, candidate))
        if not due:
            return math.inf
        start, _, lane, account = min(due, key=lambda d: d[:2])
        if start > now:
            return start
        ready = self.budget.available_at(now, CREDITS_PER_POLL)
        if ready > now:
            self._log_budget_wait(ready)
            return ready
        self._waiting_logged = None
        if lane is self.stories:
            return Start(lane, account, now, CREDITS_PER_POLL, None)
        # A tray's changed highlights are paid from the room left now, reserved
        # in full so no concurrent poll spends it too.
        room = self.budget.room(now)
        most = None if room is None else min(MOST_HIGHLIGHTS, room // CREDITS_PER_POLL - 1)
        return Start(lane, account, now, CREDITS_PER_POLL * (1 + (most or 0)), most)

    def _log_budget_wait(self, ready: float) -> None:
        if self._waiting_logged == ready:
            return
        if self._waiting_logged is None:
            self.stats.budget_waits += 1
        self._waiting_logged = ready
        budget = self.budget
        until = "a poll in flight settles" if not math.isfinite(ready) else iso_time(ready)
        logger.warning(
            "daily credit budget reached (%d of %d credits in the last 24 h); polls wait until %s",
            budget.spent + budget.reserved,
            budget.limit or 0,
            until,
        )
