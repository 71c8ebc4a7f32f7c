"""When each account is polled next: the watch's schedule as plain data and functions (no I/O).

* **Due times stay on a grid.** An account's next poll is its previous due
  time plus ``every`` (not the time the poll ended), so latency, retries and
  a busy archive never make the schedule drift or bunch up
  (:func:`next_poll_at`).
* **Catching up is paced.** Accounts that fell behind (a long stop, a budget
  wait) are polled at up to :data:`CATCH_UP` times the even rate: no burst,
  and the lag shrinks (:meth:`Schedule.start_at`).
* **New accounts are spread over one period**, so adding 500 at once adds 500
  evenly spaced polls, not a burst (:meth:`Schedule.update`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

__all__ = ["CATCH_UP", "Account", "AccountChanges", "Schedule", "next_poll_at"]

CATCH_UP: Final = 2.0
"""How much faster than the even rate overdue accounts are polled."""


@dataclass(slots=True)
class Account:
    """One watched account's place in the schedule."""

    target: str
    """The normalised target (``javan``, ``id:18527``)."""
    next_at: float
    """When its next poll is due (Unix seconds)."""
    polling: bool = False
    """Whether a poll of it is in flight."""
    active: bool = True
    """Whether it is still in the account list (removed accounts keep their row)."""


@dataclass(frozen=True, slots=True)
class AccountChanges:
    """What one re-read of the account list changed."""

    added: tuple[tuple[str, float], ...] = ()
    """``(target, first due time)`` of the accounts new to the schedule."""
    removed: tuple[str, ...] = ()
    """Accounts no longer listed."""
    revived: tuple[str, ...] = ()
    """Accounts listed again after a removal."""

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.revived)


def next_poll_at(due: float, started: float, every: float, *, on_grid: bool) -> float:
    """When an account is due again after a poll that was ``due`` and ``started``.

    ``on_grid`` polls (a success, or a "not found") keep their grid position;
    one that fell a whole period behind (a long stop) restarts the grid at
    ``started``. Any other failure is retried a quarter period later.
    """
    if not on_grid:
        return started + every / 4
    after = due + every
    return after if after > started else started + every


@dataclass(slots=True)
class Schedule:
    """The accounts, the heap of due times and the catch-up floor of one watch."""

    every: float
    """The polling period in seconds."""
    accounts: dict[str, Account] = field(default_factory=dict)
    """Every account ever watched in this archive, by target."""
    _heap: list[tuple[float, str]] = field(default_factory=list)
    _last_start: float = -math.inf

    def load(self, rows: Iterable[tuple[str, bool, float]]) -> None:
        """Take the archive's ``(target, active, next_at)`` rows (at start)."""
        for target, active, next_at in rows:
            self.accounts[target] = Account(target, next_at, active=active)

    @property
    def active(self) -> list[str]:
        """The accounts being watched."""
        return [a.target for a in self.accounts.values() if a.active]

    def spacing(self) -> float:
        """Seconds between two polls when on schedule: ``every / accounts``."""
        return self.every / max(1, sum(1 for a in self.accounts.values() if a.active))

    def update(self, wanted: list[str], now: float, *, first: bool = False) -> AccountChanges:
        """Make the schedule follow the account list ``wanted``; return what changed.

        The heap is rebuilt when something changed (always on the ``first`` call).
        """
        accounts = self.accounts
        wanted_set = set(wanted)
        added = [t for t in wanted if t not in accounts]
        revived = tuple(t for t in wanted if t in accounts and not accounts[t].active)
        removed = tuple(
            a.target for a in accounts.values() if a.active and a.target not in wanted_set
        )
        changes = AccountChanges(
            tuple((t, now + i * self.every / len(added)) for i, t in enumerate(added)),
            removed,
            revived,
        )
        if not changes and not first:
            return changes
        for target in removed:
            accounts[target].active = False
        for target in revived:
            accounts[target].active = True
        for target, due in changes.added:
            accounts[target] = Account(target, due)
        self._heap = [
            (a.next_at, a.target) for a in accounts.values() if a.active and not a.polling
        ]
        heapq.heapify(self._heap)
        return changes

    def next_due(self) -> Account | None:
        """The account due first (not necessarily due yet), or None."""
        heap = self._heap
        while heap:
            due, target = heap[0]
            account = self.accounts.get(target)
            if account is None or not account.active or account.polling or account.next_at != due:
                heapq.heappop(heap)  # a stale entry: rescheduled, removed or in flight
                continue
            return account
        return None

    def start_at(self, account: Account) -> float:
        """The earliest time ``account`` may start: its due time, paced when behind."""
        # On schedule the due times space the polls; behind schedule this
        # floor keeps the catch-up to CATCH_UP times the even rate.
        return max(account.next_at, self._last_start + self.spacing() / CATCH_UP)

    def begin(self, account: Account, now: float) -> None:
        """Mark ``account`` (the one :meth:`next_due` gave) as polled from ``now``."""
        heapq.heappop(self._heap)
        account.polling = True
        self._last_start = now

    def finish(self, account: Account, next_at: float) -> None:
        """End ``account``'s poll: due again at ``next_at``."""
        account.next_at = next_at
        account.polling = False
        if account.active:
            heapq.heappush(self._heap, (next_at, account.target))
