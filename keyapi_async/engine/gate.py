"""The gate every request passes: in-flight cap, shared 429 cooldown, one token bucket.

:class:`RateGate` is the one place that decides what an answer means for the
rate: the fetcher reports a :class:`Verdict` per request. A request meets, in
order: an in-flight place (so that a request waiting for its turn holds no
token), the end of any 429 cooldown, then a turn of the one aiolimiter bucket,
refilled at ``qps * (1 - margin)`` and retuned by :class:`AdaptiveRate` after
429s. A turn granted while a cooldown began is forfeit. Why one token, the
margin, the cooldown's length and the CUBIC recovery: docs/rate-limits.md.
Waiting here never counts against a request's timeout.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import msgspec
from aiolimiter import AsyncLimiter

__all__ = [
    "BETA",
    "COLD_AFTER",
    "COLD_START",
    "FLOOR",
    "HOLD",
    "RECOVERY",
    "AdaptiveRate",
    "Gate",
    "GateSnapshot",
    "RateGate",
    "Ticket",
    "Verdict",
    "cut_rate",
    "is_cold",
    "paced_rate",
    "recovered_rate",
]

#: The window in which the API counts requests, in seconds.
WINDOW = 1.0

#: Seconds the turn after a cold grant is held back, on top of the interval.
#: A process's first request (and its first after a long pause) is written
#: late: a new connection, first-use code paths, a loop busy starting its
#: workers (5-25 ms measured on a loaded 2-core machine, more under heavier
#: load), while the turns after it go out at once. Without room after it, the
#: late one lands in the next second's window beside its full share: qps + 1
#: arrivals (issue 21). docs/multi-process.md, "The first second".
COLD_START = 0.1

#: A gate that granted nothing for this long grants cold again (aiohttp drops
#: idle keep-alive connections after 15 s, so the next send connects anew).
COLD_AFTER = 15.0


# -- the recovery rule after a 429: one rule for the local and the Redis gate ---------
#
# A 429 cuts the rate to BETA of what it was (never below FLOOR per second,
# never above what the server just accepted, less the margin); it then climbs
# back to the level of the cut in RECOVERY seconds along a concave cubic (most
# of the rate is back within a few seconds, flat near the level that was
# throttled), holds there HOLD seconds, and probes up to the ceiling along a
# convex cubic, reaching it RECOVERY seconds later. Fixed in seconds rather
# than a fixed curvature: with a curvature a cut at 200/s would take 6 s to
# recover and one at 5/s under 2 s. engine/redis_gate.py's Lua is a line by
# line transcription of recovered_rate, fed these constants
# (tests/test_ratelimit.py and tests/test_redis.py hold both to it).
BETA = 0.7
FLOOR = 0.5
RECOVERY = 5.0
HOLD = 5.0


def cut_rate(rate: float, learned: float | None) -> tuple[float, float]:
    """The rate after a 429 at ``rate`` and the level it recovers to: ``(cut_to, w_max)``.

    ``learned``: what the server just accepted, less the margin (``None``:
    not known, as in the Redis gate).
    """
    top = rate if learned is None else min(rate, learned)
    w_max = max(FLOOR, top)
    return max(FLOOR, min(rate * BETA, w_max)), w_max


def recovered_rate(elapsed: float, cut_to: float, w_max: float, ceiling: float | None) -> float:
    """The rate ``elapsed`` seconds after a cut to ``cut_to`` from ``w_max`` (the one rule).

    ``ceiling=None`` (no cap configured): the probe above ``w_max`` climbs
    by the depth of the cut every ``RECOVERY`` seconds, unbounded.
    """
    if elapsed < RECOVERY:
        return w_max - (w_max - cut_to) * ((RECOVERY - elapsed) / RECOVERY) ** 3
    if elapsed < RECOVERY + HOLD:
        return w_max
    gain = (w_max - cut_to) if ceiling is None else (ceiling - w_max)
    return w_max + gain * ((elapsed - RECOVERY - HOLD) / RECOVERY) ** 3


def is_cold(last_grant: float | None, now: float) -> bool:
    """Whether a grant at ``now`` is cold: the gate's first, or its first after ``COLD_AFTER``."""
    return last_grant is None or now - last_grant > COLD_AFTER


_log = logging.getLogger("keyapi_async")


def paced_rate(qps: float | None, margin: float) -> float | None:
    """The rate a gate paces at: ``qps`` less the margin (``None``: no cap)."""
    return None if qps is None else qps * (1 - margin)


class Verdict(enum.Enum):
    """What one answer means for the rate."""

    ACCEPTED = "accepted"
    """The server answered with anything but a 429."""
    THROTTLED = "throttled"
    """A 429, by HTTP status or body code."""
    NO_ANSWER = "no_answer"
    """A transport failure: it says nothing about the rate."""
    UNUSED = "unused"
    """The turn was granted but nothing was sent."""


