"""One target, from first send to outcome: budget → gate → transport → sans-I/O → retry.

Every request on the wire passed the gate, counts as an attempt (toward
``max_attempts`` and the stats) and held a credit reservation while it was
out; reservations are given back on every path, cancellation included. The
steps, in order: docs/architecture.md, "One request".

:class:`Stop` belongs to one batch: a 401, 403 or 402 sets it, as do the
batch's ``stop()``, a lost shared gate and the circuit breaker (the API could
not be reached at all).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar

import anyio

from .._errors import (
    APIStatusError,
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
from .budget import Budget, hold
from .endpoints import Endpoint
from .gate import Gate, Ticket, Verdict
from .retry import RetryPolicy
from .sansio import RequestBuilder, parse_response
from .targets import Target
from .transport import Transport

__all__ = [
    "BREAKER_THRESHOLD",
    "STOPS_A_BATCH",
    "STOP_ERRORS",
    "ClientStats",
    "Fetcher",
    "Outcome",
    "Result",
    "Stop",
]

_log = logging.getLogger("keyapi_async")

#: Failed connections, with no answer ever, after which a batch stops.
BREAKER_THRESHOLD = 5

#: The errors that stop a batch (and a watch), and the reason its unsent
#: targets give: nothing sent after a 401, 403 or 402 could succeed with this
#: key or account. The one home of that rule; the CLI and watch read it.
STOPS_A_BATCH: Mapping[type[APIStatusError], str] = MappingProxyType(
    {
        InsufficientCreditsError: "credits exhausted",
        PermissionDeniedError: "permission denied",
        AuthenticationError: "authentication failed",
    }
)
#: :data:`STOPS_A_BATCH`'s errors as a tuple, for ``except`` and ``isinstance``.
STOP_ERRORS: tuple[type[APIStatusError], ...] = tuple(STOPS_A_BATCH)


@dataclass(slots=True, kw_only=True)
class ClientStats:
    """Counters of one client since it opened (``client.stats`` is a snapshot; cheap to take)."""

    requests_sent: int = 0
    """Every request put on the wire, retries included."""
    in_flight: int = 0
    """Requests sent and not answered yet."""
    successes: int = 0
    """Answers decoded into a result (a reel, a tray, a highlight's stories), each billed."""
    empty: int = 0
    """Successes with no items (no active stories, no highlights; included in ``successes``)."""
    failures: int = 0
    """Targets that ended in an error after their last attempt."""
    rate_limited: int = 0
    """429 answers (by HTTP status or body code)."""
    retries: int = 0
    """Sends beyond each target's first."""
    credits_spent: int = 0
    """The endpoint's credits (2) per billed answer: every ``code == 0`` one, typed or not."""
    current_qps: float | None = None
    """The rate the gate paces at now (``None``: no cap)."""
    cooldown_remaining: float = 0.0
    """Seconds left of the pause after the last 429."""


class Result(Protocol):
    """What every endpoint's result has: its items (stories, highlights)."""

    @property
    def items(self) -> tuple[object, ...]:
        """The result's items; empty when there are none."""
        ...


R = TypeVar("R", bound=Result)
S = TypeVar("S", bound=Result)

#: What one target's fetch came to: the endpoint's result or an error, and how
#: many sends (a plain tuple: one is built per request).
Outcome = tuple[R | None, KeyAPIError | None, int]


class Stop:
    """A batch's stop signal and circuit breaker: once set, nothing new is sent for it."""

    __slots__ = ("_answered", "_connect_failures", "_where", "budget", "reason", "waiters")

    def __init__(self, where: str = "") -> None:
        self.reason: NotAttemptedError | None = None
        # Why the batch ran dry when a send was refused for the credit budget:
        # not a stop, since requests already holding a reservation still go.
        self.budget: NotAttemptedError | None = None
        self._where = where
        # Cancel scopes of the requests waiting at the gate for their turn.
        self.waiters: set[anyio.CancelScope] = set()
        self._answered = False
        self._connect_failures = 0

    def cancel(self, why: str, *, cause: KeyAPIError | None = None) -> None:
        """Stop for ``why`` (401/403/402, ``stop()``, Ctrl-C, a lost gate); the first stop wins."""
        if self.reason is not None:
            return
        self.reason = NotAttemptedError(why, cause=cause)
        _log.info("batch stopped: %s", self.reason.message)
        for scope in self.waiters:
            scope.cancel()

    def answered(self) -> None:
        """An HTTP answer arrived: the API is reachable, the breaker stays closed."""
        self._answered = True

    def connect_failed(self, error: ConnectError) -> None:
        """A connection could not be opened; trips the breaker when nothing ever answered."""
        if self._answered or self.reason is not None:
            return
        self._connect_failures += 1
        if self._connect_failures >= BREAKER_THRESHOLD:
            self.cancel(f"API unreachable at {self._where}", cause=error)


@dataclass(slots=True, kw_only=True)
class Fetcher(Generic[R]):
    """Fetches one target of one endpoint at a time with retries.

    One per endpoint and client (:meth:`for_endpoint`), all sharing the
    client's transport, gate, budget, retry policy and counters.
    """

    transport: Transport
    gate: Gate
    budget: Budget
    builder: RequestBuilder
    policy: RetryPolicy
    endpoint: Endpoint[R]
    # The live tallies; ``client.stats`` copies them and fills in the gate's rate fields.
    counters: ClientStats = field(default_factory=ClientStats)

    def for_endpoint(self, endpoint: Endpoint[S]) -> Fetcher[S]:
        """A fetcher for ``endpoint`` sharing this one's transport, gate, budget and counters."""
        return Fetcher(
            transport=self.transport,
            gate=self.gate,
            budget=self.budget,
            builder=self.builder.for_endpoint(endpoint),
            policy=self.policy,
            endpoint=endpoint,
            counters=self.counters,
        )

    async def fetch(self, target: Target, stop: Stop | None = None, key: str = "") -> Outcome[R]:
        """Fetch ``target`` (rendered as ``key``) with retries; returns any KeyAPIError."""
        # One function on purpose: every resume of a request waiting on the
        # network passes through each frame of its chain, so the send and the
        # bookkeeping around it stay in this frame; only the rare paths
        # (429, cancellation, failures, debug logging) are helpers.
        counters = self.counters
        gate = self.gate
        endpoint = self.endpoint
        price = endpoint.credits
        rendered = key or str(target)
        attempt = 0
        last_error: KeyAPIError | None = None
        while True:
            if stop is not None and stop.reason is not None:
                return self._unsent(stop.reason, rendered, last_error, attempt)
            try:
                async with hold(self.budget, price) as credits:
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
                    reel: R | None = None
                    error: KeyAPIError | None = None
                    try:
                        request = self.builder.build(target)
                        raw = await self.transport.send(request, target=rendered)
                        verdict = Verdict.ACCEPTED
                        reel = parse_response(
                            raw.status, raw.headers, raw.body, target=rendered, endpoint=endpoint
                        )
                    except KeyAPIError as exc:
                        error = exc
                        if isinstance(exc, RateLimitError):
                            verdict = Verdict.THROTTLED
                    except BaseException:
                        await self._abandon(ticket, verdict)
                        raise
                    counters.in_flight -= 1
                    if isinstance(error, RateLimitError):
                        await self._release_throttled(ticket, attempt, error)
                    else:
                        await gate.release(ticket, verdict)
                    if error is None or (isinstance(error, ResponseDecodeError) and error.billed):
                        credits.charge(price)
                        counters.credits_spent += price
            except GateUnavailableError as exc:
                exc.target = rendered
                if stop is None:
                    counters.failures += 1
                    return None, last_error or exc, attempt
                # The shared gate or budget is gone past its grace: nothing
                # may be sent, for this target or any other.
                stop.cancel(exc.message, cause=exc)
                continue
            if debug:
                _log_attempt(rendered, attempt, error, started)
            if error is None:
                assert reel is not None
                counters.successes += 1
                if not reel.items:
                    counters.empty += 1
                if stop is not None:
                    stop.answered()
                return reel, None, attempt
            last_error = error
            if stop is not None:
                _tell_batch(stop, error, verdict)
            delay = self.policy.delay_for(attempt, error)
            if delay is None:
                counters.failures += 1
                return None, error, attempt
            if delay > 0:
                await anyio.sleep(delay)

    async def _abandon(self, ticket: Ticket, verdict: Verdict) -> None:
        """Cancelled mid-flight: give the place back (shielded: a shared gate may need Redis)."""
        self.counters.in_flight -= 1
        with anyio.CancelScope(shield=True):
            await self.gate.release(ticket, verdict)

    async def _release_throttled(self, ticket: Ticket, attempt: int, error: RateLimitError) -> None:
        """Give back a 429's place: even a target out of retries makes everyone else pause."""
        self.counters.rate_limited += 1
        await self.gate.release(
            ticket,
            Verdict.THROTTLED,
            cooldown=self.policy.wait_for(attempt, error),
            server_said=error.retry_after is not None,
        )

    def _unsent(
        self, reason: NotAttemptedError, target: str, last_error: KeyAPIError | None, attempts: int
    ) -> Outcome[R]:
        """The outcome of a target whose next send was called off.

        A target tried before keeps the error of its last try, and counts as
        a failure: it was attempted, and that error is what the caller needs.
        """
        if last_error is not None:
            self.counters.failures += 1
            return None, last_error, attempts
        return None, NotAttemptedError(reason.reason, target=target, cause=reason.cause), 0

    async def _admit(self, granted: bool, stop: Stop | None) -> Ticket | NotAttemptedError:
        """A turn at the gate for a request holding its credits, or why it may not go.

        A batch's stop ends the wait at once (hundreds of queued workers would
        otherwise drain one turn at a time), and a turn granted after a stop is
        given back unused: sending now would only earn another 401 or 402.
        """
        if not granted:
            reason = NotAttemptedError(NotAttemptedError.BUDGET_REACHED)
            if stop is not None and stop.budget is None:
                stop.budget = reason
            return reason
        gate = self.gate
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


def _log_attempt(target: str, attempt: int, error: KeyAPIError | None, started: float) -> None:
    said = "ok" if error is None else type(error).__name__
    elapsed = time.perf_counter() - started
    _log.debug("GET %s attempt=%d %s latency=%.3fs", target, attempt, said, elapsed)


def _tell_batch(stop: Stop, error: KeyAPIError, verdict: Verdict) -> None:
    """What a failed attempt tells the batch: the API is down, answering, or refusing the key."""
    if isinstance(error, ConnectError):
        stop.connect_failed(error)
    elif verdict is not Verdict.NO_ANSWER:
        stop.answered()
    why = STOPS_A_BATCH.get(type(error)) if isinstance(error, STOP_ERRORS) else None
    if why is not None:
        stop.cancel(why, cause=error)
