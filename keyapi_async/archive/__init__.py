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
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Self, TypedDict, TypeVar, Unpack

from .._errors import ArchiveError, ConfigurationError
from ..engine.validate import check_count, check_number
from ..models import Reel
from . import queries, writes
from .connection import ArchiveFile
from .ledger_import import LedgerImport, import_ledger
from .records import (
    AccountRecord,
    ArchiveCounts,
    MediaRecord,
    MediaStatus,
    RunRecord,
    StoryRecord,
)
from .schema import SCHEMA_VERSION, SchemaExtension, check_extensions
from .writer import Writer

__all__ = [
    "SCHEMA_VERSION",
    "AccountRecord",
    "ArchiveCounts",
    "ArchiveError",
    "ArchiveOptions",
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


class ArchiveOptions(TypedDict, total=False):
    """The keyword options of :meth:`StoryArchive.open` and :meth:`StoryArchive.connect`."""

    busy_timeout: float
    """Seconds to wait for another program's write lock (default 5)."""
    readonly: bool
    """No writes, no migrations; the archive must exist (default False)."""
    keep_raw: bool
    """Store each item's JSON in ``stories.raw`` (default False)."""
    extensions: Iterable[SchemaExtension]
    """Tables of later layers (default none)."""
    max_batch: int
    """Jobs per transaction (default 256)."""


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
    later layers) and ``max_batch`` (jobs per transaction). Bad options raise
    :class:`~keyapi_async.ConfigurationError`.
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
        timeout = check_number(busy_timeout, "busy_timeout")
        batch = check_count(max_batch, "max_batch", minimum=1)
        self._file = ArchiveFile(Path(os.fspath(path)), timeout, readonly)
        self._keep_raw = keep_raw
        self._writer = Writer(self._file, check_extensions(extensions), batch)
        self._reader = queries.Reader(self._file)

    # -- opening and closing ------------------------------------------------

    @classmethod
    def connect(cls, path: str | os.PathLike[str], **options: Unpack[ArchiveOptions]) -> Self:
        """Open (creating or migrating) the archive at ``path``, blocking; close it after use.

        The result is a context manager (``with StoryArchive.connect(p) as a:``).
        Raises :class:`ArchiveError` when the file is locked, not writable, not
        an archive, or from a newer version of the library.
        """
        archive = cls(path, **options)
        archive._writer.start()
        try:
            archive._writer.ready.result()
        except BaseException:
            archive._join()
            raise
        return archive

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, path: str | os.PathLike[str], **options: Unpack[ArchiveOptions]
    ) -> AsyncIterator[Self]:
        """``async with StoryArchive.open(path) as archive:`` opens, yields and closes it.

        Opening (and migrating) runs on the archive's thread, so the event
        loop keeps running while another program's lock is waited for.
        Raises :class:`ArchiveError` like :meth:`connect`.
        """
        archive = cls(path, **options)
        archive._writer.start()
        try:
            await archive._writer.opened()
        except BaseException:
            if archive._writer.stopped.done():
                archive._join()
            raise
        try:
            yield archive
        finally:
            await archive.aclose()

    def _join(self) -> None:
        self._writer.join()
        self._reader.close()

    def close(self) -> None:
        """Finish the queued jobs, close every connection and join the thread; idempotent.

        Blocks until the writer is done; from async code use :meth:`aclose`.
        """
        self._writer.request_stop()
        self._join()

    async def aclose(self) -> None:
        """Finish the queued jobs, close every connection and join the thread; idempotent."""
        self._writer.request_stop()
        await asyncio.wrap_future(self._writer.stopped)
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
        return self._file.path

    @property
    def keep_raw(self) -> bool:
        """Whether each item's JSON is stored in ``stories.raw`` (the ``keep_raw`` option)."""
        return self._keep_raw

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` (or :meth:`aclose`) was called."""
        return self._writer.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("read-only" if self._file.readonly else "open")
        return f"<StoryArchive {str(self.path)!r} {state}>"

    # -- async calls: jobs of the writer thread -------------------------------

    async def transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the writer thread inside a transaction; return its result.

        For the tables of a :class:`SchemaExtension`. ``fn`` runs in its own
        savepoint: if it raises, its changes are rolled back and the
        exception is raised here (``sqlite3`` errors as :class:`ArchiveError`).
        It must not manage transactions itself, and should be quick: it holds
        up every other write of the archive while it runs.
        """
        return await self._writer.call(fn, writes=True)

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
        fetch = (writes.check_target(target), reel, writes.timestamp(fetched_at, "fetched_at"))
        keep_raw = self._keep_raw

        def job(conn: sqlite3.Connection) -> list[str]:
            return writes.record_reels(conn, [fetch], run_id, keep_raw)[0]

        return await self._writer.call(job, writes=True)

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
        write = writes.check_media(story_id, status, path, bytes, sha256, reason, at)
        location = str(self.path)
        await self._writer.call(
            lambda conn: writes.record_media(conn, write, location), writes=True
        )

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
            raise ConfigurationError(
                f"kind must be a non-empty name other than 'import', got {kind!r}"
            )
        started = writes.timestamp(started_at, "started_at")
        named = None if ledger is None else os.fspath(ledger)
        return await self._writer.call(
            lambda conn: writes.insert_run(conn, kind, started, named), writes=True
        )

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
        finished = writes.timestamp(finished_at, "finished_at")
        values, location = dict(counts or {}), str(self.path)
        await self._writer.call(
            lambda conn: writes.finish_run(conn, run_id, finished, values, location), writes=True
        )

    # -- async reads (ordered after every write submitted before them) ------

    async def media_status(self, story_id: str) -> MediaRecord | None:
        """The media record of ``story_id``, or ``None`` (never requested, or unknown story)."""
        return await self._writer.call(
            lambda conn: queries.media_record(conn, story_id), writes=False
        )

    async def media_records(self, story_ids: Iterable[str]) -> dict[str, MediaRecord]:
        """The media records of those of ``story_ids`` that have one, by story id."""
        ids = list(dict.fromkeys(story_ids))
        return await self._writer.call(lambda conn: queries.media_records(conn, ids), writes=False)

    async def known_story_ids(
        self, story_ids: Iterable[str] | None = None, *, account: str | None = None
    ) -> set[str]:
        """The archived story ids: of ``story_ids`` (those known), of ``account``, or all."""
        ids = None if story_ids is None else list(dict.fromkeys(story_ids))
        return await self._writer.call(
            lambda conn: queries.known_story_ids(conn, ids, account), writes=False
        )

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
        statuses += ["failed"] if include_failed else []
        statuses += ["expired"] if include_expired else []
        query = queries.PendingQuery(
            statuses,
            include_not_requested,
            None if alive_at is None else writes.timestamp(alive_at, "alive_at"),
            account,
            None if limit is None else check_count(limit, "limit"),
        )
        return await self._writer.call(query, writes=False)

    # -- sync reads: the reader's own connections ------------------------------

    def _reads(self) -> queries.Reader:
        if self.closed:
            raise self._file.closed_error()
        return self._reader

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on the archive's read-only connection, in one snapshot.

        Blocks the calling thread. For reading the tables of a
        :class:`SchemaExtension` (e.g. a status report); the connection
        refuses writes.
        """
        return self._reads().read(fn)

    def snapshot(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """``with archive.snapshot() as conn:`` a read-only connection of its own, in one snapshot.

        For long reads (an export) that should hold up neither the writer nor
        :meth:`read`; the connection closes on exit. ``sqlite3`` errors
        inside the block are raised as :class:`ArchiveError`.
        """
        return self._reads().snapshot()

    def story(self, story_id: str) -> StoryRecord | None:
        """The archived story ``story_id`` with its media record, or ``None``."""
        return self.read(lambda conn: queries.story(conn, story_id))

    def iter_stories(self, *, batch: int = 1000) -> Iterator[StoryRecord]:
        """Every archived story with its media record, by ``taken_at`` then id, streaming.

        Reads through a connection of its own in one snapshot (writes that
        commit meanwhile are not seen), ``batch`` rows at a time; the
        connection closes when the iterator is exhausted or closed.
        """
        return self._reads().iter_stories(check_count(batch, "batch", minimum=1))

    def stories(self, *, account: str | None = None) -> list[StoryRecord]:
        """The archived stories (of ``account``, or all), by ``taken_at`` then id."""
        return self.read(lambda conn: queries.stories(conn, account))

    def accounts(self) -> list[AccountRecord]:
        """Every account (target) of the archive with its story counts, by target."""
        return self.read(queries.accounts)

    def runs(self) -> list[RunRecord]:
        """Every recorded run, oldest first."""
        return self.read(queries.runs)

    def counts(self) -> ArchiveCounts:
        """Totals over the archive: accounts, stories by type and media status, saved bytes."""
        return self.read(queries.counts)
