"""Watch mode on a virtual clock: days of polling in seconds of real time.

The client talks to the emulator in memory (EmulatorTransport) on a
virtual-clock loop; the emulator's story churn runs on the same clock, so
every story it published in any span is known exactly.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import inspect
import itertools
import logging
import secrets
import selectors
import threading
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from keyapi_async import AuthenticationError, KeyAPIClient
from keyapi_async.archive import SchemaExtension, StoryArchive
from keyapi_async.archive.highlights import HIGHLIGHTS_SCHEMA
from keyapi_async.testing import Emulator, EmulatorConfig, EmulatorTransport
from keyapi_async.testing._churn import ChurnConfig, active_stories, published
from keyapi_async.testing._highlights import (
    HIGHLIGHT_STORIES_PATH,
    TRAY_PATH,
    HighlightConfig,
    highlight_ids,
)
from keyapi_async.watch import (
    DAY,
    WATCH_SCHEMA,
    StoryEvent,
    Watcher,
    forecast_credits_per_day,
    open_watch_archive,
)

T = TypeVar("T")
EPOCH = 1_780_000_000.0  # Unix time at virtual time 0
HOUR = 3600.0


_archive_jobs = [0]  # archive jobs queued and not yet done (any thread)
_jobs_lock = threading.Lock()


class _Loop(asyncio.SelectorEventLoop):
    """A virtual-clock loop that waits (really) for the archive's thread.

    The archive works in a thread of its own. While one of its jobs is
    pending the clock must not jump (a poll's write would otherwise finish
    "hours later", after timers that should follow it), so the loop blocks
    on the thread's wake-up; only when nothing is pending does it jump to the
    next timer, as ``tests/virtual_clock.py`` does.
    """

    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now = 0.0
        real_select = self._selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> list[tuple[object, int]]:
            ready: list[tuple[object, int]] = real_select(0)
            if ready:
                return ready
            if timeout is not None and timeout <= 0:
                self._virtual_now += 1e-6  # as tests/virtual_clock.py: no timer is re-armed forever
                return ready
            if timeout is None or _archive_jobs[0]:
                # Time stands still while the archive's thread works.
                return real_select(None if timeout is None else 0.05)  # type: ignore[no-any-return]
            self._virtual_now += timeout
            return ready

        self._selector.select = select  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._virtual_now


class _Counted:
    """The archive, counting its async calls in flight (for the loop above)."""

    def __init__(self, archive: StoryArchive) -> None:
        self._archive = archive

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._archive, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            with _jobs_lock:
                _archive_jobs[0] += 1
            try:
                return await attr(*args, **kwargs)
            finally:
                with _jobs_lock:
                    _archive_jobs[0] -= 1

        return call


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    loop = _Loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def _key() -> str:
    return "sk_test_" + secrets.token_hex(16)


def _clock(epoch: float) -> Callable[[], float]:
    loop = asyncio.get_running_loop()
    return lambda: epoch + loop.time()


async def _watch(
    emulator: Emulator,
    key: str,
    db: Path,
    accounts: Iterable[str] | Callable[[], Iterable[str]],
    *,
    every: float,
    duration: float,
    epoch: float = EPOCH,
    extensions: Iterable[SchemaExtension] = (),
    **options: Any,
) -> tuple[list[StoryEvent], Watcher]:
    events: list[StoryEvent] = []
    client = KeyAPIClient(key, transport=EmulatorTransport(emulator), qps=20, timeout=30)
    async with client, open_watch_archive(str(db), extensions=extensions) as archive:
        counted = cast(StoryArchive, _Counted(archive))
        watcher = Watcher(client, counted, accounts, every=every, clock=_clock(epoch), **options)
        asyncio.get_running_loop().call_later(duration, watcher.stop)
        async for event in watcher.events():
            events.append(event)
    return events, watcher


def _emulator(
    key: str, epoch: float = EPOCH, *, every: float = 3 * HOUR, **config: Any
) -> Emulator:
    churn = ChurnConfig(every=every, lifetime=DAY, epoch=epoch)
    return Emulator(EmulatorConfig(api_keys=frozenset({key}), churn=churn, seed=7, **config))


def _poll_times(emulator: Emulator, epoch: float = EPOCH) -> dict[str, list[float]]:
    polls: dict[str, list[float]] = collections.defaultdict(list)
    for record in emulator.log:
        if record.status == 200 and record.username is not None:
            polls[record.username].append(epoch + record.time)
    return polls


def test_thousand_accounts_every_12h_for_three_days(tmp_path: Path) -> None:
    key = _key()
    emulator = _emulator(key)
    accounts = [f"acct{n:04d}" for n in range(1000)]
    every = 12 * HOUR
    events, watcher = run_virtual(
        lambda: _watch(emulator, key, tmp_path / "a.db", accounts, every=every, duration=3 * DAY)
    )
    polls = _poll_times(emulator)
    assert len(polls) == 1000
    # Every account polled every 12 h, within a few percent.
    gaps = [b - a for times in polls.values() for a, b in itertools.pairwise(times)]
    assert gaps and all(abs(gap - every) <= 0.03 * every for gap in gaps), (min(gaps), max(gaps))
    assert {len(times) for times in polls.values()} == {6}
    # Evenly spread: the even share is 1000 / 43200 polls a second.
    starts = sorted(t for times in polls.values() for t in times)
    busiest = max(bisect.bisect_left(starts, t + 1.0, lo=i) - i for i, t in enumerate(starts))
    assert busiest <= 2
    spacing = [b - a for a, b in itertools.pairwise(starts)]
    assert min(spacing) >= 0.5 * every / 1000
    # Every story published and visible at a poll captured, exactly once.
    ids = [event.story_id for event in events]
    assert len(ids) == len(set(ids))
    expected: set[str] = set()
    churn = emulator.config.churn
    assert churn is not None
    for name, times in polls.items():
        for at in times:
            expected.update(s.story_id for s in active_stories(churn, 7, f"username:{name}", at))
        # Nothing published in the watch's span (after the first poll's view) is missed.
        span = published(churn, 7, f"username:{name}", times[0] - DAY + 1, times[-1])
        assert {s.story_id for s in span} <= expected
    assert set(ids) == expected
    # Credits as forecast: 1000 accounts x 2 polls/day x 2 credits x 3 days.
    assert (
        watcher.stats.credits
        == emulator.credits_spent
        == round(forecast_credits_per_day(1000, every) * 3)
    )
    with StoryArchive.connect(tmp_path / "a.db", extensions=[WATCH_SCHEMA]) as archive:
        assert archive.counts().stories == len(expected)


def test_budget_below_the_schedule_is_never_exceeded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = _key()
    emulator = _emulator(key)
    accounts = [f"b{n}" for n in range(20)]  # 20 x 24 polls/day x 2 = 960 credits a day
    caplog.set_level(logging.INFO, logger="keyapi_async.watch")
    _, watcher = run_virtual(
        lambda: _watch(
            emulator,
            key,
            tmp_path / "b.db",
            accounts,
            every=HOUR,
            duration=2.5 * DAY,
            max_credits_per_day=300,
        )
    )
    starts = sorted(t for times in _poll_times(emulator).values() for t in times)
    for i, t in enumerate(starts):  # the rolling 24 h window, at every poll
        assert 2 * (i + 1 - bisect.bisect_right(starts, t - DAY)) <= 300
    assert watcher.stats.budget_waits >= 2
    waits = [r.getMessage() for r in caplog.records if "budget reached" in r.getMessage()]
    assert waits and "polls wait until 20" in waits[0]
    # Polling resumed when the window allowed: spent each day, up to the cap.
    assert any(t > starts[0] + DAY for t in starts)
    assert any(t > starts[0] + 2 * DAY for t in starts)
    assert 2 * len(starts) >= 2 * 300 - 10


def test_restart_polls_nothing_before_it_is_due(tmp_path: Path) -> None:
    key = _key()
    db = tmp_path / "r.db"
    accounts = [f"r{n:03d}" for n in range(100)]
    every = 12 * HOUR
    first = _emulator(key)
    events, _ = run_virtual(
        lambda: _watch(first, key, db, accounts, every=every, duration=5 * HOUR)
    )
    before = _poll_times(first)
    assert 35 <= len(before) <= 45
    with StoryArchive.connect(db, extensions=[WATCH_SCHEMA]) as archive:
        due = dict(
            archive.read(
                lambda c: c.execute("SELECT target, next_poll_at FROM watch_accounts").fetchall()
            )
        )
    # Restarted two hours later, with the budget window and the schedule from the archive.
    epoch2 = EPOCH + 7 * HOUR
    second = _emulator(key, epoch2)
    more, _ = run_virtual(
        lambda: _watch(second, key, db, accounts, every=every, duration=12 * HOUR, epoch=epoch2)
    )
    after = _poll_times(second, epoch2)
    for name, times in after.items():
        assert times[0] >= due[name] - 1e-3
        if name in before:
            assert times[0] >= before[name][-1] + every - 1e-3
    # The accounts due during the 2 h stop are caught up, paced, not in a burst.
    starts = sorted(t for times in after.values() for t in times)
    busiest = max(bisect.bisect_left(starts, t + 1.0, lo=i) - i for i, t in enumerate(starts))
    assert busiest <= 2
    assert len(after) == 100
    ids = [e.story_id for e in events + more]
    assert len(ids) == len(set(ids))


def test_account_list_edits_take_effect_within_a_period(tmp_path: Path) -> None:
    key = _key()
    emulator = _emulator(key)
    names = [f"e{n}" for n in range(10)]

    def source() -> list[str]:
        return list(names)

    async def scenario() -> tuple[list[StoryEvent], Watcher]:
        loop = asyncio.get_running_loop()

        def edit() -> None:
            names.remove("e0")
            names.append("new_one")
            names.append("not a valid name!")

        loop.call_later(1.5 * HOUR, edit)
        return await _watch(emulator, key, tmp_path / "e.db", source, every=HOUR, duration=4 * HOUR)

    _, watcher = run_virtual(scenario)
    polls = _poll_times(emulator)
    assert all(t < EPOCH + 1.5 * HOUR for t in polls["e0"])
    assert polls["new_one"] and polls["new_one"][0] <= EPOCH + 2.6 * HOUR + 60
    assert "new_one" in watcher.accounts and "e0" not in watcher.accounts


def test_a_rejected_key_stops_the_watch(tmp_path: Path) -> None:
    key = _key()
    emulator = _emulator(key)

    async def scenario() -> None:
        client = KeyAPIClient(_key(), transport=EmulatorTransport(emulator), qps=20)
        async with client, open_watch_archive(str(tmp_path / "k.db")) as archive:
            watcher = Watcher(client, archive, ["a", "b"], every=HOUR, clock=_clock(EPOCH))
            async for _ in watcher.events():
                pass

    with pytest.raises(AuthenticationError):
        run_virtual(scenario)
    assert emulator.count() == 1


def _billed_times(emulator: Emulator, epoch: float = EPOCH) -> list[float]:
    """When every answered (billed) request of any endpoint arrived."""
    return sorted(epoch + r.time for r in emulator.log if r.status == 200)


def test_highlight_trays_poll_on_their_own_schedule_and_fetch_only_what_changed(
    tmp_path: Path,
) -> None:
    key = _key()
    accounts = [f"h{n}" for n in range(12)]
    config = HighlightConfig(grow_every=30 * HOUR)
    emulators: list[Emulator] = []

    async def main() -> tuple[list[StoryEvent], Watcher]:
        # Built inside the virtual loop: grow_every counts on its clock.
        emulators.append(_emulator(key, highlights=config))
        return await _watch(
            emulators[0],
            key,
            tmp_path / "h.db",
            accounts,
            every=6 * HOUR,
            duration=2 * DAY - HOUR,
            highlights_every=DAY,
            extensions=[HIGHLIGHTS_SCHEMA],
        )

    _, watcher = run_virtual(main)
    emulator = emulators[0]
    trays = collections.Counter(r.username for r in emulator.log if r.path == TRAY_PATH)
    # Spread over one day (2 h apart), then once more a day later: two each.
    assert trays == {account: 2 for account in accounts}
    assert watcher.stats.tray_polls == 24
    owner = {
        hid: account
        for account in accounts
        for hid in highlight_ids(f"username:{account}", 7, config)
    }
    assert owner, "the emulator gave no account a highlight"
    fetched = collections.Counter(
        owner[r.highlight_id.removeprefix("highlight:")]
        for r in emulator.log
        if r.path == HIGHLIGHT_STORIES_PATH and r.highlight_id
    )
    tray_times = collections.defaultdict(list)
    for record in emulator.log:
        if record.path == TRAY_PATH and record.username:
            tray_times[record.username].append(record.time)
    for account in accounts:
        count = sum(1 for a in owner.values() if a == account)
        # The first poll fetches every highlight; the second only the one
        # that grew (each account's first, at 30 h), if it came after that.
        grew = count > 0 and max(tray_times[account]) > 30 * HOUR
        assert fetched[account] == count + (1 if grew else 0), account
    # Every billed request is counted once, trays and highlights included.
    assert watcher.stats.credits == 2 * len(_billed_times(emulator))


def test_highlights_stay_inside_the_daily_budget(tmp_path: Path) -> None:
    key = _key()
    accounts = [f"q{n}" for n in range(12)]  # stories alone: 12 x 12 x 2 = 288 a day
    emulators: list[Emulator] = []

    async def main() -> tuple[list[StoryEvent], Watcher]:
        emulators.append(_emulator(key, highlights=HighlightConfig(grow_every=2 * HOUR)))
        return await _watch(
            emulators[0],
            key,
            tmp_path / "q.db",
            accounts,
            every=2 * HOUR,
            duration=2 * DAY,
            highlights_every=4 * HOUR,
            max_credits_per_day=200,
            extensions=[HIGHLIGHTS_SCHEMA],
        )

    _, watcher = run_virtual(main)
    billed = _billed_times(emulators[0])
    for i, t in enumerate(billed):  # the rolling 24 h window, at every billed request
        assert 2 * (i + 1 - bisect.bisect_right(billed, t - DAY)) <= 200
    assert watcher.stats.tray_polls > 0 and watcher.stats.budget_waits > 0
    assert watcher.stats.credits == 2 * len(billed)
