"""Importing a ``keyapi-stories`` ledger into the archive, on top of the one ledger-line decoder.

The ledger is read and decoded on the archive's writer thread, a chunk of
lines per transaction, so the event loop does no work and memory holds one
chunk, whatever the ledger's size.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Protocol, TypeVar, cast

import msgspec

from .._errors import ArchiveError
from ..models import Reel
from .ledger_line import DONE_STATUSES, decode_line, fetched_at_seconds
from .writes import record_reels

__all__ = ["LedgerImport", "import_ledger"]

_LEDGER_CHUNK: Final = 2000
# A ledger line is kilobytes (a reel of items): with the default 8 KiB
# buffer most lines span a refill, and reading was a tenth of an import.
_READ_BUFFER: Final = 1 << 20

T = TypeVar("T")


class _Archive(Protocol):
    # What an import needs of StoryArchive (which imports this module).
    @property
    def path(self) -> Path: ...

    @property
    def keep_raw(self) -> bool: ...

    async def transact(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


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
    """The story ids new to the archive, in ledger order (empty with ``new_ids=False``)."""


@dataclass(slots=True)
class _ImportState:
    handle: IO[bytes]
    run_id: int
    keep_raw: bool
    keep_ids: bool
    result: LedgerImport
    line_number: int = 0
    bad_line: int | None = None
    failed: bool = False
    done: bool = False


def _read_chunk(state: _ImportState) -> list[tuple[str, Reel | None, int]]:
    fetches: list[tuple[str, Reel | None, int]] = []
    result = state.result
    for raw in state.handle:
        state.line_number += 1
        if not raw.strip():
            continue
        if state.bad_line is not None:
            # Stop here; the lines before the bad one commit with this chunk.
            state.failed = state.done = True
            return fetches
        try:
            line = decode_line(raw)
            fetched = fetched_at_seconds(line.fetched_at)
        except (msgspec.DecodeError, ValueError):
            # Only the last line may be torn (cut by a crash mid-write); the
            # next readable line proves this one is not the last.
            state.bad_line = state.line_number
            continue
        result.lines += 1
        if line.status not in DONE_STATUSES:
            result.skipped += 1
            continue
        result.reels += 1
        if line.stories is not None:
            result.stories += len(line.stories.items)
        fetches.append((line.target, line.stories, fetched))
        if len(fetches) >= _LEDGER_CHUNK:
            return fetches
    state.done = True
    return fetches


def _import_chunk(conn: sqlite3.Connection, state: _ImportState) -> None:
    result = state.result
    for new in record_reels(conn, _read_chunk(state), state.run_id, state.keep_raw):
        result.new_stories += len(new)
        if state.keep_ids:
            result.new_story_ids += new
    if state.done:
        result.torn = state.bad_line is not None and not state.failed
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


def _begin(conn: sqlite3.Connection, path: str, started: int) -> int:
    row = conn.execute("SELECT id FROM runs WHERE kind = 'import' AND ledger = ?", (path,))
    found = row.fetchone()
    if found is not None:
        conn.execute("UPDATE runs SET started_at = ? WHERE id = ?", (started, found[0]))
        return int(found[0])
    cursor = conn.execute(
        "INSERT INTO runs (kind, started_at, ledger) VALUES ('import', ?, ?)", (started, path)
    )
    return int(cast(int, cursor.lastrowid))


def _open_ledger(named: str, archive_path: str) -> tuple[str, IO[bytes]]:
    path = os.path.abspath(named)
    try:
        return path, open(path, "rb", buffering=_READ_BUFFER)
    except OSError as exc:
        raise ArchiveError(
            f"cannot read ledger {path}: {exc.strerror or exc}", path=archive_path
        ) from None


async def import_ledger(
    archive: _Archive, ledger_path: str | os.PathLike[str], *, new_ids: bool = True
) -> LedgerImport:
    """Record every fetched reel of a ``keyapi-stories`` JSONL ledger in ``archive``.

    Idempotent: importing a ledger again (or one whose run already recorded
    into the archive) adds no rows and changes no story; lines are applied
    with their own ``fetched_at``, so the order of imports does not matter
    either. ``error`` and ``not_attempted`` lines are counted and skipped. A
    torn final line (a crash mid-write) is ignored; an unreadable line
    elsewhere raises :class:`ArchiveError` naming it, after the lines before
    it were recorded. The ledger is read and decoded on the archive's thread,
    ``2000`` fetched lines per transaction. The import is one run of kind
    ``import`` (the same run row on every import of the same file).
    ``new_ids=False`` leaves :attr:`LedgerImport.new_story_ids` empty (the
    counts stay), so that memory does not grow with the ledger at all.
    """
    started = int(time.time())
    where = str(archive.path)
    path, handle = await asyncio.to_thread(_open_ledger, os.fspath(ledger_path), where)
    try:
        run_id = await archive.transact(lambda conn: _begin(conn, path, started))
        state = _ImportState(
            handle=handle,
            run_id=run_id,
            keep_raw=archive.keep_raw,
            keep_ids=new_ids,
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
            path=where,
        )
    return state.result
