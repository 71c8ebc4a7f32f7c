"""Many downloads at once: one reel's items together, a stream of reels, one ``.part`` per name.

The downloader's concurrency limit sits in each item's download; these
helpers only start the items and hand their outcomes over:

- :func:`gather_reel` runs one reel's items and returns the outcomes in item
  order; a :class:`~keyapi_async.MediaDiskFullError` lets the others end by
  themselves (never cancelled mid-rename) and carries the outcomes of every
  item that finished;
- :func:`stream` reads ``(target, reel)`` pairs lazily (at most ``window``
  items started and not yet handed over) and yields outcomes as they finish;
- :class:`PathLocks` makes two items with one file name (a story listed
  twice) take turns, so they never share a ``.part``.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
)
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias

from .._errors import MediaDiskFullError
from ..models import Reel, StoryItem, User
from .outcome import MediaOutcome

__all__ = ["DownloadOne", "PathLocks", "ReelSource", "gather_reel", "stream"]

DownloadOne: TypeAlias = Callable[[str | None, User | None, StoryItem], Awaitable[MediaOutcome]]
"""Download one item: ``(target, owner, item) -> outcome``."""

ReelSource: TypeAlias = Iterable[tuple[str | None, Reel]] | AsyncIterable[tuple[str | None, Reel]]
"""``(target, reel)`` pairs, as an iterable or an async iterable."""


async def gather_reel(download: DownloadOne, target: str | None, reel: Reel) -> list[MediaOutcome]:
    """Download every item of ``reel`` concurrently; outcomes in item order."""
    tasks = [asyncio.ensure_future(download(target, reel.user, item)) for item in reel.items]
    try:
        if tasks:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        errors = [t.exception() for t in tasks if t.done() and not t.cancelled()]
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            if isinstance(error, MediaDiskFullError):
                # The others end by themselves (each writes until it too finds
                # the disk full, or finishes): one cancelled just after its
                # rename would leave a file at its final name with no outcome.
                await asyncio.wait(tasks)
            await _cancel(tasks)
            if isinstance(error, MediaDiskFullError):
                error.outcomes = [
                    t.result()
                    for t in tasks
                    if t.done() and not t.cancelled() and not t.exception()
                ]
            raise error
        return [t.result() for t in tasks]
    finally:
        await _cancel(tasks)


async def stream(
    download: DownloadOne, reels: ReelSource, *, window: int
) -> AsyncGenerator[MediaOutcome, None]:
    """Download the items of ``reels``, yielding outcomes as they finish.

    Closing the generator cancels the downloads in flight; an error of one
    download or of the source is raised from it.
    """
    results: asyncio.Queue[MediaOutcome | BaseException | None] = asyncio.Queue()
    room = asyncio.Semaphore(window)
    running: set[asyncio.Task[MediaOutcome]] = set()

    def finished(task: asyncio.Task[MediaOutcome]) -> None:
        running.discard(task)
        room.release()
        if not task.cancelled():
            error = task.exception()
            results.put_nowait(error if error is not None else task.result())

    async def produce() -> None:
        try:
            async for target, reel in _aiter(reels):
                for item in reel.items:
                    await room.acquire()
                    task = asyncio.ensure_future(download(target, reel.user, item))
                    running.add(task)
                    task.add_done_callback(finished)
            while running:
                await asyncio.wait(set(running))
        except Exception as exc:  # the caller's source failed: hand it over
            results.put_nowait(exc)
        results.put_nowait(None)

    producer = asyncio.ensure_future(produce())
    try:
        while (result := await results.get()) is not None:
            if isinstance(result, MediaDiskFullError):
                # Start nothing more, but let what is in flight end by itself
                # and hand its outcomes over first: a download cancelled just
                # after its rename would leave a file with no outcome.
                await _cancel([producer])
                if running:
                    await asyncio.wait(set(running))
                while not results.empty():
                    late = results.get_nowait()
                    if late is not None and not isinstance(late, BaseException):
                        yield late
            if isinstance(result, BaseException):
                raise result
            yield result
    finally:
        await _cancel([producer, *running])


class PathLocks:
    """One lock per file name in use, dropped when its last user leaves."""

    __slots__ = ("_locks",)

    def __init__(self) -> None:
        self._locks: dict[Path, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, path: Path) -> AsyncIterator[None]:
        """Hold ``path``'s lock for the block."""
        lock, users = self._locks.get(path, (asyncio.Lock(), 0))
        self._locks[path] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[path]
            if users == 1:
                del self._locks[path]
            else:
                self._locks[path] = (lock, users - 1)


async def _aiter(source: ReelSource) -> AsyncIterator[tuple[str | None, Reel]]:
    if isinstance(source, AsyncIterable):
        async for pair in source:
            yield pair
    else:
        for pair in source:
            yield pair


async def _cancel(tasks: Iterable[asyncio.Future[Any]]) -> None:
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
