"""One target, from first send to outcome: budget → gate → transport → sans-I/O → retry.

:meth:`Fetcher.fetch` is the whole life of one target's request::

    stop signal set? → reserve 2 credits (async with hold) → gate.acquire()
      → stop signal set while waiting? (turn UNUSED, nothing sent)
      → transport.send → parse_response → gate.release(verdict)
      → billed? charge the credits → retry policy: again after a delay, or done

Every request on the wire passed the gate, counts as an attempt (toward
``max_attempts`` and the stats) and held a credit reservation while it was
out; the transport never re-sends on its own. Reservations are given back on
every path, cancellation included.

The :class:`Stop` signal belongs to one batch: a 401, 403 or 402 sets it, as
does the batch's own ``stop()``; the circuit breaker sets it when the API
could not be reached at all (every attempt failed to connect, none answered).
"""

from __future__ import annotations

import logging
import time

import anyio

from ._budget import CREDITS_PER_REQUEST, Budget, hold
from ._errors import (
    AuthenticationError,
    ConnectError,
    GateUnavailableError,
    InsufficientCreditsError,
    KeyAPIError,
    NotAttemptedError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
)
from ._ratelimit import Gate, Ticket, Verdict
from ._retry import RetryPolicy
from ._sansio import RequestBuilder, parse_response
from ._targets import Target
from ._transport import Transport
from .models import Reel

__all__ = ["BREAKER_THRESHOLD", "Counters", "Fetcher", "Outcome", "Stop"]

_log = logging.getLogger("keyapi_async")

#: Connection failures, with no answer at all from the API, after which a
#: batch stops: the API is unreachable, and retrying every target would only
#: take minutes to say so.
BREAKER_THRESHOLD = 5


class Counters:
    """The client's running tallies (mutable; snapshots go out as ClientStats)."""

    __slots__ = (
        "credits_spent",
        "empty",
        "failures",
        "in_flight",
        "rate_limited",
        "requests_sent",
        "retries",
        "successes",
    )

    def __init__(self) -> None:
        self.requests_sent = 0
        self.credits_spent = 0
        self.in_flight = 0
        self.successes = 0
        self.empty = 0
        self.failures = 0
        self.rate_limited = 0
        self.retries = 0


class Outcome:
    """What one target's fetch came to: a reel or an error, and how many sends."""

    __slots__ = ("attempts", "error", "reel")

    def __init__(self, reel: Reel | None, error: KeyAPIError | None, attempts: int) -> None:
        self.reel = reel
        self.error = error
        self.attempts = attempts


class Stop:
    """A batch's stop signal and circuit breaker: once set, nothing new is sent for it."""

    __slots__ = ("_answered", "_connect_failures", "_where", "budget", "reason", "waiters")

    def __init__(self, where: str = "") -> None:
        self.reason: NotAttemptedError | None = None
        # Set once a send was refused for the credit budget: not a stop (a
        # failed request frees its reservation), but why the batch ran dry.
        self.budget: NotAttemptedError | None = None
        self._where = where
        # Cancel scopes of the requests waiting at the gate for their turn.
        self.waiters: set[anyio.CancelScope] = set()
        self._answered = False
        self._connect_failures = 0

    def stop(self, cause: KeyAPIError) -> None:
        """Stop for ``cause``: a 401, 403 or 402 (the first one wins)."""
        if self.reason is not None:
            return
        if isinstance(cause, InsufficientCreditsError):
            why = "credits exhausted"
        elif isinstance(cause, PermissionDeniedError):
            why = "permission denied"
        elif isinstance(cause, AuthenticationError):
            why = "authentication failed"
        else:
            why = str(cause)
        self._set(NotAttemptedError(why, cause=cause))

    def _set(self, reason: NotAttemptedError) -> None:
        self.reason = reason
        _log.info("batch stopped: %s", reason.message)
        for scope in self.waiters:
            scope.cancel()

    def cancel(self, why: str, *, cause: KeyAPIError | None = None) -> None:
        """Stop for a reason of the caller's (``stop()``, Ctrl-C) or a lost shared gate."""
        if self.reason is None:
            self._set(NotAttemptedError(why, cause=cause))

    def answered(self) -> None:
        """An HTTP answer arrived: the API is reachable, the breaker stays closed."""
        self._answered = True

    def connect_failed(self, error: ConnectError) -> None:
        """A connection could not be opened; trips the breaker when nothing ever answered."""
        if self._answered or self.reason is not None:
            return
        self._connect_failures += 1
        if self._connect_failures >= BREAKER_THRESHOLD:
            self._set(NotAttemptedError(f"API unreachable at {self._where}", cause=error))


_STOPS_A_BATCH = (AuthenticationError, PermissionDeniedError, InsufficientCreditsError)


