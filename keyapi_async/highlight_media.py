"""Highlight media: each highlight's items and cover saved below DIR, recorded in the archive.

:class:`HighlightMedia` is what :func:`~keyapi_async.archive.highlights.save_highlights`
hands the trays and highlights it records to when downloads are asked for
(``media=``). It uses the one :class:`~keyapi_async.media.MediaDownloader`
(its ``highlight_template``: ``{username}/highlights/{highlight_title}/...``
by default) through the one capture pipeline,
:class:`~keyapi_async.capture.MediaRecorder` (claimed ``pending`` before the
first byte, skipped when saved, every outcome recorded), so:

* a story is one file. Its archive record is looked up before its download:
  a story already saved (while active, by the stories layout, or from another
  highlight) is skipped while its file has the recorded size, and a story in
  two highlights of one run is downloaded once;
* a cover is saved once per highlight (its file is recorded in the
  ``highlights`` row; a later tray's cover is skipped while that file is
  there), filed like an item of its highlight whose story id is
  ``cover_<id>``;
* a highlight is marked fetched only once the downloads of all its items
  ended with the file on disk (or were given up after :data:`~keyapi_async.capture.MAX_FAILURES`
  failures in a row): one
  left unfinished (an expired link, a CDN failure, a full disk, a killed run)
  is fetched again by the next run, for fresh media URLs;
* downloads run beside the API batch as tasks of their own, limited by the
  downloader's concurrency; a full disk stops new downloads
  (:attr:`HighlightMedia.stopped`), the rest stays ``pending``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from ._errors import MediaDiskFullError
from .archive import StoryArchive
from .archive.highlights import mark_fetched, record_cover, saved_covers
from .capture import MAX_FAILURES, DownloadTasks, MediaRecorder
from .media import MediaDownloader, MediaOutcome, MediaStatus, SavedMedia
from .models import Highlight, HighlightStories, StoryItem, User

__all__ = ["HighlightMedia", "HighlightMediaCounts"]

#: Failed (or expired) records in a row after which a file no longer holds its
#: highlight back: a transient CDN problem heals, a URL off the allowlist never will.
#: The same rule as the stories capture's retries of failed files.

Settled: TypeAlias = Literal["saved", "skipped", "expired", "failed"]

_log = logging.getLogger("keyapi_async")
_ON_DISK: frozenset[Settled] = frozenset({"saved", "skipped"})


@dataclass(frozen=True, slots=True)
class HighlightMediaCounts:
    """What :class:`HighlightMedia` did so far: item files and cover files."""

    saved: int = 0
    """Item files downloaded in this run."""
    skipped: int = 0
    """Item files already saved (while active, or by an earlier run): nothing downloaded."""
    expired: int = 0
    """Items whose signed URL the CDN refused (403/410)."""
    failed: int = 0
    """Items given up in this run, with a reason."""
    pending: int = 0
    """Items queued or in progress (at the end: left for the next run)."""
    bytes: int = 0
    """Bytes received from the CDN in this run (items and covers)."""
    covers_saved: int = 0
    """Cover files downloaded in this run."""
    covers_skipped: int = 0
    """Covers already saved: nothing downloaded."""
    covers_failed: int = 0
    """Covers not saved (tried again with the next tray)."""
    reasons: tuple[tuple[str, int], ...] = ()
    """The most frequent reasons of failed items and covers."""


class HighlightMedia:
    """Downloads of highlight items and covers for one run; see the module docstring.

    Give it to :func:`~keyapi_async.archive.highlights.save_highlights`
    (``media=``), which calls :meth:`covers` for every tray, :meth:`items` for
    every fetched highlight and :meth:`drain` at the end. The archive must be
    open with :data:`~keyapi_async.archive.highlights.HIGHLIGHTS_SCHEMA`, the
    downloader started.
    """

    def __init__(self, archive: StoryArchive, downloader: MediaDownloader) -> None:
        self.archive = archive
        self.downloader = downloader
        self._recorder = MediaRecorder(archive, downloader)
        self._downloads = DownloadTasks(self._halted)
        # One download per story per run, shared by every highlight holding it.
        self._items: dict[str, asyncio.Task[Settled | None]] = {}
        self._status: collections.Counter[str] = collections.Counter()
        self._reasons: collections.Counter[str] = collections.Counter()
        self._received = 0

    def counts(self) -> HighlightMediaCounts:
        """The counters so far (for progress and the summary)."""
        status = self._status
        settled = sum(status[k] for k in ("saved", "skipped", "expired", "failed"))
        return HighlightMediaCounts(
            saved=status["saved"],
            skipped=status["skipped"],
            expired=status["expired"],
            failed=status["failed"],
            pending=len(self._items) - settled,
            bytes=self._received,
            covers_saved=status["cover saved"],
            covers_skipped=status["cover skipped"],
            covers_failed=status["cover failed"],
            reasons=tuple(self._reasons.most_common(3)),
        )

    @property
    def unfinished(self) -> bool:
        """Whether anything was left undone: an item not saved, a full disk, an archive error."""
        c = self.counts()
        return bool(self.disk_full or self.error or c.expired or c.failed or c.pending)

    # -- what save_highlights calls ------------------------------------------------------

    async def covers(self, account: str, highlights: Sequence[Highlight]) -> None:
        """Start the cover downloads of ``account``'s highlights (those with a cover)."""
        with_cover = [h for h in highlights if h.cover is not None and h.cover.url]
        if not with_cover or self.stopped is not None:
            return
        known = await saved_covers(self.archive, (h.id for h in with_cover))
        for highlight in with_cover:
            self._downloads.spawn(self._cover(account, highlight, known.get(highlight.id)))

    async def items(self, account: str, highlight: Highlight, stories: HighlightStories) -> None:
        """Start the downloads of one recorded highlight's items; mark it fetched once all end.

        The items must be recorded already (``record_highlight_stories(...,
        complete=False)``).
        """
        owner = stories.user or highlight.user
        fresh = list({i.id: i for i in stories.items if i.id not in self._items}.values())
        await self._recorder.claim(fresh)
        for item in fresh:
            self._items[item.id] = self._downloads.spawn(
                self._item(account, owner, item, highlight)
            )
        waits = {i.id: self._items[i.id] for i in stories.items}
        self._downloads.spawn(self._complete(highlight, waits))

    async def drain(self) -> None:
        """Wait for every download (and every highlight's completion) to end."""
        await self._downloads.drain()

    async def cancel(self) -> None:
        """Cancel whatever still runs and wait for it; its items stay ``pending``."""
        await self._downloads.cancel()

    @property
    def stopped(self) -> str | None:
        """Why no new download starts any more (a full disk, an archive failure)."""
        return self._downloads.stopped

    @property
    def disk_full(self) -> MediaDiskFullError | None:
        """The full disk that stopped the downloads (None: none)."""
        return self._downloads.disk_full

    @property
    def error(self) -> Exception | None:
        """An archive (or other unexpected) failure inside a download task."""
        return self._downloads.error

    # -- the tasks -----------------------------------------------------------------------

    def _halted(self, reason: str) -> None:
        _log.warning("highlight media: %s; starting no new downloads", reason)

    def _count(self, outcome: MediaOutcome, settled: str) -> None:
        self._received += outcome.bytes
        self._status[settled] += 1
        if settled.endswith("failed") or settled == "expired":
            self._reasons[(outcome.reason or "unknown reason").split(":", 1)[0][:60]] += 1

    async def _item(
        self, account: str, owner: User | None, item: StoryItem, highlight: Highlight
    ) -> Settled | None:
        if self.stopped is not None:
            return None
        outcome = await self._recorder.download(
            item, target=account, owner=owner, highlight=highlight
        )
        settled = _settled(outcome)
        self._count(outcome, settled)
        return settled

    async def _cover(self, account: str, highlight: Highlight, known: SavedMedia | None) -> None:
        if self.stopped is not None:
            return
        outcome = await self.downloader.download_cover(
            highlight, target=account, owner=highlight.user, known=known
        )
        if outcome.ok:
            if known is None:
                await record_cover(self.archive, highlight.id, outcome)
            self._count(outcome, "cover saved" if known is None else "cover skipped")
        else:
            _log.info("highlight %s: cover not saved: %s", highlight.id, outcome.reason)
            self._count(outcome, "cover failed")

    async def _complete(
        self, highlight: Highlight, waits: dict[str, asyncio.Task[Settled | None]]
    ) -> None:
        """Mark ``highlight`` fetched once every item's file is on disk (or given up)."""
        if waits:
            await asyncio.wait(waits.values())
        results = {sid: None if t.cancelled() else t.result() for sid, t in waits.items()}
        if self.stopped is not None or None in results.values():
            return  # stopped or cancelled: fetched again next run
        unsaved = [sid for sid, settled in results.items() if settled not in _ON_DISK]
        if unsaved:
            records = await self.archive.media_records(unsaved)
            if len(records) < len(unsaved) or any(
                r.failures < MAX_FAILURES for r in records.values()
            ):
                return  # fresh URLs next run may heal it
        await mark_fetched(self.archive, highlight)


def _settled(outcome: MediaOutcome) -> Settled:
    """What a recorded outcome counts as in a run's tally."""
    if outcome.ok:
        return "saved" if outcome.status is MediaStatus.SAVED else "skipped"
    return "expired" if outcome.status is MediaStatus.EXPIRED else "failed"
