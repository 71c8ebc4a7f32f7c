"""``KeyAPIClient``: the public facade; owns the transport, the rate gate and the budget.

Opening it builds the transport (the caller's, else aiohttp over the caller's
session or its own), the gate and budget (local, or shared through Redis) and
the :class:`~._fetch.Fetcher` that takes one target through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable
from typing import Any, Self, TypeVar, Unpack, overload

import aiohttp
import anyio
import anyio.abc

from . import __about__
from .engine.batch import StoryBatch
from .engine.budget import Budget, LocalBudget
from .engine.config import ClientConfig, ClientOptions, shown_url
from .engine.endpoints import HIGHLIGHT_STORIES, STORIES, USER_HIGHLIGHTS, Endpoint
from .engine.fetch import ClientStats, Fetcher, Result
from .engine.gate import Gate, RateGate, paced_rate
from .engine.sansio import RequestBuilder
from .engine.targets import Target, TargetLike, as_target, from_arguments
from .engine.transport import AiohttpTransport, Transport
from .models import HighlightStories, HighlightTray, Reel

R = TypeVar("R", bound=Result)


class KeyAPIClient:
    """Async client for keyapi.ai's Instagram stories and highlights endpoints.

    Use it as an async context manager; it owns one pooled aiohttp session
    (or borrows ``session``, which it then leaves open) and one rate gate
    shared by every call::

        async with KeyAPIClient(qps=20) as client:    # key from KEYAPI_API_KEY
            reel = await client.fetch_user_stories(username="javan")
            async with client.fetch_many(["javan", "id:18527"]) as batch:
                async for result in batch:
                    ...
            tray = await client.fetch_user_highlights(username="javan")

    Every endpoint goes through the same gate, budget, retries and batch.
    Redirects are never followed, so the key is only ever sent to ``base_url``.
    Every option is a keyword argument named like a :class:`ClientConfig`
    field (``qps``, ``concurrency``, ``timeout``, ``max_credits``, ``proxy``,
    ...); a bad one raises :class:`~keyapi_async.ConfigurationError` naming it.
    Runs on asyncio only: aiohttp has no trio backend.

    Args:
        api_key: The ``sk_live_...`` key; defaults to ``$KEYAPI_API_KEY``.
        session: An ``aiohttp.ClientSession`` to use (and leave open).
        transport: Anything with the transport's ``send``/``aclose``
            (for example :class:`keyapi_async.testing.EmulatorTransport`),
            used instead of aiohttp (and left open).
        **options: The settings (see :class:`ClientConfig`).

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
        self._transport = transport
        agent = f"keyapi-async/{__about__.__version__} aiohttp/{aiohttp.__version__}"
        if self._config.user_agent:
            agent = f"{self._config.user_agent} {agent}"
        self._builder = RequestBuilder(
            base_url=self._config.base_url, api_key=self._config.api_key.reveal(), user_agent=agent
        )
        self._fetcher: Fetcher[Reel] | None = None
        # One fetcher per endpoint, made on first use; all share the gate and counters.
        self._fetchers: dict[Endpoint[Result], Fetcher[Any]] = {}
        self._stack = contextlib.AsyncExitStack()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._state = "new"

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
        self._state = "open"
        try:
            gate, budget = await self._open_gate()
            if self._transport is None:  # else the caller's, left open like a caller's session
                config = self._config
                self._transport = AiohttpTransport(
                    self._user_session,
                    timeout=config.timeout,
                    connect_timeout=config.connect_timeout,
                    proxy=config.proxy,
                    pool_size=config.workers,
                )
                self._stack.push_async_callback(self._transport.aclose)
            task_group = await self._stack.enter_async_context(anyio.create_task_group())
            # Batches iterated without their own ``async with`` and left unfinished are
            # cancelled, not awaited, when the client closes. The stack hands the task
            # group no exception: an ExceptionGroup would defeat ``except AuthenticationError``.
            self._stack.callback(task_group.cancel_scope.cancel)
            self._task_group = task_group
            # Last: a fetcher means the client is open for use.
            self._fetcher = Fetcher(
                transport=self._transport,
                gate=gate,
                budget=budget,
                builder=self._builder,
                policy=self._config.retry,
                endpoint=STORIES,
            )
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _open_gate(self) -> tuple[Gate, Budget]:
        config = self._config
        if config.redis_url is None:
            # Made here, not in __init__: the limiter binds to the running loop.
            gate = RateGate(qps=config.qps, concurrency=config.workers, margin=config.rate_margin)
            return gate, LocalBudget(config.max_credits)
        from .engine import redis_gate

        shared = await redis_gate.connect_shared(
            url=config.redis_url,
            namespace=config.redis_namespace,
            key_fingerprint=redis_gate.fingerprint(config.api_key.reveal()),
            qps=config.qps,
            margin=config.rate_margin,
            concurrency=config.workers,
            max_credits=config.max_credits,
            grace=config.redis_grace,
            retry_after_cap=config.retry_after_cap,
        )
        self._stack.push_async_callback(shared.aclose)
        return shared.gate, shared.budget

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client (same as leaving its ``async with`` block)."""
        self._state = "closed"
        await self._stack.aclose()

    def _require_open(self) -> Fetcher[Reel]:
        if self._state != "open" or self._fetcher is None:
            raise RuntimeError(
                f"KeyAPIClient is {self._state}: use `async with KeyAPIClient(...) as client:`"
            )
        return self._fetcher

    def _fetcher_for(self, endpoint: Endpoint[R]) -> Fetcher[R]:
        stories = self._require_open()
        if endpoint is STORIES:
            return stories  # type: ignore[return-value]  # R is Reel here
        fetcher: Fetcher[R] | None = self._fetchers.get(endpoint)
        if fetcher is None:
            fetcher = self._fetchers[endpoint] = stories.for_endpoint(endpoint)
        return fetcher

    async def _fetch_one(self, endpoint: Endpoint[R], target: Target) -> R:
        result, error, _ = await self._fetcher_for(endpoint).fetch(target)
        if error is not None:
            raise error
        assert result is not None
        return result

    @property
    def config(self) -> ClientConfig:
        """The validated settings (the key inside is masked in every repr)."""
        return self._config

    @property
    def stats(self) -> ClientStats:
        """A snapshot of request, retry, 429 and credit counters, and the current rate."""
        fetcher = self._fetcher
        if fetcher is None:  # not open yet: zeros, and the rate the gate will pace at
            return ClientStats(current_qps=paced_rate(self._config.qps, self._config.rate_margin))
        snapshot = fetcher.gate.snapshot()
        return dataclasses.replace(
            fetcher.counters,
            current_qps=snapshot.current_qps,
            cooldown_remaining=snapshot.cooldown_remaining,
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
        return await self.fetch_target(from_arguments(username, user_id))

    async def fetch_target(self, target: TargetLike) -> Reel:
        """Fetch one target given as input text (``javan``, ``id:18527``) or a :class:`Target`.

        The same as :meth:`fetch_user_stories` with the keyword the target's
        kind names (one rule, shared by watch and the CLI's re-fetches).
        """
        return await self._fetch_one(STORIES, as_target(target))

    async def fetch_user_highlights(
        self, *, username: str | None = None, user_id: str | int | None = None
    ) -> HighlightTray:
        """Fetch one account's highlight tray; give exactly one of username or user_id.

        Returns the typed tray (``tray.is_empty`` when the account keeps no
        highlights); tray entries that could not be used are listed in
        ``tray.skipped``. Errors as for :meth:`fetch_user_stories`.
        """
        return await self._fetch_one(USER_HIGHLIGHTS, from_arguments(username, user_id))

    async def fetch_highlight_stories(self, highlight_id: str | int) -> HighlightStories:
        """Fetch the story items of one highlight (``highlight:<digits>`` or the digits).

        The items are the same :class:`~keyapi_async.StoryItem` as active
        stories. A malformed id raises :class:`~keyapi_async.InvalidTargetError`
        before anything is sent.
        """
        return await self._fetch_one(
            HIGHLIGHT_STORIES, HIGHLIGHT_STORIES.parse_target(highlight_id)
        )

    @overload
    def fetch_many(
        self, targets: Iterable[TargetLike] | AsyncIterable[TargetLike], *, ordered: bool = False
    ) -> StoryBatch[Reel]: ...

    @overload
    def fetch_many(
        self,
        targets: Iterable[TargetLike | int] | AsyncIterable[TargetLike | int],
        *,
        ordered: bool = False,
        endpoint: Endpoint[R],
    ) -> StoryBatch[R]: ...

    def fetch_many(
        self,
        targets: Iterable[TargetLike | int] | AsyncIterable[TargetLike | int],
        *,
        ordered: bool = False,
        endpoint: Endpoint[R] | Endpoint[Reel] = STORIES,
    ) -> StoryBatch[Any]:
        """Fetch many targets of one endpoint concurrently: one StoryResult per target.

        Use ``async with client.fetch_many(targets) as batch: async for r in batch``
        for a batch whose tasks end with the block; see
        :class:`~keyapi_async.StoryBatch` for the guarantees. ``endpoint``
        (default :data:`~keyapi_async.STORIES`) picks what is fetched:
        :data:`~keyapi_async.USER_HIGHLIGHTS` takes accounts and yields trays,
        :data:`~keyapi_async.HIGHLIGHT_STORIES` takes highlight ids. Every
        endpoint shares the client's gate, 429 pause and credit budget.
        """
        fetcher: Fetcher[Any] = self._fetcher_for(endpoint)
        return StoryBatch(
            fetcher,
            targets,
            ordered=ordered,
            workers=self._config.workers,
            where=shown_url(self._config.base_url),
            spawn=self._spawn,
        )

    def _spawn(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._require_open()
        assert self._task_group is not None  # opened before the fetcher
        self._task_group.start_soon(run, name="keyapi-batch")

    def __repr__(self) -> str:
        c = self._config
        return (
            f"KeyAPIClient(base_url={c.base_url!r}, api_key={c.api_key!r}, qps={c.qps}, "
            f"concurrency={c.workers}, state={self._state!r})"
        )
