"""The story archive: one SQLite file that outlives runs.

A batch's ledger is the crash-safe log of one run, keyed by account. The
archive is the long-lived store keyed by *story*: every story item ever seen,
once, with the chosen media rendition and, when the media was downloaded, the
file's path, size and SHA-256. A second run the next day learns what is new
from :meth:`StoryArchive.record_reel`, and a download resumes from
:meth:`StoryArchive.pending_media`.

Usage::

    import time
    from keyapi_async import KeyAPIClient
    from keyapi_async.archive import StoryArchive

    async with KeyAPIClient() as client, StoryArchive.open("stories.sqlite3") as archive:
        reel = await client.fetch_user_stories(username="javan")
        new = await archive.record_reel("javan", reel, time.time())
        print(f"{len(new)} new stories")

Design choices:

* **One writer thread, one connection.** Every async call is a job on a
  queue served by a single thread that owns the writing connection. SQLite
  admits one writer at a time anyway; with one connection there is no
  ``SQLITE_BUSY`` contention between our own threads, jobs run in the order
  they were submitted (a story is always recorded before its media), and
  whatever piled up while a transaction was committing goes into the next
  one (group commit: one ``fsync`` for many writes). ``asyncio.to_thread``
  with a connection per pool thread would have none of that, and the pool's
  threads (shared with DNS lookups and file I/O) outlive the archive, so
  their connections could not be closed deterministically.
* **The event loop does no database work.** An async call builds a job and
  puts it on the queue; decoding rows, ``UPSERT`` and ``COMMIT`` all happen in
  the writer thread (``sqlite3`` releases the GIL while SQLite works). A call
  returns once its transaction is committed, so ``await`` means durable
  against a crash of the process. Each job runs in its own ``SAVEPOINT``: a
  job that fails rolls back alone, not the batch it shares.
* **WAL mode, ``synchronous=NORMAL``.** Readers (export, status) never block
  the writer and vice versa; a committed transaction survives ``kill -9``
  (the last few may be lost on power failure, never corrupted).
* **Another writer is an error, not a wait without end.** Connections use a
  busy timeout (default 5 s); opening the archive takes the write lock once to
  prove it can, so a file locked by another program, not writable or not an
  archive raises :class:`ArchiveError` before a run sends any request.
* **Versioned schema.** ``PRAGMA user_version`` counts the core migrations
  applied; each runs in the same transaction as the version bump. Later
  layers (the watch mode's schedule and credit budget) add their own tables
  through :class:`SchemaExtension`, versioned per name in
  ``schema_components``, without touching the core list.
* **Idempotent upserts.** A story seen again is the same row: the newest
  fetch refreshes the media URL, expiry and rendition, the first sighting is
  kept. Recording an older fetch after a newer one (importing yesterday's
  ledger) only moves ``first_seen_at`` back; recording the same reel twice
  changes nothing.
* **Verbatim ids.** Story ids, usernames and targets are stored exactly as
  the server sent them, always as bound parameters; making a file name of
  them is the downloader's job.

Timestamps are integer Unix seconds, UTC, everywhere in the schema.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import queue
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any, Final, Literal, Self, TypeVar, cast

import msgspec

from .._errors import ArchiveError
from ..models import Reel, StoryItem, User, encode

__all__ = [
    "SCHEMA_VERSION",
    "AccountRecord",
    "ArchiveCounts",
    "ArchiveError",
    "LedgerImport",
    "MediaRecord",
    "MediaStatus",
    "RunRecord",
    "SchemaExtension",
    "StoryArchive",
    "StoryRecord",
    "import_ledger",
]

T = TypeVar("T")

MediaStatus = Literal["pending", "saved", "expired", "failed"]
"""The state of a story's media file, as the downloader records it."""

_MEDIA_STATUSES: Final = frozenset({"pending", "saved", "expired", "failed"})
_APPLICATION_ID: Final = 0x4B415059  # "KAPY": tells our archives from other SQLite files
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

# SQLite primary result codes (``sqlite3.Error.sqlite_errorcode & 0xFF``).
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_READONLY: Final = 8
_SQLITE_IOERR: Final = 10
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14
_SQLITE_NOTADB: Final = 26

# UPSERT needs 3.24; nothing newer (no STRICT tables, no RETURNING) is used,
# so the archive works with the SQLite of every maintained Linux distribution.
_MIN_SQLITE: Final = (3, 24, 0)
# The IN (...) lists stay far below SQLITE_MAX_VARIABLE_NUMBER (999 before 3.32).
_IN_CHUNK: Final = 500

_CORE_MIGRATIONS: Final[tuple[str, ...]] = (
    f"""
    PRAGMA application_id = {_APPLICATION_ID};

    CREATE TABLE accounts (
        target        TEXT PRIMARY KEY,
        user_id       TEXT,
        username      TEXT,
        first_seen_at INTEGER NOT NULL,
        last_seen_at  INTEGER NOT NULL
    );
    CREATE INDEX accounts_user_id ON accounts (user_id);

    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER,
        ledger      TEXT,
        counts      TEXT NOT NULL DEFAULT '{{}}'
    );
    CREATE UNIQUE INDEX runs_import_ledger ON runs (ledger) WHERE kind = 'import';

    CREATE TABLE stories (
        story_id      TEXT PRIMARY KEY,
        account       TEXT NOT NULL REFERENCES accounts (target),
        user_id       TEXT,
        username      TEXT,
        taken_at      INTEGER,
        expiring_at   INTEGER,
        media_type    TEXT NOT NULL CHECK (media_type IN ('image', 'video')),
        width         INTEGER,
        height        INTEGER,
        duration      REAL,
        media_url     TEXT,
        first_seen_at INTEGER NOT NULL,
        fetched_at    INTEGER NOT NULL,
        first_run_id  INTEGER REFERENCES runs (id),
        last_run_id   INTEGER REFERENCES runs (id),
        raw           TEXT
    );
    CREATE INDEX stories_account ON stories (account, taken_at);
    CREATE INDEX stories_user_id ON stories (user_id);
    CREATE INDEX stories_taken_at ON stories (taken_at, story_id);
    CREATE INDEX stories_expiring_at ON stories (expiring_at);

    CREATE TABLE media (
        story_id   TEXT PRIMARY KEY REFERENCES stories (story_id) ON DELETE CASCADE,
        status     TEXT NOT NULL CHECK (status IN ('pending', 'saved', 'expired', 'failed')),
        path       TEXT,
        bytes      INTEGER,
        sha256     TEXT,
        saved_at   INTEGER,
        updated_at INTEGER NOT NULL,
        failures   INTEGER NOT NULL DEFAULT 0,
        reason     TEXT
    );
    CREATE INDEX media_status ON media (status);

    CREATE TABLE schema_components (
        name    TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    );
    """,
)

