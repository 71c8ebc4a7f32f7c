"""Credits: reserve before a send, settle after it, released on every path.

A request reserves its 2 credits before it may pass the rate gate; when it
ends, the reservation is settled: 2 credits charged for a billed answer, none
for an error, a cancellation or a send that never happened. :func:`hold` wraps
the pair in ``async with`` so that no path can leave a reservation pinned.
:class:`LocalBudget` counts in this process; ``engine.redis_gate`` keeps the same
contract in Redis for several processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import anyio

from .endpoints import CREDITS_PER_ANSWER

__all__ = ["CREDITS_PER_REQUEST", "Budget", "Hold", "LocalBudget", "hold"]

#: Credits the API charges for one billed answer (each endpoint's own: ``Endpoint.credits``).
CREDITS_PER_REQUEST = CREDITS_PER_ANSWER


class Budget(Protocol):
    """Where credits are reserved and charged (this process, or Redis)."""

    @property
    def limit(self) -> int | None:
        """The most credits that may be spent; ``None``: no limit."""
        ...

    async def reserve(self, credits: int) -> bool:
        """Reserve ``credits``; ``False`` when that could exceed the limit."""
        ...

    async def settle(self, reserved: int, spent: int) -> None:
        """End a reservation of ``reserved``: charge ``spent`` of it and free the rest."""
        ...

    async def aclose(self) -> None:
        """Release resources (a Redis connection)."""
        ...


@dataclass(slots=True)
class LocalBudget:
    """A budget kept in this process (no locking needed: one event loop)."""

    limit: int | None
    reserved: int = 0
    spent: int = 0

    async def reserve(self, credits: int) -> bool:
        """Hold ``credits`` if the limit allows them; False when it does not."""
        if self.limit is not None and self.spent + self.reserved + credits > self.limit:
            return False
        self.reserved += credits
        return True

    async def settle(self, reserved: int, spent: int) -> None:
        """Give back a reservation of ``reserved`` and count ``spent`` as spent."""
        self.reserved -= reserved
        self.spent += spent

    async def aclose(self) -> None:
        """Nothing to release."""


class Hold:
    """One reservation in flight; check ``granted``, call :meth:`charge` when billed."""

    __slots__ = ("_budget", "_charged", "_credits", "granted")

    def __init__(self, budget: Budget | None, credits: int) -> None:
        self._budget = budget
        self._credits = credits
        self._charged = 0
        # Without a limit there is nothing to reserve or give back.
        self.granted = budget is None

    def charge(self, credits: int) -> None:
        """Record that the answer was billed ``credits`` (at most the reservation)."""
        self._charged = min(credits, self._credits)

    async def __aenter__(self) -> Hold:
        if self._budget is not None:
            self.granted = await self._budget.reserve(self._credits)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._budget is None or not self.granted:
            return
        # Shielded: a cancelled batch must still give its reservation back,
        # and a shared budget needs a round trip to do so.
        with anyio.CancelScope(shield=exc_info[0] is not None):
            await self._budget.settle(self._credits, self._charged)


_UNLIMITED = Hold(None, 0)


def hold(budget: Budget, credits: int = CREDITS_PER_REQUEST) -> Hold:
    """Reserve ``credits`` for the duration of an ``async with`` block.

    Nothing may be sent when ``granted`` is false inside the block. A budget
    without a limit costs nothing here (the hot path of most batches).
    """
    if budget.limit is None:
        return _UNLIMITED
    return Hold(budget, credits)
