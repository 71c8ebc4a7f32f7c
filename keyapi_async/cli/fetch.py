"""The fetch run: plan → ledger → batch → one line per target → summary → exit status.

Shared by ``keyapi-stories fetch`` and ``keyapi-stories demo`` (which runs
the very same engine against the embedded emulator).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .._client import KeyAPIClient
from .._errors import (
    AuthenticationError,
    InsufficientCreditsError,
    KeyAPIError,
    NotAttemptedError,
    PermissionDeniedError,
)
from ..archive import ArchiveError
from ..engine.batch import StoryBatch, StoryResult, estimate_credits
from ..engine.config import ClientOptions
from ..engine.fetch import STOP_ERRORS
from .capture import Capture, CaptureSettings, open_capture
from .exit import CLIError, ExitCode, setting_errors
from .inputs import InputPlan, InvalidLine
from .invocation import PROG, shell_command
from .ledger import (
    LedgerState,
    LedgerWriter,
    invalid_line,
    not_attempted_line,
    result_line,
    scan_ledger,
)
from .logs import library_logs
from .progress import Reporter, Snapshot, Summary, Tally, make_reporter, render_summary
from .signals import Interrupts

__all__ = [
    "FetchSettings",
    "Job",
    "dry_run_report",
    "execute",
    "make_client",
    "open_client",
    "prepare_job",
    "resume_command",
    "run_job",
    "settings_from_args",
]

#: How many invalid lines are listed on stderr before "... and N more".
_MAX_LISTED_INVALID = 20
_RATE_WINDOW = 5.0
_INTERRUPTED = "interrupted"
#: After Ctrl-C, how often to check whether anything sent is still unanswered.
_IDLE_POLL = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchSettings:
    """How to send and how to show progress (the request and run-control options)."""

    qps: float | None = 10.0
    concurrency: int | None = None
    """Requests in flight; None lets the client derive it from ``qps`` and ``timeout``."""
    max_credits: int | None = None
    timeout: float = 30.0
    retries: int = 4
    base_url: str | None = None
    progress: bool | None = None
    progress_interval: float = 10.0
    grace: float = 10.0
    fsync: bool = False
    quiet: bool = False
    """``-q``: no progress and no notes; errors and a one-line summary only."""
    verbose: int = 0
    """``-v``: 1 shows the library's INFO log lines, 2 DEBUG too."""
    proxy: str | None = None
    """``--proxy``: API requests through this proxy (None: the ``*_PROXY`` variables)."""
    redis_url: str | None = None
    """``--redis-url``: a shared gate and budget (None: ``$KEYAPI_REDIS_URL``)."""
    redis_namespace: str | None = None


def settings_from_args(args: argparse.Namespace) -> FetchSettings:
    """The settings of :func:`~._args.add_connection_options` (and of the run, when present)."""
    return FetchSettings(
        qps=args.qps,
        concurrency=args.concurrency,
        max_credits=args.max_credits,
        timeout=args.timeout,
        retries=args.retries,
        base_url=args.base_url,
        proxy=args.proxy,
        redis_url=args.redis_url,
        redis_namespace=args.redis_namespace,
        progress=getattr(args, "progress", None),
        progress_interval=getattr(args, "progress_interval", 10.0),
        grace=getattr(args, "grace", 10.0),
        fsync=getattr(args, "fsync", False),
        quiet=getattr(args, "quiet", False),
        verbose=getattr(args, "verbose", 0),
    )


@dataclass(slots=True)
class Job:
    """A prepared run: what to fetch, what to skip, and the open ledger."""

    plan: InputPlan
    output: str
    writer: LedgerWriter
    pending: list[str]
    """Targets to send, in input order (the plan minus those done in OUT)."""
    new_invalid: list[InvalidLine]
    """Invalid lines not yet recorded in OUT."""
    already_done: int = 0
    torn_bytes: int = 0