SCHEMA_VERSION: Final = len(_CORE_MIGRATIONS)
"""The core schema version this library writes (``PRAGMA user_version``)."""


@dataclass(frozen=True, slots=True)
class SchemaExtension:
    """Tables a later layer keeps in the archive, versioned under their own name.

    ``migrations[i]`` takes the extension from version ``i`` to ``i + 1``: a
    string of SQL statements separated by ``;``, or a callable given the
    connection. Pass extensions to :meth:`StoryArchive.open`; pending steps
    run in the same transaction as the core migrations. Append steps, never
    edit a released one::

        WATCH = SchemaExtension("watch", (
            "CREATE TABLE polls (target TEXT PRIMARY KEY, next_at INTEGER NOT NULL)",
        ))
    """

    name: str
    migrations: tuple[str | Callable[[sqlite3.Connection], None], ...]

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a schema extension needs a non-empty name")


@dataclass(frozen=True, slots=True)
class MediaRecord:
    """What the archive knows about one story's media file.

    ``path`` is relative to the download directory (``/`` separators);
    ``bytes``, ``sha256`` and ``saved_at`` are set when ``status`` is
    ``saved``. ``failures`` counts ``failed``/``expired`` records since the
    last ``saved`` one; ``reason`` says why the last attempt did not save.
    """

    story_id: str
    status: MediaStatus
    path: str | None
    bytes: int | None
    sha256: str | None
    saved_at: int | None
    updated_at: int
    failures: int
    reason: str | None


@dataclass(frozen=True, slots=True)
class StoryRecord:
    """One story item as archived, with its media record (``None``: never requested).

    ``width``/``height`` are those of the chosen rendition at ``media_url``
    (the largest video rendition for videos, the largest image otherwise);
    ``duration`` is set for videos. ``fetched_at`` is the newest fetch that
    returned the story, ``first_seen_at`` the oldest.
    """

    story_id: str
    account: str
    user_id: str | None
    username: str | None
    taken_at: int | None
    expiring_at: int | None
    media_type: Literal["image", "video"]
    width: int | None
    height: int | None
    duration: float | None
    media_url: str | None
    first_seen_at: int
    fetched_at: int
    media: MediaRecord | None

    @property
    def media_status(self) -> Literal["pending", "saved", "expired", "failed", "not_requested"]:
        """The media's status, or ``not_requested`` when no download was recorded."""
        return "not_requested" if self.media is None else self.media.status


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """One account (target) of the archive with its story counts."""

    target: str
    """The normalised target the stories were fetched for (``javan``, ``id:18527``)."""
    user_id: str | None
    username: str | None
    first_seen_at: int
    last_seen_at: int
    """When a fetch for this target last succeeded (stories or none)."""
    stories: int
    """Story items archived for this target."""
    saved: int
    """Of which the media file is saved."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run (a ``fetch``, a ledger import, a watch session) and its counters."""

    id: int
    kind: str
    started_at: int
    finished_at: int | None
    ledger: str | None
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class ArchiveCounts:
    """Totals over the whole archive (for a status report)."""

    accounts: int
    stories: int
    images: int
    videos: int
    media: dict[str, int]
    """Story count per media status, ``not_requested`` included (every key present)."""
    saved_bytes: int
    runs: int


@dataclass(slots=True)
class LedgerImport:
    """What :func:`import_ledger` read and recorded."""

    run_id: int = 0
    """The archive's run row for this ledger (the same one on every import of it)."""
    lines: int = 0
    """Readable ledger lines."""
    reels: int = 0
    """Lines with fetched stories (``ok`` or ``empty``)."""
    stories: int = 0
    """Story items in those lines (an item in several lines counts each time)."""
    new_stories: int = 0
    """Story ids the archive did not hold before this import."""
    skipped: int = 0
    """Lines without stories (``error``, ``not_attempted``)."""
    torn: bool = False
    """Whether an unreadable final line (cut by a crash) was ignored."""
    new_story_ids: list[str] = field(default_factory=list, repr=False)


# -- helpers ---------------------------------------------------------------


def _split_statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT the surrounding transaction first, which
    # would make a migration step non-atomic; run the statements one by one.
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            buffer = ""
            if statement.rstrip(";").strip():
                yield statement
    if buffer.strip():
        # The last statement may omit its semicolon.
        if not sqlite3.complete_statement(buffer + ";"):
            raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:60]!r}")
        yield buffer.strip()


def _timestamp(value: float | None, what: str) -> int:
    if value is None:
        return int(time.time())
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of Unix seconds, not {value!r}")
    return math.floor(value)


def _archive_error(path: str, exc: sqlite3.Error, doing: str, timeout: float) -> ArchiveError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
        message = (
            f"archive {path} is locked by another writer (waited {timeout:g} s while {doing}); "
            "close the other program or use another archive"
        )
    elif primary == _SQLITE_READONLY:
        message = f"archive {path} is not writable ({text})"
    elif primary == _SQLITE_CANTOPEN:
        message = (
            f"cannot open archive {path}: the file or its directory is missing, "
            f"not a file, or not writable ({text})"
        )
    elif primary == _SQLITE_NOTADB:
        message = f"{path} is not a SQLite database (not a story archive)"
    elif primary == _SQLITE_FULL:
        message = f"disk full while {doing} in archive {path}"
    elif primary == _SQLITE_IOERR:
        message = f"I/O error while {doing} in archive {path} ({text})"
    else:
        message = f"archive {path}: {doing} failed ({type(exc).__name__}: {text})"
    error = ArchiveError(message, path=path)
    error.__cause__ = exc
    return error


