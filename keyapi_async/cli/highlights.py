"""``fetch --highlights`` and ``--highlights-only``: every account's trays, then what changed.

After the stories run (or instead of it, with ``--highlights-only``), the
accounts' highlight trays are fetched and recorded in the archive, and the
items of only those highlights whose counts changed since their last complete
fetch (:func:`keyapi_async.archive.highlights.save_highlights`). The archive
(``--archive``, or ``DIR/archive.sqlite3`` with ``--download DIR``) is what
"changed" is judged against; the ledger records the stories run only. With
``--download DIR`` each highlight's items and cover are saved below DIR as
``{username}/highlights/{highlight_title}/...``
(:class:`~keyapi_async.archive.highlight_media.HighlightMedia`), a story
already saved while active is not downloaded again. ``--dry-run`` prints the
tray cost: the rest depends on what changed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Literal

from .._errors import NotAttemptedError
from ..archive import StoryArchive
from ..archive.highlights import HIGHLIGHTS_SCHEMA, HighlightsRun, save_highlights
from ..engine.batch import estimate_credits
from ..engine.endpoints import USER_HIGHLIGHTS
from ..engine.fetch import ClientStats
from ..highlight_media import HighlightMedia, HighlightMediaCounts
from .apikey import Redactor
from .batch_loop import INTERRUPTED
from .capture import CaptureSettings, open_downloader
from .client import FetchSettings, make_client, open_client
from .exit import CLIError, ExitCode
from .logs import library_logs
from .progress import MediaCounts, Reporter, Snapshot, byte_size, make_reporter
from .signals import Interrupts, grace_expired_note, stopping_note

__all__ = [
    "Mode",
    "add_highlight_options",
    "dry_run_lines",
    "exit_status",
    "highlight_mode",
    "run_highlights",
    "save_with_progress",
    "summary_line",
]

#: ``off``: stories only; ``also``: stories, then highlights; ``only``: highlights only.
Mode = Literal["off", "also", "only"]


def add_highlight_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--highlights`` and ``--highlights-only`` to the ``fetch`` parser."""
    group = parser.add_argument_group("highlights (the stories an account keeps)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--highlights",
        action="store_true",
        help="also save each account's highlights into the archive (only what changed is "
        "fetched; with --download their media too, in DIR/<username>/highlights/<title>/)",
    )
    choice.add_argument(
        "--highlights-only",
        action="store_true",
        help="save highlights (and with --download their media) and skip active stories "
        "(no -o needed)",
    )


def highlight_mode(args: argparse.Namespace) -> Mode:
    """Which highlights run the arguments ask for; a usage error without an archive."""
    mode: Mode = "only" if args.highlights_only else "also" if args.highlights else "off"
    if mode != "off" and not (args.archive or args.download) and not args.dry_run:
        flag = "--highlights-only" if mode == "only" else "--highlights"
        raise CLIError(
            f"{flag} needs --archive FILE (or --download DIR): what changed is judged against it"
        )
    return mode


def dry_run_lines(targets: Sequence[str]) -> list[str]:
    """The ``--dry-run`` report's highlights lines: the tray cost, and what it cannot know."""
    trays = estimate_credits(targets, USER_HIGHLIGHTS)
    return [
        f"highlight trays: {len(targets)} requests, at most {trays} credits",
        "highlight stories: depends on what changed since the archive's last run "
        "(2 credits per changed highlight)",
    ]


def summary_line(run: HighlightsRun, media: HighlightMediaCounts | None = None) -> str:
    """The pass in one line (and its media, when downloading)."""
    skipped = sum(isinstance(error, NotAttemptedError) for error in run.errors.values())
    line = (
        f"highlights: {run.trays} trays, {run.highlights_fetched} highlights fetched, "
        f"{run.unchanged} unchanged, {len(run.new_stories)} new stories, "
        f"{len(run.errors) - skipped} failed"
    )
    if skipped:
        line += f", {skipped} not attempted"
    if run.stopped is not None:
        line += f" ({run.stopped})"
    if media is not None:
        line += (
            f"; media: {media.saved} saved, "
            f"{media.skipped} already saved, {media.expired} expired, {media.failed} failed, "
            f"{media.pending} pending; covers: {media.covers_saved} saved, "
            f"{media.covers_skipped} already saved, {media.covers_failed} failed; "
            # The bytes of items and covers together: shown apart from either count.
            f"{byte_size(media.bytes)} downloaded"
        )
    return line


#: How each phase of the pass reads on the progress line.
_PHASES = {
    "starting": "highlight trays",
    "trays": "highlight trays",
    "highlights": "highlight stories",
    "downloading": "highlight media",
    "done": "highlights done",
}


def _snapshot(
    run: HighlightsRun,
    total: int,
    stats: ClientStats,
    media: HighlightMedia | None,
    elapsed: float,
) -> Snapshot:
    trays = run.phase in ("starting", "trays")
    failed = len(run.errors)
    tray_failures = run.trays_done - run.trays
    counts = None if media is None else media.counts()
    requests = stats.requests_sent
    return Snapshot(
        done=run.trays_done if trays else run.highlights_fetched + failed - tray_failures,
        total=total if trays else run.to_fetch,
        ok=run.trays if trays else run.highlights_fetched,
        empty=0,
        failed=failed,
        not_attempted=0,
        requests=requests,
        rate_limited=stats.rate_limited,
        credits=stats.credits_spent,
        elapsed=elapsed,
        rate=requests / elapsed if elapsed > 0 else 0.0,
        phase=_PHASES.get(run.phase, run.phase),
        media=None
        if counts is None
        else MediaCounts(
            downloading=True,
            saved=counts.saved + counts.covers_saved,
            skipped=counts.skipped + counts.covers_skipped,
            expired=counts.expired,
            failed=counts.failed + counts.covers_failed,
            pending=counts.pending,
            bytes=counts.bytes,
            new_stories=len(run.new_stories),
        ),
    )


