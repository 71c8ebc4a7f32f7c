"""Credits: reserve before a send, settle after it, released on every path.

The API charges 2 credits per billed answer. A request reserves its 2 credits
before it may pass the rate gate; when it ends, :meth:`Budget.settle` charges
what the answer cost (2 for a billed answer, 0 for an error, a cancellation or
a send that never happened) and frees the rest. :func:`hold` wraps the pair in
an ``async with`` so that no path, cancellation included, can leave a
reservation pinned: a batch cancelled while requests wait at the gate gives
every one of their credits back to the next batch.

:class:`LocalBudget` keeps the counts in this process; the Redis backend
(``_redis``) keeps them in Redis so that several processes share one budget.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol

import anyio

__all__ = ["CREDITS_PER_REQUEST", "Budget", "Hold", "LocalBudget", "hold"]

#: Credits the API charges for one billed ``fetch_user_stories`` answer.
CREDITS_PER_REQUEST = 2


class Budget(Protocol):
    """Where credits are reserved and charged (this process, or Redis)."""

    @property
    def limit(self) -> int | None:
        """The most credits that may be spent; ``None``: no limit."""
        ...

    @property
    def spent(self) -> int:
        """Credits charged so far (this process's view)."""
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


class LocalBudget:
    """A budget kept in this process (no locking needed: one event loop)."""

    __slots__ = ("_limit", "_reserved", "_spent")

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._reserved = 0
        self._spent = 0

    @property
    def limit(self) -> int | None:
        """The most credits that may be spent; ``None``: no limit."""
        return self._limit

    @property
    def spent(self) -> int:
        """Credits charged so far."""
        return self._spent

    @property
    def reserved(self) -> int:
        """Credits held by requests not finished yet."""
        return self._reserved

    async def reserve(self, credits: int) -> bool:
        """Reserve ``credits`` unless spent + reserved + credits would pass the limit."""
        if self._limit is not None and self._spent + self._reserved + credits > self._limit:
            return False
        self._reserved += credits
        return True

    async def settle(self, reserved: int, spent: int) -> None:
        """Charge ``spent`` of a reservation of ``reserved`` and free the rest."""
        self._reserved -= reserved
        self._spent += spent

    async def aclose(self) -> None:
        """Nothing to release."""


class Hold:
    """One reservation in flight; :meth:`charge` marks what the answer cost."""

    __slots__ = ("_budget", "_charged", "_credits", "granted")

    def __init__(self, budget: Budget, credits: int) -> None:
        self._budget = budget
        self._credits = credits
        self._charged = 0
        self.granted = False

    def charge(self, credits: int) -> None:
        """Record that the answer was billed ``credits`` (at most the reservation)."""
        self._charged = min(credits, self._credits)

    async def __aenter__(self) -> Hold:
        self.granted = await self._budget.reserve(self._credits)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.granted:
            return
        if exc_type is None:
            await self._budget.settle(self._credits, self._charged)
            return
        # Shielded: a cancelled batch must still give its reservation back,
        # and a shared budget needs a round trip to do so.
        with anyio.CancelScope(shield=True):
            await self._budget.settle(self._credits, self._charged)


class _Unlimited:
    """The hold of a budget with no limit: nothing to reserve, nothing to give back."""

    __slots__ = ()

    granted = True

    def charge(self, credits: int) -> None:
        """Nothing to record: spending is counted by the caller's stats."""

    async def __aenter__(self) -> _Unlimited:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_UNLIMITED = _Unlimited()


def hold(budget: Budget, credits: int = CREDITS_PER_REQUEST) -> Hold | _Unlimited:
    """Reserve ``credits`` for the duration of an ``async with`` block.

    Check ``granted`` inside the block: when it is false, nothing was reserved
    and nothing may be sent. A budget without a limit costs nothing here (the
    hot path of most batches).
    """
    if budget.limit is None:
        return _UNLIMITED
    return Hold(budget, credits)