def _rendition(item: StoryItem) -> tuple[str | None, int | None, int | None]:
    # The same choice as StoryItem.best_media_url (most pixels; the first of
    # equals), keeping the winner's dimensions, which that property drops.
    candidates: list[tuple[str, int, int]]
    if item.is_video_media:
        candidates = [(v.url, v.width, v.height) for v in item.video_versions if v.url]
    elif item.image_versions is not None:
        candidates = [(c.url, c.width, c.height) for c in item.image_versions.items if c.url]
    else:
        candidates = []
    if not candidates:
        return None, None, None
    url, width, height = max(candidates, key=lambda c: c[1] * c[2])
    return url, width or None, height or None


def _check_relative(path: str) -> str:
    if not isinstance(path, str) or not path:
        raise ValueError(f"media path must be a non-empty string, not {path!r}")
    posix = path.replace("\\", "/")
    if PurePosixPath(posix).is_absolute() or PureWindowsPath(path).drive:
        raise ValueError(f"media path must be relative to the download directory: {path!r}")
    if ".." in PurePosixPath(posix).parts:
        raise ValueError(f"media path must stay inside the download directory: {path!r}")
    return posix


_STORY_COLUMNS: Final = """
    s.story_id, s.account, s.user_id, s.username, s.taken_at, s.expiring_at, s.media_type,
    s.width, s.height, s.duration, s.media_url, s.first_seen_at, s.fetched_at,
    m.status, m.path, m.bytes, m.sha256, m.saved_at, m.updated_at, m.failures, m.reason
"""
_STORY_SELECT: Final = (
    f"SELECT {_STORY_COLUMNS} FROM stories AS s LEFT JOIN media AS m ON m.story_id = s.story_id"
)
_MEDIA_SELECT: Final = (
    "SELECT story_id, status, path, bytes, sha256, saved_at, updated_at, failures, reason "
    "FROM media"
)


def _media_from_row(row: Sequence[Any]) -> MediaRecord:
    return MediaRecord(
        story_id=row[0],
        status=row[1],
        path=row[2],
        bytes=row[3],
        sha256=row[4],
        saved_at=row[5],
        updated_at=row[6],
        failures=row[7],
        reason=row[8],
    )


def _story_from_row(row: Sequence[Any]) -> StoryRecord:
    media = None if row[13] is None else _media_from_row((row[0], *row[13:]))
    return StoryRecord(
        story_id=row[0],
        account=row[1],
        user_id=row[2],
        username=row[3],
        taken_at=row[4],
        expiring_at=row[5],
        media_type=row[6],
        width=row[7],
        height=row[8],
        duration=row[9],
        media_url=row[10],
        first_seen_at=row[11],
        fetched_at=row[12],
        media=media,
    )


_UPSERT_ACCOUNT: Final = """
INSERT INTO accounts (target, user_id, username, first_seen_at, last_seen_at)
VALUES (?1, ?2, ?3, ?4, ?4)
ON CONFLICT (target) DO UPDATE SET
    user_id = CASE WHEN excluded.last_seen_at >= accounts.last_seen_at
                   THEN coalesce(excluded.user_id, accounts.user_id)
                   ELSE coalesce(accounts.user_id, excluded.user_id) END,
    username = CASE WHEN excluded.last_seen_at >= accounts.last_seen_at
                    THEN coalesce(excluded.username, accounts.username)
                    ELSE coalesce(accounts.username, excluded.username) END,
    first_seen_at = min(accounts.first_seen_at, excluded.first_seen_at),
    last_seen_at = max(accounts.last_seen_at, excluded.last_seen_at)
"""

# "newer" = this fetch is at least as recent as the stored one: it refreshes
# the signed URL and the rendition; an older one only extends first_seen_at.
_NEWER: Final = "excluded.fetched_at >= stories.fetched_at"
_UPSERT_STORY: Final = f"""
INSERT INTO stories (
    story_id, account, user_id, username, taken_at, expiring_at, media_type,
    width, height, duration, media_url, first_seen_at, fetched_at,
    first_run_id, last_run_id, raw)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13, ?13, ?14)
ON CONFLICT (story_id) DO UPDATE SET
    user_id = CASE WHEN {_NEWER} THEN coalesce(excluded.user_id, stories.user_id)
                   ELSE stories.user_id END,
    username = CASE WHEN {_NEWER} THEN coalesce(excluded.username, stories.username)
                    ELSE stories.username END,
    taken_at = coalesce(stories.taken_at, excluded.taken_at),
    expiring_at = CASE WHEN {_NEWER} THEN coalesce(excluded.expiring_at, stories.expiring_at)
                       ELSE stories.expiring_at END,
    width = CASE WHEN {_NEWER} THEN excluded.width ELSE stories.width END,
    height = CASE WHEN {_NEWER} THEN excluded.height ELSE stories.height END,
    duration = CASE WHEN {_NEWER} THEN excluded.duration ELSE stories.duration END,
    media_url = CASE WHEN {_NEWER} THEN coalesce(excluded.media_url, stories.media_url)
                     ELSE stories.media_url END,
    raw = CASE WHEN {_NEWER} THEN coalesce(excluded.raw, stories.raw) ELSE stories.raw END,
    last_run_id = CASE WHEN {_NEWER} THEN coalesce(excluded.last_run_id, stories.last_run_id)
                       ELSE stories.last_run_id END,
    first_run_id = coalesce(stories.first_run_id, excluded.first_run_id),
    first_seen_at = min(stories.first_seen_at, excluded.first_seen_at),
    fetched_at = max(stories.fetched_at, excluded.fetched_at)
"""

