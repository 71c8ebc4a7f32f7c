"""The watch mode's tables in the archive, and the constants its budget is counted in."""

from __future__ import annotations

import contextlib
from typing import Final, Unpack

from ..archive import ArchiveOptions, SchemaExtension, StoryArchive

__all__ = [
    "CREDITS_PER_POLL",
    "DAY",
    "WATCH_SCHEMA",
    "forecast_credits_per_day",
    "open_watch_archive",
]

DAY: Final = 86_400.0
"""Seconds in the rolling budget window, and a story's lifetime."""
CREDITS_PER_POLL: Final = 2
"""What one successful poll costs."""

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
        # 2: highlight trays on their own schedule (watch --highlights-every).
        """
        CREATE TABLE watch_trays (
            target       TEXT PRIMARY KEY,
            next_poll_at REAL NOT NULL,
            last_poll_at REAL,
            polls        INTEGER NOT NULL DEFAULT 0,
            new_stories  INTEGER NOT NULL DEFAULT 0,
            last_status  TEXT,
            last_error   TEXT
        );
        """,
    ),
)
"""The watch mode's tables in the archive (times are Unix seconds as REAL: polls are
spread at sub-second spacing): the accounts' schedule, the credits spent, the settings,
and the highlight trays' own schedule (``watch_trays``). Open the archive with
``extensions=[WATCH_SCHEMA]`` (or :func:`open_watch_archive`)."""


def open_watch_archive(
    path: str, **options: Unpack[ArchiveOptions]
) -> contextlib.AbstractAsyncContextManager[StoryArchive]:
    """Open the archive at ``path`` with the watch tables (``async with``, like ``open``)."""
    options["extensions"] = [*options.get("extensions", ()), WATCH_SCHEMA]
    return StoryArchive.open(path, **options)


def forecast_credits_per_day(accounts: int, every: float) -> float:
    """Credits per day of watching ``accounts`` every ``every`` s: accounts x polls/day x 2."""
    return accounts * (DAY / every) * CREDITS_PER_POLL
