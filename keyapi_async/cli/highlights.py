"""``fetch --highlights`` and ``--highlights-only``: every account's trays, then what changed.

After the stories run (or instead of it, with ``--highlights-only``), the
accounts' highlight trays are fetched and recorded in ``--archive``, and the
items of only those highlights whose counts changed since their last complete
fetch (:func:`keyapi_async.archive.highlights.save_highlights`). The archive
is what "changed" is judged against, so both options need ``--archive``; the
ledger records the stories run only. ``--dry-run`` prints the tray cost: the
rest depends on what changed.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from typing import Literal

from ..archive import StoryArchive
from ..archive.highlights import HIGHLIGHTS_SCHEMA, HighlightsRun, save_highlights
from ..engine.batch import estimate_credits
from ..engine.endpoints import USER_HIGHLIGHTS
from .apikey import Redactor
from .client import FetchSettings, make_client
from .exit import CLIError, ExitCode
from .logs import library_logs

__all__ = ["Mode", "add_highlight_options", "dry_run_lines", "highlight_mode", "run_highlights"]

#: ``off``: stories only; ``also``: stories, then highlights; ``only``: highlights only.
Mode = Literal["off", "also", "only"]


def add_highlight_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--highlights`` and ``--highlights-only`` to the ``fetch`` parser."""
    group = parser.add_argument_group("highlights (the stories an account keeps)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--highlights",
        action="store_true",
        help="also save each account's highlights into --archive (only what changed is fetched)",
    )
    choice.add_argument(
        "--highlights-only",
        action="store_true",
        help="save highlights into --archive and skip active stories (no -o needed)",
    )


def highlight_mode(args: argparse.Namespace) -> Mode:
    """Which highlights run the arguments ask for; a usage error without ``--archive``."""
    mode: Mode = "only" if args.highlights_only else "also" if args.highlights else "off"
    if mode != "off" and not args.archive and not args.dry_run:
        flag = "--highlights-only" if mode == "only" else "--highlights"
        raise CLIError(f"{flag} needs --archive FILE: what changed is judged against it")
    return mode


def dry_run_lines(targets: Sequence[str]) -> list[str]:
    """The ``--dry-run`` report's highlights lines: the tray cost, and what it cannot know."""
    trays = estimate_credits(targets, USER_HIGHLIGHTS)
    return [
        f"highlight trays: {len(targets)} requests, at most {trays} credits",
        "highlight stories: depends on what changed since the archive's last run "
        "(2 credits per changed highlight)",
    ]


def _summary(run: HighlightsRun) -> str:
    return (
        f"highlights: {run.trays} trays, {run.highlights_fetched} highlights fetched, "
        f"{run.unchanged} unchanged, {len(run.new_stories)} new stories, "
        f"{len(run.errors)} failed"
    )


async def _save(
    settings: FetchSettings, key: str, archive_path: str, targets: Sequence[str]
) -> HighlightsRun:
    redact = Redactor(key)
    with library_logs(settings.verbose, redact):
        async with (
            make_client(settings, key) as client,
            StoryArchive.open(archive_path, extensions=[HIGHLIGHTS_SCHEMA]) as archive,
        ):
            return await save_highlights(client, archive, targets)


def run_highlights(
    settings: FetchSettings, key: str, archive_path: str, targets: Sequence[str]
) -> int:
    """Run the highlights pass over ``targets``; print its summary; return the exit status."""
    run = asyncio.run(_save(settings, key, archive_path, targets))
    redact = Redactor(key)
    if not settings.quiet:
        for target, reason in list(run.errors.items())[:20]:
            print(redact(f"highlights: {target}: {reason}"), flush=True)
    print(_summary(run), flush=True)
    return ExitCode.FAILED if run.errors else ExitCode.OK