_UPSERT_MEDIA: Final = """
INSERT INTO media (story_id, status, path, bytes, sha256, saved_at, updated_at, failures, reason)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?2 IN ('failed', 'expired') THEN 1 ELSE 0 END, ?8)
ON CONFLICT (story_id) DO UPDATE SET
    status = excluded.status,
    path = excluded.path,
    bytes = excluded.bytes,
    sha256 = excluded.sha256,
    saved_at = excluded.saved_at,
    updated_at = excluded.updated_at,
    reason = excluded.reason,
    failures = CASE excluded.status WHEN 'saved' THEN 0 WHEN 'pending' THEN media.failures
                                    ELSE media.failures + 1 END
"""


def _record_reel(
    conn: sqlite3.Connection,
    target: str,
    reel: Reel | None,
    fetched_at: int,
    run_id: int | None,
    keep_raw: bool,
) -> list[str]:
    owner = reel.user if reel is not None else None
    items = reel.items if reel is not None else []
    conn.execute(
        _UPSERT_ACCOUNT,
        (target, owner.id if owner else None, owner.username if owner else None, fetched_at),
    )
    if not items:
        return []
    rows = []
    for item in items:
        user: User | None = item.user or item.owner or owner
        url, width, height = _rendition(item)
        video = item.is_video_media
        rows.append(
            (
                item.id,
                target,
                user.id if user else None,
                user.username if user else None,
                item.taken_at,
                item.expiring_at,
                "video" if video else "image",
                width,
                height,
                item.video_duration if video else None,
                url,
                fetched_at,
                run_id,
                encode(item).decode() if keep_raw else None,
            )
        )
    ids = list(dict.fromkeys(item.id for item in items))
    known = _existing_ids(conn, ids)
    conn.executemany(_UPSERT_STORY, rows)
    return [story_id for story_id in ids if story_id not in known]


def _existing_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    known: set[str] = set()
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT story_id FROM stories WHERE story_id IN ({marks})"
        known.update(row[0] for row in conn.execute(sql, chunk))
    return known


# -- the archive -----------------------------------------------------------


class _Job:
    __slots__ = ("fn", "loop", "waiter", "writes")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        loop: asyncio.AbstractEventLoop,
        waiter: asyncio.Future[Any],
        writes: bool,
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.waiter = waiter
        self.writes = writes


def _deliver(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    # Runs on the event loop: one callback per batch, not one per job.
    for waiter, ok, value in outcomes:
        if waiter.done():  # cancelled while its job ran
            continue
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)


