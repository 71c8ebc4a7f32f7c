"""``fetch_many``: many targets through a fixed pool of workers, one result per target.

One batch::

    targets (iterable or async iterable, read lazily)
      → ``concurrency`` workers, each pulling the next target itself:
        normalise (invalid: an error result, nothing sent) → dedupe (seen once)
        → one target at a time through the fetcher (with retries)
      → bounded result stream → the caller's ``async for`` (as finished, or in input order)

Memory is bounded by the concurrency, not by the number of targets: at most
``concurrency`` targets are in the workers' hands and the result stream holds
at most ``concurrency`` results; in ordered mode at most ``2 * concurrency``
targets are between "read from the input" and "handed to the caller". The only
per-target state that grows is the set of keys already seen, which
deduplication needs (a short string each: about 100 bytes a target, so 5 MB
for 50,000).

Lifetime. ``async with client.fetch_many(...) as batch:`` opens the batch's
task group in the caller's task: leaving the block (finished, ``break``, an
exception, a cancellation) cancels whatever is still running and waits for it,
so sending stops deterministically and nothing is left open. A plain
``async for`` over ``fetch_many(...)`` works too: the batch then runs its task
group inside the client's, the result stream is closed when the loop ends,
and a loop left early is cancelled when the batch object is dropped (at once
under CPython's reference counting) or, at the latest, when the client closes.

The batch owns its :class:`~._fetch.Stop` signal: a 401, 403 or 402, the
circuit breaker (API unreachable) or :meth:`StoryBatch.stop` sets it, and
every target not sent by then yields a ``not_attempted`` result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sized,
)
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._budget import CREDITS_PER_REQUEST
from ._errors import InvalidTargetError, KeyAPIError, NotAttemptedError
from ._fetch import Fetcher, Stop
from ._targets import Target, TargetLike, as_target
from .models import Reel

__all__ = ["BatchCounts", "StoryBatch", "StoryResult", "estimate_credits"]

_CHECKPOINT_EVERY = 256

#: Starts a batch's runner in a task group that outlives the call (the client's).
Spawner = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


@dataclass(frozen=True, slots=True)
class StoryResult:
    """The one outcome of one target in a batch.

    ``target`` is the normalised target as text (``javan``, ``id:18527``), or
    the input as given when it was invalid. Exactly one of ``stories`` and
    ``error`` is set. ``attempts`` counts the requests sent for it (0 when
    none was), ``elapsed`` the seconds from a worker picking it up to the
    outcome, and ``index`` its position among the distinct targets read.
    """

    target: str
    stories: Reel | None
    error: KeyAPIError | None
    attempts: int
    elapsed: float
    index: int

    @property
    def ok(self) -> bool:
        """Whether the stories were fetched (possibly none active)."""
        return self.error is None

    @property
    def status(self) -> Literal["ok", "empty", "error", "not_attempted"]:
        """``ok``, ``empty`` (no active stories), ``error`` or ``not_attempted``."""
        if self.error is None:
            return "empty" if self.stories is None or not self.stories.items else "ok"
        if isinstance(self.error, NotAttemptedError):
            return "not_attempted"
        return "error"

    def unwrap(self) -> Reel:
        """Return the reel, or raise the error this target ended with."""
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


def estimate_credits(targets: Iterable[TargetLike]) -> int:
    """Upper bound of the credits a batch over ``targets`` will spend.

    Counts 2 credits per distinct valid target (the API charges successful
    answers only, whether or not the account has stories; errors and
    retries are free), so the real figure is at most this.
    """
    seen: set[str] = set()
    for raw in targets:
        try:
            seen.add(str(as_target(raw)))
        except InvalidTargetError:
            continue
    return CREDITS_PER_REQUEST * len(seen)


class _Work:
    __slots__ = ("index", "key", "target")

    def __init__(self, index: int, target: Target, key: str) -> None:
        self.index = index
        self.target = target
        self.key = key


class StoryBatch:
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
        fetcher: Fetcher,
        targets: Iterable[TargetLike] | AsyncIterable[TargetLike],
        *,
        ordered: bool,
        workers: int,
        where: str,
        spawn: Spawner,
    ) -> None:
        # The running tasks reference only the engine, never this handle, so
        # dropping the handle (``break``) is what lets __del__ cancel them.
        if isinstance(targets, Sized):
            # A known, smaller input needs no more workers than targets.
            workers = max(1, min(workers, len(targets)))
        self._engine = _Engine(fetcher, targets, ordered=ordered, workers=workers, where=where)
        self._recv = self._engine.receiver
        self._spawn = spawn
        self._group: anyio.abc.TaskGroup | None = None
        self._ordered = ordered
        self._pending: dict[int, StoryResult] = {}
        self._next_index = 0

    def __aiter__(self) -> AsyncIterator[StoryResult]:
        return self

    async def __anext__(self) -> StoryResult:
        engine = self._engine
        if not engine.started:
            engine.started = True
            self._spawn(engine.run)
        if not self._ordered:
            result = await self._receive()
        else:
            while self._next_index not in self._pending:
                got = await self._receive()
                self._pending[got.index] = got
            result = self._pending.pop(self._next_index)
            self._next_index += 1
            engine.release_window()
        engine.counts.yielded += 1
        return result

    async def _receive(self) -> StoryResult:
        # anyio's receive() always yields to the loop first, even with a
        # result waiting; for one consumer that meant one result per loop
        # iteration. Only wait when the stream is really empty.
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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
        if self._group is not None:
            await self.__aexit__(None, None, None)
            return
        await self._engine.cancel_and_wait()
        self._recv.close()

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


class _Engine:
    """The workers of one batch, in one task group the batch opens.

    There is no producer task: each worker pulls the next target from the
    input itself (as a bare ``for url in urls`` worker pool does), so passing
    work costs no task switch, and only results cross a stream.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        targets: Iterable[TargetLike] | AsyncIterable[TargetLike],
        *,
        ordered: bool,
        workers: int,
        where: str,
    ) -> None:
        self._fetcher = fetcher
        self._source = _Source(targets)
        self._workers = workers
        self._send: MemoryObjectSendStream[StoryResult]
        self.receiver: MemoryObjectReceiveStream[StoryResult]
        self._send, self.receiver = anyio.create_memory_object_stream[StoryResult](workers)
        # Ordered mode: at most this many targets between "read from the
        # input" and "handed to the caller", which bounds the reorder buffer.
        self._window = anyio.Semaphore(2 * workers, fast_acquire=True) if ordered else None
        self._seen: set[str] = set()
        self._next_index = 0
        self.scope = anyio.CancelScope()
        self.stop = Stop(where)
        self.failure: BaseException | None = None
        self.started = False
        self.finished = anyio.Event()
        self.counts = BatchCounts()

    def release_window(self) -> None:
        if self._window is not None:
            self._window.release()

    async def cancel_and_wait(self) -> None:
        self.scope.cancel()
        if self.started:
            await self.finished.wait()

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

    async def _next_item(self) -> _Work | StoryResult | None:
        """Pull input until a new valid target, an invalid one (as its result), or the end."""
        counts = self.counts
        while True:
            try:
                raw = await self._source.next()
            except StopAsyncIteration:
                return None
            except Exception as exc:  # the caller's iterable raised: surface it at the end
                if self.failure is None:
                    self.failure = exc
                self._source.close()
                return None
            counts.read += 1
            index = self._next_index
            try:
                target = as_target(raw)
            except InvalidTargetError as error:
                self._next_index += 1
                counts.invalid += 1
                return StoryResult(_describe(raw), None, error, 0, 0.0, index)
            key = str(target)
            if key not in self._seen:
                self._seen.add(key)
                self._next_index += 1
                return _Work(index, target, key)
            counts.duplicates += 1
            if counts.duplicates % _CHECKPOINT_EVERY == 0:
                # A long run of duplicates must not monopolise the loop.
                await anyio.lowlevel.checkpoint()

    async def _worker(self) -> None:
        fetch = self._fetcher.fetch
        stop = self.stop
        clock = time.monotonic
        window = self._window
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
                result = item  # an invalid target: its result is ready
            else:
                started = clock()
                try:
                    outcome = await fetch(item.target, stop)
                except Exception as exc:
                    # A bug must not lose the target: record it as its outcome.
                    error = KeyAPIError(
                        f"internal error: {type(exc).__name__}: {exc}", target=item.key
                    )
                    result = StoryResult(item.key, None, error, 1, clock() - started, item.index)
                else:
                    result = StoryResult(
                        item.key,
                        outcome.reel,
                        outcome.error,
                        outcome.attempts,
                        clock() - started,
                        item.index,
                    )
            # Like receive(), send() always yields first; only wait when the
            # (bounded) stream is really full. Every worker awaits the network
            # between results, so nothing starves the loop.
            try:
                self._send.send_nowait(result)
            except anyio.WouldBlock:
                await self._send.send(result)


