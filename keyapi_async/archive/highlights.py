"""Highlights in the archive: their tables, and saving only what changed.

The tables are a :class:`~keyapi_async.archive.SchemaExtension` named
``highlights`` (pass :data:`HIGHLIGHTS_SCHEMA` to ``StoryArchive.open``; an
older archive gains them on open, a newer one is refused as for the core
schema):

* ``highlights``: one row per highlight id (bare digits): the account, title,
  cover, counts and created time as the last tray said, first and last seen,
  and the counts of the last *complete* fetch of its items;
* ``highlight_items``: membership, ``(highlight_id, story_id, position)``. The
  story itself is the archive's ``stories`` row: a story captured while
  active and now in a highlight is one row (and one file).

"Only what changed": a highlight whose ``latest_reel_media`` and
``media_count`` in the tray equal those of its last complete fetch is not
fetched again (:func:`save_highlights`), so a second run over N accounts with
nothing new costs N tray requests. The fetched counts are written only after
the items are recorded: a run killed in between fetches that highlight again,
it never skips one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from .._client import KeyAPIClient
from .._errors import KeyAPIError
from ..engine.endpoints import HIGHLIGHT_STORIES, USER_HIGHLIGHTS
from ..engine.fetch import STOP_ERRORS
from ..engine.targets import TargetLike
from ..media.outcome import MediaOutcome, SavedMedia
from ..models import Highlight, HighlightStories, HighlightTray, Reel
from . import SchemaExtension, StoryArchive
from .records import in_chunks

__all__ = [
    "HIGHLIGHTS_SCHEMA",
    "HighlightDownloads",
    "HighlightsRun",
    "changed_highlights",
    "has_highlight_tables",
    "highlights_of",
    "mark_fetched",
    "record_cover",
    "record_highlight_stories",
    "record_tray",
    "save_highlights",
    "saved_covers",
]

HIGHLIGHTS_SCHEMA: Final = SchemaExtension(
    "highlights",
    (
        """
        CREATE TABLE highlights (
            id                        TEXT PRIMARY KEY,
            account                   TEXT NOT NULL,
            title                     TEXT,
            cover_url                 TEXT,
            cover_width               INTEGER,
            cover_height              INTEGER,
            created_at                INTEGER,
            latest_reel_media         INTEGER,
            media_count               INTEGER,
            fetched_latest_reel_media INTEGER,
            fetched_media_count       INTEGER,
            fetched_at                INTEGER,
            first_seen_at             INTEGER NOT NULL,
            last_seen_at              INTEGER NOT NULL
        );
        CREATE INDEX highlights_account ON highlights (account);
        CREATE TABLE highlight_items (
            highlight_id TEXT NOT NULL,
            story_id     TEXT NOT NULL,
            position     INTEGER NOT NULL,
            PRIMARY KEY (highlight_id, story_id)
        );
        CREATE INDEX highlight_items_story ON highlight_items (story_id)
        """,
        # 2: the cover's file, once saved (covers are not stories: no media row).
        """
        ALTER TABLE highlights ADD COLUMN cover_path TEXT;
        ALTER TABLE highlights ADD COLUMN cover_bytes INTEGER;
        ALTER TABLE highlights ADD COLUMN cover_sha256 TEXT
        """,
    ),
)

_UPSERT: Final = """
INSERT INTO highlights (id, account, title, cover_url, cover_width, cover_height, created_at,
                        latest_reel_media, media_count, first_seen_at, last_seen_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    account = excluded.account,
    title = excluded.title,
    cover_url = excluded.cover_url,
    cover_width = excluded.cover_width,
    cover_height = excluded.cover_height,
    created_at = excluded.created_at,
    latest_reel_media = excluded.latest_reel_media,
    media_count = excluded.media_count,
    first_seen_at = MIN(highlights.first_seen_at, excluded.first_seen_at),
    last_seen_at = MAX(highlights.last_seen_at, excluded.last_seen_at)
"""


def changed_highlights(
    tray: HighlightTray, fetched: dict[str, tuple[int | None, int | None]]
) -> list[Highlight]:
    """The highlights of ``tray`` to fetch: never fetched in full, or with other counts now.

    ``fetched`` maps a highlight id to the ``(latest_reel_media,
    media_count)`` of its last complete fetch. A highlight whose tray gives
    neither count is always fetched (nothing says it is unchanged).
    """
    wanted = []
    for highlight in tray.items:
        counts = (highlight.latest_reel_media, highlight.media_count)
        if counts == (None, None) or fetched.get(highlight.id) != counts:
            wanted.append(highlight)
    return wanted


def _fetched_counts(
    conn: sqlite3.Connection, ids: list[str]
) -> dict[str, tuple[int | None, int | None]]:
    found: dict[str, tuple[int | None, int | None]] = {}
    for marks, chunk in in_chunks(ids):
        rows = conn.execute(
            "SELECT id, fetched_latest_reel_media, fetched_media_count FROM highlights "
            f"WHERE fetched_at IS NOT NULL AND id IN ({marks})",
            chunk,
        )
        found.update({row[0]: (row[1], row[2]) for row in rows})
    return found


async def record_tray(
    archive: StoryArchive, account: str, tray: HighlightTray, fetched_at: float | None = None
) -> list[Highlight]:
    """Record ``account``'s tray; return its highlights that changed since their last fetch."""
    seen = round(time.time() if fetched_at is None else fetched_at)

    def job(conn: sqlite3.Connection) -> list[Highlight]:
        before = _fetched_counts(conn, [h.id for h in tray.items])
        conn.executemany(
            _UPSERT,
            [
                (
                    h.id,
                    account,
                    h.title,
                    None if h.cover is None else h.cover.url,
                    None if h.cover is None else h.cover.width,
                    None if h.cover is None else h.cover.height,
                    h.created_at,
                    h.latest_reel_media,
                    h.media_count,
                    seen,
                    seen,
                )
                for h in tray.items
            ],
        )
        return changed_highlights(tray, before)

    return await archive.transact(job)


async def record_highlight_stories(
    archive: StoryArchive,
    account: str,
    highlight: Highlight,
    stories: HighlightStories,
    fetched_at: float | None = None,
    *,
    run_id: int | None = None,
    complete: bool = True,
) -> list[str]:
    """Record one highlight's items (as stories of ``account``) and its membership.

    Returns the story ids new to the archive. The highlight is marked as
    fetched with the tray's counts last (:func:`mark_fetched`), so that an
    interrupted save is redone; ``complete=False`` leaves that to the caller
    (the downloads of its items are not over yet).
    """
    reel = Reel(count=len(stories.items), items=stories.items)
    new = await archive.record_reel(account, reel, fetched_at, run_id=run_id)

    def job(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM highlight_items WHERE highlight_id = ?", (highlight.id,))
        conn.executemany(
            "INSERT OR IGNORE INTO highlight_items (highlight_id, story_id, position) "
            "VALUES (?, ?, ?)",
            [(highlight.id, item.id, n) for n, item in enumerate(stories.items)],
        )

    await archive.transact(job)
    if complete:
        await mark_fetched(archive, highlight, fetched_at)
    return new


async def mark_fetched(
    archive: StoryArchive, highlight: Highlight, fetched_at: float | None = None
) -> None:
    """Record that ``highlight`` is saved as the tray counted it: unchanged, it is not fetched again."""  # noqa: E501
    when = round(time.time() if fetched_at is None else fetched_at)

    def job(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE highlights SET fetched_latest_reel_media = ?, fetched_media_count = ?, "
            "fetched_at = ? WHERE id = ?",
            (highlight.latest_reel_media, highlight.media_count, when, highlight.id),
        )

    await archive.transact(job)


async def saved_covers(archive: StoryArchive, ids: Iterable[str]) -> dict[str, SavedMedia]:
    """The recorded cover files of the highlights ``ids`` (those saved), by highlight id."""
    wanted = list(dict.fromkeys(ids))

    def job(conn: sqlite3.Connection) -> dict[str, SavedMedia]:
        found: dict[str, SavedMedia] = {}
        for marks, chunk in in_chunks(wanted):
            rows = conn.execute(
                "SELECT id, cover_path, cover_bytes, cover_sha256 FROM highlights "
                f"WHERE cover_path IS NOT NULL AND id IN ({marks})",
                chunk,
            )
            found.update({r[0]: SavedMedia(r[1], r[2], r[3]) for r in rows})
        return found

    return await archive.transact(job)


async def record_cover(archive: StoryArchive, highlight_id: str, outcome: MediaOutcome) -> None:
    """Record the saved cover file of ``highlight_id`` (an outcome without a file changes nothing)."""  # noqa: E501
    if not (outcome.ok and outcome.relative_path and outcome.sha256):
        return
    size = outcome.size if outcome.size is not None else outcome.bytes

    def job(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE highlights SET cover_path = ?, cover_bytes = ?, cover_sha256 = ? WHERE id = ?",
            (outcome.relative_path, size, outcome.sha256, highlight_id),
        )

    await archive.transact(job)


def has_highlight_tables(conn: sqlite3.Connection) -> bool:
    """Whether the archive has the highlights tables (once opened with the extension)."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'highlight_items'"
    )
    return found.fetchone() is not None


async def highlights_of(archive: StoryArchive, story_ids: Iterable[str]) -> dict[str, Highlight]:
    """The highlight each of ``story_ids`` is filed under, by story id (stories in none left out).

    That is the highlight whose items first listed the story: the one whose
    downloads claimed it in the run that recorded it (a story in two
    highlights is one file). Only its id and title are filled in, what the
    highlight layout names files by. Empty for an archive without the
    highlights tables.
    """
    wanted = list(dict.fromkeys(story_ids))

    def job(conn: sqlite3.Connection) -> dict[str, Highlight]:
        found: dict[str, Highlight] = {}
        if not wanted or not has_highlight_tables(conn):
            return found
        for marks, chunk in in_chunks(wanted):
            rows = conn.execute(
                "SELECT i.story_id, h.id, h.title FROM highlight_items i "
                f"JOIN highlights h ON h.id = i.highlight_id WHERE i.story_id IN ({marks}) "
                "ORDER BY i.rowid",
                chunk,
            )
            for story_id, hid, title in rows:
                found.setdefault(story_id, Highlight(id=hid, title=title))
        return found

    return await archive.transact(job)


class HighlightDownloads(Protocol):
    """What :func:`save_highlights` hands the trays and highlights to when downloading."""

    @property
    def stopped(self) -> str | None:
        """Why no download starts any more (then the batches stop too), or None."""
        ...

    async def covers(self, account: str, highlights: Sequence[Highlight]) -> None:
        """Start the cover downloads of one recorded tray."""
        ...

    async def items(self, account: str, highlight: Highlight, stories: HighlightStories) -> None:
        """Start the item downloads of one recorded highlight; mark it fetched when done."""
        ...

    async def drain(self) -> None:
        """Wait for every download to end."""
        ...

    async def cancel(self) -> None:
        """Cancel what still runs."""
        ...


@dataclass(slots=True)
class HighlightsRun:
    """What one :func:`save_highlights` did."""

    trays: int = 0
    """Trays fetched and recorded."""
    highlights_fetched: int = 0
    """Highlights whose items were fetched (the changed ones)."""
    unchanged: int = 0
    """Highlights skipped because their counts equal the last fetch."""
    new_stories: list[str] = field(default_factory=list)
    """Story ids new to the archive, in the order they were recorded."""
    errors: dict[str, KeyAPIError] = field(default_factory=dict)
    """Target (account or ``highlight:ID``) -> the typed error it failed (or was not attempted) with."""  # noqa: E501
    fatal: KeyAPIError | None = None
    """The first 401, 402 or 403: the key cannot go on (nothing more was sent)."""
    deferred: int = 0
    """Changed highlights left for a later run by ``max_highlights``."""
    phase: str = "starting"
    """Where the run is: ``trays``, ``highlights``, ``downloading``, ``done``."""
    trays_done: int = 0
    """Tray results taken so far (failed ones included)."""
    to_fetch: int = 0
    """Changed highlights to fetch (known once the trays are in)."""
    stopped: str | None = None
    """Why :meth:`stop` ended the run early (e.g. ``"interrupted"``), or None."""
    _stop_sending: Callable[[str], None] | None = field(default=None, repr=False)

    def stop(self, reason: str) -> None:
        """Send no new request; what is in flight finishes and is recorded.

        The rest are not attempted, no next phase starts and downloads are not
        waited for (they stay pending). Safe to call at any time from the event
        loop's thread (a signal handler's callback).
        """
        if self.stopped is None:
            self.stopped = reason
        if self._stop_sending is not None:
            self._stop_sending(reason)

    def _sending(self, stop_batch: Callable[[str], None]) -> None:
        """The running batch's ``stop``: the one :meth:`stop` calls from now on."""
        self._stop_sending = stop_batch
        if self.stopped is not None:
            stop_batch(self.stopped)

    def _failed(self, target: str, error: KeyAPIError) -> None:
        self.errors[target] = error
        if self.fatal is None and isinstance(error, STOP_ERRORS):
            self.fatal = error


async def save_highlights(
    client: KeyAPIClient,
    archive: StoryArchive,
    accounts: Iterable[TargetLike],
    *,
    run_id: int | None = None,
    max_highlights: int | None = None,
    media: HighlightDownloads | None = None,
    run: HighlightsRun | None = None,
) -> HighlightsRun:
    """Fetch the trays of ``accounts`` and the items of every changed highlight; record all.

    Every account yields one tray request; only highlights whose counts
    changed since their last complete fetch cost a highlight-stories request.
    Both batches go through the client's one gate and credit budget.
    ``max_highlights`` caps the highlight-stories requests (a watch's daily
    budget): the changed highlights beyond it stay changed for a later run.

    With ``media`` (a :class:`HighlightDownloads`, e.g.
    :class:`~keyapi_async.highlight_media.HighlightMedia`)
    the covers and items are downloaded too, beside the batches, and a
    highlight counts as fetched only once its files are on disk; the call
    returns when every download has ended. A full disk or a failing archive
    stops both batches (what is left is not attempted). ``run`` is the
    record to fill (pass one to watch its counters while this runs).
    """
    run = HighlightsRun() if run is None else run
    owners: dict[str, tuple[str, Highlight]] = {}
    try:
        run.phase = "trays"
        async with client.fetch_many(accounts, endpoint=USER_HIGHLIGHTS) as trays:
            run._sending(trays.stop)
            async for result in trays:
                run.trays_done += 1
                if result.error is not None:
                    run._failed(result.target, result.error)
                    continue
                tray = result.unwrap()
                run.trays += 1
                changed = await record_tray(archive, result.target, tray)
                run.unchanged += len(tray.items) - len(changed)
                owners.update({h.reel_id: (result.target, h) for h in changed})
                if media is not None:
                    await media.covers(result.target, tray.items)
                    if media.stopped is not None:
                        trays.stop(media.stopped)
        if max_highlights is not None and len(owners) > max_highlights:
            run.deferred = len(owners) - max_highlights
            owners = dict(list(owners.items())[:max_highlights])
        run.phase = "highlights"
        run.to_fetch = len(owners)
        stopped = run.fatal is not None or (media is not None and media.stopped is not None)
        if owners and not stopped and run.stopped is None:
            await _fetch_highlights(client, archive, owners, run, run_id, media)
        if media is not None and run.stopped is None:
            run.phase = "downloading"
            await media.drain()
    finally:
        if media is not None:
            await media.cancel()
    run.phase = "done"
    return run


async def _fetch_highlights(
    client: KeyAPIClient,
    archive: StoryArchive,
    owners: dict[str, tuple[str, Highlight]],
    run: HighlightsRun,
    run_id: int | None,
    media: HighlightDownloads | None,
) -> None:
    async with client.fetch_many(list(owners), endpoint=HIGHLIGHT_STORIES) as batch:
        run._sending(batch.stop)
        async for got in batch:
            if got.error is not None:
                run._failed(got.target, got.error)
                continue
            account, highlight = owners[got.target]
            stories = got.unwrap()
            run.highlights_fetched += 1
            run.new_stories += await record_highlight_stories(
                archive, account, highlight, stories, run_id=run_id, complete=media is None
            )
            if media is not None:
                await media.items(account, highlight, stories)
                if media.stopped is not None:
                    batch.stop(media.stopped)
