"""The one capture pipeline: a story's file claimed, downloaded, and its outcome recorded.

``fetch --download`` (:class:`keyapi_async.cli.capture.Capture`), the
highlights pass and :class:`keyapi_async.watch.Watcher` all save media
through a :class:`MediaRecorder`, so the rules below have one home:

* **Claimed before the first byte.** :meth:`MediaRecorder.claim` marks every
  story whose file the archive does not record as saved ``pending``; a crash
  mid-download leaves it findable by
  :meth:`~keyapi_async.archive.StoryArchive.pending_media`.
* **Saved once.** A file the archive records as saved, still at its recorded
  size, is skipped without a byte downloaded, and nothing is written: the
  archive's record already says so.
* **A skipped file is recorded when the archive did not cause the skip.**
  A file found at its final name (an earlier run without this archive, a
  copied folder) is recorded as ``saved`` with the size and hash just
  computed, so the archive always knows the files it points at.
* **A full disk or a failing archive stops a run's downloads**
  (:class:`DownloadTasks`): nothing new starts, what runs ends by itself,
  and the files not saved stay ``pending`` for the next run.
* **Every other outcome is recorded with its reason:** ``expired`` (the CDN's
  403/410: the signed URL died) or ``failed`` (anything else, a refused
  host included).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final

from .archive import StoryArchive
from .media import MediaDiskFullError, MediaDownloader, MediaOutcome, MediaStatus, SavedMedia
from .models import Highlight, StoryItem, User

__all__ = ["MAX_FAILURES", "DownloadTasks", "MediaRecorder"]

MAX_FAILURES: Final = 3
"""A file that failed this many times in a row is not retried by later runs: a transient
CDN problem heals, a URL off the allowlist never will."""


class MediaRecorder:
    """Download stories' media with ``downloader`` and record each outcome in ``archive``.

    Call :meth:`claim` with the items of a reel before downloading any of
    them, then :meth:`download` for each (concurrently if you like: the
    downloader limits its own concurrency).
    """

    __slots__ = ("_known", "archive", "downloader")

    def __init__(self, archive: StoryArchive, downloader: MediaDownloader) -> None:
        self.archive = archive
        """Where outcomes are recorded."""
        self.downloader = downloader
        """What downloads the files (started by the caller)."""
        self._known: dict[str, SavedMedia] = {}

    async def claim(self, items: Iterable[StoryItem]) -> None:
        """Mark the items whose file is not recorded as saved ``pending``; remember the rest."""
        wanted = list({item.id: item for item in items})
        records = await self.archive.media_records(wanted)
        unsaved = []
        for story_id in wanted:
            record = records.get(story_id)
            if record is not None and record.status == "saved" and record.path and record.bytes:
                self._known[story_id] = SavedMedia(record.path, record.bytes, record.sha256)
            else:
                unsaved.append(story_id)
        await asyncio.gather(
            *(self.archive.record_media(i, None, None, None, "pending") for i in unsaved)
        )

    async def download(
        self,
        item: StoryItem,
        *,
        target: str | None = None,
        owner: User | None = None,
        highlight: Highlight | None = None,
    ) -> MediaOutcome:
        """Download ``item``'s media (skipped when saved before) and record the outcome.

        With ``highlight`` the item is saved as part of that highlight (the
        downloader's highlight layout), unless it is saved already.

        Raises:
            MediaDiskFullError: The disk filled up (the item stays ``pending``).
            ArchiveError: The outcome could not be recorded.

        """
        known = self._known.pop(item.id, None)
        outcome = await self.downloader.download_item(
            item, target=target, owner=owner, highlight=highlight, known=known
        )
        await self.record(outcome, known)
        return outcome

    async def record(self, outcome: MediaOutcome, known: SavedMedia | None = None) -> None:
        """Record ``outcome`` by the rules in the module docstring.

        ``known`` is the archive's record the download was given (None if none).
        """
        story_id = outcome.story_id
        if outcome.ok and outcome.relative_path:
            skipped = outcome.status is MediaStatus.SKIPPED
            if skipped and known is not None and outcome.relative_path == known.path:
                return  # the archive's own record caused the skip
            size = outcome.size if outcome.size is not None else outcome.bytes
            await self.archive.record_media(
                story_id, outcome.relative_path, size, outcome.sha256, "saved"
            )
        elif outcome.status is MediaStatus.EXPIRED:
            await self.archive.record_media(story_id, None, None, None, "expired", outcome.reason)
        else:
            reason = outcome.reason or "unknown reason"
            await self.archive.record_media(story_id, None, None, None, "failed", reason)


class DownloadTasks:
    """A run's downloads as tasks, and the one rule of when they stop.

    :meth:`spawn` starts a download; a :class:`~keyapi_async.media.MediaDiskFullError`
    or any other failure inside one (the archive's, since outcomes are
    recorded there) halts the run: :attr:`stopped` says why, ``on_halt`` is
    called once, and callers start nothing new. Used by ``fetch --download``
    and by the highlights pass.
    """

    __slots__ = ("_on_halt", "_tasks", "disk_full", "error", "stopped")

    def __init__(self, on_halt: Callable[[str], None] = lambda reason: None) -> None:
        self._on_halt = on_halt
        self._tasks: set[asyncio.Task[Any]] = set()
        self.disk_full: MediaDiskFullError | None = None
        """The full disk that halted the run."""
        self.error: Exception | None = None
        """The first other failure inside a download (usually the archive's)."""
        self.stopped: str | None = None
        """Why no new download starts any more (None: running)."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of this run; its failure halts the run (result None)."""
        task = asyncio.ensure_future(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def halt(self, reason: str) -> None:
        """Start nothing new from now on (the first reason stays)."""
        if self.stopped is None:
            self.stopped = reason
            self._on_halt(reason)

    async def drain(self) -> None:
        """Wait for every task, those started meanwhile included."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def cancel_all(self) -> None:
        """Cancel every task without waiting (Ctrl-C); their files stay ``pending``."""
        for task in list(self._tasks):
            task.cancel()

    async def cancel(self) -> None:
        """Cancel whatever still runs and wait for it."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _guarded(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coro
        except MediaDiskFullError as exc:
            if self.disk_full is None:
                self.disk_full = exc
                self.halt("disk full")
        except Exception as exc:  # the archive failed: no later write would succeed
            if self.error is None:
                self.error = exc
                self.halt(f"archive error: {exc}")
        return None