class Fetcher:
    """Fetches one target at a time with retries; shared by every call of a client."""

    __slots__ = ("_budget", "_builder", "_gate", "_policy", "_transport", "counters")

    def __init__(
        self,
        *,
        transport: Transport,
        gate: Gate,
        budget: Budget,
        builder: RequestBuilder,
        policy: RetryPolicy,
    ) -> None:
        self._transport = transport
        self._gate = gate
        self._budget = budget
        self._builder = builder
        self._policy = policy
        self.counters = Counters()

    @property
    def gate(self) -> Gate:
        """The rate gate requests pass."""
        return self._gate

    async def fetch(self, target: Target, stop: Stop | None = None) -> Outcome:
        """Fetch ``target`` with retries; never raises a KeyAPIError (returns it)."""
        counters = self.counters
        rendered = str(target)
        attempt = 0
        last_error: KeyAPIError | None = None
        while True:
            if stop is not None and stop.reason is not None:
                return self._unsent(stop.reason, rendered, last_error, attempt)
            try:
                async with hold(self._budget) as credits:
                    ticket = await self._admit(credits.granted, stop)
                    if isinstance(ticket, NotAttemptedError):
                        return self._unsent(ticket, rendered, last_error, attempt)
                    attempt += 1
                    counters.requests_sent += 1
                    if attempt > 1:
                        counters.retries += 1
                    counters.in_flight += 1
                    debug = _log.isEnabledFor(logging.DEBUG)
                    started = time.perf_counter() if debug else 0.0
                    verdict = Verdict.NO_ANSWER
                    reel: Reel | None = None
                    error: KeyAPIError | None = None
                    # Sent from this frame rather than a helper's: every resume
                    # of a request waiting on the network passes through each
                    # frame of its chain, and that is most of the engine's cost.
                    try:
                        request = self._builder.build(target)
                        raw = await self._transport.send(request, target=rendered)
                        verdict = Verdict.ACCEPTED
                        reel = parse_response(raw.status, raw.headers, raw.body, target=rendered)
                    except KeyAPIError as exc:
                        error = exc
                        if isinstance(exc, RateLimitError):
                            verdict = Verdict.THROTTLED
                    except BaseException:
                        # Cancelled mid-flight: the place in the gate is given
                        # back (shielded: a shared gate needs a round trip).
                        counters.in_flight -= 1
                        with anyio.CancelScope(shield=True):
                            await self._gate.release(ticket, verdict)
                        raise
                    counters.in_flight -= 1
                    await self._report(ticket, verdict, error, attempt)
                    if error is None or (isinstance(error, ResponseDecodeError) and error.billed):
                        credits.charge(CREDITS_PER_REQUEST)
                        counters.credits_spent += CREDITS_PER_REQUEST
            except GateUnavailableError as exc:
                # The shared gate or budget (Redis) is gone past its grace:
                # nothing may be sent, for this target or any other.
                exc.target = rendered
                if stop is None:
                    counters.failures += 1
                    return Outcome(None, last_error or exc, attempt)
                stop.cancel(exc.message, cause=exc)
                assert stop.reason is not None
                return self._unsent(stop.reason, rendered, last_error, attempt)
            if debug:
                _log.debug(
                    "GET %s attempt=%d %s latency=%.3fs",
                    rendered,
                    attempt,
                    "ok" if error is None else type(error).__name__,
                    time.perf_counter() - started,
                )
            if error is None:
                assert reel is not None
                counters.successes += 1
                if not reel.items:
                    counters.empty += 1
                if stop is not None:
                    stop.answered()
                return Outcome(reel, None, attempt)
            last_error = error
            if stop is not None:
                if isinstance(error, ConnectError):
                    stop.connect_failed(error)
                elif verdict is not Verdict.NO_ANSWER:
                    stop.answered()
                if isinstance(error, _STOPS_A_BATCH):
                    stop.stop(error)
            delay = self._policy.delay_for(attempt, error)
            if delay is None:
                counters.failures += 1
                return Outcome(None, error, attempt)
            if delay > 0:
                await anyio.sleep(delay)

    def _unsent(
        self,
        reason: NotAttemptedError,
        target: str,
        last_error: KeyAPIError | None,
        attempts: int,
    ) -> Outcome:
        """The outcome of a target whose next send was called off.

        A target that was tried before keeps the error of its last try (and
        counts as a failure): it was attempted, and that error is what the
        caller needs to see.
        """
        if last_error is not None:
            self.counters.failures += 1
            return Outcome(None, last_error, attempts)
        error = NotAttemptedError(reason.reason, target=target, cause=reason.cause)
        return Outcome(None, error, 0)

    async def _admit(self, granted: bool, stop: Stop | None) -> Ticket | NotAttemptedError:
        """A turn at the gate for a request holding its credits, or why it may not go.

        Waiting for a turn ends at once when the batch stops: with hundreds of
        workers queued at the gate, draining them one turn at a time would take
        minutes. A stop that arrived while the request waited (a 401/402)
        gives the turn back unused: sending now would only earn another one.
        """
        if not granted:
            reason = NotAttemptedError("credit budget reached")
            if stop is not None and stop.budget is None:
                # Reported, not a stop: requests that already hold a
                # reservation still go out.
                stop.budget = reason
            return reason
        gate = self._gate
        if stop is None or gate.idle:
            ticket = await gate.acquire()
        else:
            with anyio.CancelScope() as waiting:
                stop.waiters.add(waiting)
                try:
                    ticket = await gate.acquire()
                finally:
                    stop.waiters.discard(waiting)
            if waiting.cancelled_caught:
                assert stop.reason is not None
                return stop.reason
        if stop is not None and stop.reason is not None:
            await gate.release(ticket, Verdict.UNUSED)
            return stop.reason
        return ticket

    async def _report(
        self, ticket: Ticket, verdict: Verdict, error: KeyAPIError | None, attempt: int
    ) -> None:
        """Give the gate its place back and what the answer means for the rate."""
        if verdict is Verdict.THROTTLED:
            assert error is not None
            self.counters.rate_limited += 1
            # Even a target out of retries makes everyone else pause.
            await self._gate.release(
                ticket,
                verdict,
                cooldown=self._policy.wait_for(attempt, error),
                server_said=getattr(error, "retry_after", None) is not None,
            )
        else:
            await self._gate.release(ticket, verdict)
