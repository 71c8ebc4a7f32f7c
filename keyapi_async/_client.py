"""``KeyAPIClient``: owns the HTTP session and the rate gate; fetches with retries.

One request: target (validated before anything else) → credit budget check →
rate gate (waits its turn) → :class:`~._sansio.RequestBuilder` → transport →
:func:`~._sansio.parse_response` → typed reel, or an error that the retry
policy may try again. A 429 tells the gate, which pauses every caller and
lowers the rate for all of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import anyio
import anyio.abc

from . import __about__
from ._config import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_CONCURRENCY,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QPS,
    DEFAULT_RATE_MARGIN,
    DEFAULT_RETRY_AFTER_CAP,
    DEFAULT_TIMEOUT,
    ClientConfig,
)
from ._errors import (
    AuthenticationError,
    InsufficientCreditsError,
    KeyAPIError,
    NotAttemptedError,
    RateLimitError,
)
from ._ratelimit import RateGate
from ._sansio import RequestBuilder, parse_response
from ._targets import Target, TargetLike, from_arguments
from ._transport import AiohttpTransport, Transport
from .models import Reel

if TYPE_CHECKING:
    from ._batch import StoryBatch

__all__ = ["ClientStats", "KeyAPIClient"]

#: Credits the API charges for one successful ``fetch_user_stories`` call.
CREDITS_PER_REQUEST = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStats:
    """Counters of one client since it opened (a snapshot; cheap to take).

    ``credits_spent`` counts 2 per successful answer: error answers are
    assumed not to be billed (the API's documentation does not say).
    """

    requests_sent: int
    """Every request sent, retries included."""
    in_flight: int
    """Requests sent and not answered yet."""
    successes: int
    """Answers with ``code == 0`` (each cost 2 credits)."""
    empty: int
    """Successes whose reel had no active stories (included in ``successes``)."""
    failures: int
    """Targets that ended in an error after their last attempt."""
    rate_limited: int
    """429 answers (by HTTP status or body code)."""
    retries: int
    """Sends beyond each target's first."""
    credits_spent: int
    """2 per success; errors are not billed."""
    current_qps: float | None
    """The rate the gate paces at now (``None``: no cap)."""
    cooldown_remaining: float
    """Seconds left of the pause after the last 429."""


class _Counters:
    __slots__ = (
        "credits_reserved",
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
        self.in_flight = 0
        self.successes = 0
        self.empty = 0
        self.failures = 0
        self.rate_limited = 0
        self.retries = 0
        self.credits_spent = 0
        self.credits_reserved = 0


class _Outcome:
    """What one target's fetch came to: a reel or an error, and how many sends."""

    __slots__ = ("attempts", "error", "reel")

    def __init__(self, reel: Reel | None, error: KeyAPIError | None, attempts: int) -> None:
        self.reel = reel
        self.error = error
        self.attempts = attempts


class KeyAPIClient:
    """Async client for keyapi.ai's Instagram stories endpoint.

    Use it as an async context manager; it owns one pooled aiohttp session
    (or borrows ``session``, which it then leaves open) and one rate gate
    shared by every call::

        async with KeyAPIClient() as client:          # key from KEYAPI_API_KEY
            reel = await client.fetch_user_stories(username="javan")
            async for result in client.fetch_many(["javan", "id:18527"]):
                ...

    Redirects are never followed, so the key is only ever sent to ``base_url``.
    Every argument is validated here; a bad one raises
    :class:`~keyapi_async.ConfigurationError` naming it.

    Args:
        api_key: The ``sk_live_...`` key; defaults to ``$KEYAPI_API_KEY``.
        base_url: API root; defaults to ``$KEYAPI_BASE_URL``, else
            ``https://api.keyapi.ai``.
        timeout: Seconds per attempt, counted from when the rate gate lets the
            request out (waiting for a turn never eats into it).
        connect_timeout: Seconds to open a connection.
        qps: Requests per second never exceeded in any one-second window
            (default 10, conservative); ``None`` switches the cap off.
        concurrency: Requests in flight at most (default 16).
        rate_margin: Share below ``qps`` to pace at, absorbing network
            jitter (default 0.05).
        max_attempts: Sends per target for transient failures (default 5).
        backoff_base: First backoff ceiling in seconds (full jitter, doubling).
        backoff_cap: Largest backoff in seconds.
        retry_after_cap: Largest server ``Retry-After`` honoured, in seconds.
        max_credits: Credit budget: nothing is sent that could exceed it.
        user_agent: Prefix for the ``User-Agent`` header.
        session: An ``aiohttp.ClientSession`` to use (and leave open).

    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        qps: float | None = DEFAULT_QPS,
        concurrency: int = DEFAULT_CONCURRENCY,
        rate_margin: float = DEFAULT_RATE_MARGIN,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
        max_credits: int | None = None,
        user_agent: str = "",
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._config = ClientConfig.create(
            api_key,
            base_url=base_url,
            timeout=timeout,
            connect_timeout=connect_timeout,
            qps=qps,
            concurrency=concurrency,
            rate_margin=rate_margin,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            retry_after_cap=retry_after_cap,
            max_credits=max_credits,
            user_agent=user_agent,
        )
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError(f"session must be an aiohttp.ClientSession, got {session!r}")
        self._user_session = session
        agent = f"keyapi-async/{__about__.__version__} aiohttp/{aiohttp.__version__}"
        if user_agent:
            agent = f"{user_agent} {agent}"
        self._builder = RequestBuilder(
            base_url=self._config.base_url,
            api_key=self._config.api_key.reveal(),
            user_agent=agent,
        )
        self._counters = _Counters()
        self._transport: Transport | None = None
        self._gate: RateGate | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._state = "new"

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError(f"a KeyAPIClient can be opened once; this one is {self._state}")
        config = self._config
        # Made here, not in __init__: the gate's limiter binds to the running
        # event loop, and a client may be constructed outside of one.
        self._gate = RateGate(
            qps=config.qps, concurrency=config.concurrency, margin=config.rate_margin
        )
        self._transport = self._open_transport()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._state = "open"
        return self

    def _open_transport(self) -> Transport:
        # The one seam between the client and the network: tests of timing
        # logic override it with an in-memory server on a virtual clock.
        config = self._config
        if self._user_session is None:
            return AiohttpTransport.create(
                pool_size=config.concurrency,
                timeout=config.timeout,
                connect_timeout=config.connect_timeout,
            )
        return AiohttpTransport(
            self._user_session,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            owns_session=False,
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._state = "closed"
        try:
            if self._task_group is not None:
                # Batches left unfinished (the caller broke out of the loop)
                # are cancelled, not awaited to completion.
                self._task_group.cancel_scope.cancel()
                # Not handed the body's exception: the task group would wrap
                # it in an ExceptionGroup, and ``except AuthenticationError``
                # around the ``async with`` would never match. It propagates
                # by itself once this returns.
                await self._task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            if self._transport is not None:
                await self._transport.aclose()
        return None

    async def aclose(self) -> None:
        """Close the client (same as leaving its ``async with`` block)."""
        if self._state == "open":
            await self.__aexit__(None, None, None)
        self._state = "closed"

    def _require_open(self) -> tuple[RateGate, Transport]:
        if self._state != "open" or self._gate is None or self._transport is None:
            raise RuntimeError(
                f"KeyAPIClient is {self._state}: use `async with KeyAPIClient(...) as client:`"
            )
        return self._gate, self._transport

    # -- public API ------------------------------------------------------------

    @property
    def config(self) -> ClientConfig:
        """The validated settings (the key inside is masked in every repr)."""
        return self._config

    @property
    def stats(self) -> ClientStats:
        """A snapshot of request, retry, 429 and credit counters, and the current rate."""
        c = self._counters
        snapshot = self._gate.snapshot() if self._gate is not None else None
        return ClientStats(
            requests_sent=c.requests_sent,
            in_flight=c.in_flight,
            successes=c.successes,
            empty=c.empty,
            failures=c.failures,
            rate_limited=c.rate_limited,
            retries=c.retries,
            credits_spent=c.credits_spent,
            current_qps=snapshot.current_qps if snapshot is not None else self._paced_qps(),
            cooldown_remaining=snapshot.cooldown_remaining if snapshot is not None else 0.0,
        )

    def _paced_qps(self) -> float | None:
        # Before the gate exists (client not open yet): what it will pace at.
        qps = self._config.qps
        return None if qps is None else qps * (1 - self._config.rate_margin)

    async def fetch_user_stories(
        self, *, username: str | None = None, user_id: str | int | None = None
    ) -> Reel:
        """Fetch one account's active stories; give exactly one of username or user_id.

        Returns the typed reel (``reel.is_empty`` when the account has no
        active stories). Raises :class:`~keyapi_async.InvalidTargetError`
        before sending anything for bad input, or the error the API (or the
        network) ended with once retries are used up.
        """
        target = from_arguments(username, user_id)
        outcome = await self._fetch(target)
        if outcome.error is not None:
            raise outcome.error
        assert outcome.reel is not None
        return outcome.reel

    def fetch_many(
        self,
        targets: Iterable[TargetLike] | AsyncIterable[TargetLike],
        *,
        ordered: bool = False,
    ) -> StoryBatch:
        """Fetch many accounts concurrently; iterate the result for one StoryResult per target.

        See :class:`~keyapi_async.StoryBatch` for the guarantees.
        """
        from ._batch import StoryBatch

        self._require_open()
        return StoryBatch(self, targets, ordered=ordered)

    def __repr__(self) -> str:
        c = self._config
        return (
            f"KeyAPIClient(base_url={c.base_url!r}, api_key={c.api_key!r}, qps={c.qps}, "
            f"concurrency={c.concurrency}, state={self._state!r})"
        )

    # -- internals shared with the batch engine ----------------------------------

    def _spawn_batch(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._task_group is None:
            self._require_open()
        assert self._task_group is not None
        self._task_group.start_soon(run, name="keyapi-batch")

    def _reserve_credit(self) -> bool:
        limit = self._config.max_credits
        if limit is None:
            return True
        c = self._counters
        if c.credits_spent + c.credits_reserved + CREDITS_PER_REQUEST > limit:
            return False
        c.credits_reserved += CREDITS_PER_REQUEST
        return True

    async def _fetch(self, target: Target, halt: _Halt | None = None) -> _Outcome:
        """Fetch one target with retries; never raises a KeyAPIError (returns it)."""
        gate, transport = self._require_open()
        counters = self._counters
        policy = self._config.retry
        budgeted = self._config.max_credits is not None
        rendered = str(target)
        attempt = 0
        last_error: KeyAPIError | None = None
        while True:
            if halt is not None and halt.reason is not None:
                return _unsent(halt.reason, rendered, last_error, attempt)
            if not self._reserve_credit():
                reason = NotAttemptedError("credit budget reached")
                if halt is not None and halt.budget is None:
                    # Reported, not a stop: requests that already hold a
                    # reservation still go out.
                    halt.budget = reason
                return _unsent(reason, rendered, last_error, attempt)
            async with gate.slot() as ticket:
                if halt is not None and halt.reason is not None:
                    # A 401/402 arrived while this request waited for its
                    # turn: sending it now would only earn another one.
                    if budgeted:
                        counters.credits_reserved -= CREDITS_PER_REQUEST
                    return _unsent(halt.reason, rendered, last_error, attempt)
                attempt += 1
                if attempt > 1:
                    counters.retries += 1
                counters.requests_sent += 1
                counters.in_flight += 1
                error: KeyAPIError | None = None
                try:
                    raw = await transport.send(self._builder.build(target), target=rendered)
                    reel = parse_response(raw.status, raw.headers, raw.body, target=rendered)
                except KeyAPIError as exc:
                    error = exc
                finally:
                    counters.in_flight -= 1
                    # Released even when cancelled mid-flight, or the budget
                    # would shrink for good.
                    if budgeted:
                        counters.credits_reserved -= CREDITS_PER_REQUEST
                if error is None:
                    gate.accepted(ticket)
                    counters.credits_spent += CREDITS_PER_REQUEST
                    counters.successes += 1
                    if not reel.items:
                        counters.empty += 1
                    return _Outcome(reel, None, attempt)
                last_error = error
                delay = policy.delay_for(attempt, error)
                if isinstance(error, RateLimitError):
                    counters.rate_limited += 1
                    # Even a target out of retries makes everyone else pause.
                    cooldown = delay if delay is not None else policy.wait_for(attempt, error)
                    gate.throttled(ticket, cooldown, server_said=error.retry_after is not None)
                else:
                    gate.accepted(ticket)
            if halt is not None and isinstance(
                error, (AuthenticationError, InsufficientCreditsError)
            ):
                halt.stop(error)
            if delay is None:
                counters.failures += 1
                return _Outcome(None, error, attempt)
            if delay > 0:
                await asyncio.sleep(delay)


def _unsent(
    reason: NotAttemptedError, target: str, last_error: KeyAPIError | None, attempts: int
) -> _Outcome:
    """The outcome of a target whose next send was called off.

    A target that was tried before keeps the error of its last try: it was
    attempted, and that error is what the caller needs to see.
    """
    if last_error is not None:
        return _Outcome(None, last_error, attempts)
    return _Outcome(None, NotAttemptedError(reason.reason, target=target, cause=reason.cause), 0)


class _Halt:
    """A batch-wide stop signal: once set, no new request is sent for that batch."""

    __slots__ = ("budget", "reason")

    def __init__(self) -> None:
        self.reason: NotAttemptedError | None = None
        # Set once a send was refused for the credit budget: not a stop (a
        # failed request frees its reservation), but why the batch ran dry.
        self.budget: NotAttemptedError | None = None

    def stop(self, cause: KeyAPIError) -> None:
        if self.reason is not None:
            return
        why = (
            "credits exhausted"
            if isinstance(cause, InsufficientCreditsError)
            else "authentication failed"
        )
        self.reason = NotAttemptedError(why, cause=cause)

    def cancel(self, why: str) -> None:
        if self.reason is None:
            self.reason = NotAttemptedError(why)