def make_client(settings: FetchSettings, api_key: str) -> KeyAPIClient:
    """Build (but do not open) the client; a bad setting is a usage error."""
    options: ClientOptions = {
        "base_url": settings.base_url,
        "qps": settings.qps or None,  # --qps 0 switches the client-side cap off
        "max_credits": settings.max_credits,
        "timeout": settings.timeout,
        "max_attempts": settings.retries + 1,
        "user_agent": PROG,
    }
    # Passed only when given: otherwise the client derives it from qps and
    # timeout, so that the rate cap is filled whatever the API's latency.
    if settings.concurrency is not None:
        options["concurrency"] = settings.concurrency
    # Likewise: left out, the client applies its own defaults and environment.
    if settings.proxy is not None:
        options["proxy"] = settings.proxy
    if settings.redis_url is not None:
        options["redis_url"] = settings.redis_url
    if settings.redis_namespace is not None:
        options["redis_namespace"] = settings.redis_namespace
    with setting_errors():
        return KeyAPIClient(api_key, **options)


@contextlib.asynccontextmanager
async def open_client(client: KeyAPIClient) -> AsyncIterator[KeyAPIClient]:
    """Open ``client`` for a run; a setting unusable only now is a usage error (exit 2).

    Opening is where a Redis given by ``--redis-url`` is first reached: one
    that is not running ends the run here, with one line naming Redis and the
    address, before anything is sent or written.
    """
    with setting_errors():
        await client.__aenter__()
    try:
        yield client
    finally:
        await client.aclose()


def prepare_job(plan: InputPlan, output: str, *, resume: bool, overwrite: bool, fsync: bool) -> Job:
    """Check OUT, read it back when resuming (cutting a torn tail) and open it for appending."""
    if os.path.isdir(output):
        raise CLIError(f"{output!r} is a directory; -o needs a file path")
    if not resume and not overwrite and os.path.lexists(output):
        raise CLIError(
            f"{output!r} already exists: add --resume to continue it, "
            "or --overwrite to start it over"
        )
    state = scan_ledger(output, repair=True) if resume else LedgerState()
    mode: Literal["new", "append", "overwrite"] = (
        "append" if resume else "overwrite" if overwrite else "new"
    )
    writer = LedgerWriter(output, mode=mode, fsync=fsync)
    return _job(plan, output, writer, state)


def _job(plan: InputPlan, output: str, writer: LedgerWriter, state: LedgerState) -> Job:
    pending = [t for t in plan.targets if t not in state.done]
    return Job(
        plan=plan,
        output=output,
        writer=writer,
        pending=pending,
        new_invalid=[line for line in plan.invalid if line.text not in state.invalid],
        already_done=len(plan.targets) - len(pending),
        torn_bytes=state.torn_bytes,
    )


def resume_command(argv: Sequence[str], argv0: str | None = None) -> str:
    """The user's own ``fetch`` command line, with ``--resume`` (once) and no ``--overwrite``.

    It starts the way this process was started (see :mod:`._invocation`), so
    that it runs as pasted even when ``keyapi-stories`` is not on PATH.
    """
    args = [arg for arg in argv if arg != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shell_command(args, argv0)


def _list_invalid(plan: InputPlan, note: Callable[[str], None]) -> None:
    for line in plan.invalid[:_MAX_LISTED_INVALID]:
        note(f"invalid target on line {line.line_number}: {line.text!r} ({line.reason})")
    hidden = len(plan.invalid) - _MAX_LISTED_INVALID
    if hidden > 0:
        note(f"... and {hidden} more invalid lines")


def dry_run_report(
    plan: InputPlan, state: LedgerState | None, max_credits: int | None
) -> tuple[str, int]:
    """The ``--dry-run`` report (for stdout) and its exit status; invalid lines go to stderr."""
    _list_invalid(plan, lambda text: print(text, file=sys.stderr))
    done = state.done if state is not None else set()
    pending = [t for t in plan.targets if t not in done]
    estimate = estimate_credits(pending)
    rows = [
        ("lines read", plan.lines),
        ("valid targets", len(plan.targets)),
        ("invalid", len(plan.invalid)),
        ("duplicates", plan.duplicates),
        ("blank or comment", plan.skipped),
    ]
    if state is not None:
        rows.append(("already done in OUT", len(plan.targets) - len(pending)))
    rows.append(("to fetch", len(pending)))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label + ':':<{width + 1}} {value}" for label, value in rows]
    lines.append(
        f"{'credit estimate:':<{width + 1}} at most {estimate} "
        "(2 per target; failed requests are free)"
    )
    if max_credits is not None and estimate > max_credits:
        lines.append(
            f"note: --max-credits {max_credits} covers {max_credits // 2} of {len(pending)} "
            "targets; the rest would be not_attempted"
        )
    return "\n".join(lines), ExitCode.FAILED if plan.invalid else ExitCode.OK