class Ticket(msgspec.Struct, gc=False):
    """Proof of passage through the gate; ``sent_at`` is when the request was let out."""

    sent_at: float = 0.0


@dataclass(frozen=True, slots=True)
class GateSnapshot:
    """The gate's state at one moment, for stats and progress displays."""

    current_qps: float | None
    cooldown_remaining: float
    throttles: int


class Gate(Protocol):
    """Admission control shared by every request of a client (this process, or Redis)."""

    @property
    def idle(self) -> bool:
        """Whether :meth:`acquire` can return without waiting for a rate turn."""
        ...

    async def acquire(self) -> Ticket:
        """Wait for an in-flight place and a turn under the rate cap."""
        ...

    async def release(
        self,
        ticket: Ticket,
        verdict: Verdict,
        *,
        cooldown: float = 0.0,
        server_said: bool = False,
    ) -> None:
        """Free the in-flight place and report what the answer means for the rate."""
        ...

    def snapshot(self) -> GateSnapshot:
        """The current rate, cooldown and throttle count (no I/O)."""
        ...

    async def aclose(self) -> None:
        """Release resources."""
        ...


@dataclass(slots=True)
class AdaptiveRate:
    """The send rate of the local gate, cut on 429s and recovered by the one rule (pure).

    :func:`cut_rate` and :func:`recovered_rate` (docs/rate-limits.md, "The
    adaptive rate"), with the cut capped by what the server just accepted.
    ``ceiling=None``: unlimited until a 429 teaches a rate. All times are
    seconds from one clock.
    """

    ceiling: float | None
    margin: float = 0.05
    _t0: float | None = field(default=None, init=False)  # when the last cut was made
    _w_max: float = field(default=0.0, init=False)
    _cut_to: float = field(default=0.0, init=False)

    def current(self, now: float) -> float | None:
        """The rate (requests per second) to pace at, at time ``now``; ``None`` is unlimited."""
        if self._t0 is None:
            return self.ceiling
        rate = recovered_rate(now - self._t0, self._cut_to, self._w_max, self.ceiling)
        if self.ceiling is not None and rate >= self.ceiling:
            # Fully recovered: back to plain pacing at the ceiling.
            self._t0 = None
            return self.ceiling
        return rate

    def throttled(self, now: float, accepted_in_window: int, sent_in_window: int) -> float | None:
        """Record a 429 at ``now``; return the new rate.

        ``sent_in_window``: our sends in the window before the throttled one;
        ``accepted_in_window``: how many of them the server let through. With
        nothing sent before it a 429 teaches nothing (another client on the
        key, a blip): the rate is left alone.
        """
        current = self.current(now)
        if sent_in_window <= 0:
            return current
        # Unlimited so far: what we actually sent is the rate that tripped it.
        rate = float(sent_in_window) if current is None else current
        learned = accepted_in_window * (1 - self.margin) if accepted_in_window > 0 else None
        self._cut_to, self._w_max = cut_rate(rate, learned)
        self._t0 = now
        return self._cut_to


class _Bucket(AsyncLimiter):
    """aiolimiter's bucket: one token plus ``rate * slack``, retunable in place.

    The slack lets a turn that woke late (1-3 ms on a busy loop) be made up by
    the next one instead of being lost, and with ``slack = margin / (2 * (1 -
    margin))`` no second can hold ``qps + 1`` turns (docs/rate-limits.md,
    "Late wake-ups"). aiolimiter fixes its drip rate in ``__init__``;
    :meth:`retune` changes it without dropping the queued waiters.
    """

    def __init__(self, rate: float, slack: float) -> None:
        capacity = 1.0 + rate * slack
        super().__init__(capacity, capacity / rate)
        self.rate = rate
        self.slack = slack

    async def acquire(self, amount: float = 1) -> None:
        if not self._waiters:
            # From idle the slack is no head start: the first turn leaves at
            # once and the next one a whole interval later, not after the
            # slack alone. A first send held back by a busy loop would
            # otherwise reach the server together with the second.
            self._leak()
            self._level = max(self._level, self.max_rate - 1.0)
        await super().acquire(amount)

    def hold_back(self, seconds: float) -> None:
        """Delay the next turn by ``seconds`` more than the interval (after a cold grant)."""
        self._leak()
        self._level += seconds * self.rate
        self._wake_next()

    def retune(self, rate: float) -> None:
        if rate == self.rate:
            return
        self._leak()  # at the old rate up to now, so the change is exact from here
        self.rate = rate
        self.max_rate = 1.0 + rate * self.slack
        self.time_period = self.max_rate / rate
        self._rate_per_sec = rate
        # Re-arm the wake-up timer for the head waiter at the new rate.
        self._wake_next()


