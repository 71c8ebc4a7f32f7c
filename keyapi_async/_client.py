"""``KeyAPIClient``: the public facade; owns the transport, the rate gate and the budget.

Opening the client (``async with``) builds, in this order: the transport (the
caller's ``transport=``, else aiohttp over the caller's ``session=`` or one of
its own), the gate and the budget (in this process, or shared through Redis
when ``redis_url`` is set), and the :class:`~._fetch.Fetcher` that takes one
target through them. :meth:`KeyAPIClient.fetch_user_stories` is one target;
:meth:`KeyAPIClient.fetch_many` hands the fetcher to a
:class:`~keyapi_async.StoryBatch`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, Unpack

import aiohttp
import anyio
import anyio.abc

from . import __about__
from ._batch import StoryBatch
from ._budget import Budget, LocalBudget
from ._config import ClientConfig, ClientOptions, shown_url
from ._fetch import Counters, Fetcher
from ._ratelimit import Gate, RateGate
from ._sansio import RequestBuilder
from ._targets import TargetLike, from_arguments
from ._transport import AiohttpTransport, Transport
from .models import Reel

__all__ = ["ClientStats", "KeyAPIClient"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStats:
    """Counters of one client since it opened (a snapshot; cheap to take).

    ``credits_spent`` counts 2 per billed answer: every ``code == 0`` answer,
    including one whose body could not be typed (the API charged for it).
    Error answers are assumed not to be billed (the API's documentation does
    not say).
    """

    requests_sent: int
    """Every request put on the wire, retries included."""
    in_flight: int
    """Requests sent and not answered yet."""
    successes: int
    """Answers decoded into a reel (each cost 2 credits)."""
    empty: int
    """Successes whose reel had no active stories (included in ``successes``)."""
    failures: int
    """Targets that ended in an error after their last attempt."""
    rate_limited: int
    """429 answers (by HTTP status or body code)."""
    retries: int
    """Sends beyond each target's first."""
    credits_spent: int
    """2 per billed answer."""
    current_qps: float | None
    """The rate the gate paces at now (``None``: no cap)."""
    cooldown_remaining: float
    """Seconds left of the pause after the last 429."""


