"""Watch mode: poll a list of accounts forever, capturing every new story once.

A :class:`Watcher` polls each account once per period (``every``), spreading
the polls evenly across the period (1,000 accounts every 12 h is one poll
every 43.2 s) instead of fetching everything at once, records each reel in a
:class:`~keyapi_async.archive.StoryArchive` and yields a :class:`StoryEvent`
for every story id the archive did not hold before::

    from keyapi_async import KeyAPIClient
    from keyapi_async.watch import Watcher, open_watch_archive

    async with KeyAPIClient() as client, open_watch_archive("stories.sqlite3") as archive:
        watcher = Watcher(client, archive, ["javan", "nasa"], every=12 * 3600)
        async for event in watcher.events():
            print(event.target, event.story_id)

Design choices:

* **The schedule lives in the archive** (table ``watch_accounts``, added
  through the archive's :class:`~keyapi_async.archive.SchemaExtension`
  mechanism), so a restart polls nothing before it is due and a crash costs
  at most the polls that were in flight (they are simply due again).
* **Due times stay on a grid.** An account's next poll is its previous due
  time plus ``every`` (not the time the poll ended), so latency, retries and
  a busy archive never make the schedule drift or bunch up. Accounts that
  fell behind (a long stop, a budget wait) are polled at up to twice the
  even rate until caught up: no burst, and the lag shrinks.
* **The daily budget is a rolling 24-hour window** kept in the archive
  (``watch_credits``): a poll that would exceed it waits, with a log line
  saying until when, and is never dropped. The window survives restarts.
* **Accounts are re-read every cycle** (at most every ``reload_every``
  seconds), so editing the list takes effect without a restart.
* **Stopping is graceful:** :meth:`Watcher.stop` starts no new poll, lets
  the polls in flight finish (recording and downloading what they found) and
  then ends :meth:`Watcher.events`.

The clock is injectable (``clock``, Unix seconds); sleeping uses the running
event loop, so on a virtual-clock loop days of watching run in milliseconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import inspect
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import msgspec

from .._errors import (
    ConfigurationError,
    InvalidTargetError,
    KeyAPIError,
    NotFoundError,
    ResponseDecodeError,
)
from ..archive import SchemaExtension, StoryArchive
from ..engine.fetch import STOP_ERRORS
from ..engine.targets import parse_target
from ..engine.validate import check_count, check_number
from ..models import StoryItem, User

if TYPE_CHECKING:
    from .._client import KeyAPIClient
    from ..media import MediaDownloader, MediaOutcome

__all__ = [
    "CREDITS_PER_POLL",
    "DAY",
    "WATCH_SCHEMA",
    "AccountsSource",
    "StoryEvent",
    "WatchStats",
    "Watcher",
    "forecast_credits_per_day",
    "open_watch_archive",
]

logger = logging.getLogger("keyapi_async.watch")

DAY: Final = 86_400.0
"""Seconds in the rolling budget window, and a story's lifetime."""
CREDITS_PER_POLL: Final = 2
"""What one successful poll costs."""
_CATCH_UP: Final = 2.0  # how much faster than the even rate overdue accounts are polled
_PRUNE_AFTER: Final = 2 * DAY  # credit rows older than this can never matter again
_EVENT_QUEUE: Final = 256

WATCH_SCHEMA: Final = SchemaExtension(
    "watch",
    (
        """
        CREATE TABLE watch_accounts (
            target       TEXT PRIMARY KEY,
            active       INTEGER NOT NULL DEFAULT 1,
            added_at     REAL NOT NULL,
            next_poll_at REAL NOT NULL,
            last_poll_at REAL,
            polls        INTEGER NOT NULL DEFAULT 0,
            new_stories  INTEGER NOT NULL DEFAULT 0,
            last_status  TEXT,
            last_error   TEXT
        );
        CREATE INDEX watch_accounts_next ON watch_accounts (active, next_poll_at);
        CREATE TABLE watch_credits (
            id      INTEGER PRIMARY KEY,
            at      REAL NOT NULL,
            target  TEXT NOT NULL,
            credits INTEGER NOT NULL
        );
        CREATE INDEX watch_credits_at ON watch_credits (at);
        CREATE TABLE watch_settings (
            name  TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """,
    ),
)
"""The watch mode's tables in the archive (times are Unix seconds as REAL: polls are
spread at sub-second spacing). Open the archive with ``extensions=[WATCH_SCHEMA]``
(or :func:`open_watch_archive`)."""

