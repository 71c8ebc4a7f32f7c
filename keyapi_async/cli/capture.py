"""``fetch --archive/--download``: a batch's results into the archive and the downloader.

The fetch loop hands every fetched reel to :meth:`Capture.record` in the
order results arrive. That records the reel in the
:class:`~keyapi_async.archive.StoryArchive` (awaited: committed before the
next result is taken, so ``kill -9`` never loses a story the ledger has) and
marks each story whose file is not saved yet as ``pending``; only then are
its downloads started, as tasks of their own. So:

* downloads run beside the API batch, limited by the downloader's own
  concurrency; they never pass the API's rate gate and never see the key;
* a story is ``pending`` in the archive from before its first byte until its
  outcome is recorded, so the next run (``--resume`` or a fresh one with the
  same archive) finds every unfinished file with
  :meth:`~keyapi_async.archive.StoryArchive.pending_media` and completes it
  (the downloader resumes its ``.part`` with ``Range``);
* files the archive already records as saved (with the file still at its
  recorded size) are skipped: a second run downloads nothing for them;
* a full disk stops the run: no new API request and no new download starts,
  what is complete stays, the rest stays ``pending`` for the next run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from .._errors import KeyAPIError
from ..archive import ArchiveError, StoryArchive, StoryRecord
from ..archive.highlights import highlights_of
from ..capture import MAX_FAILURES, DownloadTasks, MediaRecorder
from ..media import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_BYTES,
    MediaDiskFullError,
    MediaDownloader,
    MediaOutcome,
    MediaStatus,
    media_hosts_from_env,
)
from ..media.paths import NameTemplate, media_host_entries
from ..models import (
    Highlight,
    ImageCandidate,
    ImageVersions,
    Reel,
    StoryItem,
    User,
    VideoVersion,
)
from .exit import CLIError, setting_errors
from .progress import MediaCounts

__all__ = [
    "ARCHIVE_NAME",
    "Capture",
    "CaptureSettings",
    "capture_settings",
    "capture_settings_from_args",
    "open_capture",
    "open_downloader",
]

ARCHIVE_NAME: Final = "archive.sqlite3"
"""The archive's file name inside the download directory when ``--archive`` is not given."""
#: Media statuses of this run that mean "handled": not downloaded again when
#: the same story turns up a second time in the run.
_HANDLED: Final = frozenset({"pending", "saved", "skipped"})

Refetch = Callable[[str], Awaitable[Reel | None]]
"""Fetch one target's reel again (``--refresh-expired``); set by the fetch loop."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureSettings:
    """The archive and download options of one run."""

    download: str | None = None
    """``--download DIR``: save media below DIR (None: no downloads)."""
    archive: str | None = None
    """``--archive DB`` (default with ``download``: ``DIR/archive.sqlite3``)."""
    name_template: str | None = None
    """``--name-template``: the stories layout below ``download`` (None: the default)."""
    highlight_template: str | None = None
    """``--highlight-template``: the highlights' layout below ``download`` (None: the default)."""
    media_hosts: tuple[str, ...] = ()
    """Extra allowed CDN hosts (``--media-hosts``, ``KEYAPI_MEDIA_HOSTS``, the demo's loopback)."""
    max_media_bytes: int = DEFAULT_MAX_BYTES
    media_concurrency: int = DEFAULT_CONCURRENCY
    refresh_expired: bool = False
    fsync: bool = True
    """Flush each media file to disk before its rename (off for the throwaway demo)."""
    keep_raw: bool = True
    """Keep each story's JSON in the archive (``--no-keep-raw``: the typed columns only)."""

    @property
    def enabled(self) -> bool:
        """Whether the run records into an archive at all."""
        return self.download is not None or self.archive is not None

    @property
    def archive_path(self) -> str | None:
        """Where the archive is (None without ``--archive`` and ``--download``)."""
        if self.archive is not None:
            return self.archive
        if self.download is not None:
            return os.path.join(self.download, ARCHIVE_NAME)
        return None


