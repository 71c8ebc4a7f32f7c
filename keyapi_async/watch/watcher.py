"""The watch loop: the scheduler task, one task per poll in flight, and the event queue.

The rules it follows live beside it: one poll in :mod:`.poll`, when an account is due in
:mod:`.schedule`, what may be spent in :mod:`.budget`, every SQL statement in
:mod:`.store`, and how a new story's file is saved and recorded in
:mod:`keyapi_async.capture`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Final

from .._errors import ConfigurationError, KeyAPIError
from ..archive import StoryArchive
from ..engine.validate import check_count, check_number
from . import store
from .accounts import AccountsSource, read_accounts
from .budget import DailyBudget
from .dispatch import Dispatcher, Start
from .events import StoryEvent, WatchStats
from .poll import Poller
from .schedule import Schedule
from .schema import CREDITS_PER_POLL, DAY

if TYPE_CHECKING:
    from .._client import KeyAPIClient
    from ..media import MediaDownloader

__all__ = ["Watcher"]

logger = logging.getLogger("keyapi_async.watch")


_PRUNE_AFTER: Final = 2 * DAY  # credit rows older than this can never matter again
_EVENT_QUEUE: Final = 256


class Watcher:
    """Poll ``accounts`` every ``every`` seconds, evenly spread; yield new stories.

    Polls that fail with 401, 402 or 403 stop the watcher: :meth:`events`
    raises that error after the polls in flight finished. Other failures
    (network, 5xx after retries) are logged and the account is polled again
    a quarter period later; a 404 is logged and keeps its schedule.

    Args:
        client: An open :class:`~keyapi_async.KeyAPIClient`; every poll goes
            through its QPS gate, retries and credit cap.
        archive: An open archive with the watch tables (:data:`WATCH_SCHEMA`).
        accounts: See :data:`AccountsSource`; invalid lines are logged and skipped.
        every: The period in seconds. Under 24 h (a story's lifetime); well
            under it for the capture guarantee (the CLI refuses >= 24 h).
        max_credits_per_day: Cap on the credits spent in any rolling 24 h,
            restarts included (``None``: no cap). Polls wait for it.
        clock: Unix time in seconds (default :func:`time.time`); tests pass
            one tied to a virtual event loop.
        downloader: A started :class:`~keyapi_async.media.MediaDownloader`:
            each new story's media is saved at once and recorded
            (:class:`~keyapi_async.capture.MediaRecorder`).
        reload_every: Seconds between re-reads of ``accounts`` (default:
            ``min(every, 60)``).
        max_in_flight: Polls running at once (the client's gate paces them anyway).
        run_kind: The archive run's kind.
        highlights_every: Poll each account's highlight tray once per this many
            seconds, on a schedule of its own inside the same daily budget, and
            fetch its changed highlights (``None``: no highlights). The archive
            needs the highlights tables too
            (:data:`~keyapi_async.archive.highlights.HIGHLIGHTS_SCHEMA`).

    """

    def __init__(
        self,
        client: KeyAPIClient,
        archive: StoryArchive,
        accounts: AccountsSource,
        *,
        every: float,
        max_credits_per_day: int | None = None,
        clock: Callable[[], float] = time.time,
        downloader: MediaDownloader | None = None,
        reload_every: float | None = None,
        max_in_flight: int = 64,
        run_kind: str = "watch",
        highlights_every: float | None = None,
    ) -> None:
        check_number(every, "every", positive=True)
        if highlights_every is not None:
            check_number(highlights_every, "highlights_every", positive=True)
        if max_credits_per_day is not None:
            check_count(max_credits_per_day, "max_credits_per_day", minimum=CREDITS_PER_POLL)
        check_count(max_in_flight, "max_in_flight", minimum=1)
        self.client = client
        self.archive = archive
        self.every = float(every)
        """The polling period in seconds."""
        self.max_credits_per_day = max_credits_per_day
        self.stats = WatchStats()
        """Counters since :meth:`events` started."""
        self._source = accounts
        self._clock = clock
        self._poller = Poller(client, archive, downloader, self.every)
        self._reload_every = float(reload_every) if reload_every else min(self.every, 60.0)
        self._max_in_flight = max_in_flight
        self._run_kind = run_kind
        self._schedule = Schedule(self.every)
        self._trays = None if highlights_every is None else Schedule(float(highlights_every))
        self._budget = DailyBudget(max_credits_per_day)
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: BaseException | None = None
        self._started = False
        self._run_id: int | None = None
        self._dispatch = Dispatcher(self._schedule, self._trays, self._budget, self.stats)

    # -- public ------------------------------------------------------------------

    @property
    def accounts(self) -> list[str]:
        """The accounts being watched (after the last reload)."""
        return self._schedule.active

    def stop(self) -> None:
        """Start no new poll; :meth:`events` ends once the polls in flight have finished."""
        self._stopping = True
        self._wake.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called (or a fatal error stopped the watcher)."""
        return self._stopping

    def spacing(self) -> float:
        """Seconds between two polls when on schedule: ``every / accounts``."""
        return self._schedule.spacing()

    async def events(self) -> AsyncIterator[StoryEvent]:
        """Run the watch, yielding one :class:`StoryEvent` per new story, until :meth:`stop`.

        Raises:
            AuthenticationError: 401 from the API (after the polls in flight ended).
            InsufficientCreditsError: 402.
            PermissionDeniedError: 403.
            ConfigurationError: The archive lacks the watch tables.

        """
        if self._started:
            raise RuntimeError("Watcher.events() can run only once")
        self._started = True
        queue: asyncio.Queue[StoryEvent | None] = asyncio.Queue(_EVENT_QUEUE)
        await self._load()
        scheduler = asyncio.ensure_future(self._run(queue))
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self.stop()
            if not scheduler.done():
                # The consumer left early: wind down, but never hang here.
                scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scheduler
            await self._finish_run()
        if self._fatal is not None:
            raise self._fatal

    # -- loading and the account list ---------------------------------------------

    async def _load(self) -> None:
        now = self._clock()
        state = await self.archive.transact(lambda conn: store.read_state(conn, now))
        if state is None:
            raise ConfigurationError(
                f"archive {self.archive.path} has no watch tables: open it with "
                "extensions=[WATCH_SCHEMA] (or open_watch_archive)"
            )
        self._schedule.load(state.accounts)
        if self._trays is not None:
            self._trays.load((target, True, due) for target, due in state.trays.items())
        self._budget.load(state.spends)
        self._run_id = await self.archive.start_run(kind=self._run_kind, started_at=now)
        self._poller.run_id = self._run_id
        settings = {"every": repr(self.every), "max_credits_per_day": str(self.max_credits_per_day)}
        await self.archive.transact(lambda conn: store.save_settings(conn, settings))
        await self._reload(first=True)

    async def _reload(self, *, first: bool = False) -> None:
        try:
            wanted = await read_accounts(self._source)
        except Exception as exc:  # a file being rewritten: keep the old list
            if first:
                raise
            logger.warning("cannot re-read the account list (%s); keeping the current one", exc)
            return
        now = self._clock()
        changes = self._schedule.update(wanted, now, first=first)
        if self._trays is not None:
            self._trays.update(wanted, now, first=first)
        if not changes and not first:
            return
        await self.archive.transact(lambda conn: store.save_account_changes(conn, changes, now))
        if not first:
            logger.info(
                "account list changed: %d added, %d removed, %d back; watching %d",
                len(changes.added),
                len(changes.removed),
                len(changes.revived),
                len(self.accounts),
            )
        self._wake.set()

    # -- the scheduler -------------------------------------------------------------

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - self._clock()
        if delay <= 0 or self._stopping:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay if math.isfinite(delay) else None):
                await self._wake.wait()

    async def _next_start(self, next_reload: float) -> Start | None:
        """The poll to start now, or None after waiting for whatever comes first."""
        decision = self._dispatch.next(self._clock())
        if isinstance(decision, Start):
            return decision
        await self._sleep_until(min(decision, next_reload))
        return None

    async def _run(self, queue: asyncio.Queue[StoryEvent | None]) -> None:
        tasks: set[asyncio.Task[None]] = set()
        room = asyncio.Semaphore(self._max_in_flight)
        next_reload = self._clock() + self._reload_every
        try:
            while not self._stopping:
                if self._clock() >= next_reload:
                    await self._reload()
                    next_reload = self._clock() + self._reload_every
                    continue
                start = await self._next_start(next_reload)
                if start is None:
                    continue
                await room.acquire()
                if self._stopping:
                    room.release()
                    break
                start.lane.begin(start.account, start.now)
                self._budget.reserved += start.reserve
                task = asyncio.ensure_future(self._poll(start, queue))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t: room.release())
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            await _cancel(tasks)
            raise
        except Exception as exc:  # the archive failed: stop, and tell the consumer
            self._fail(exc)
            await _cancel(tasks)
        # The consumer drains the queue, so this never waits for long.
        await queue.put(None)

    def _fail(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
            logger.error("stopping: %s", exc)
        self.stop()

    # -- one poll -----------------------------------------------------------------

    async def _poll(self, start: Start, queue: asyncio.Queue[StoryEvent | None]) -> None:
        account, lane = start.account, start.lane
        self.stats.in_flight += 1
        try:
            if lane is self._schedule:
                outcome = await self._poller.poll(account.target, account.next_at, start.now)
            else:
                outcome = await self._poller.poll_tray(
                    account.target,
                    account.next_at,
                    start.now,
                    every=lane.every,
                    max_highlights=start.most_highlights,
                )
            if outcome.fatal is not None:
                self._fail(outcome.fatal)
            await self._settle(start, outcome.record)
            for event in outcome.events:
                await queue.put(event)
        except Exception as exc:  # the archive or the disk failed: nothing else will work
            self._fail(exc)
        finally:
            self._budget.reserved -= start.reserve
            self.stats.in_flight -= 1
            self._wake.set()

    async def _settle(self, start: Start, poll: store.PollRecord) -> None:
        tray = start.lane is not self._schedule
        stats = self.stats
        prune = poll.started - _PRUNE_AFTER if stats.polls % 1000 == 0 else None
        await self.archive.transact(
            lambda conn: store.record_poll(conn, poll, prune_before=prune, tray=tray)
        )
        self._budget.add(poll.started, poll.credits)
        if tray:
            stats.tray_polls += 1
        else:
            stats.polls += 1
        stats.credits += poll.credits
        stats.new_stories += poll.new_stories
        if poll.status != "ok":
            stats.errors += 1
        if poll.new_stories:
            new, where = poll.new_stories, " in highlights" if tray else ""
            noun = "story" if new == 1 else "stories"
            logger.info("%s: %d new %s%s", poll.target, new, noun, where)
        start.lane.finish(start.account, poll.next_at)

    async def _finish_run(self) -> None:
        if self._run_id is None or self.archive.closed:
            return
        counts = {
            "polls": self.stats.polls,
            "errors": self.stats.errors,
            "new_stories": self.stats.new_stories,
            "credits": self.stats.credits,
        }
        with contextlib.suppress(KeyAPIError):
            await self.archive.finish_run(self._run_id, counts, finished_at=self._clock())


async def _cancel(tasks: set[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