class _Source:
    """The caller's targets, shared by every worker of a batch and read lazily.

    A sync iterator needs no lock: ``next()`` cannot be interrupted by another
    task. An async iterator does, since two tasks awaiting ``__anext__`` at once
    is an error for async generators.
    """

    def __init__(self, targets: Iterable[TargetLike] | AsyncIterable[TargetLike]) -> None:
        self._sync: Iterator[TargetLike] | None = None
        self._async: AsyncIterator[TargetLike] | None = None
        self._lock: anyio.Lock | None = None
        self._done = False
        if isinstance(targets, AsyncIterable):
            self._async = aiter(targets)
            self._lock = anyio.Lock(fast_acquire=True)
        else:
            self._sync = iter(targets)

    async def next(self) -> object:
        """The next raw target; StopAsyncIteration at the end (and ever after)."""
        if self._done:
            raise StopAsyncIteration
        try:
            if self._sync is not None:
                return next(self._sync)
            assert self._async is not None
            assert self._lock is not None
            async with self._lock:
                if self._done:
                    raise StopAsyncIteration
                return await anext(self._async)
        except (StopIteration, StopAsyncIteration):
            self._done = True
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Read nothing more (after the input raised)."""
        self._done = True


def _describe(raw: object) -> str:
    text = raw if isinstance(raw, str) else repr(raw)
    return text if len(text) <= 200 else text[:197] + "..."