class StoryArchive:
    """A SQLite story archive: accounts, story items, media files and runs.

    Open it with ``async with StoryArchive.open(path) as archive:`` from async
    code, or ``with StoryArchive.connect(path) as archive:`` from sync code
    (export, status reports). Both create the file and its schema when
    missing and raise :class:`ArchiveError` when the file cannot be used.

    The ``async`` methods never do database work on the event loop: they
    queue a job for the archive's single writer thread and return once its
    transaction is committed. The plain methods (:meth:`stories`,
    :meth:`accounts`, :meth:`counts`, ...) read through their own connection
    and block the calling thread; call them from sync code, or through
    ``asyncio.to_thread``.

    Options: ``busy_timeout`` (seconds to wait for another program's write
    lock before :class:`ArchiveError`), ``readonly`` (no writes, no
    migrations; the archive must exist), ``keep_raw`` (store each item's JSON
    in ``stories.raw``), ``extensions`` (:class:`SchemaExtension` tables of
    later layers) and ``max_batch`` (jobs per transaction).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        readonly: bool = False,
        keep_raw: bool = False,
        extensions: Iterable[SchemaExtension] = (),
        max_batch: int = 256,
    ) -> None:
        if not math.isfinite(busy_timeout) or busy_timeout < 0:
            raise ValueError(f"busy_timeout must be a number of seconds >= 0, not {busy_timeout!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, not {max_batch!r}")
        self._path = Path(os.fspath(path))
        self._busy_timeout = float(busy_timeout)
        self._readonly = readonly
        self._keep_raw = keep_raw
        self._extensions = tuple(extensions)
        names = [ext.name for ext in self._extensions]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate schema extension names: {names}")
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = True
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()

    # -- opening and closing ------------------------------------------------

    @classmethod
    def connect(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        readonly: bool = False,
        keep_raw: bool = False,
        extensions: Iterable[SchemaExtension] = (),
        max_batch: int = 256,
    ) -> Self:
        """Open (creating or migrating) the archive at ``path``, blocking; close it after use.

        The result is a context manager (``with StoryArchive.connect(p) as a:``).
        Raises :class:`ArchiveError` when the file is locked, not writable, not
        an archive, or from a newer version of the library.
        """
        archive = cls(
            path,
            busy_timeout=busy_timeout,
            readonly=readonly,
            keep_raw=keep_raw,
            extensions=extensions,
            max_batch=max_batch,
        )
        archive._start()
        try:
            archive._ready.result()
        except BaseException:
            archive._join()
            raise
        return archive

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        readonly: bool = False,
        keep_raw: bool = False,
        extensions: Iterable[SchemaExtension] = (),
        max_batch: int = 256,
    ) -> AsyncIterator[Self]:
        """``async with StoryArchive.open(path) as archive:`` opens, yields and closes it.

        Opening (and migrating) runs on the archive's thread, so the event
        loop keeps running while another program's lock is waited for.
        Raises :class:`ArchiveError` like :meth:`connect`.
        """
        archive = cls(
            path,
            busy_timeout=busy_timeout,
            readonly=readonly,
            keep_raw=keep_raw,
            extensions=extensions,
            max_batch=max_batch,
        )
        archive._start()
        try:
            await asyncio.wrap_future(archive._ready)
        except BaseException:
            # Cancelled while opening: the thread finishes opening, sees the
            # stop request and closes the connection; wait for that off-loop.
            archive._request_stop()
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.wrap_future(archive._stopped))
            if archive._stopped.done():
                archive._join()
            raise
        try:
            yield archive
        finally:
            await archive.aclose()

    def _start(self) -> None:
        self._closed = False
        self._thread = threading.Thread(
            target=self._serve, name=f"keyapi-archive:{self._path.name}", daemon=True
        )
        self._thread.start()

    def _request_stop(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)

    def _join(self) -> None:
        thread = self._thread
        if thread is not None:
            thread.join()
        self._close_reader()

    def close(self) -> None:
        """Finish the queued jobs, close every connection and join the thread; idempotent.

        Blocks until the writer is done; from async code use :meth:`aclose`.
        """
        self._request_stop()
        self._join()

    async def aclose(self) -> None:
        """Finish the queued jobs, close every connection and join the thread; idempotent."""
        self._request_stop()
        await asyncio.wrap_future(self._stopped)
        self._join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def path(self) -> Path:
        """The archive file."""
        return self._path

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` (or :meth:`aclose`) was called."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self._readonly else "open")
        return f"<StoryArchive {str(self._path)!r} {state}>"

    # -- the writer thread ------------------------------------------------

    def _error(self, exc: sqlite3.Error, doing: str) -> ArchiveError:
        return _archive_error(str(self._path), exc, doing, self._busy_timeout)

    def _new_connection(self, *, readonly: bool) -> sqlite3.Connection:
        # Readers are ordinary connections with query_only, so that the last
        # one to close can still checkpoint and remove the -wal and -shm
        # files; mode=ro only for a file this process cannot write.
        ro_file = (
            readonly
            and self._readonly
            and not (os.access(self._path, os.W_OK) and os.access(self._path.parent, os.W_OK))
        )
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise ArchiveError(
                f"the archive needs SQLite >= 3.24 (this Python has {sqlite3.sqlite_version})",
                path=str(self._path),
            )
        if readonly and self._readonly and not self._path.is_file():
            # Never create a file when only asked to read one.
            raise ArchiveError(f"no archive at {self._path}", path=str(self._path))
        if ro_file:
            target = self._path.resolve().as_uri() + "?mode=ro"
            uri = True
        else:
            target, uri = str(self._path), False
        try:
            conn = sqlite3.connect(
                target,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=uri,
            )
        except sqlite3.Error as exc:
            raise self._error(exc, "opening") from exc
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            if readonly:
                conn.execute("PRAGMA query_only = ON")
            else:
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise self._error(exc, "opening") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._new_connection(readonly=self._readonly)
        try:
            try:
                if self._readonly:
                    self._check_schema(conn)
                else:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise ArchiveError(
                            f"archive {self._path}: SQLite refused WAL mode (journal mode "
                            f"{mode!r}; network file systems cannot host an archive)",
                            path=str(self._path),
                        )
                    self._migrate(conn)
            except sqlite3.Error as exc:
                raise self._error(exc, "opening") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        if version == 0 or app != _APPLICATION_ID:
            raise ArchiveError(f"{self._path} is not a story archive", path=str(self._path))
        if version != SCHEMA_VERSION:
            raise ArchiveError(self._version_message(version), path=str(self._path))
        for ext in self._extensions:
            have = self._component_version(conn, ext.name)
            if have != len(ext.migrations):
                raise ArchiveError(
                    f"archive {self._path} has {ext.name!r} tables at version {have}, "
                    f"this library expects {len(ext.migrations)}; open it for writing once",
                    path=str(self._path),
                )

    def _version_message(self, version: int) -> str:
        if version > SCHEMA_VERSION:
            return (
                f"archive {self._path} has schema version {version}, newer than this "
                f"library's {SCHEMA_VERSION}: upgrade keyapi_async"
            )
        return (
            f"archive {self._path} has schema version {version}, older than this library's "
            f"{SCHEMA_VERSION}: open it for writing once to upgrade it"
        )

    @staticmethod
    def _component_version(conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT version FROM schema_components WHERE name = ?", (name,))
        found = row.fetchone()
        return 0 if found is None else int(found[0])

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock even when nothing is pending:
        # that is the check that another program is not holding it.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ArchiveError(self._version_message(version), path=str(self._path))
            if version == 0:
                app = conn.execute("PRAGMA application_id").fetchone()[0]
                tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if tables or app not in (0, _APPLICATION_ID):
                    raise ArchiveError(
                        f"{self._path} is a SQLite database but not a story archive; "
                        "refusing to add tables to it",
                        path=str(self._path),
                    )
            elif conn.execute("PRAGMA application_id").fetchone()[0] != _APPLICATION_ID:
                raise ArchiveError(f"{self._path} is not a story archive", path=str(self._path))
            for step in _CORE_MIGRATIONS[version:]:
                for statement in _split_statements(step):
                    conn.execute(statement)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            for ext in self._extensions:
                have = self._component_version(conn, ext.name)
                if have > len(ext.migrations):
                    raise ArchiveError(
                        f"archive {self._path} has {ext.name!r} tables at version {have}, "
                        f"newer than this library's {len(ext.migrations)}: upgrade keyapi_async",
                        path=str(self._path),
                    )
                for migration in ext.migrations[have:]:
                    if callable(migration):
                        migration(conn)
                    else:
                        for statement in _split_statements(migration):
                            conn.execute(statement)
                if have != len(ext.migrations):
                    conn.execute(
                        "INSERT INTO schema_components (name, version) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                        (ext.name, len(ext.migrations)),
                    )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _serve(self) -> None:
        try:
            conn = self._open_writer()
        except BaseException as exc:
            with self._lock:
                self._closed = True
            self._ready.set_exception(exc)
            self._stopped.set_result(None)
            return
        self._ready.set_result(None)
        try:
            stop = False
            while not stop:
                job = self._queue.get()
                if job is None:
                    break
                batch = [job]
                while len(batch) < self._max_batch:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stop = True
                        break
                    batch.append(more)
                self._run_batch(conn, batch)
        finally:
            conn.close()
            # Only a bug could end the loop early; whatever is still queued
            # then fails instead of waiting forever.
            with self._lock:
                self._closed = True
            leftovers: list[_Job] = []
            with contextlib.suppress(queue.Empty):
                while True:
                    job = self._queue.get_nowait()
                    if job is not None:
                        leftovers.append(job)
            for job in leftovers:
                error = ArchiveError(f"archive {self._path} is closed", path=str(self._path))
                with contextlib.suppress(RuntimeError):
                    job.loop.call_soon_threadsafe(_deliver, [(job.waiter, False, error)])
            self._stopped.set_result(None)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        # A job whose awaiting task was cancelled before it started is
        # skipped. (Reading a future's state from this thread is one atomic
        # load in CPython; a cancellation that races with the start lets the
        # job run, and its result is dropped.)
        live = [job for job in batch if not job.waiter.cancelled()]
        if not live:
            return
        outcomes: list[tuple[_Job, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE" if any(job.writes for job in live) else "BEGIN")
            for job in live:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.fn(conn)
                except Exception as exc:
                    # If even the rollback fails the transaction is gone:
                    # the outer handler fails the whole batch.
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    if isinstance(exc, sqlite3.Error):
                        exc = self._error(exc, "writing")
                    outcomes.append((job, False, exc))
                else:
                    conn.execute("RELEASE job")
                    outcomes.append((job, True, value))
            conn.execute("COMMIT")
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            outcomes = []
            for job in live:
                if isinstance(exc, sqlite3.Error):
                    error = self._error(exc, "committing")
                else:
                    error = ArchiveError(str(exc), path=str(self._path))
                outcomes.append((job, False, error))
        # Results reach each loop in one callback per batch: waking the loop
        # once instead of once per job keeps its share of the work small.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, ok, value in outcomes:
            by_loop.setdefault(job.loop, []).append((job.waiter, ok, value))
        for loop, results in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_deliver, results)

    async def _call(self, fn: Callable[[sqlite3.Connection], T], *, writes: bool) -> T:
        if writes and self._readonly:
            raise ArchiveError(f"archive {self._path} is open read-only", path=str(self._path))
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise ArchiveError(f"archive {self._path} is closed", path=str(self._path))
            self._queue.put(_Job(fn, loop, waiter, writes))
        return await waiter

    async def transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread inside a transaction; return its result.

        For the tables of a :class:`SchemaExtension`. ``fn`` runs in its own
        savepoint: if it raises, its changes are rolled back and the
        exception is raised here (``sqlite3`` errors as :class:`ArchiveError`).
        It must not manage transactions itself, and should be quick: it holds
        up every other write of the archive while it runs.
        """
        return await self._call(fn, writes=True)

    # -- async writes -------------------------------------------------------

    async def record_reel(
        self,
        target: str,
        reel: Reel | None,
        fetched_at: float | None = None,
        *,
        run_id: int | None = None,
    ) -> list[str]:
        """Record one fetched reel for ``target``; return the story ids new to the archive.

        ``target`` is the normalised target (``javan``, ``id:18527``);
        ``reel`` may be empty or ``None`` (the account had no stories: the
        account is still recorded as seen). ``fetched_at`` is Unix seconds
        (default: now). A story already archived keeps its row: a newer fetch
        refreshes its media URL, expiry and rendition. New ids come in reel
        order, each once.
        """
        if not isinstance(target, str) or not target:
            raise ValueError(f"target must be a non-empty string, not {target!r}")
        fetched = _timestamp(fetched_at, "fetched_at")
        keep_raw = self._keep_raw

        def job(conn: sqlite3.Connection) -> list[str]:
            return _record_reel(conn, target, reel, fetched, run_id, keep_raw)

        return await self._call(job, writes=True)

    async def record_media(
        self,
        story_id: str,
        path: str | None,
        bytes: int | None,
        sha256: str | None,
        status: MediaStatus,
        reason: str | None = None,
        *,
        at: float | None = None,
    ) -> None:
        """Record the outcome of downloading ``story_id``'s media.

        ``status`` is ``pending`` (queued or in progress), ``saved`` (then
        ``path``, ``bytes`` and ``sha256`` are required), ``expired`` (the CDN
        said 403/410) or ``failed``; ``reason`` says why it is not saved.
        ``path`` is relative to the download directory. Any status may follow
        any other (a deleted file is downloaded again); the latest record
        wins. Raises :class:`ArchiveError` when the story is not archived.
        """
        if status not in _MEDIA_STATUSES:
            raise ValueError(f"status must be one of {sorted(_MEDIA_STATUSES)}, not {status!r}")
        rel = None if path is None else _check_relative(path)
        size = bytes
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError(f"bytes must be an int >= 0, not {size!r}")
        digest = None
        if sha256 is not None:
            if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
                raise ValueError(f"sha256 must be 64 hex digits, not {sha256!r}")
            digest = sha256.lower()
        if status == "saved" and (rel is None or size is None or digest is None):
            raise ValueError("a saved media record needs path, bytes and sha256")
        when = _timestamp(at, "at")
        saved_at = when if status == "saved" else None
        location = str(self._path)

        def job(conn: sqlite3.Connection) -> None:
            found = conn.execute("SELECT 1 FROM stories WHERE story_id = ?", (story_id,))
            if found.fetchone() is None:
                raise ArchiveError(
                    f"story {story_id!r} is not in the archive (record its reel first)",
                    path=location,
                )
            conn.execute(
                _UPSERT_MEDIA, (story_id, status, rel, size, digest, saved_at, when, reason)
            )

        await self._call(job, writes=True)

    async def start_run(
        self,
        ledger: str | os.PathLike[str] | None = None,
        *,
        kind: str = "fetch",
        started_at: float | None = None,
    ) -> int:
        """Record the start of a run (``fetch``, ``watch``, ...); return its id.

        ``ledger`` is the run's JSONL ledger (stored as an absolute path).
        Pass the id as ``run_id`` to :meth:`record_reel`, and to
        :meth:`finish_run` at the end.
        """
        if not kind or kind == "import":
            raise ValueError(f"kind must be a non-empty name other than 'import', not {kind!r}")
        started = _timestamp(started_at, "started_at")
        named = None if ledger is None else os.fspath(ledger)

        def job(conn: sqlite3.Connection) -> int:
            where = None if named is None else os.path.abspath(named)
            cursor = conn.execute(
                "INSERT INTO runs (kind, started_at, ledger) VALUES (?, ?, ?)",
                (kind, started, where),
            )
            return int(cast(int, cursor.lastrowid))

        return await self._call(job, writes=True)

    async def finish_run(
        self,
        run_id: int,
        counts: Mapping[str, int] | None = None,
        *,
        finished_at: float | None = None,
    ) -> None:
        """Record the end of run ``run_id`` with its counters (e.g. ``{"ok": 97, ...}``).

        May be called again (the last call wins), e.g. to save counters
        periodically during a long run.
        """
        finished = _timestamp(finished_at, "finished_at")
        payload = json.dumps(dict(counts or {}), sort_keys=True)
        location = str(self._path)

        def job(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE runs SET finished_at = ?, counts = ? WHERE id = ?",
                (finished, payload, run_id),
            )
            if cursor.rowcount != 1:
                raise ArchiveError(f"no run {run_id} in the archive", path=location)

        await self._call(job, writes=True)

    # -- async reads (ordered after every write submitted before them) ------

    async def media_status(self, story_id: str) -> MediaRecord | None:
        """The media record of ``story_id``, or ``None`` (never requested, or unknown story)."""

        def job(conn: sqlite3.Connection) -> MediaRecord | None:
            row = conn.execute(f"{_MEDIA_SELECT} WHERE story_id = ?", (story_id,)).fetchone()
            return None if row is None else _media_from_row(row)

        return await self._call(job, writes=False)

    async def media_records(self, story_ids: Iterable[str]) -> dict[str, MediaRecord]:
        """The media records of those of ``story_ids`` that have one, by story id."""
        ids = list(dict.fromkeys(story_ids))

        def job(conn: sqlite3.Connection) -> dict[str, MediaRecord]:
            found: dict[str, MediaRecord] = {}
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(f"{_MEDIA_SELECT} WHERE story_id IN ({marks})", chunk):
                    found[row[0]] = _media_from_row(row)
            return found

        return await self._call(job, writes=False)

    async def known_story_ids(
        self, story_ids: Iterable[str] | None = None, *, account: str | None = None
    ) -> set[str]:
        """The archived story ids: of ``story_ids`` (those known), of ``account``, or all."""
        ids = None if story_ids is None else list(dict.fromkeys(story_ids))

        def job(conn: sqlite3.Connection) -> set[str]:
            if ids is not None:
                known = _existing_ids(conn, ids)
                if account is None:
                    return known
                rows = conn.execute("SELECT story_id FROM stories WHERE account = ?", (account,))
                return known & {row[0] for row in rows}
            if account is None:
                return {row[0] for row in conn.execute("SELECT story_id FROM stories")}
            rows = conn.execute("SELECT story_id FROM stories WHERE account = ?", (account,))
            return {row[0] for row in rows}

        return await self._call(job, writes=False)

    async def pending_media(
        self,
        *,
        alive_at: float | None = None,
        include_not_requested: bool = True,
        include_failed: bool = True,
        include_expired: bool = False,
        account: str | None = None,
        limit: int | None = None,
    ) -> list[StoryRecord]:
        """Stories whose media is not saved, soonest-expiring first: what to download next.

        Always includes ``pending`` media (an interrupted download); also
        stories never requested (``include_not_requested``), ``failed`` and
        ``expired`` ones as asked. ``alive_at`` (Unix seconds, e.g. now) keeps
        only stories not yet expired then (unknown expiry counts as alive).
        """
        statuses = ["pending"]
        if include_failed:
            statuses.append("failed")
        if include_expired:
            statuses.append("expired")
        marks = ",".join("?" * len(statuses))
        sql = (
            f"{_STORY_SELECT} WHERE ((m.status IS NULL AND ?) OR m.status IN ({marks}))"
            " AND (? IS NULL OR s.expiring_at IS NULL OR s.expiring_at > ?)"
            " AND (? IS NULL OR s.account = ?)"
            " ORDER BY s.expiring_at IS NULL, s.expiring_at, s.story_id"
        )
        alive = None if alive_at is None else _timestamp(alive_at, "alive_at")
        params: list[object] = [int(include_not_requested), *statuses, alive, alive]
        params += [account, account]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))

        def job(conn: sqlite3.Connection) -> list[StoryRecord]:
            return [_story_from_row(row) for row in conn.execute(sql, params)]

        return await self._call(job, writes=False)

    # -- sync reads -----------------------------------------------------------

    def _close_reader(self) -> None:
        with self._reader_lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the archive's read-only connection, in one snapshot.

        Blocks the calling thread. For reading the tables of a
        :class:`SchemaExtension` (e.g. a status report); the connection
        refuses writes.
        """
        if self._closed:
            raise ArchiveError(f"archive {self._path} is closed", path=str(self._path))
        with self._reader_lock:
            if self._reader is None:
                self._reader = self._new_connection(readonly=True)
            conn = self._reader
            try:
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise self._error(exc, "reading") from exc

    def story(self, story_id: str) -> StoryRecord | None:
        """The archived story ``story_id`` with its media record, or ``None``."""

        def fetch(conn: sqlite3.Connection) -> StoryRecord | None:
            row = conn.execute(f"{_STORY_SELECT} WHERE s.story_id = ?", (story_id,)).fetchone()
            return None if row is None else _story_from_row(row)

        return self.read(fetch)

    def iter_stories(self, *, batch: int = 1000) -> Iterator[StoryRecord]:
        """Every archived story with its media record, by ``taken_at`` then id, streaming.

        Reads through a connection of its own in one snapshot (writes that
        commit meanwhile are not seen), ``batch`` rows at a time; the
        connection closes when the iterator is exhausted or closed.
        """
        if self._closed:
            raise ArchiveError(f"archive {self._path} is closed", path=str(self._path))
        return self._iter_stories(batch)

    def _iter_stories(self, batch: int) -> Iterator[StoryRecord]:
        conn = self._new_connection(readonly=True)
        try:
            try:
                conn.execute("BEGIN")
                cursor = conn.execute(f"{_STORY_SELECT} ORDER BY s.taken_at, s.story_id")
                while rows := cursor.fetchmany(batch):
                    yield from (_story_from_row(row) for row in rows)
                cursor.close()
            except sqlite3.Error as exc:
                raise self._error(exc, "reading") from exc
        finally:
            conn.close()

    def stories(self, *, account: str | None = None) -> list[StoryRecord]:
        """The archived stories (of ``account``, or all), by ``taken_at`` then id."""

        def fetch(conn: sqlite3.Connection) -> list[StoryRecord]:
            if account is None:
                rows = conn.execute(f"{_STORY_SELECT} ORDER BY s.taken_at, s.story_id")
            else:
                rows = conn.execute(
                    f"{_STORY_SELECT} WHERE s.account = ? ORDER BY s.taken_at, s.story_id",
                    (account,),
                )
            return [_story_from_row(row) for row in rows]

        return self.read(fetch)

    def accounts(self) -> list[AccountRecord]:
        """Every account (target) of the archive with its story counts, by target."""

        def fetch(conn: sqlite3.Connection) -> list[AccountRecord]:
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

        return self.read(fetch)

    def runs(self) -> list[RunRecord]:
        """Every recorded run, oldest first."""

        def fetch(conn: sqlite3.Connection) -> list[RunRecord]:
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

        return self.read(fetch)

    def counts(self) -> ArchiveCounts:
        """Totals over the archive: accounts, stories by type and media status, saved bytes."""

        def fetch(conn: sqlite3.Connection) -> ArchiveCounts:
            accounts = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
            runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0]
            by_type = dict(
                conn.execute("SELECT media_type, count(*) FROM stories GROUP BY media_type")
            )
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

        return self.read(fetch)


# -- ledger import ------------------------------------------------------------


class _LedgerLine(msgspec.Struct):
    # The CLI ledger's line (keyapi_async/cli/ledger.py), decoded here on
    # its own: the archive sits below the CLI and must not import it.
    target: str
    status: str
    fetched_at: str
    stories: Reel | None = None


_LEDGER_DECODER: Final = msgspec.json.Decoder(_LedgerLine)
_LEDGER_CHUNK: Final = 500
_IMPORTED: Final = frozenset({"ok", "empty"})


@dataclass(slots=True)
class _ImportState:
    handle: IO[bytes]
    path: str
    archive_path: str
    run_id: int
    keep_raw: bool
    result: LedgerImport
    line_number: int = 0
    bad_line: int | None = None
    failed: bool = False
    done: bool = False


def _parse_fetched_at(text: str) -> int:
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("fetched_at has no UTC marker")
    return math.floor(parsed.timestamp())


def _import_chunk(conn: sqlite3.Connection, state: _ImportState) -> None:
    result = state.result
    for _ in range(_LEDGER_CHUNK):
        raw = state.handle.readline()
        if not raw:
            state.done = True
            break
        state.line_number += 1
        if not raw.strip():
            continue
        if state.bad_line is not None:
            # Stop here; the lines before the bad one commit with this chunk.
            state.failed = True
            state.done = True
            return
        try:
            line = _LEDGER_DECODER.decode(raw)
            fetched = _parse_fetched_at(line.fetched_at)
        except (msgspec.DecodeError, ValueError):
            # Only the last line may be torn (cut by a crash mid-write); the
            # next readable line proves this one is not the last.
            state.bad_line = state.line_number
            continue
        result.lines += 1
        if line.status not in _IMPORTED:
            result.skipped += 1
            continue
        result.reels += 1
        if line.stories is not None:
            result.stories += len(line.stories.items)
        new = _record_reel(conn, line.target, line.stories, fetched, state.run_id, state.keep_raw)
        result.new_stories += len(new)
        result.new_story_ids += new
    if state.done:
        result.torn = state.bad_line is not None
        counts = {
            "lines": result.lines,
            "reels": result.reels,
            "stories": result.stories,
            "new_stories": result.new_stories,
            "skipped": result.skipped,
        }
        conn.execute(
            "UPDATE runs SET finished_at = ?, counts = ? WHERE id = ?",
            (int(time.time()), json.dumps(counts, sort_keys=True), state.run_id),
        )


async def import_ledger(archive: StoryArchive, ledger_path: str | os.PathLike[str]) -> LedgerImport:
    """Record every fetched reel of a ``keyapi-stories`` JSONL ledger in ``archive``.

    Idempotent: importing a ledger again (or one whose run already recorded
    into the archive) adds no rows and changes no story; lines are applied
    with their own ``fetched_at``, so the order of imports does not matter
    either. ``error`` and ``not_attempted`` lines are counted and skipped. A
    torn final line (a crash mid-write) is ignored; an unreadable line
    elsewhere raises :class:`ArchiveError` naming it, after the lines before
    it were recorded. The ledger is read and decoded on the archive's thread,
    ``500`` lines per transaction. The import is one run of kind ``import``
    (the same run row on every import of the same file).
    """
    named = os.fspath(ledger_path)
    started = int(time.time())

    def begin(conn: sqlite3.Connection, path: str) -> int:
        row = conn.execute(
            "SELECT id FROM runs WHERE kind = 'import' AND ledger = ?", (path,)
        ).fetchone()
        if row is not None:
            conn.execute("UPDATE runs SET started_at = ? WHERE id = ?", (started, row[0]))
            return int(row[0])
        cursor = conn.execute(
            "INSERT INTO runs (kind, started_at, ledger) VALUES ('import', ?, ?)", (started, path)
        )
        return int(cast(int, cursor.lastrowid))

    def open_ledger() -> tuple[str, IO[bytes]]:
        path = os.path.abspath(named)
        try:
            return path, open(path, "rb")
        except OSError as exc:
            raise ArchiveError(
                f"cannot read ledger {path}: {exc.strerror or exc}", path=str(archive.path)
            ) from None

    path, handle = await asyncio.to_thread(open_ledger)
    try:
        run_id = await archive.transact(lambda conn: begin(conn, path))
        state = _ImportState(
            handle=handle,
            path=path,
            archive_path=str(archive.path),
            run_id=run_id,
            keep_raw=archive._keep_raw,
            result=LedgerImport(run_id=run_id),
        )
        while not state.done:
            await archive.transact(lambda conn: _import_chunk(conn, state))
    finally:
        handle.close()
    if state.failed:
        raise ArchiveError(
            f"ledger {path} line {state.bad_line} is not a valid ledger line "
            "(the lines before it were imported)",
            path=str(archive.path),
        )
    return state.result