AccountsSource: TypeAlias = (
    Iterable[str] | Callable[[], Iterable[str]] | Callable[[], Awaitable[Iterable[str]]]
)
"""The accounts to watch: a collection (re-read every cycle, so it may be mutated), or a
function returning one (sync or async), e.g. one that reads a file."""


def open_watch_archive(
    path: str, **options: Any
) -> contextlib.AbstractAsyncContextManager[StoryArchive]:
    """Open the archive at ``path`` with the watch tables (``async with``, like ``open``)."""
    extensions = [*options.pop("extensions", ()), WATCH_SCHEMA]
    return StoryArchive.open(path, extensions=extensions, **options)


def forecast_credits_per_day(accounts: int, every: float) -> float:
    """Credits per day of watching ``accounts`` every ``every`` s: accounts x polls/day x 2."""
    return accounts * (DAY / every) * CREDITS_PER_POLL


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class StoryEvent:
    """A story the archive did not hold before this poll."""

    target: str
    """The normalised target polled (``javan``, ``id:18527``)."""
    story_id: str
    """The story item's id, as the API sent it."""
    item: StoryItem
    """The story item (its media URLs are signed and expire within hours)."""
    user: User | None
    """The reel's owner."""
    seen_at: float
    """When the poll that found it started (Unix seconds)."""
    media: MediaOutcome | None = None
    """The download's outcome when the watcher has a downloader, else ``None``."""

    def to_json(self) -> bytes:
        """The event as one JSON object (what ``--on-new`` commands get on stdin)."""
        media = self.media
        payload: dict[str, object] = {
            "target": self.target,
            "story_id": self.story_id,
            "seen_at": _iso(self.seen_at),
            "username": self.user.username if self.user is not None else None,
            "file": str(media.path) if media is not None and media.path is not None else None,
            "media_status": str(media.status) if media is not None else None,
            "item": self.item,
        }
        return msgspec.json.encode(payload)


@dataclass(slots=True)
class WatchStats:
    """Counters of one :class:`Watcher` since it started."""

    polls: int = 0
    """Polls that ended (whatever the outcome)."""
    errors: int = 0
    """Polls that ended in an error (the account is retried later)."""
    new_stories: int = 0
    """Stories new to the archive."""
    credits: int = 0
    """Credits this watcher spent."""
    budget_waits: int = 0
    """Times a poll waited for the rolling daily budget."""
    in_flight: int = 0
    """Polls running now."""


@dataclass(slots=True)
class _Account:
    target: str
    next_at: float
    polling: bool = False
    active: bool = True


