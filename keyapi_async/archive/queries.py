"""What the archive answers: the read-only queries, and the read-only connections they run on.

Each query is a plain function of a connection, so the same query serves the
facade's blocking reads (on the :class:`Reader`'s own connection, which never
waits for the writer: WAL) and its async reads (as a job of the writer,
ordered after every write submitted before it).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Final, TypeVar

from .connection import ArchiveFile
from .records import (
    MEDIA_SELECT,
    STORY_SELECT,
    AccountRecord,
    ArchiveCounts,
    MediaRecord,
    RunRecord,
    StoryRecord,
    in_chunks,
    media_from_row,
    story_from_row,
)
from .writes import existing_ids

__all__ = [
    "PendingQuery",
    "Reader",
    "accounts",
    "counts",
    "known_story_ids",
    "media_record",
    "media_records",
    "runs",
    "stories",
    "story",
]

T = TypeVar("T")

_ORDER: str = " ORDER BY s.taken_at, s.story_id"
# More than most archives; SQLite caps it at its compile-time MAX_MMAP_SIZE
# (2 GiB in common builds) and reads the rest of a larger file as before.
_SNAPSHOT_MMAP_BYTES: Final = 1 << 31


class Reader:
    """The archive's read-only connections: one shared (opened on first use), one per snapshot."""

    def __init__(self, file: ArchiveFile) -> None:
        self._file = file
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(connection)`` on the shared connection, in one snapshot (one caller at a time)."""
        with self._lock:
            if self._conn is None:
                self._conn = self._file.connect(readonly=True)
            conn = self._conn
            try:
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise self._file.error(exc, "reading") from exc

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own in one snapshot, closed on exit (for long reads)."""
        conn = self._file.connect(readonly=True)
        try:
            try:
                # A long read walks the stories in taken_at order, one table
                # page per row: reading pages from a map instead of copying
                # each into SQLite's small cache makes an export of 300,000
                # stories 15-25% faster (docs/decisions.md, "Exports read
                # through a memory map"). SQLite caps the size at its own
                # compile-time maximum and falls back to reads when it can't.
                conn.execute(f"PRAGMA mmap_size = {_SNAPSHOT_MMAP_BYTES}")
                conn.execute("BEGIN")
                yield conn
            except sqlite3.Error as exc:
                raise self._file.error(exc, "reading") from exc
        finally:
            conn.close()

    def iter_stories(self, batch: int) -> Iterator[StoryRecord]:
        """Every story by ``taken_at`` then id, ``batch`` rows at a time, in one snapshot."""
        with self.snapshot() as conn:
            cursor = conn.execute(STORY_SELECT + _ORDER)
            while rows := cursor.fetchmany(batch):
                yield from (story_from_row(row) for row in rows)
            cursor.close()

    def close(self) -> None:
        """Close the shared connection (a later :meth:`read` opens it again)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def story(conn: sqlite3.Connection, story_id: str) -> StoryRecord | None:
    """The archived story ``story_id`` with its media record, or ``None``."""
    row = conn.execute(f"{STORY_SELECT} WHERE s.story_id = ?", (story_id,)).fetchone()
    return None if row is None else story_from_row(row)


def stories(conn: sqlite3.Connection, account: str | None) -> list[StoryRecord]:
    """The archived stories (of ``account``, or all), by ``taken_at`` then id."""
    if account is None:
        rows = conn.execute(STORY_SELECT + _ORDER)
    else:
        rows = conn.execute(f"{STORY_SELECT} WHERE s.account = ?{_ORDER}", (account,))
    return [story_from_row(row) for row in rows]


def accounts(conn: sqlite3.Connection) -> list[AccountRecord]:
    """Every account with its story counts, by target."""
    rows = conn.execute(
        """
        SELECT a.target, a.user_id, a.username, a.first_seen_at, a.last_seen_at,
               count(s.story_id), count(CASE WHEN m.status = 'saved' THEN 1 END)
        FROM accounts AS a
        LEFT JOIN stories AS s ON s.account = a.target
        LEFT JOIN media AS m ON m.story_id = s.story_id
        GROUP BY a.target ORDER BY a.target
        """
    )
    return [AccountRecord(*row) for row in rows]


def runs(conn: sqlite3.Connection) -> list[RunRecord]:
    """Every recorded run, oldest first."""
    rows = conn.execute(
        "SELECT id, kind, started_at, finished_at, ledger, counts FROM runs ORDER BY id"
    )
    return [
        RunRecord(
            id=row[0],
            kind=row[1],
            started_at=row[2],
            finished_at=row[3],
            ledger=row[4],
            counts=json.loads(row[5]),
        )
        for row in rows
    ]


def counts(conn: sqlite3.Connection) -> ArchiveCounts:
    """Totals: accounts, stories by type and media status, saved bytes, runs."""
    accounts = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
    runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
    by_type = dict(conn.execute("SELECT media_type, count(*) FROM stories GROUP BY media_type"))
    media = dict.fromkeys(("saved", "pending", "failed", "expired", "not_requested"), 0)
    for status, count in conn.execute(
        "SELECT coalesce(m.status, 'not_requested'), count(*) FROM stories AS s "
        "LEFT JOIN media AS m ON m.story_id = s.story_id GROUP BY 1"
    ):
        media[status] = count
    saved_bytes = conn.execute(
        "SELECT coalesce(sum(bytes), 0) FROM media WHERE status = 'saved'"
    ).fetchone()[0]
    images, videos = by_type.get("image", 0), by_type.get("video", 0)
    return ArchiveCounts(
        accounts=accounts,
        stories=images + videos,
        images=images,
        videos=videos,
        media=media,
        saved_bytes=saved_bytes,
        runs=runs,
    )


def media_record(conn: sqlite3.Connection, story_id: str) -> MediaRecord | None:
    """The media record of ``story_id``, or ``None``."""
    row = conn.execute(f"{MEDIA_SELECT} WHERE story_id = ?", (story_id,)).fetchone()
    return None if row is None else media_from_row(row)


def media_records(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, MediaRecord]:
    """The media records of those of ``ids`` that have one, by story id."""
    found: dict[str, MediaRecord] = {}
    for marks, chunk in in_chunks(ids):
        for row in conn.execute(f"{MEDIA_SELECT} WHERE story_id IN ({marks})", chunk):
            found[row[0]] = media_from_row(row)
    return found


def known_story_ids(
    conn: sqlite3.Connection, ids: Sequence[str] | None, account: str | None
) -> set[str]:
    """The archived ids: of ``ids`` (those known), of ``account``, or all."""
    of_account: set[str] | None = None
    if account is not None:
        rows = conn.execute("SELECT story_id FROM stories WHERE account = ?", (account,))
        of_account = {row[0] for row in rows}
    if ids is None:
        if of_account is not None:
            return of_account
        return {row[0] for row in conn.execute("SELECT story_id FROM stories")}
    known = existing_ids(conn, ids)
    return known if of_account is None else known & of_account


class PendingQuery:
    """The SELECT of :meth:`StoryArchive.pending_media`, built from its checked options."""

    def __init__(
        self,
        statuses: Sequence[str],
        include_not_requested: bool,
        alive: int | None,
        account: str | None,
        limit: int | None,
    ) -> None:
        marks = ",".join("?" * len(statuses))
        self.sql = (
            f"{STORY_SELECT} WHERE ((m.status IS NULL AND ?) OR m.status IN ({marks}))"
            " AND (? IS NULL OR s.expiring_at IS NULL OR s.expiring_at > ?)"
            " AND (? IS NULL OR s.account = ?)"
            " ORDER BY s.expiring_at IS NULL, s.expiring_at, s.story_id"
        )
        self.params: list[object] = [int(include_not_requested), *statuses, alive, alive]
        self.params += [account, account]
        if limit is not None:
            self.sql += " LIMIT ?"
            self.params.append(limit)

    def __call__(self, conn: sqlite3.Connection) -> list[StoryRecord]:
        """The stories, soonest-expiring first."""
        return [story_from_row(row) for row in conn.execute(self.sql, self.params)]
