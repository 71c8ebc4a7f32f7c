"""The gate every request passes: in-flight cap, rate cap, shared 429 cooldown, adaptive rate.

Order inside :meth:`RateGate.slot`, and why:

1. **In-flight cap** (a semaphore of ``concurrency``) first, so that a request
   waiting for its turn never holds a rate token it cannot use yet.
2. **Cooldown**: after any 429 every caller waits until the cooldown ends, so
   one 429 slows the whole batch rather than one task.
3. **Adaptive pacing** (:class:`AdaptiveRate` + :class:`Pacer`): evenly spaced
   send slots at the current rate, lowered after 429s.
4. **Hard ceiling**: an :class:`aiolimiter.AsyncLimiter` with a bucket of one
   token refilled every ``1 / (qps * (1 - margin))`` seconds. A bucket of
   ``qps`` tokens per second would let ``qps`` requests out at once from idle
   and keep refilling, putting up to ``2 * qps`` into one second; a bucket of
   one cannot burst, so no one-second window ever holds more than ``qps``
   sends, the first second included.

Why the margin: the API counts arrivals in a rolling window as *it* sees them,
and scheduling and network jitter bunch requests together on the way. Pacing
at ``qps * (1 - margin)`` (5% by default) gives each request about
``margin / qps`` seconds of slack (2.5 ms at 20/s) before two of them can land
in one window at the server.

Time waiting here never counts against a request's timeout: the transport's
timeout starts after the gate lets the request through.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

__all__ = ["AdaptiveRate", "GateSnapshot", "Pacer", "RateGate", "Ticket"]

#: The window in which the API counts requests, in seconds.
WINDOW = 1.0


class AdaptiveRate:
    """The current send rate, lowered on 429s and recovered while requests succeed (pure).

    On a 429 the rate drops multiplicatively (``beta``) and never stays above
    what the server just showed it accepts: the number of our sends it let
    through in the preceding window, less the margin. It then grows back
    along botocore's CUBIC curve: quickly at first, flattening out at the
    level where the 429 happened, held there for ``hold`` seconds, then
    probing upward again (convex) toward the configured ceiling. Probing is
    what lets the rate recover when the 429 was a transient blip; the hold is
    what keeps probing rare when the ceiling really is above the server's cap.

    ``ceiling`` is ``None`` for "no configured cap": the rate is unlimited
    until the first 429 teaches one. All times are seconds from one clock.
    """

    def __init__(
        self,
        ceiling: float | None,
        *,
        margin: float = 0.05,
        beta: float = 0.7,
        scale: float = 0.4,
        hold: float = 5.0,
        floor: float = 0.5,
    ) -> None:
        self.ceiling = ceiling
        self.margin = margin
        self.beta = beta
        self.scale = scale
        self.hold = hold
        self.floor = floor
        self._t0: float | None = None
        self._w_max = 0.0
        self._k = 0.0

    def current(self, now: float) -> float | None:
        """The rate (requests per second) to pace at, at time ``now``; ``None`` is unlimited."""
        if self._t0 is None:
            return self.ceiling
        elapsed = now - self._t0
        if elapsed < self._k:
            rate = self._w_max - self.scale * (self._k - elapsed) ** 3
        elif elapsed < self._k + self.hold:
            rate = self._w_max
        else:
            rate = self._w_max + self.scale * (elapsed - self._k - self.hold) ** 3
        if self.ceiling is not None and rate >= self.ceiling:
            # Fully recovered: back to plain pacing at the ceiling.
            self._t0 = None
            return self.ceiling
        return rate

    def throttled(self, now: float, accepted_in_window: int, sent_in_window: int) -> float | None:
        """Record a 429 at ``now``; returns the new rate.

        ``sent_in_window`` is how many of our requests went out in the window
        before the throttled one, ``accepted_in_window`` how many of those the
        server let through. With nothing sent before it a 429 says nothing
        about our rate (another client on the same key, a blip): the rate is
        left alone and only the cooldown applies.
        """
        current = self.current(now)
        if sent_in_window <= 0:
            return current
        # Unlimited so far: what we actually sent is the rate that tripped it.
        rate = float(sent_in_window) if current is None else current
        learned = accepted_in_window * (1 - self.margin) if accepted_in_window > 0 else math.inf
        w_max = max(self.floor, min(rate, learned))
        new = max(self.floor, min(rate * self.beta, w_max))
        self._w_max = max(new, w_max)
        self._k = ((self._w_max - new) / self.scale) ** (1 / 3)
        self._t0 = now
        return new


class Pacer:
    """Hands out evenly spaced send times at a given rate (pure; a GCRA with no burst)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = -math.inf

    def reserve(self, now: float, rate: float | None) -> float:
        """Reserve the next send slot at or after ``now``; returns when it is."""
        if rate is None:
            return now
        at = max(now, self._next)
        self._next = at + 1.0 / rate
        return at

    def delay_until(self, at: float) -> None:
        """Push every later reservation to ``at`` or after (used by cooldowns)."""
        self._next = max(self._next, at)


