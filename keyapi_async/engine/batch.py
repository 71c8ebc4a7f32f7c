"""``fetch_many``: many targets through a fixed pool of workers, one result per target.

Each worker pulls the next target from the caller's input itself (no producer
task), normalises and dedupes it, fetches it through the :class:`~._fetch.Fetcher`
and puts its :class:`StoryResult` on a bounded stream the caller iterates.
Memory is bounded by the number of workers, except for the set of keys seen.
The batch owns its task group (``async with``) and its :class:`~._fetch.Stop`
signal. The path of one batch, its lifetime and its bounds: docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Sized
from dataclasses import dataclass
from typing import Any, Generic, Literal, Self

import anyio
import anyio.abc
import anyio.lowlevel
import msgspec

# TypeVar defaults (PEP 696) on Python < 3.13: a bare ``StoryResult`` is a stories result.
from typing_extensions import TypeVar

from .._errors import InvalidTargetError, KeyAPIError, NotAttemptedError
from ..models import Reel
from .endpoints import STORIES, Endpoint
from .fetch import Fetcher, Result, Stop
from .targets import Target, TargetLike

__all__ = ["BatchCounts", "StoryBatch", "StoryResult", "estimate_credits"]

#: Starts a batch's runner in a task group that outlives the call (the client's).
Spawner = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]

R = TypeVar("R", bound=Result, default=Reel)


class StoryResult(msgspec.Struct, Generic[R], frozen=True):
    """The one outcome of one target in a batch.

    ``target`` is the normalised target as text (``javan``, ``id:18527``,
    ``highlight:17912345678901234``), or the input as given when it was
    invalid. ``stories`` is the endpoint's result: a :class:`~keyapi_async.models.Reel`
    (a bare ``StoryResult``), a ``HighlightTray`` or ``HighlightStories``.
    Exactly one of ``stories`` and ``error`` is set. ``attempts`` counts the
    requests sent for it (0 when none was), ``elapsed`` the seconds from a
    worker picking it up to the outcome, and ``index`` its position among the
    distinct targets read.
    """

    target: str
    stories: R | None
    error: KeyAPIError | None
    attempts: int
    elapsed: float
    index: int

    @property
    def ok(self) -> bool:
        """Whether the result was fetched (possibly with no items)."""
        return self.error is None

    @property
    def status(self) -> Literal["ok", "empty", "error", "not_attempted"]:
        """``ok``, ``empty`` (no items), ``error`` or ``not_attempted``."""
        if self.error is None:
            return "empty" if self.stories is None or not self.stories.items else "ok"
        if isinstance(self.error, NotAttemptedError):
            return "not_attempted"
        return "error"

    def unwrap(self) -> R:
        """Return the result, or raise the error this target ended with."""
        if self.error is not None:
            raise self.error
        assert self.stories is not None
        return self.stories


@dataclass(slots=True)
class BatchCounts:
    """Running tallies of what a batch has read and yielded so far."""

    read: int = 0
    invalid: int = 0
    duplicates: int = 0
    yielded: int = 0


def estimate_credits(
    targets: Iterable[TargetLike | int], endpoint: Endpoint[object] = STORIES
) -> int:
    """Upper bound of the credits a batch over ``targets`` of ``endpoint`` will spend.

    Counts the endpoint's credits (2) per distinct valid target (the API
    charges successful answers only, whether or not the account has
    stories; errors and retries are free), so the real figure is at most this.
    """
    parse = endpoint.parse_target
    seen: set[str] = set()
    for raw in targets:
        try:
            seen.add(str(parse(raw)))
        except InvalidTargetError:
            continue
    return endpoint.credits * len(seen)


class StoryBatch(Generic[R]):
    """An async iterator of :class:`StoryResult`, one per distinct target.

    Guarantees: every distinct target yields exactly one result (invalid
    ones an :class:`~keyapi_async.InvalidTargetError` without a request;
    after a 401, 403 or 402, an unreachable API, or :meth:`stop`, the rest a
    :class:`~keyapi_async.NotAttemptedError` saying why); duplicates after
    normalisation are fetched and reported once; with ``ordered=True``
    results come in input order.

    Prefer ``async with client.fetch_many(...) as batch: async for r in batch``:
    the batch's tasks then live exactly as long as the block.
    """

    def __init__(
        self,
        fetcher: Fetcher[R],
        targets: Iterable[TargetLike | int] | AsyncIterable[TargetLike | int],
        *,
        ordered: bool,
        workers: int,
        where: str,
        spawn: Spawner,
    ) -> None:
        if isinstance(targets, Sized):
            workers = max(1, min(workers, len(targets)))
        # The tasks reference only the engine, never this handle, so dropping
        # the handle (``break`` in a plain ``async for``) lets __del__ cancel them.
        self._engine = _Engine(fetcher, targets, ordered=ordered, workers=workers, where=where)
        self._recv = self._engine.receiver
        self._spawn = spawn
        self._group: anyio.abc.TaskGroup | None = None
        self._pending: dict[int, StoryResult[R]] | None = {} if ordered else None
        self._next_index = 0

    def __aiter__(self) -> AsyncIterator[StoryResult[R]]:
        return self

    async def __anext__(self) -> StoryResult[R]:
        engine = self._engine
        if not engine.started:
            engine.started = True
            self._spawn(engine.run)
        pending = self._pending
        if pending is None:
            result = await self._receive()
        else:
            while self._next_index not in pending:
                got = await self._receive()
                pending[got.index] = got
            result = pending.pop(self._next_index)
            self._next_index += 1
            assert engine.window is not None
            engine.window.release()
        engine.counts.yielded += 1
        return result

    async def _receive(self) -> StoryResult[R]:
        # anyio's receive() yields to the loop even with a result waiting:
        # wait only when the stream is really empty.
        try:
            try:
                return self._recv.receive_nowait()
            except anyio.WouldBlock:
                return await self._recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._recv.close()
            if self._engine.failure is not None:
                raise self._engine.failure from None
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Self:
        engine = self._engine
        if engine.started:
            raise RuntimeError("use `async with` before iterating the batch, not after")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        engine.started = True
        group.start_soon(engine.run, name="keyapi-batch")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        group, self._group = self._group, None
        try:
            self._engine.scope.cancel()
            if group is not None:
                # Not handed the body's exception: the task group would wrap
                # it in an ExceptionGroup; it propagates by itself.
                await group.__aexit__(None, None, None)
        finally:
            self._recv.close()

    async def aclose(self) -> None:
        """Cancel whatever is still running and wait until it has stopped."""
        engine = self._engine
        if self._group is None and engine.started:  # else the group's exit waits for it
            engine.scope.cancel()
            await engine.finished.wait()
        await self.__aexit__()

    def stop(self, reason: str = "batch stopped") -> None:
        """Send no new requests; in-flight ones finish, the rest yield NotAttemptedError."""
        self._engine.stop.cancel(reason)

    @property
    def counts(self) -> BatchCounts:
        """Running tallies: targets read, invalid, duplicates, results yielded."""
        return self._engine.counts

    @property
    def stopped_reason(self) -> NotAttemptedError | None:
        """Why the batch stopped sending (401, 403, 402, unreachable, budget, :meth:`stop`)."""
        stop = self._engine.stop
        return stop.reason or stop.budget

    def __del__(self) -> None:
        # A plain ``async for`` left early: cancel now rather than when the
        # client closes, so that no more requests (and credits) are spent.
        self._recv.close()
        engine = self._engine
        if engine.started and not engine.finished.is_set():
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop in this thread: the client's exit cancels it
            engine.scope.cancel()


#: A target to fetch: (index, target, key), or the ready result of an invalid one.
_Item = tuple[int, Target, str] | StoryResult[R]


class _Engine(Generic[R]):
    """The workers of one batch, their shared input and the result stream."""

    def __init__(
        self,
        fetcher: Fetcher[R],
        targets: Iterable[TargetLike | int] | AsyncIterable[TargetLike | int],
        *,
        ordered: bool,
        workers: int,
        where: str,
    ) -> None:
        self._fetcher = fetcher
        self._as_target = fetcher.endpoint.parse_target
        self._workers = workers
        # A sync iterator needs no lock (next() cannot be interrupted); two
        # tasks in an async generator's __anext__ at once is an error.
        self._sync = None if isinstance(targets, AsyncIterable) else iter(targets)
        self._async = aiter(targets) if isinstance(targets, AsyncIterable) else None
        self._lock = anyio.Lock(fast_acquire=True)
        self._send, self.receiver = anyio.create_memory_object_stream[StoryResult[R]](workers)
        # Ordered mode: at most this many targets between "read" and "handed
        # to the caller", which bounds the reorder buffer.
        self.window = anyio.Semaphore(2 * workers, fast_acquire=True) if ordered else None
        self._seen: set[str] = set()
        self.scope = anyio.CancelScope()
        self.stop = Stop(where)
        self.failure: BaseException | None = None
        self.started = False
        self.finished = anyio.Event()
        self.counts = BatchCounts()

    async def run(self) -> None:
        try:
            with self.scope:
                async with self._send, anyio.create_task_group() as group:
                    for number in range(self._workers):
                        group.start_soon(self._worker, name=f"keyapi-worker-{number}")
        except Exception as exc:
            self.failure = exc
        finally:
            self.finished.set()

    async def _pull(self) -> object:
        """The next raw target, or ``self`` once the input is exhausted (or raised)."""
        try:
            if self._sync is not None:
                return next(self._sync)
            if self._async is None:
                return self
            async with self._lock:
                if self._async is None:
                    return self
                return await anext(self._async)
        except (StopIteration, StopAsyncIteration):
            pass
        except Exception as exc:  # the caller's iterable raised: surface it at the end
            self.failure = self.failure or exc
        self._sync = self._async = None
        return self

    async def _next_item(self) -> _Item[R] | None:
        """Pull input until a new valid target, an invalid one (as its result), or the end."""
        counts = self.counts
        as_target = self._as_target
        while True:
            raw = await self._pull()
            if raw is self:
                return None
            index = counts.read - counts.duplicates
            counts.read += 1
            try:
                target = as_target(raw)
            except InvalidTargetError as error:
                counts.invalid += 1
                return StoryResult(_describe(raw), None, error, 0, 0.0, index)
            key = str(target)
            if key not in self._seen:
                self._seen.add(key)
                return index, target, key
            counts.duplicates += 1
            if counts.duplicates % 256 == 0:
                await anyio.lowlevel.checkpoint()  # a long run of duplicates must not hog the loop

    async def _worker(self) -> None:
        fetch = self._fetcher.fetch
        stop = self.stop
        clock = time.monotonic
        window = self.window
        while True:
            if window is not None:
                # Taken before pulling, so an index never waits for a place
                # behind later ones already buffered by the caller.
                await window.acquire()
            item = await self._next_item()
            if item is None:
                if window is not None:
                    window.release()
                return
            if isinstance(item, StoryResult):
                result = item
            else:
                index, target, key = item
                started = clock()
                try:
                    reel, error, attempts = await fetch(target, stop, key)
                except Exception as exc:
                    # A bug must not lose the target: record it as its outcome.
                    reel, attempts = None, 1
                    error = KeyAPIError(f"internal error: {type(exc).__name__}: {exc}", target=key)
                result = StoryResult(key, reel, error, attempts, clock() - started, index)
                # Keep nothing of this target while the next one is fetched: a
                # reel held across the next decode cost about 4 µs a request
                # (cache misses; measured with an in-memory transport).
                del reel, error
            # Like receive(), send() always yields first: wait only when full.
            try:
                self._send.send_nowait(result)
            except anyio.WouldBlock:
                await self._send.send(result)
            del item, result


def _describe(raw: object) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return text if len(text) <= 200 else text[:197] + "..."
