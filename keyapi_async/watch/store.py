"""Every SQL statement on the watch tables: what :class:`Watcher` writes and ``status`` reads.

Each function takes an open :class:`sqlite3.Connection` and runs inside one
archive transaction (:meth:`~keyapi_async.archive.StoryArchive.transact`) or
read (:meth:`~keyapi_async.archive.StoryArchive.read`); none commits itself.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from .schedule import AccountChanges
from .schema import DAY

__all__ = [
    "AccountRow",
    "PollRecord",
    "WatchState",
    "WatchStatus",
    "read_state",
    "read_status",
    "record_poll",
    "save_account_changes",
    "save_settings",
]


@dataclass(frozen=True, slots=True)
class WatchState:
    """What a watcher resumes from: the schedule and the last day's spends."""

    accounts: list[tuple[str, bool, float]]
    """``(target, active, next_poll_at)`` of every account ever watched."""
    spends: list[tuple[float, int]]
    """``(at, credits)`` of the last 24 h, oldest first."""
    trays: dict[str, float]
    """Account -> when its highlight tray is due (accounts whose tray was polled)."""


@dataclass(frozen=True, slots=True)
class PollRecord:
    """One poll's row updates."""

    target: str
    started: float
    next_at: float
    credits: int
    status: str
    """``ok``, ``not_found``, ``error`` or ``fatal``."""
    error: str | None
    new_stories: int


@dataclass(frozen=True, slots=True)
class AccountRow:
    """One account's schedule as ``status`` shows it."""

    target: str
    active: bool
    last_poll_at: float | None
    next_poll_at: float
    polls: int
    new_stories: int
    last_status: str | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class WatchStatus:
    """The watch tables read at one moment (``keyapi-stories status``, status pages)."""

    accounts: list[AccountRow]
    """Active accounts first, then by target."""
    spent_last_day: int
    """Credits spent in the 24 h before the read."""
    settings: dict[str, str]
    """The last watcher's settings (``every``, ``max_credits_per_day``) as text."""

    @property
    def max_credits_per_day(self) -> int | None:
        """The last watcher's daily cap (None: no cap, or never recorded)."""
        text = self.settings.get("max_credits_per_day", "None")
        return None if text == "None" else int(text)


def _has_tables(conn: sqlite3.Connection) -> bool:
    found = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'watch_accounts'")
    return bool(found.fetchone()[0])


def read_state(conn: sqlite3.Connection, now: float) -> WatchState | None:
    """The schedule and the last day's spends (None: the archive has no watch tables)."""
    if not _has_tables(conn):
        return None
    accounts = [
        (str(target), bool(active), float(next_at))
        for target, active, next_at in conn.execute(
            "SELECT target, active, next_poll_at FROM watch_accounts"
        )
    ]
    spends = [
        (float(at), int(credits))
        for at, credits in conn.execute(
            "SELECT at, credits FROM watch_credits WHERE at > ? ORDER BY at", (now - DAY,)
        )
    ]
    trays = {
        str(target): float(next_at)
        for target, next_at in conn.execute("SELECT target, next_poll_at FROM watch_trays")
    }
    return WatchState(accounts, spends, trays)


def save_settings(conn: sqlite3.Connection, settings: Mapping[str, str]) -> None:
    """Record the running watcher's settings (what ``status`` reports)."""
    conn.executemany(
        "INSERT INTO watch_settings (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        settings.items(),
    )


def save_account_changes(conn: sqlite3.Connection, changes: AccountChanges, now: float) -> None:
    """Record an account-list change: new rows, and removed or revived accounts."""
    conn.executemany(
        "INSERT INTO watch_accounts (target, added_at, next_poll_at) VALUES (?, ?, ?)",
        [(target, now, due) for target, due in changes.added],
    )
    conn.executemany(
        "UPDATE watch_accounts SET active = 0 WHERE target = ?", [(t,) for t in changes.removed]
    )
    conn.executemany(
        "UPDATE watch_accounts SET active = 1 WHERE target = ?", [(t,) for t in changes.revived]
    )


def record_poll(
    conn: sqlite3.Connection,
    poll: PollRecord,
    *,
    prune_before: float | None,
    tray: bool = False,
) -> None:
    """Record one poll's end (and its spend); drop spends older than ``prune_before``.

    ``tray``: a highlight-tray poll (``watch_trays``), else a stories poll.
    """
    row = (poll.started, poll.next_at, poll.new_stories, poll.status, poll.error, poll.target)
    if tray:
        conn.execute(
            "INSERT INTO watch_trays (last_poll_at, next_poll_at, polls, new_stories,"
            " last_status, last_error, target) VALUES (?, ?, 1, ?, ?, ?, ?)"
            " ON CONFLICT (target) DO UPDATE SET last_poll_at = excluded.last_poll_at,"
            " next_poll_at = excluded.next_poll_at, polls = polls + 1,"
            " new_stories = new_stories + excluded.new_stories,"
            " last_status = excluded.last_status, last_error = excluded.last_error",
            row,
        )
    else:
        conn.execute(
            "UPDATE watch_accounts SET last_poll_at = ?, next_poll_at = ?, polls = polls + 1,"
            " new_stories = new_stories + ?, last_status = ?, last_error = ? WHERE target = ?",
            row,
        )
    if poll.credits:
        conn.execute(
            "INSERT INTO watch_credits (at, target, credits) VALUES (?, ?, ?)",
            (poll.started, poll.target, poll.credits),
        )
    if prune_before is not None:
        conn.execute("DELETE FROM watch_credits WHERE at < ?", (prune_before,))


def read_status(conn: sqlite3.Connection, now: float) -> WatchStatus | None:
    """The watch tables as ``status`` shows them (None: no watch tables)."""
    if not _has_tables(conn):
        return None
    rows = [
        AccountRow(str(t), bool(a), last, float(nxt), int(p), int(n), s, e)
        for t, a, last, nxt, p, n, s, e in conn.execute(
            "SELECT target, active, last_poll_at, next_poll_at, polls, new_stories,"
            " last_status, last_error FROM watch_accounts ORDER BY active DESC, target"
        )
    ]
    spent = conn.execute(
        "SELECT coalesce(sum(credits), 0) FROM watch_credits WHERE at > ?", (now - DAY,)
    ).fetchone()[0]
    settings = {
        str(name): str(value)
        for name, value in conn.execute("SELECT name, value FROM watch_settings")
    }
    return WatchStatus(rows, int(spent), settings)