def _template(text: str | None, option: str) -> str | None:
    """``text`` checked by the downloader's rule; a bad one is a usage error naming ``option``."""
    if text is not None:
        with setting_errors():
            NameTemplate(text, name=option)
    return text


def capture_settings(
    *,
    download: str | None,
    archive: str | None,
    name_template: str | None = None,
    highlight_template: str | None = None,
    media_hosts: str | None = None,
    max_media_bytes: int = DEFAULT_MAX_BYTES,
    media_concurrency: int = DEFAULT_CONCURRENCY,
    refresh_expired: bool = False,
    extra_hosts: Iterable[str] = (),
    fsync: bool = True,
    keep_raw: bool = True,
) -> CaptureSettings:
    """Build the settings from the command line.

    A bad ``KEYAPI_MEDIA_HOSTS`` or name template is a usage error, before
    anything is opened or sent.
    """
    with setting_errors():  # the messages name the variable and the option
        from_env = media_hosts_from_env()
        given = media_host_entries(media_hosts or "", source="--media-hosts")
    return CaptureSettings(
        download=download,
        archive=archive,
        name_template=_template(name_template, "--name-template"),
        highlight_template=_template(highlight_template, "--highlight-template"),
        media_hosts=(*from_env, *given, *extra_hosts),
        max_media_bytes=max_media_bytes,
        media_concurrency=media_concurrency,
        refresh_expired=refresh_expired,
        fsync=fsync,
        keep_raw=keep_raw,
    )


# The options that only shape downloads, with their defaults: given without
# --download they would be silently unused.
_MEDIA_OPTIONS: Final = (
    ("name_template", "--name-template", None),
    ("highlight_template", "--highlight-template", None),
    ("media_hosts", "--media-hosts", None),
    ("max_media_bytes", "--max-media-bytes", DEFAULT_MAX_BYTES),
    ("media_concurrency", "--media-concurrency", DEFAULT_CONCURRENCY),
    ("refresh_expired", "--refresh-expired", False),
)


def capture_settings_from_args(args: argparse.Namespace) -> CaptureSettings:
    """The settings of :func:`~.args.add_capture_options` (``fetch`` and ``watch``).

    A media option without ``--download`` is a usage error naming it.
    """
    if args.download is None:
        for attr, option, default in _MEDIA_OPTIONS:
            if getattr(args, attr, default) != default:
                raise CLIError(f"{option} needs --download DIR (nothing is downloaded without it)")
    return capture_settings(
        download=args.download,
        archive=args.archive,
        name_template=args.name_template,
        highlight_template=args.highlight_template,
        media_hosts=args.media_hosts,
        max_media_bytes=args.max_media_bytes,
        media_concurrency=args.media_concurrency,
        refresh_expired=getattr(args, "refresh_expired", False),
        keep_raw=getattr(args, "keep_raw", True),
    )


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.1f} kB"


def _item_of(story: StoryRecord) -> StoryItem | None:
    """Rebuild a downloadable story item from its archive row (None without a media URL)."""
    if not story.media_url:
        return None
    width, height = story.width or 0, story.height or 0
    user = User(id=story.user_id, username=story.username)
    if story.media_type == "video":
        return StoryItem(
            id=story.story_id,
            media_type=2,
            taken_at=story.taken_at,
            user=user,
            video_versions=(VideoVersion(url=story.media_url, width=width, height=height),),
        )
    return StoryItem(
        id=story.story_id,
        media_type=1,
        taken_at=story.taken_at,
        user=user,
        image_versions=ImageVersions(
            items=(ImageCandidate(url=story.media_url, width=width, height=height),)
        ),
    )