class RateGate:
    """The gate of one process (see the module docstring).

    Build it in the running loop: aiolimiter binds to it, and the gate reads
    its clock, so a virtual-clock loop drives the whole gate in tests.
    """

    def __init__(self, *, qps: float | None, concurrency: int, margin: float = 0.05) -> None:
        self._clock = asyncio.get_running_loop().time
        self._margin = margin
        # Seconds of lag the bucket makes up: half of what the margin leaves.
        self._slack = margin / (2 * (1 - margin))
        self._inflight = anyio.Semaphore(concurrency, fast_acquire=True)
        paced = paced_rate(qps, margin)
        self._adaptive = AdaptiveRate(paced, margin=margin)
        self._bucket = None if paced is None else _Bucket(paced, self._slack)
        self._cooldown_until = -math.inf
        self._last_cut = -math.inf
        self._last_grant: float | None = None
        # Send times of all requests, and of those the server accepted: what
        # we sent and what it let through in the window before a 429 is how
        # the rate is learned.
        self._sent: deque[float] = deque(maxlen=4096)
        self._accepted: deque[float] = deque(maxlen=4096)
        self.throttles = 0

    @property
    def idle(self) -> bool:
        """No cap and no 429 so far: :meth:`acquire` waits for an in-flight place at most."""
        return self._bucket is None and self.throttles == 0

    async def acquire(self) -> Ticket:
        """Wait for an in-flight place, the cooldown and the bucket; the ticket of one send."""
        places = self._inflight
        try:
            places.acquire_nowait()  # the hot path: no coroutine, no cancellation check
        except anyio.WouldBlock:
            await places.acquire()
        try:
            if self.idle:
                # Nothing to wait for: the hot path of qps=None batches, kept
                # free of further awaits.
                now = self._clock()
            else:
                now = await self._wait_turn()
        except BaseException:
            places.release()
            raise
        self._sent.append(now)
        return Ticket(now)

    async def _wait_turn(self) -> float:
        clock = self._clock
        while True:
            now = clock()
            if now < self._cooldown_until:
                await asyncio.sleep(self._cooldown_until - now)
                continue
            rate = self._adaptive.current(now)
            bucket = self._bucket
            if rate is None:
                return now
            if bucket is None:
                # Uncapped until a 429 taught a rate: from now on, pace.
                bucket = self._bucket = _Bucket(rate, self._slack)
            else:
                bucket.retune(rate)
            await bucket.acquire()
            now = clock()
            # Retuned at every grant too, not only when a task arrives: when
            # every worker is already queued in the bucket (as many workers
            # as targets), nobody arrives, and a rate cut would never recover.
            current = self._adaptive.current(now)
            if current is not None:
                bucket.retune(current)
            if now < self._cooldown_until:
                continue  # a 429 arrived while we waited: that turn is forfeit
            if is_cold(self._last_grant, now):
                bucket.hold_back(COLD_START)
            self._last_grant = now
            return now

    async def release(
        self,
        ticket: Ticket,
        verdict: Verdict,
        *,
        cooldown: float = 0.0,
        server_said: bool = False,
    ) -> None:
        """Give the place back and learn from ``verdict`` (a 429 pauses and slows the gate)."""
        self._inflight.release()
        if verdict is Verdict.ACCEPTED:
            self._accepted.append(ticket.sent_at)
        elif verdict is Verdict.THROTTLED:
            self._throttled(ticket, cooldown, server_said=server_said)

    def _throttled(self, ticket: Ticket, delay: float, *, server_said: bool) -> None:
        """Pause everyone and, once per cut, lower the rate.

        Without a Retry-After the pause lasts at least until the window is
        clear: any request before then would be refused again. Only a 429 for
        a request sent after the last cut lowers the rate again.
        """
        now = self._clock()
        self.throttles += 1
        sent = ticket.sent_at
        in_window = [t for t in self._accepted if sent - WINDOW <= t < sent]
        until = now + delay
        if not server_said and in_window:
            until = max(until, min(in_window) + WINDOW * (1 + self._margin))
        if until > self._cooldown_until:
            self._cooldown_until = until
            _log.info("429: every request waits %.2f s (cooldown)", until - now)
        if sent <= self._last_cut:
            return
        sent_before = sum(1 for t in self._sent if sent - WINDOW <= t < sent)
        rate = self._adaptive.throttled(now, len(in_window), sent_before)
        self._last_cut = now
        if rate is not None:
            _log.info("429: rate lowered to %.2f req/s", rate)
            if self._bucket is not None:
                self._bucket.retune(rate)  # the requests already queued slow down too

    def snapshot(self) -> GateSnapshot:
        """The gate's state now, for ``client.stats`` and logs."""
        now = self._clock()
        return GateSnapshot(
            current_qps=self._adaptive.current(now),
            cooldown_remaining=max(0.0, self._cooldown_until - now),
            throttles=self.throttles,
        )

    async def aclose(self) -> None:
        """Nothing to release: the gate holds no connection."""