@dataclass(frozen=True, slots=True)
class GateSnapshot:
    """The gate's state at one moment, for stats and progress displays."""

    current_qps: float | None
    cooldown_remaining: float
    throttles: int


@dataclass(slots=True)
class Ticket:
    """Proof of passage through the gate; ``sent_at`` is when the request was let out."""

    sent_at: float = 0.0


class _Slot:
    """``async with`` form of one passage through the gate.

    A plain class rather than ``@asynccontextmanager``: it runs once per
    request, and the generator machinery cost twice as much.
    """

    __slots__ = ("_gate", "_ticket")

    def __init__(self, gate: RateGate) -> None:
        self._gate = gate
        self._ticket = Ticket()

    async def __aenter__(self) -> Ticket:
        gate = self._gate
        inflight = gate._inflight
        await inflight.acquire()
        if gate._limiter is None and gate._unthrottled:
            # No cap and no 429 ever: nothing to wait for (the hot path of
            # qps=None batches, kept free of further awaits).
            now = gate._clock()
            self._ticket.sent_at = now
            gate._sent.append(now)
            return self._ticket
        try:
            await gate._wait_turn(self._ticket)
        except BaseException:
            inflight.release()
            raise
        return self._ticket

    async def __aexit__(self, *exc_info: object) -> None:
        self._gate._inflight.release()


class RateGate:
    """Admission control shared by every request of one client (see module docstring).

    Build it inside the running event loop: aiolimiter binds to the loop that
    first uses it, and the gate reads that loop's clock (the one
    :func:`asyncio.sleep` waits on), so a loop with a virtual clock drives
    the whole gate in tests.
    """

    def __init__(
        self,
        *,
        qps: float | None,
        concurrency: int,
        margin: float = 0.05,
    ) -> None:
        self._clock = asyncio.get_running_loop().time
        self._margin = margin
        self._inflight = asyncio.Semaphore(concurrency)
        paced = None if qps is None else qps * (1 - margin)
        self._adaptive = AdaptiveRate(paced, margin=margin)
        self._pacer = Pacer()
        self._limiter = None if paced is None else AsyncLimiter(1, 1.0 / paced)
        self._cooldown_until = -math.inf
        self._last_cut = -math.inf
        # Send times of all requests, and of those the server accepted
        # (answered with anything but a 429): what we sent and what it let
        # through in the window before a 429 is how the rate is learned.
        self._sent: deque[float] = deque(maxlen=4096)
        self._accepted: deque[float] = deque(maxlen=4096)
        self.throttles = 0
        self._unthrottled = True

    def slot(self) -> _Slot:
        """Wait for a turn to send; hold an in-flight place until the block exits.

        Use as ``async with gate.slot() as ticket:``.
        """
        return _Slot(self)

    async def _wait_turn(self, ticket: Ticket) -> None:
        clock = self._clock
        while True:
            now = clock()
            if now < self._cooldown_until:
                await asyncio.sleep(self._cooldown_until - now)
                continue
            rate = self._adaptive.current(now)
            at = self._pacer.reserve(now, rate)
            if at > now:
                await asyncio.sleep(at - now)
            if self._limiter is not None:
                await self._limiter.acquire()
            now = clock()
            if now < self._cooldown_until:
                # A 429 arrived while we waited: that turn is forfeit.
                continue
            ticket.sent_at = now
            self._sent.append(now)
            return

    def accepted(self, ticket: Ticket) -> None:
        """Report that the request behind ``ticket`` was not rate limited."""
        self._accepted.append(ticket.sent_at)

    def throttled(self, ticket: Ticket, delay: float, *, server_said: bool = False) -> None:
        """Report a 429 for the request behind ``ticket``: pause everyone, slow down.

        ``delay`` is the wait the retry policy chose; ``server_said`` tells
        whether it came from the server's Retry-After. When it did not, the
        pause lasts at least until the oldest request the server accepted in
        the throttled request's window has aged out of it (plus the margin):
        before then the window is still full and any request would be
        rejected again, costing another round trip and another rate cut.

        Only a 429 for a request sent after the last cut lowers the rate again;
        others were paced at the old rate and say nothing new.
        """
        now = self._clock()
        self.throttles += 1
        self._unthrottled = False
        sent = ticket.sent_at
        in_window = [t for t in self._accepted if sent - WINDOW <= t < sent]
        until = now + delay
        if not server_said and in_window:
            until = max(until, min(in_window) + WINDOW * (1 + self._margin))
        if until > now:
            self._cooldown_until = max(self._cooldown_until, until)
            self._pacer.delay_until(self._cooldown_until)
        if sent <= self._last_cut:
            return
        sent_before = sum(1 for t in self._sent if sent - WINDOW <= t < sent)
        self._adaptive.throttled(now, len(in_window), sent_before)
        self._last_cut = now

    def snapshot(self) -> GateSnapshot:
        """The current rate, cooldown and throttle count."""
        now = self._clock()
        return GateSnapshot(
            current_qps=self._adaptive.current(now),
            cooldown_remaining=max(0.0, self._cooldown_until - now),
            throttles=self.throttles,
        )
