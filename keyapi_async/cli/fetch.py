"""``keyapi-stories fetch``: plan → ledger → batch → one line per target → summary → exit status.

Shared by ``keyapi-stories fetch`` and ``keyapi-stories demo`` (which runs
the very same engine against the embedded emulator). The steps live beside
it: the client in :mod:`.client`, the ledger and the dry run in :mod:`.job`,
the batch in :mod:`.batch_loop`, the end in :mod:`.report`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from .._client import KeyAPIClient
from ..archive import ArchiveError
from .apikey import Redactor, resolve_api_key
from .batch_loop import Run, fetch_all, late_interrupts
from .capture import Capture, CaptureSettings, capture_settings_from_args, open_capture
from .client import FetchSettings, make_client, open_client, settings_from_args
from .exit import CLIError, ExitCode
from .highlights import Mode, dry_run_lines, highlight_mode, run_highlights
from .inputs import InputPlan, read_input
from .invocation import shell_command
from .job import Job, dry_run_report, list_invalid, prepare_job
from .ledger import invalid_line, not_attempted_line, scan_ledger
from .logs import library_logs
from .progress import Tally, make_reporter
from .report import exit_code, summarise

__all__ = [
    "FetchSettings",
    "Job",
    "dry_run_report",
    "execute",
    "make_client",
    "open_client",
    "prepare_job",
    "resume_command",
    "run_fetch",
    "run_job",
    "settings_from_args",
]


def resume_command(argv: Sequence[str], argv0: str | None = None) -> str:
    """The user's own ``fetch`` command line, with ``--resume`` (once) and no ``--overwrite``.

    It starts the way this process was started (see :mod:`._invocation`), so
    that it runs as pasted even when ``keyapi-stories`` is not on PATH.
    """
    args = [arg for arg in argv if arg != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shell_command(args, argv0)


async def execute(
    client: KeyAPIClient,
    job: Job,
    settings: FetchSettings,
    *,
    redact: Callable[[str], str],
    resume_hint: str | None,
    capture: Capture | None = None,
) -> int:
    """Fetch ``job.pending`` with the open ``client``; every outcome to OUT; print the summary.

    With a ``capture`` every fetched reel is also recorded in its archive and
    its media downloaded, and the media an earlier run left unfinished is
    completed. Returns the exit status. Must run in the event loop that will
    receive Ctrl-C; it installs (and removes) the SIGINT/SIGTERM handlers itself.
    """
    with library_logs(settings.verbose, redact) as logs:
        reporter = make_reporter(
            settings.progress,
            total=len(job.pending),
            interval=settings.progress_interval,
            quiet=settings.quiet,
        )
        if logs is not None:
            # Through the display, so a log line never tears the live bar.
            logs.sink = reporter.note
        run = Run(
            job=job,
            client=client,
            reporter=reporter,
            tally=Tally(total=len(job.pending)),
            redact=redact,
            capture=capture,
        )
        if capture is not None:
            capture.note = reporter.note
            await capture.start(job.output)
        return await _execute(run, settings, resume_hint)


async def run_job(
    client: KeyAPIClient,
    plan: InputPlan,
    output: str,
    settings: FetchSettings,
    capture_settings: CaptureSettings,
    *,
    resume: bool,
    overwrite: bool,
    redact: Callable[[str], str],
    resume_hint: str | None,
) -> int:
    """Open the download directory, the archive and the client, then OUT, then :func:`execute`.

    Those come first: when any is unusable (a Redis that is not running
    included) the run ends with exit status 2 before OUT is created or a
    request is sent.
    """
    async with open_capture(capture_settings) as capture, open_client(client):
        job = prepare_job(plan, output, resume=resume, overwrite=overwrite, fsync=settings.fsync)
        return await execute(
            client, job, settings, redact=redact, resume_hint=resume_hint, capture=capture
        )


async def _execute(run: Run, settings: FetchSettings, resume_hint: str | None) -> int:
    job, reporter = run.job, run.reporter
    writer = job.writer
    if job.torn_bytes:
        reporter.note(f"resume: removed a torn final line ({job.torn_bytes} bytes) from OUT")
    # Invalid input lines are errors: listed even with -q.
    list_invalid(job.plan, _to_stderr if settings.quiet else reporter.note)
    try:
        for line in job.new_invalid:
            writer.write(invalid_line(line))
    except OSError as exc:
        raise CLIError(f"cannot write {job.output!r}: {exc.strerror or exc}") from None
    if job.already_done:
        reporter.note(f"resume: {job.already_done} targets already done in OUT are skipped")

    write_error: OSError | None = None
    capture = run.capture
    with contextlib.ExitStack() as after_batch:
        if job.pending or (capture is not None and capture.downloading):
            reporter.start()
            try:
                write_error = await fetch_all(run, settings, resume_hint)
                after_batch.enter_context(late_interrupts(run, settings, resume_hint))
                if write_error is None:
                    write_error = _record_leftovers(run)
                # The last frame shows the same counts as the summary below it.
                reporter.update(run.snapshot())
            finally:
                reporter.close()
        writer.close()
        if write_error is not None:
            raise CLIError(f"cannot write {job.output!r}: {write_error.strerror or write_error}")
        if capture is not None:
            tally = run.tally
            counts = {"ok": tally.ok, "empty": tally.empty, "failed": tally.failed}
            counts["not_attempted"] = tally.not_attempted
            try:
                await capture.finish(counts)
            except ArchiveError as exc:
                capture.error = capture.error or exc

        code = exit_code(run)
        summarise(run, code, resume_hint, quiet=settings.quiet)
    return code


def _record_leftovers(run: Run) -> OSError | None:
    """Give every target the batch did not report its ``not_attempted`` line.

    That is what it left behind when it was closed early after Ctrl-C or a
    401/403/402, at a --grace expiry, or after an internal error, so that
    ``--resume`` retries them.
    """
    reason = run.leftover or "no outcome reported"
    try:
        for target in run.job.pending:
            if target not in run.written:
                run.job.writer.write(not_attempted_line(target, reason))
                run.written.add(target)
                run.tally.record("not_attempted", None)
                run.reasons[reason] += 1
    except OSError as exc:
        return exc
    return None


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:  # either does not exist (yet)
        return False


def _check_output(args: argparse.Namespace, highlights: Mode) -> None:
    """The usage errors of ``-o`` (before anything is read or sent)."""
    if not args.dry_run and not args.output and highlights != "only":
        raise CLIError("-o/--output OUT is required (or use --dry-run)")
    if args.output and highlights == "only":
        # Only the stories run writes a ledger: an OUT given here would never appear.
        raise CLIError(
            "-o is not used with --highlights-only (the ledger records the stories run): "
            "drop -o, or use --highlights to fetch the stories too"
        )
    if args.output == "-":
        raise CLIError("-o - is not supported: the ledger must be a file, to append to and resume")
    if args.output and args.input != "-" and _same_file(args.input, args.output):
        raise CLIError("-o must not be the input file")


def _dry_run(args: argparse.Namespace, plan: InputPlan, highlights: Mode) -> int:
    """Print what the run would send and cost; send nothing."""
    state = scan_ledger(args.output, repair=False) if args.resume and args.output else None
    report, code = dry_run_report(plan, state, args.max_credits)
    print(report, flush=True)
    if highlights != "off":
        print("\n".join(dry_run_lines(plan.targets)), flush=True)
    if args.output and not (args.resume or args.overwrite) and os.path.lexists(args.output):
        print(
            f"note: {args.output!r} exists; the real run needs --resume or --overwrite",
            file=sys.stderr,
        )
    return code


def run_fetch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run ``keyapi-stories fetch`` with parsed ``args`` (``argv`` for the resume hint)."""
    highlights = highlight_mode(args)
    _check_output(args, highlights)
    settings = settings_from_args(args)
    capture = capture_settings_from_args(args)
    # The key is checked before reading the input: a missing key should not
    # cost a long read from stdin first. --dry-run sends nothing, needs none.
    key = None if args.dry_run else resolve_api_key(args.api_key_file)
    if args.input == "-" and sys.stdin is not None and sys.stdin.isatty() and not args.quiet:
        print("reading targets from the terminal; end with Ctrl-D", file=sys.stderr)
    plan = read_input(args.input, user_ids=args.user_ids)
    if key is None:
        return _dry_run(args, plan, highlights)
    if highlights == "only":
        return run_highlights(settings, key, args.archive, plan.targets, capture=capture)
    hint = resume_command(argv)
    if args.input == "-":
        hint += "   # with the same targets on stdin"
    code = asyncio.run(
        run_job(
            make_client(settings, key),
            plan,
            args.output,
            settings,
            capture,
            resume=args.resume,
            overwrite=args.overwrite,
            redact=Redactor(key),
            resume_hint=hint,
        )
    )
    if highlights == "also" and code in (ExitCode.OK, ExitCode.FAILED):
        # After 401/402/403 or Ctrl-C (exit 3, 130) nothing more is sent.
        code = max(code, run_highlights(settings, key, args.archive, plan.targets, capture=capture))
    return code