@dataclass(slots=True)
class _Budget:
    # In-memory mirror of watch_credits rows in the last 24 h, plus the
    # reservations of polls in flight: checked on every poll without a query.
    limit: int | None
    window: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    spent: int = 0
    reserved: int = 0

    def trim(self, now: float) -> None:
        while self.window and self.window[0][0] <= now - DAY:
            self.spent -= self.window.popleft()[1]

    def available_at(self, now: float, credits: int) -> float:
        """When ``credits`` more fit under the limit (``now`` if they do already)."""
        self.trim(now)
        if self.limit is None:
            return now
        excess = self.spent + self.reserved + credits - self.limit
        if excess <= 0:
            return now
        freed = 0
        for at, spent in self.window:
            freed += spent
            if freed >= excess:
                return at + DAY
        return math.inf  # the reservations alone exceed it: wait for a poll to settle

    def add(self, at: float, credits: int) -> None:
        if credits:
            self.window.append((at, credits))
            self.spent += credits


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
            each new story's media is saved at once and recorded.
        reload_every: Seconds between re-reads of ``accounts`` (default:
            ``min(every, 60)``).
        max_in_flight: Polls running at once (the client's gate paces them anyway).
        run_kind: The archive run's kind.

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
    ) -> None:
        check_number(every, "every", positive=True)
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
        self._downloader = downloader
        self._reload_every = float(reload_every) if reload_every else min(self.every, 60.0)
        self._max_in_flight = max_in_flight
        self._run_kind = run_kind
        self._accounts: dict[str, _Account] = {}
        self._heap: list[tuple[float, str]] = []
        self._budget = _Budget(max_credits_per_day)
        self._wake = asyncio.Event()
        self._stopping = False
        self._fatal: BaseException | None = None
        self._started = False
        self._last_start = -math.inf
        self._run_id: int | None = None
        self._waiting_logged: float | None = None

    # -- public ------------------------------------------------------------------

    @property
    def accounts(self) -> list[str]:
        """The accounts being watched (after the last reload)."""
        return [a.target for a in self._accounts.values() if a.active]

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
        return self.every / max(1, sum(1 for a in self._accounts.values() if a.active))

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
        scheduler = asyncio.ensure_future(self._schedule(queue))
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
        def read(
            conn: sqlite3.Connection,
        ) -> tuple[list[tuple[str, int, float]], list[tuple[float, int]]]:
            try:
                rows = conn.execute(
                    "SELECT target, active, next_poll_at FROM watch_accounts"
                ).fetchall()
            except sqlite3.OperationalError:
                return [], [(-1.0, -1)]
            since = self._clock() - DAY
            credits = conn.execute(
                "SELECT at, credits FROM watch_credits WHERE at > ? ORDER BY at", (since,)
            ).fetchall()
            return rows, credits

        rows, credits = await self.archive.transact(read)
        if credits == [(-1.0, -1)]:
            raise ConfigurationError(
                f"archive {self.archive.path} has no watch tables: open it with "
                "extensions=[WATCH_SCHEMA] (or open_watch_archive)"
            )
        for target, active, next_at in rows:
            self._accounts[target] = _Account(target, float(next_at), active=bool(active))
        for at, spent in credits:
            self._budget.add(float(at), int(spent))
        self._run_id = await self.archive.start_run(kind=self._run_kind, started_at=self._clock())
        settings = {"every": repr(self.every), "max_credits_per_day": str(self.max_credits_per_day)}

        def save(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO watch_settings (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                settings.items(),
            )

        await self.archive.transact(save)
        await self._reload(first=True)

    async def _read_source(self) -> list[str]:
        source = self._source
        raw: object = source() if callable(source) else source
        if inspect.isawaitable(raw):
            raw = await raw
        targets: list[str] = []
        seen: set[str] = set()
        for text in raw:  # type: ignore[attr-defined]
            try:
                target = str(parse_target(text))
            except InvalidTargetError as exc:
                logger.warning("skipping invalid account %r: %s", text, exc)
                continue
            if target not in seen:
                seen.add(target)
                targets.append(target)
        return targets

    async def _reload(self, *, first: bool = False) -> None:
        try:
            wanted = await self._read_source()
        except Exception as exc:  # a file being rewritten: keep the old list
            if first:
                raise
            logger.warning("cannot re-read the account list (%s); keeping the current one", exc)
            return
        now = self._clock()
        wanted_set = set(wanted)
        added = [t for t in wanted if t not in self._accounts]
        revived = [t for t in wanted if t in self._accounts and not self._accounts[t].active]
        removed = [
            a.target for a in self._accounts.values() if a.active and a.target not in wanted_set
        ]
        if not (added or revived or removed) and not first:
            return
        for target in removed:
            self._accounts[target].active = False
        for target in revived:
            self._accounts[target].active = True
        # New accounts are spread over one period from now, so adding 500 at
        # once adds 500 evenly spaced polls, not a burst.
        for i, target in enumerate(added):
            due = now + i * self.every / len(added)
            self._accounts[target] = _Account(target, due)
        rows_new = [(t, now, self._accounts[t].next_at) for t in added]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO watch_accounts (target, added_at, next_poll_at) VALUES (?, ?, ?)",
                rows_new,
            )
            conn.executemany(
                "UPDATE watch_accounts SET active = 0 WHERE target = ?", [(t,) for t in removed]
            )
            conn.executemany(
                "UPDATE watch_accounts SET active = 1 WHERE target = ?", [(t,) for t in revived]
            )

        await self.archive.transact(write)
        if not first:
            logger.info(
                "account list changed: %d added, %d removed, %d back; watching %d",
                len(added),
                len(removed),
                len(revived),
                len(self.accounts),
            )
        self._heap = [
            (a.next_at, a.target) for a in self._accounts.values() if a.active and not a.polling
        ]
        heapq.heapify(self._heap)
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

    def _next_due(self) -> _Account | None:
        heap = self._heap
        while heap:
            due, target = heap[0]
            account = self._accounts.get(target)
            if account is None or not account.active or account.polling or account.next_at != due:
                heapq.heappop(heap)  # a stale entry: rescheduled, removed or in flight
                continue
            return account
        return None

    async def _schedule(self, queue: asyncio.Queue[StoryEvent | None]) -> None:
        tasks: set[asyncio.Task[None]] = set()
        room = asyncio.Semaphore(self._max_in_flight)
        next_reload = self._clock() + self._reload_every
        try:
            while not self._stopping:
                now = self._clock()
                if now >= next_reload:
                    await self._reload()
                    next_reload = self._clock() + self._reload_every
                    continue
                account = self._next_due()
                if account is None:
                    await self._sleep_until(next_reload)
                    continue
                # On schedule the due times space the polls; behind schedule
                # this floor keeps the catch-up to twice the even rate.
                start = max(account.next_at, self._last_start + self.spacing() / _CATCH_UP)
                if start > now:
                    await self._sleep_until(min(start, next_reload))
                    continue
                ready = self._budget.available_at(now, CREDITS_PER_POLL)
                if ready > now:
                    self._log_budget_wait(now, ready)
                    await self._sleep_until(min(ready, next_reload))
                    continue
                self._waiting_logged = None
                await room.acquire()
                if self._stopping:
                    room.release()
                    break
                heapq.heappop(self._heap)
                account.polling = True
                self._last_start = now
                self._budget.reserved += CREDITS_PER_POLL
                task = asyncio.ensure_future(self._poll(account, now, queue))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _t: room.release())
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        except Exception as exc:  # the archive failed: stop, and tell the consumer
            self._fail(exc)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # The consumer drains the queue, so this never waits for long.
        await queue.put(None)

    def _fail(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
            logger.error("stopping: %s", exc)
        self.stop()

    def _log_budget_wait(self, now: float, ready: float) -> None:
        if self._waiting_logged == ready:
            return
        if self._waiting_logged is None:
            self.stats.budget_waits += 1
        self._waiting_logged = ready
        budget = self._budget
        until = "a poll in flight settles" if not math.isfinite(ready) else _iso(ready)
        logger.warning(
            "daily credit budget reached (%d of %d credits in the last 24 h); polls wait until %s",
            budget.spent + budget.reserved,
            budget.limit or 0,
            until,
        )

    # -- one poll -----------------------------------------------------------------

    async def _poll(
        self, account: _Account, started: float, queue: asyncio.Queue[StoryEvent | None]
    ) -> None:
        target = account.target
        due = account.next_at
        self.stats.in_flight += 1
        spent = 0
        status = "ok"
        error_text: str | None = None
        new_events: list[StoryEvent] = []
        try:
            try:
                reel = await self.client.fetch_target(target)
            except STOP_ERRORS as exc:
                status, error_text = "fatal", str(exc)
                self._fail(exc)
            except KeyAPIError as exc:
                status, error_text = "error", f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ResponseDecodeError) and exc.billed:
                    spent = CREDITS_PER_POLL
                if isinstance(exc, NotFoundError):
                    status = "not_found"
                logger.warning("poll of %s failed: %s", target, error_text)
            else:
                spent = CREDITS_PER_POLL
                new_ids = await self.archive.record_reel(target, reel, started, run_id=self._run_id)
                if new_ids:
                    wanted = set(new_ids)
                    owner = reel.user
                    items = [item for item in reel.items if item.id in wanted]
                    seen: set[str] = set()
                    for item in items:
                        if item.id in seen:
                            continue
                        seen.add(item.id)
                        media = await self._download(target, item, owner)
                        new_events.append(
                            StoryEvent(
                                target,
                                item.id,
                                item,
                                item.user or item.owner or owner,
                                started,
                                media,
                            )
                        )
            # A failure other than "not found" is retried a quarter period
            # later; the grid position is kept for a success.
            if status in ("ok", "not_found"):
                next_at = due + self.every
                if next_at <= started:  # far behind (a long stop): restart the grid here
                    next_at = started + self.every
            else:
                next_at = started + self.every / 4
            await self._settle(
                account, started, next_at, spent, status, error_text, len(new_events)
            )
            for event in new_events:
                await queue.put(event)
        except Exception as exc:  # the archive or the disk failed: nothing else will work
            self._fail(exc)
        finally:
            self._budget.reserved -= CREDITS_PER_POLL
            self.stats.in_flight -= 1
            self._wake.set()

    async def _download(
        self, target: str, item: StoryItem, owner: User | None
    ) -> MediaOutcome | None:
        downloader = self._downloader
        if downloader is None:
            return None
        from ..media import MediaStatus

        outcome = await downloader.download_item(item, target=target, owner=owner)
        status = outcome.status
        if status in (MediaStatus.SAVED, MediaStatus.SKIPPED) and outcome.relative_path:
            size = outcome.size if outcome.size is not None else outcome.bytes
            await self.archive.record_media(
                item.id, outcome.relative_path, size, outcome.sha256, "saved", at=self._clock()
            )
        else:
            recorded: Literal["expired", "failed"] = (
                "expired" if status == MediaStatus.EXPIRED else "failed"
            )
            await self.archive.record_media(
                item.id, None, None, None, recorded, outcome.reason, at=self._clock()
            )
            logger.warning("media of story %s (%s) not saved: %s", item.id, target, outcome.reason)
        return outcome

    async def _settle(
        self,
        account: _Account,
        started: float,
        next_at: float,
        spent: int,
        status: str,
        error_text: str | None,
        new: int,
    ) -> None:
        target = account.target
        prune_before = started - _PRUNE_AFTER
        prune = self.stats.polls % 1000 == 0

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE watch_accounts SET last_poll_at = ?, next_poll_at = ?, polls = polls + 1,"
                " new_stories = new_stories + ?, last_status = ?, last_error = ? WHERE target = ?",
                (started, next_at, new, status, error_text, target),
            )
            if spent:
                conn.execute(
                    "INSERT INTO watch_credits (at, target, credits) VALUES (?, ?, ?)",
                    (started, target, spent),
                )
            if prune:
                conn.execute("DELETE FROM watch_credits WHERE at < ?", (prune_before,))

        await self.archive.transact(write)
        self._budget.add(started, spent)
        stats = self.stats
        stats.polls += 1
        stats.credits += spent
        stats.new_stories += new
        if status not in ("ok",):
            stats.errors += 1
        if new:
            logger.info("%s: %d new %s", target, new, "story" if new == 1 else "stories")
        account.next_at = next_at
        account.polling = False
        if account.active:
            heapq.heappush(self._heap, (next_at, target))

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
