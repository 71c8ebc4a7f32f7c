"""``keyapi-stories export`` and ``keyapi-stories import-ledger``: the archive from the shell."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import cast

from ..archive import ArchiveError, LedgerImport, StoryArchive, import_ledger
from ..export import ExportFormat, write_export
from .exit import CLIError, ExitCode

__all__ = ["run_export", "run_import_ledger"]


def _open_readonly(path: str) -> StoryArchive:
    # Read-only: an export must never create (or migrate) the file it reads.
    if not os.path.isfile(path):
        raise CLIError(f"no archive at {path!r}")
    try:
        return StoryArchive.connect(path, readonly=True)
    except ArchiveError as exc:
        raise CLIError(str(exc)) from None


def run_export(args: argparse.Namespace) -> int:
    """Write the archive ``args.archive`` as ``args.format`` to ``args.output`` (``-``: stdout)."""
    fmt = cast(ExportFormat, args.format)
    to_stdout = args.output == "-"
    if to_stdout and fmt == "parquet" and sys.stdout.isatty():
        # As gzip does: binary goes to a pipe or a file, never to a terminal.
        raise CLIError(
            "Parquet is a binary file format: give -o FILE or pipe stdout with -f parquet"
        )
    if not to_stdout and os.path.isdir(args.output):
        raise CLIError(f"{args.output!r} is a directory; -o needs a file path")
    with _open_readonly(args.archive) as archive:
        try:
            if to_stdout:
                rows = write_export(archive, fmt, sys.stdout.buffer)
            else:
                rows = write_export(archive, fmt, args.output)
        except ImportError as exc:  # pyarrow missing: the message names the extra
            raise CLIError(str(exc)) from None
        except BrokenPipeError:
            # `export ... | head`: the reader left; that is not an error of ours.
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the exit flush
            return ExitCode.OK
        except OSError as exc:
            raise CLIError(f"cannot write {args.output!r}: {exc.strerror or exc}") from None
    if not to_stdout:
        print(f"{rows} stories written to {args.output} ({fmt})", file=sys.stderr)
    return ExitCode.OK


def run_import_ledger(args: argparse.Namespace) -> int:
    """Record the reels of the ledger ``args.ledger`` in the archive ``args.archive``."""
    if not os.path.isfile(args.ledger):
        raise CLIError(f"no ledger at {args.ledger!r}")

    async def run() -> LedgerImport:
        async with contextlib.AsyncExitStack() as stack:
            try:
                archive = await stack.enter_async_context(StoryArchive.open(args.archive))
            except ArchiveError as exc:  # locked, read-only, not an archive: usage
                raise CLIError(str(exc)) from None
            try:
                # Only the counts are printed: no list of every new id.
                return await import_ledger(archive, args.ledger, new_ids=False)
            except ArchiveError as exc:  # a bad line: the lines before it are in
                raise CLIError(str(exc), ExitCode.FAILED) from None
        raise AssertionError("unreachable")  # pragma: no cover - mypy's view of the stack

    result = asyncio.run(run())
    torn = "; a torn final line was ignored" if result.torn else ""
    print(
        f"imported {args.ledger}: {result.lines} lines, {result.reels} reels, "
        f"{result.stories} story items, {result.new_stories} new to {args.archive}, "
        f"{result.skipped} lines without stories{torn}",
        file=sys.stderr,
    )
    return ExitCode.OK