class KeyAPIClient:
    """Async client for keyapi.ai's Instagram stories endpoint.

    Use it as an async context manager; it owns one pooled aiohttp session
    (or borrows ``session``, which it then leaves open) and one rate gate
    shared by every call::

        async with KeyAPIClient(qps=20) as client:    # key from KEYAPI_API_KEY
            reel = await client.fetch_user_stories(username="javan")
            async with client.fetch_many(["javan", "id:18527"]) as batch:
                async for result in batch:
                    ...

    Redirects are never followed, so the key is only ever sent to ``base_url``.
    Every option is a keyword argument named like a :class:`ClientConfig`
    field (``qps``, ``concurrency``, ``timeout``, ``max_attempts``,
    ``max_credits``, ``proxy``, ``redis_url``, ...), where the defaults and
    their reasons are documented; a bad one raises
    :class:`~keyapi_async.ConfigurationError` naming it.

    Args:
        api_key: The ``sk_live_...`` key; defaults to ``$KEYAPI_API_KEY``.
        session: An ``aiohttp.ClientSession`` to use (and leave open).
        transport: Anything with the transport's ``send``/``aclose``
            (for example :class:`keyapi_async.testing.EmulatorTransport`),
            used instead of aiohttp (and left open).
        **options: The settings (see :class:`ClientConfig`).

    Runs on asyncio only: aiohttp has no trio backend.

    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        transport: Transport | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._config = ClientConfig.create(api_key, **options)
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise TypeError(f"session must be an aiohttp.ClientSession, got {session!r}")
        if session is not None and transport is not None:
            raise TypeError("pass session= or transport=, not both")
        self._user_session = session
        self._user_transport = transport
        agent = f"keyapi-async/{__about__.__version__} aiohttp/{aiohttp.__version__}"
        if self._config.user_agent:
            agent = f"{self._config.user_agent} {agent}"
        self._builder = RequestBuilder(
            base_url=self._config.base_url,
            api_key=self._config.api_key.reveal(),
            user_agent=agent,
        )
        self._transport: Transport | None = None
        self._fetcher: Fetcher | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._task_group: anyio.abc.TaskGroup | None = None
        self._state = "new"

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError(f"a KeyAPIClient can be opened once; this one is {self._state}")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "KeyAPIClient runs on asyncio only (aiohttp has no trio backend): "
                "use asyncio.run(...) or anyio.run(..., backend='asyncio')"
            ) from None
        config = self._config
        self._state = "open"
        try:
            gate, budget = await self._open_gate()
            transport = self._open_transport()
            self._transport = transport
            if transport is not self._user_transport:
                # The caller's transport, like the caller's session, stays open.
                self._closers.append(transport.aclose)
            self._fetcher = Fetcher(
                transport=transport,
                gate=gate,
                budget=budget,
                builder=self._builder,
                policy=config.retry,
            )
            task_group = anyio.create_task_group()
            await task_group.__aenter__()
            self._task_group = task_group
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _open_gate(self) -> tuple[Gate, Budget]:
        config = self._config
        if config.redis_url is None:
            # Made here, not in __init__: the gate's limiter binds to the
            # running event loop, and a client may be built outside of one.
            gate = RateGate(qps=config.qps, concurrency=config.workers, margin=config.rate_margin)
            return gate, LocalBudget(config.max_credits)
        from . import _redis

        shared = await _redis.connect_shared(
            url=config.redis_url,
            namespace=config.redis_namespace,
            key_fingerprint=_redis.fingerprint(config.api_key.reveal()),
            qps=config.qps,
            margin=config.rate_margin,
            concurrency=config.workers,
            max_credits=config.max_credits,
            grace=config.redis_grace,
            retry_after_cap=config.retry_after_cap,
        )
        self._closers.append(shared.aclose)
        return shared.gate, shared.budget

    def _open_transport(self) -> Transport:
        if self._user_transport is not None:
            return self._user_transport
        config = self._config
        if self._user_session is None:
            return AiohttpTransport.create(
                pool_size=config.workers,
                timeout=config.timeout,
                connect_timeout=config.connect_timeout,
                proxy=config.proxy,
            )
        return AiohttpTransport(
            self._user_session,
            timeout=config.timeout,
            connect_timeout=config.connect_timeout,
            owns_session=False,
            proxy=config.proxy,
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
                # Batches iterated without their own ``async with`` and left
                # unfinished are cancelled, not awaited to completion.
                self._task_group.cancel_scope.cancel()
                # Not handed the body's exception: the task group would wrap
                # it in an ExceptionGroup, and ``except AuthenticationError``
                # around the ``async with`` would never match.
                await self._task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
            closers, self._closers = self._closers, []
            for close in reversed(closers):
                await close()
        return None

    async def aclose(self) -> None:
        """Close the client (same as leaving its ``async with`` block)."""
        if self._state == "open":
            await self.__aexit__(None, None, None)
        self._state = "closed"

    def _require_open(self) -> Fetcher:
        if self._state != "open" or self._fetcher is None:
            raise RuntimeError(
                f"KeyAPIClient is {self._state}: use `async with KeyAPIClient(...) as client:`"
            )
        return self._fetcher

    # -- public API ------------------------------------------------------------

    @property
    def config(self) -> ClientConfig:
        """The validated settings (the key inside is masked in every repr)."""
        return self._config

    @property
    def stats(self) -> ClientStats:
        """A snapshot of request, retry, 429 and credit counters, and the current rate."""
        fetcher = self._fetcher
        # Before the client opens: zeros, and the rate the gate will pace at.
        c = Counters() if fetcher is None else fetcher.counters
        snapshot = None if fetcher is None else fetcher.gate.snapshot()
        return ClientStats(
            requests_sent=c.requests_sent,
            in_flight=c.in_flight,
            successes=c.successes,
            empty=c.empty,
            failures=c.failures,
            rate_limited=c.rate_limited,
            retries=c.retries,
            credits_spent=c.credits_spent,
            current_qps=self._config.paced_qps if snapshot is None else snapshot.current_qps,
            cooldown_remaining=0.0 if snapshot is None else snapshot.cooldown_remaining,
        )

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
        outcome = await self._require_open().fetch(target)
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

        Use ``async with client.fetch_many(targets) as batch: async for r in batch``
        for a batch whose tasks end with the block; see
        :class:`~keyapi_async.StoryBatch` for the guarantees.
        """
        fetcher = self._require_open()
        return StoryBatch(
            fetcher,
            targets,
            ordered=ordered,
            workers=self._config.workers,
            where=shown_url(self._config.base_url),
            spawn=self._spawn,
        )

    def _spawn(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._task_group is None:
            self._require_open()
            raise RuntimeError("KeyAPIClient has no task group")
        self._task_group.start_soon(run, name="keyapi-batch")

    def __repr__(self) -> str:
        c = self._config
        return (
            f"KeyAPIClient(base_url={c.base_url!r}, api_key={c.api_key!r}, qps={c.qps}, "
            f"concurrency={c.workers}, state={self._state!r})"
        )
