"""The watch's rules as pure functions and data (keyapi_async.watch.schedule, .budget, .store).

The loop itself is tested end to end in test_watch.py on a virtual clock; here
each rule is held to its definition without any I/O but SQLite.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from keyapi_async.archive import SchemaExtension, StoryArchive
from keyapi_async.watch import DAY, WATCH_SCHEMA, WatchStats
from keyapi_async.watch.budget import DailyBudget
from keyapi_async.watch.dispatch import Dispatcher, Start
from keyapi_async.watch.schedule import CATCH_UP, Schedule, next_poll_at
from keyapi_async.watch.store import (
    PollRecord,
    read_state,
    read_status,
    record_poll,
    save_account_changes,
    save_settings,
)


def test_due_times_stay_on_the_grid() -> None:
    # A success keeps the grid whatever the poll's latency.
    assert next_poll_at(100.0, 103.5, 60.0, on_grid=True) == 160.0
    # A whole period behind (a long stop): the grid restarts at the start.
    assert next_poll_at(100.0, 200.0, 60.0, on_grid=True) == 260.0
    assert next_poll_at(100.0, 160.0, 60.0, on_grid=True) == 220.0
    # A failure other than "not found" comes back a quarter period later.
    assert next_poll_at(100.0, 103.0, 60.0, on_grid=False) == 118.0


def test_new_accounts_are_spread_over_one_period_and_removals_are_kept() -> None:
    schedule = Schedule(every=100.0)
    changes = schedule.update(["a", "b", "c", "d"], 1_000.0, first=True)
    assert [due for _, due in changes.added] == [1_000.0, 1_025.0, 1_050.0, 1_075.0]
    assert schedule.spacing() == 25.0
    changes = schedule.update(["a", "c", "d"], 1_010.0)
    assert changes.removed == ("b",) and not changes.added
    assert schedule.active == ["a", "c", "d"]
    assert not schedule.update(["a", "c", "d"], 1_020.0)  # nothing changed
    changes = schedule.update(["b", "a", "c", "d"], 1_030.0)
    assert changes.revived == ("b",) and schedule.accounts["b"].next_at == 1_025.0


def test_the_heap_gives_due_accounts_in_order_and_catch_up_is_paced() -> None:
    schedule = Schedule(every=100.0)
    schedule.update(["a", "b"], 0.0, first=True)
    first = schedule.next_due()
    assert first is not None and first.target == "a"
    assert schedule.start_at(first) == 0.0
    schedule.begin(first, 500.0)  # far behind
    second = schedule.next_due()
    assert second is not None and second.target == "b"
    # b was due at 50 but may start only spacing / CATCH_UP after a's start.
    assert schedule.start_at(second) == 500.0 + 50.0 / CATCH_UP
    schedule.finish(first, 600.0)
    assert schedule.next_due() is second
    schedule.begin(second, 525.0)
    again = schedule.next_due()
    assert again is not None and again.target == "a" and again.next_at == 600.0
    # A removed account's stale heap entry is never handed out.
    schedule.update(["b"], 530.0)
    assert schedule.next_due() is None


def test_the_budget_is_a_rolling_window_with_reservations() -> None:
    budget = DailyBudget(limit=6)
    budget.load([(0.0, 2), (10.0, 2)])
    assert budget.available_at(20.0, 2) == 20.0
    budget.reserved += 2
    # Full: room comes back when the oldest spend leaves the window.
    assert budget.available_at(20.0, 2) == 0.0 + DAY
    assert budget.available_at(DAY + 1.0, 2) == DAY + 1.0
    assert budget.spent == 2  # the first spend was trimmed
    budget.reserved += 4
    assert math.isinf(budget.available_at(DAY + 1.0, 2))  # reservations alone exceed it
    assert DailyBudget(limit=None).available_at(5.0, 10**9) == 5.0


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    for step in WATCH_SCHEMA.migrations:
        assert isinstance(step, str)
        connection.executescript(step)
    yield connection
    connection.close()


def test_what_the_watcher_writes_is_what_status_reads(conn: sqlite3.Connection) -> None:
    with contextlib.closing(sqlite3.connect(":memory:")) as empty:
        assert read_status(empty, 0.0) is None
    schedule = Schedule(every=60.0)
    save_account_changes(conn, schedule.update(["a", "b"], 1_000.0, first=True), 1_000.0)
    save_settings(conn, {"every": "60.0", "max_credits_per_day": "500"})
    record_poll(conn, PollRecord("a", 1_000.0, 1_060.0, 2, "ok", None, 3), prune_before=None)
    record_poll(
        conn, PollRecord("b", 1_030.0, 1_045.0, 0, "error", "ServerError: 500", 0), prune_before=0
    )
    save_account_changes(conn, schedule.update(["a"], 1_040.0), 1_040.0)
    status = read_status(conn, 1_050.0)
    assert status is not None
    assert [(r.target, r.active, r.polls, r.new_stories) for r in status.accounts] == [
        ("a", True, 1, 3),
        ("b", False, 1, 0),
    ]
    assert status.accounts[1].last_error == "ServerError: 500"
    assert status.spent_last_day == 2 and status.max_credits_per_day == 500
    state = read_state(conn, 1_050.0)
    assert state is not None
    assert sorted(state.accounts) == [("a", True, 1_060.0), ("b", False, 1_045.0)]
    assert state.spends == [(1_000.0, 2)]
    later = read_state(conn, 1_000.0 + DAY)
    assert later is not None and later.spends == []


def test_the_dispatcher_picks_the_earliest_lane_and_reserves_a_trays_room() -> None:
    stories, trays = Schedule(every=100.0), Schedule(every=1_000.0)
    stories.update(["a"], 10.0, first=True)
    trays.update(["a"], 0.0, first=True)
    budget = DailyBudget(limit=12)
    stats = WatchStats()
    dispatcher = Dispatcher(stories, trays, budget, stats)
    start = dispatcher.next(5.0)
    assert isinstance(start, Start) and start.lane is trays
    # 12 credits of room: the tray's 2, and 5 changed highlights at 2 each.
    assert start.most_highlights == 5 and start.reserve == 12
    trays.begin(start.account, 5.0)
    budget.reserved += start.reserve
    assert dispatcher.next(5.0) == 10.0  # the stories poll is due later
    assert dispatcher.next(10.0) == math.inf  # due, but the tray holds the whole budget
    assert dispatcher.next(10.0) == math.inf
    assert stats.budget_waits == 1  # one wait, logged and counted once
    budget.reserved -= start.reserve
    budget.add(5.0, 4)  # the tray poll spent 4 of its 12
    trays.finish(start.account, 1_005.0)
    again = dispatcher.next(10.0)
    assert isinstance(again, Start) and again.lane is stories and again.reserve == 2
    unlimited = Dispatcher(Schedule(every=1.0), Schedule(every=1.0), DailyBudget(None), stats)
    unlimited.trays.update(["b"], 0.0, first=True)  # type: ignore[union-attr]
    free = unlimited.next(0.0)
    assert isinstance(free, Start) and free.most_highlights is None and free.reserve == 2


def test_a_version_1_watch_archive_gains_the_tray_table_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    first = SchemaExtension("watch", WATCH_SCHEMA.migrations[:1])
    tables = "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'watch_%'"
    with StoryArchive.connect(path, extensions=[first]) as archive:
        before = {row[0] for row in archive.read(lambda conn: conn.execute(tables).fetchall())}
    assert before == {"watch_accounts", "watch_credits", "watch_settings"}
    with StoryArchive.connect(path, extensions=[WATCH_SCHEMA]) as archive:
        state = archive.read(lambda conn: read_state(conn, 0.0))
    assert state is not None and state.trays == {}