@dataclass(slots=True)
class _Tally:
    statuses: dict[str, str] = field(default_factory=dict)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    received: int = 0
    stories: int = 0
    new_stories: int = 0
    resumed: int = 0
    refreshed: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    def set(self, story_id: str, status: str) -> None:
        previous = self.statuses.get(story_id)
        if previous is not None:
            self.counts[previous] -= 1
        self.statuses[story_id] = status
        self.counts[status] += 1


class Capture:
    """One run's archive and (optional) downloader; see the module docstring.

    Build it with :func:`open_capture`. The fetch loop calls :meth:`start`,
    :meth:`resume_pending`, :meth:`record` for every fetched reel,
    :meth:`drain` once the batch is over (or :meth:`interrupt`), and
    :meth:`finish`.
    """

    def __init__(
        self,
        settings: CaptureSettings,
        archive: StoryArchive,
        downloader: MediaDownloader | None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.downloader = downloader
        self._media = None if downloader is None else MediaRecorder(archive, downloader)
        self.run_id: int | None = None
        self.refetch: Refetch | None = None
        """Set by the fetch loop while its client is open (``--refresh-expired``)."""
        self.on_stop: Callable[[str], None] = lambda reason: None
        """Called once when the capture must stop the batch (disk full, archive failure)."""
        self.note: Callable[[str], None] = lambda message: None
        self._downloads = DownloadTasks(self._halted)
        self._tally = _Tally()
        self._by_target: dict[str, list[asyncio.Task[None]]] = collections.defaultdict(list)
        self._expired: dict[str, set[str]] = collections.defaultdict(set)
        self._refreshing: set[str] = set()

    @property
    def disk_full(self) -> MediaDiskFullError | None:
        """The full disk that stopped the downloads (None: none)."""
        return self._downloads.disk_full

    @property
    def error(self) -> Exception | None:
        """An archive (or other unexpected) failure, in a download task or recording."""
        return self._downloads.error

    @error.setter
    def error(self, exc: Exception | None) -> None:
        self._downloads.error = exc

    @property
    def stopped(self) -> str | None:
        """Why no new download starts any more."""
        return self._downloads.stopped

    def _halted(self, reason: str) -> None:
        full = self._downloads.disk_full
        if reason == "disk full" and full is not None:
            self.note(
                f"{full}: sending no new requests and starting no new downloads; "
                "unfinished files stay pending for the next run"
            )
        self.on_stop(reason)

    # -- the run's life ----------------------------------------------------------------

    async def start(self, ledger: str) -> None:
        """Record the start of this run in the archive."""
        self.run_id = await self.archive.start_run(ledger, kind="fetch")

    async def finish(self, counts: Mapping[str, int]) -> None:
        """Record the end of the run with the fetch counters and the media counters."""
        if self.run_id is None:
            return
        media = self.counts()
        totals = dict(counts)
        totals.update(
            stories=media.stories,
            new_stories=media.new_stories,
            media_saved=media.saved,
            media_skipped=media.skipped,
            media_expired=media.expired,
            media_failed=media.failed,
            media_pending=media.pending,
            media_bytes=media.bytes,
        )
        await self.archive.finish_run(self.run_id, totals)

    @property
    def downloading(self) -> bool:
        """Whether media is downloaded (``--download``)."""
        return self.downloader is not None

    @property
    def unfinished(self) -> bool:
        """Whether anything was left undone: media not saved, a full disk, an archive error."""
        counts = self.counts()
        return bool(
            self.disk_full or self.error or counts.expired or counts.failed or counts.pending
        )

    def counts(self) -> MediaCounts:
        """The media counters of this run so far (for progress and the summary)."""
        tally = self._tally
        return MediaCounts(
            downloading=self.downloading,
            saved=tally.counts["saved"],
            skipped=tally.counts["skipped"],
            expired=tally.counts["expired"],
            failed=tally.counts["failed"],
            pending=tally.counts["pending"],
            bytes=tally.received,
            stories=tally.stories,
            new_stories=tally.new_stories,
            resumed=tally.resumed,
            refreshed=tally.refreshed,
            reasons=tuple(tally.reasons.most_common(3)),
            archive=str(self.archive.path),
            directory=None if self.downloader is None else str(self.downloader.dest_dir),
        )

    # -- recording ---------------------------------------------------------------------

    async def record(self, target: str, reel: Reel | None, fetched_at: float) -> None:
        """Record one fetched reel (committed on return) and start its downloads.

        Raises :class:`~keyapi_async.archive.ArchiveError` when the archive fails.
        """
        new = await self.archive.record_reel(target, reel, fetched_at, run_id=self.run_id)
        self._tally.new_stories += len(new)
        if reel is None or not reel.items:
            return
        self._tally.stories += len(reel.items)
        if self.downloader is not None:
            await self._queue(
                target, reel.user, reel.items, allow_refresh=self.settings.refresh_expired
            )

    async def resume_pending(self) -> int:
        """Start the downloads an earlier run left unfinished; return how many.

        A story the archive holds in a highlight is finished in that
        highlight's layout, where the highlights pass that claimed it would
        have saved it (:func:`~keyapi_async.archive.highlights.highlights_of`).
        """
        if self.downloader is None:
            return 0
        # Not filtered by the story's expiry: a signed URL often outlives the
        # story by days, and a dead one costs one request and ends "expired".
        stories = await self.archive.pending_media(include_failed=True)
        by_account: dict[str, list[StoryItem]] = collections.defaultdict(list)
        for story in stories:
            media = story.media
            if media is not None and media.status == "failed" and media.failures >= MAX_FAILURES:
                continue
            item = _item_of(story)
            if item is not None:
                by_account[story.account].append(item)
        filed = await highlights_of(self.archive, (i.id for v in by_account.values() for i in v))
        total = 0
        for account, items in by_account.items():
            total += await self._queue(account, None, items, allow_refresh=False, filed=filed)
        self._tally.resumed += total
        return total

    async def _queue(
        self,
        target: str,
        owner: User | None,
        items: Iterable[StoryItem],
        *,
        allow_refresh: bool,
        filed: Mapping[str, Highlight] | None = None,
    ) -> int:
        """Claim and start the downloads of ``items``; ``filed``: story id -> its highlight."""
        tally = self._tally
        # A story already handled in this run (a duplicate in the reel, an
        # account that is also being resumed) is not downloaded twice.
        wanted = list({i.id: i for i in items if tally.statuses.get(i.id) not in _HANDLED}.values())
        if not wanted or self._media is None:
            return 0
        await self._media.claim(wanted)
        for item in wanted:
            tally.set(item.id, "pending")
            if self.stopped is None:
                highlight = None if filed is None else filed.get(item.id)
                task = self._downloads.spawn(
                    self._download(target, owner, item, allow_refresh, highlight)
                )
                self._by_target[target].append(task)
        return len(wanted)

    async def _download(
        self,
        target: str,
        owner: User | None,
        item: StoryItem,
        allow_refresh: bool,
        highlight: Highlight | None,
    ) -> None:
        assert self._media is not None
        if self.stopped is not None:
            return
        outcome = await self._media.download(item, target=target, owner=owner, highlight=highlight)
        self._count(target, outcome, allow_refresh)

    def _count(self, target: str, outcome: MediaOutcome, allow_refresh: bool) -> None:
        """Tally an outcome the recorder has recorded; start a refresh for an expired one."""
        tally = self._tally
        story_id = outcome.story_id
        tally.received += outcome.bytes
        status = outcome.status
        if outcome.ok and outcome.relative_path:
            tally.set(story_id, "saved" if status is MediaStatus.SAVED else "skipped")
        elif status is MediaStatus.EXPIRED:
            tally.set(story_id, "expired")
            if allow_refresh and self.refetch is not None:
                self._expired[target].add(story_id)
                if target not in self._refreshing:
                    self._refreshing.add(target)
                    self._downloads.spawn(self._refresh(target))
        else:
            reason = outcome.reason or "unknown reason"
            tally.set(story_id, "failed")
            tally.reasons[reason.split(":", 1)[0][:60]] += 1

    async def _refresh(self, target: str) -> None:
        """Fetch ``target`` again once its downloads are over; retry its expired files."""
        current = asyncio.current_task()
        while others := [t for t in self._by_target[target] if t is not current and not t.done()]:
            await asyncio.wait(others)
        if self.stopped is not None or self.refetch is None:
            return
        expired = self._expired.pop(target, set())
        try:
            reel = await self.refetch(target)
        except KeyAPIError as exc:
            self.note(f"--refresh-expired: re-fetching {target} failed: {exc}")
            return
        self._tally.refreshed += 1
        await self.archive.record_reel(target, reel, time.time(), run_id=self.run_id)
        if reel is None:
            return
        fresh = [i for i in reel.items if i.id in expired or i.id not in self._tally.statuses]
        await self._queue(target, reel.user, fresh, allow_refresh=False)

    # -- the end -----------------------------------------------------------------------

    async def drain(self) -> None:
        """Wait for every download (and the refreshes they started) to end."""
        await self._downloads.drain()

    def interrupt(self) -> None:
        """Ctrl-C: cancel the downloads; their files stay ``pending`` (``.part`` kept to resume)."""
        if self._downloads.stopped is None:
            self._downloads.stopped = "interrupted"  # Ctrl-C already stops the batch
        self._downloads.cancel_all()

    async def cancel(self) -> None:
        """Cancel whatever is still running and wait for it (on every way out of the run)."""
        await self._downloads.cancel()

    def summary_note(self) -> str | None:
        """One line on how the media went, for ``-q`` and the notes."""
        if self.downloader is None:
            return None
        c = self.counts()
        return (
            f"media: {c.saved} saved ({_size(c.bytes)}), {c.skipped} already saved, "
            f"{c.expired} expired, {c.failed} failed, {c.pending} pending"
        )


@contextlib.asynccontextmanager
async def open_downloader(settings: CaptureSettings) -> AsyncIterator[MediaDownloader | None]:
    """Start the media downloader of ``settings`` (None without ``--download``); close it after.

    The one place the CLI builds a downloader (``fetch``, ``demo`` and
    ``watch``): a directory that cannot be created or written, a bad name
    template or host is a usage error (exit status 2). Files saved before are
    skipped by the capture pipeline, which hands each download the archive's record.
    """
    if settings.download is None:
        yield None
        return
    with setting_errors():
        downloader = MediaDownloader(
            settings.download,
            concurrency=settings.media_concurrency,
            allowed_hosts=settings.media_hosts,
            max_bytes=settings.max_media_bytes,
            name_template=settings.name_template,
            highlight_template=settings.highlight_template,
            fsync=settings.fsync,
            user_agent="keyapi-stories-media",
        )
        await downloader.start()
    try:
        yield downloader
    finally:
        await downloader.aclose()


@contextlib.asynccontextmanager
async def open_capture(settings: CaptureSettings) -> AsyncIterator[Capture | None]:
    """Open the download directory, then the archive; yield the capture (None when off).

    Both are checked before the run sends anything: a directory that cannot be
    created or written, a bad name template or host, and an archive that is
    locked, read-only or not an archive are usage errors (exit status 2).
    """
    path = settings.archive_path
    if path is None:
        yield None
        return
    async with contextlib.AsyncExitStack() as stack:
        downloader = await stack.enter_async_context(open_downloader(settings))
        try:
            archive = await stack.enter_async_context(
                StoryArchive.open(path, keep_raw=settings.keep_raw)
            )
        except ArchiveError as exc:
            raise CLIError(str(exc)) from None
        yield Capture(settings, archive, downloader)
