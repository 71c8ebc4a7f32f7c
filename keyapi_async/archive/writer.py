"""The archive's writer: one thread, one connection, group commit, a savepoint per job.

Every async call of :class:`~keyapi_async.archive.StoryArchive` is a job on
this writer's queue. The thread opens the writing connection (WAL mode, the
migrations), then serves the queue: whatever piled up while a transaction
was committing goes into the next one (one ``fsync`` for many writes), each
job in its own ``SAVEPOINT`` so that a job that fails rolls back alone, and
each event loop gets its batch's results in one callback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._errors import ArchiveError
from .connection import ArchiveFile
from .schema import SchemaExtension, check_schema, migrate

__all__ = ["Writer"]

T = TypeVar("T")

_Outcome = tuple[asyncio.Future[Any], bool, Any]


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


def _deliver(outcomes: list[_Outcome]) -> None:
    # Runs on the event loop: one callback per batch, not one per job.
    for waiter, ok, value in outcomes:
        if waiter.done():  # cancelled while its job ran
            continue
        if ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)


def _send(outcomes: list[tuple[_Job, bool, Any]]) -> None:
    # Results reach each loop in one callback per batch: waking the loop
    # once instead of once per job keeps its share of the work small.
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for job, ok, value in outcomes:
        by_loop.setdefault(job.loop, []).append((job.waiter, ok, value))
    for loop, results in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_deliver, results)


class Writer:
    """The thread that owns the archive's writing connection and runs its jobs in order.

    :attr:`ready` resolves once the file is open and migrated (or with the
    :class:`ArchiveError` that prevented it), :attr:`stopped` once the thread
    has closed its connection.
    """

    def __init__(
        self, file: ArchiveFile, extensions: Sequence[SchemaExtension], max_batch: int
    ) -> None:
        self._file = file
        self._extensions = tuple(extensions)
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = True
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        """Whether a stop was requested (or the thread could not open the file)."""
        return self._closed

    def start(self) -> None:
        """Start the thread; it opens the file and resolves :attr:`ready`."""
        self._closed = False
        self._thread = threading.Thread(
            target=self._serve, name=f"keyapi-archive:{self._file.path.name}", daemon=True
        )
        self._thread.start()

    async def opened(self) -> None:
        """Wait (off the loop) for :attr:`ready`; raises what prevented opening.

        Cancelled while opening, the thread is asked to stop: it finishes
        opening, sees the request and closes the connection; that is awaited
        (shielded) before the cancellation goes on.
        """
        try:
            await asyncio.wrap_future(self.ready)
        except BaseException:
            self.request_stop()
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.wrap_future(self.stopped))
            raise

    def request_stop(self) -> None:
        """Let the thread finish the queued jobs, then stop; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)

    def join(self) -> None:
        """Wait for the thread to end (call :meth:`request_stop` first)."""
        if self._thread is not None:
            self._thread.join()

    async def call(self, fn: Callable[[sqlite3.Connection], T], *, writes: bool) -> T:
        """Run ``fn(connection)`` in the thread, in a transaction; its result once committed."""
        if writes and self._file.readonly:
            path = self._file.path
            raise ArchiveError(f"archive {path} is open read-only", path=str(path))
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closed:
                raise self._file.closed_error()
            self._queue.put(_Job(fn, loop, waiter, writes))
        return await waiter

    # -- in the thread ----------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        file = self._file
        conn = file.connect(readonly=file.readonly)
        try:
            try:
                if file.readonly:
                    check_schema(conn, str(file.path), self._extensions)
                else:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise ArchiveError(
                            f"archive {file.path}: SQLite refused WAL mode (journal mode "
                            f"{mode!r}; network file systems cannot host an archive)",
                            path=str(file.path),
                        )
                    migrate(conn, str(file.path), self._extensions)
            except sqlite3.Error as exc:
                raise file.error(exc, "opening") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _serve(self) -> None:
        try:
            conn = self._open()
        except BaseException as exc:
            with self._lock:
                self._closed = True
            self.ready.set_exception(exc)
            self.stopped.set_result(None)
            return
        self.ready.set_result(None)
        try:
            while (batch := self._next_batch()) is not None:
                self._run_batch(conn, batch)
        finally:
            conn.close()
            self._fail_leftovers()
            self.stopped.set_result(None)

    def _next_batch(self) -> list[_Job] | None:
        # After a stop request the jobs queued before it still run; the
        # None marker stays consumed, so the next call returns None.
        job = self._queue.get()
        if job is None:
            return None
        batch = [job]
        while len(batch) < self._max_batch:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                self._queue.put(None)
                break
            batch.append(more)
        return batch

    def _fail_leftovers(self) -> None:
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
        _send([(job, False, self._file.closed_error()) for job in leftovers])

    def _run_jobs(self, conn: sqlite3.Connection, live: list[_Job]) -> list[tuple[_Job, bool, Any]]:
        outcomes: list[tuple[_Job, bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE" if any(job.writes for job in live) else "BEGIN")
        for job in live:
            conn.execute("SAVEPOINT job")
            try:
                value = job.fn(conn)
            except Exception as exc:
                # If even the rollback fails the transaction is gone: the
                # caller fails the whole batch.
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                if isinstance(exc, sqlite3.Error):
                    exc = self._file.error(exc, "writing")
                outcomes.append((job, False, exc))
            else:
                conn.execute("RELEASE job")
                outcomes.append((job, True, value))
        conn.execute("COMMIT")
        return outcomes

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        # A job whose awaiting task was cancelled before it started is
        # skipped. (Reading a future's state from this thread is one atomic
        # load in CPython; a cancellation that races with the start lets the
        # job run, and its result is dropped.)
        live = [job for job in batch if not job.waiter.cancelled()]
        if not live:
            return
        try:
            outcomes = self._run_jobs(conn, live)
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            # One exception object per waiter: raising it sets its traceback.
            outcomes = [(job, False, self._batch_error(exc)) for job in live]
        _send(outcomes)

    def _batch_error(self, exc: Exception) -> ArchiveError:
        if isinstance(exc, sqlite3.Error):
            return self._file.error(exc, "committing")
        return ArchiveError(str(exc), path=str(self._file.path))