class _Meter:
    """Requests per second over a sliding window of recent samples."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def rate(self, now: float, requests: int) -> float:
        samples = self._samples
        samples.append((now, requests))
        while len(samples) > 1 and samples[0][0] < now - _RATE_WINDOW:
            samples.popleft()
        then, before = samples[0]
        return (requests - before) / (now - then) if now > then else 0.0


@dataclass(slots=True)
class _Run:
    """The mutable state of one execution, shared by the loop and the signal handlers."""

    job: Job
    client: KeyAPIClient
    reporter: Reporter
    tally: Tally
    redact: Callable[[str], str]
    phase: str = "fetching"
    meter: _Meter = field(default_factory=_Meter)
    fatal: KeyAPIError | None = None
    interrupted: bool = False
    leftover: str | None = None
    """Why targets left without an outcome by the batch were not attempted."""
    written: set[str] = field(default_factory=set)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    capture: Capture | None = None

    def snapshot(self) -> Snapshot:
        stats = self.client.stats
        tally = self.tally
        now = time.monotonic()
        return Snapshot(
            done=tally.attempted,
            total=tally.total,
            ok=tally.ok,
            empty=tally.empty,
            failed=tally.failed,
            not_attempted=tally.not_attempted,
            requests=stats.requests_sent,
            rate_limited=stats.rate_limited,
            credits=stats.credits_spent,
            elapsed=now - tally.started,
            rate=self.meter.rate(now, stats.requests_sent),
            phase=self.phase,
            media=None if self.capture is None else self.capture.counts(),
        )


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
        run = _Run(
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


async def _execute(run: _Run, settings: FetchSettings, resume_hint: str | None) -> int:
    job, reporter = run.job, run.reporter
    writer = job.writer
    if job.torn_bytes:
        reporter.note(f"resume: removed a torn final line ({job.torn_bytes} bytes) from OUT")
    # Invalid input lines are errors: listed even with -q.
    _list_invalid(job.plan, _to_stderr if settings.quiet else reporter.note)
    try:
        for line in job.new_invalid:
            writer.write(invalid_line(line))
    except OSError as exc:
        raise CLIError(f"cannot write {job.output!r}: {exc.strerror or exc}") from None
    if job.already_done:
        reporter.note(f"resume: {job.already_done} targets already done in OUT are skipped")

    write_error: OSError | None = None
    capture = run.capture
    if job.pending or (capture is not None and capture.downloading):
        reporter.start()
        try:
            write_error = await _fetch_all(run, settings, resume_hint)
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

    code = _exit_code(run)
    _summarise(run, code, resume_hint, quiet=settings.quiet)
    return code


def _record_leftovers(run: _Run) -> OSError | None:
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


async def _fetch_all(run: _Run, settings: FetchSettings, resume_hint: str | None) -> OSError | None:
    """Run the batch to completion (or, after Ctrl-C, until nothing sent is unanswered)."""
    batch = run.client.fetch_many(run.job.pending)
    return await _BatchLoop(run, settings, resume_hint, batch).go()


@dataclass(slots=True)
class _BatchLoop:
    """One batch of a fetch run, in named steps: start, consume results, wind down, clean up."""

    run: _Run
    settings: FetchSettings
    resume_hint: str | None
    batch: StoryBatch
    background: list[asyncio.Task[None]] = field(default_factory=list)
    write_error: OSError | None = None
    deadline: asyncio.Timeout | None = None

    async def go(self) -> OSError | None:
        run, capture = self.run, self.run.capture
        await self._start_capture()
        self.background.append(asyncio.create_task(self._tick(run.reporter.refresh)))
        try:
            async with asyncio.timeout(None) as deadline:
                self.deadline = deadline
                if capture is not None:
                    capture.on_stop = self._on_capture_stop
                with Interrupts(self._on_first, self._on_second):
                    await self._consume()
                    if capture is not None:
                        # The batch is over; the files it found are still coming.
                        run.phase = "downloading" if run.phase == "fetching" else run.phase
                        await capture.drain()
        except TimeoutError:
            run.leftover = f"{_INTERRUPTED} before an answer arrived"
            run.reporter.note(
                f"--grace of {self.settings.grace:g}s expired; abandoning requests in flight"
            )
        finally:
            await self._clean_up()
        run.reporter.update(run.snapshot())
        return self.write_error

    async def _start_capture(self) -> None:
        capture = self.run.capture
        if capture is None:
            return
        capture.refetch = self.run.client.fetch_target
        resumed = await capture.resume_pending()
        if resumed:
            self.run.reporter.note(
                f"media: completing {resumed} files earlier runs left unfinished"
            )

    async def _consume(self) -> None:
        async for result in self.batch:
            if not await self._take(result):
                break

    async def _take(self, result: StoryResult) -> bool:
        """Write one result's line, record it; False when the loop must end (OUT unwritable)."""
        run = self.run
        try:
            run.job.writer.write(result_line(result, run.redact))
        except OSError as exc:
            self.write_error = exc
            self.batch.stop("cannot write the ledger")
            return False
        run.written.add(result.target)
        error = result.error
        run.tally.record(result.status, type(error).__name__ if error else None)
        capture = run.capture
        if capture is not None and error is None:
            try:
                await capture.record(result.target, result.stories, time.time())
            except ArchiveError as exc:
                capture.error = exc
                run.reporter.note(f"stopping: {exc}")
                self._on_capture_stop("archive error")
        if isinstance(error, NotAttemptedError):
            run.reasons[error.reason] += 1
        elif isinstance(error, STOP_ERRORS) and run.fatal is None:
            run.fatal = error
            stopped = self.batch.stopped_reason
            self._wind_down(stopped.reason if stopped else type(error).__name__)
        run.reporter.update(run.snapshot())
        return True

    async def _tick(self, period: float) -> None:
        # Keeps the rate, 429 and ETA figures moving while no result arrives
        # (a long 429 cooldown, slow answers).
        while True:
            await asyncio.sleep(period)
            self.run.reporter.update(self.run.snapshot())

    async def _settle(self) -> None:
        # After Ctrl-C the batch sends nothing new, but workers already queued
        # at the rate gate would each wait for a turn only to give it back: at
        # --qps 10 and 16 workers, 1.5 s of idling before the summary. Once
        # nothing sent is unanswered (twice in a row, so an answer being
        # decoded has reached the stream), no outcome is left that a request
        # paid for: close the batch, and the targets without an outcome get
        # their not_attempted lines afterwards.
        quiet_polls = 0
        while quiet_polls < 2:
            await asyncio.sleep(_IDLE_POLL)
            quiet_polls = quiet_polls + 1 if self.run.client.stats.in_flight == 0 else 0
        # Closing ends the consumer's iteration cleanly (no cancellation of
        # the consumer itself, so no received result can be dropped).
        await self.batch.aclose()

    def _wind_down(self, reason: str) -> None:
        run = self.run
        run.phase = "stopping"
        if run.leftover is None:
            run.leftover = reason
            self.background.append(asyncio.create_task(self._settle()))

    def _on_capture_stop(self, reason: str) -> None:
        # A full disk or a failing archive: nothing sent from now on could be
        # kept, so the batch stops like after Ctrl-C.
        self.batch.stop(reason)
        self._wind_down(reason)

    def _on_first(self, signum: int) -> None:
        run = self.run
        run.interrupted = True
        if run.capture is not None:
            run.capture.interrupt()
        self.batch.stop(_INTERRUPTED)
        self._wind_down(_INTERRUPTED)
        assert self.deadline is not None
        self.deadline.reschedule(asyncio.get_running_loop().time() + self.settings.grace)
        run.reporter.note(
            "Interrupted: sending no new requests; waiting up to "
            f"{self.settings.grace:g}s for those in flight (Ctrl-C again to quit now)"
        )

    def _on_second(self, signum: int) -> None:
        run = self.run
        run.reporter.note("Interrupted again: exiting now; finished results are in OUT.")
        run.reporter.close()
        if self.settings.fsync:
            run.job.writer.sync()
        if self.resume_hint is not None:
            print(f"To resume: {self.resume_hint}", file=sys.stderr, flush=True)
        os._exit(ExitCode.INTERRUPTED)

    async def _clean_up(self) -> None:
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        capture = self.run.capture
        if capture is not None:
            capture.refetch = None
            await capture.cancel()
        await self.batch.aclose()