async def save_with_progress(
    settings: FetchSettings,
    key: str,
    capture: CaptureSettings,
    targets: Sequence[str],
    reporter: Reporter,
) -> tuple[HighlightsRun, HighlightMedia | None]:
    """Open the archive, the downloader (with ``--download``) and the client; save highlights.

    ``reporter`` shows the pass's progress as the stories run's does (trays,
    then highlights, then the downloads still going).
    """
    path = capture.archive_path
    assert path is not None, "highlight_mode checked that there is an archive"
    run = HighlightsRun()
    async with contextlib.AsyncExitStack() as stack:
        downloader = await stack.enter_async_context(open_downloader(capture))
        archive = await stack.enter_async_context(
            StoryArchive.open(path, extensions=[HIGHLIGHTS_SCHEMA], keep_raw=capture.keep_raw)
        )
        client = await stack.enter_async_context(open_client(make_client(settings, key)))
        media = None if downloader is None else HighlightMedia(archive, downloader)
        start = time.monotonic()

        def frame() -> Snapshot:
            return _snapshot(run, len(targets), client.stats, media, time.monotonic() - start)

        async def tick() -> None:
            # More often than the display draws: it decides, and a short pass still shows frames.
            while True:
                await asyncio.sleep(min(reporter.refresh, 0.1))
                reporter.update(frame())

        reporter.start()
        ticker = asyncio.create_task(tick())
        try:
            await _until_interrupted(
                save_highlights(client, archive, targets, media=media, run=run),
                run,
                settings.grace,
                reporter,
            )
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            reporter.update(frame())
            reporter.close()
    return run, media


async def _until_interrupted(
    work: Coroutine[object, object, HighlightsRun],
    run: HighlightsRun,
    grace: float,
    reporter: Reporter,
) -> None:
    """Await ``work``; Ctrl-C or SIGTERM stops the pass as they stop ``fetch`` (docs/cli.md).

    The first signal stops sending and gives the requests in flight up to
    ``grace`` seconds to be answered and recorded; a second one exits at once.
    """
    loop = asyncio.get_running_loop()

    def on_first(signum: int) -> None:
        run.stop(INTERRUPTED)
        deadline.reschedule(loop.time() + grace)
        reporter.note(stopping_note(grace))

    def on_second(signum: int) -> None:
        reporter.note("Interrupted again: exiting now; what was recorded is in the archive.")
        reporter.close()
        os._exit(ExitCode.INTERRUPTED)

    try:
        async with asyncio.timeout(None) as deadline:
            with Interrupts(on_first, on_second):
                await work
    except TimeoutError:
        reporter.note(grace_expired_note(grace))


async def _save(
    settings: FetchSettings, key: str, capture: CaptureSettings, targets: Sequence[str]
) -> tuple[HighlightsRun, HighlightMedia | None]:
    redact = Redactor(key)
    with library_logs(settings.verbose, redact) as logs:
        reporter = make_reporter(
            settings.progress,
            total=len(targets),
            interval=settings.progress_interval,
            quiet=settings.quiet,
        )
        if logs is not None:
            logs.sink = reporter.note
        return await save_with_progress(settings, key, capture, targets, reporter)


def run_highlights(
    settings: FetchSettings,
    key: str,
    archive: str | None,
    targets: Sequence[str],
    *,
    capture: CaptureSettings | None = None,
) -> int:
    """Run the highlights pass over ``targets``; print its summary; return the exit status.

    ``capture`` is the run's archive and download settings (with
    ``--download`` the highlights' media is saved too); without it only the
    ``archive`` file is used and nothing is downloaded.
    """
    if capture is None:
        capture = CaptureSettings(archive=archive)
    elif archive is not None and capture.archive is None:
        capture = dataclasses.replace(capture, archive=archive)
    if capture.archive_path is None:
        raise CLIError("the highlights pass needs --archive FILE (or --download DIR)")
    run, media = asyncio.run(_save(settings, key, capture, targets))
    redact = Redactor(key)
    # Like the stories run's summary, on stderr: stdout is only for --dry-run's report.
    if not settings.quiet:
        failures = [(t, e) for t, e in run.errors.items() if not isinstance(e, NotAttemptedError)]
        for target, error in failures[:20]:
            print(
                redact(f"highlights: {target}: {type(error).__name__}: {error}"),
                file=sys.stderr,
                flush=True,
            )
        if media is not None and media.stopped is not None:
            print(f"highlights: stopped: {media.stopped}", file=sys.stderr, flush=True)
    print(summary_line(run, None if media is None else media.counts()), file=sys.stderr, flush=True)
    return exit_status(run, media)


def exit_status(run: HighlightsRun, media: HighlightMedia | None) -> int:
    """The pass's exit status: failed when a target failed or a file was left unfinished."""
    if run.stopped == INTERRUPTED:
        return ExitCode.INTERRUPTED
    unfinished = media is not None and media.unfinished
    return ExitCode.FAILED if run.errors or unfinished else ExitCode.OK