def _exit_code(run: _Run) -> ExitCode:
    if run.interrupted:
        return ExitCode.INTERRUPTED
    if run.fatal is not None:
        return ExitCode.STOPPED
    tally = run.tally
    if tally.failed or tally.not_attempted or run.job.plan.invalid:
        return ExitCode.FAILED
    if run.capture is not None and run.capture.unfinished:
        return ExitCode.FAILED
    return ExitCode.OK


def _stop_reason(run: _Run, code: ExitCode) -> str | None:
    fatal = run.fatal
    if code is ExitCode.INTERRUPTED:
        return "interrupted"
    capture = run.capture
    if capture is not None and capture.disk_full is not None:
        return f"disk full: {capture.disk_full}"
    if capture is not None and capture.error is not None:
        return f"archive error: {capture.error}"
    if isinstance(fatal, InsufficientCreditsError):
        return f"402 credits exhausted: {run.redact(fatal.message)}"
    if isinstance(fatal, AuthenticationError):
        return f"401 key rejected: {run.redact(fatal.message)}"
    if isinstance(fatal, PermissionDeniedError):
        return f"403 permission denied: {run.redact(fatal.message)}"
    return None


def _summarise(run: _Run, code: ExitCode, resume_hint: str | None, *, quiet: bool) -> None:
    stats = run.client.stats
    tally = run.tally
    job = run.job
    summary = Summary(
        output=job.output,
        lines_read=job.plan.lines,
        targets=len(job.plan.targets),
        invalid=len(job.plan.invalid),
        duplicates=job.plan.duplicates,
        already_done=job.already_done,
        tally=tally,
        requests=stats.requests_sent,
        retries=stats.retries,
        rate_limited=stats.rate_limited,
        credits=stats.credits_spent,
        elapsed=time.monotonic() - tally.started,
        stopped=_stop_reason(run, code),
        top_errors=tally.error_types.most_common(5),
        reasons=run.reasons.most_common(3),
        media=None if run.capture is None else run.capture.counts(),
    )
    out = sys.stderr
    if quiet:
        print(summary.line(), file=out, flush=True)
        return
    render_summary(summary)
    if code is ExitCode.STOPPED and isinstance(run.fatal, AuthenticationError):
        print("The API rejected the key: check KEYAPI_API_KEY (or --api-key-file).", file=out)
    elif code is ExitCode.STOPPED and isinstance(run.fatal, PermissionDeniedError):
        print(
            "The API refused this key access to the endpoint (403): check the key's plan "
            "and permissions with keyapi.ai, then resume.",
            file=out,
        )
    elif code is ExitCode.STOPPED:
        print("The account is out of credits: top up, then resume.", file=out)
    if job.plan.invalid:
        print(
            f"{len(job.plan.invalid)} invalid input lines are recorded in OUT as "
            "InvalidTargetError and are not retried; fix or remove them in the input.",
            file=out,
        )
    capture = run.capture
    if capture is not None and capture.disk_full is not None:
        print(
            "The disk filled up: free some space, then run again; the files left pending "
            "are completed (the archive knows them).",
            file=out,
        )
    unfinished = tally.failed or tally.not_attempted or (capture is not None and capture.unfinished)
    if resume_hint is not None and (code is ExitCode.INTERRUPTED or unfinished):
        print(f"To resume: {resume_hint}", file=out)
    out.flush()
