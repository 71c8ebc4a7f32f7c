"""The fetch run: plan → ledger → batch → one line per target → summary → exit status.

Shared by ``keyapi-stories fetch`` and ``keyapi-stories demo`` (which runs
the very same engine against the embedded emulator).
"""

from __future__ import annotations

import asyncio
import collections
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .._batch import estimate_credits
from .._client import KeyAPIClient
from .._errors import (
    AuthenticationError,
    ConfigurationError,
    InsufficientCreditsError,
    KeyAPIError,
    NotAttemptedError,
)
from ._exit import CLIError, ExitCode
from ._inputs import InputPlan, InvalidLine
from ._ledger import (
    LedgerState,
    LedgerWriter,
    invalid_line,
    not_attempted_line,
    result_line,
    scan_ledger,
)
from ._progress import Reporter, Snapshot, Summary, Tally, make_reporter, render_summary
from ._signals import Interrupts

__all__ = [
    "FetchSettings",
    "Job",
    "dry_run_report",
    "execute",
    "make_client",
    "prepare_job",
    "resume_command",
]

#: How many invalid lines are listed on stderr before "... and N more".
_MAX_LISTED_INVALID = 20
_RATE_WINDOW = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchSettings:
    """How to send and how to show progress (the request and run-control options)."""

    qps: float | None = 10.0
    concurrency: int = 16
    max_credits: int | None = None
    timeout: float = 30.0
    retries: int = 4
    base_url: str | None = None
    progress: bool | None = None
    progress_interval: float = 10.0
    grace: float = 10.0
    fsync: bool = False


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
    try:
        return KeyAPIClient(
            api_key,
            base_url=settings.base_url,
            qps=settings.qps or None,  # --qps 0 switches the client-side cap off
            concurrency=settings.concurrency,
            max_credits=settings.max_credits,
            timeout=settings.timeout,
            max_attempts=settings.retries + 1,
            user_agent="keyapi-stories",
        )
    except ConfigurationError as exc:
        raise CLIError(str(exc)) from None


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


def resume_command(argv: Sequence[str]) -> str:
    """The user's own ``fetch`` command line, with ``--resume`` (once) and no ``--overwrite``."""
    args = [arg for arg in argv if arg != "--overwrite"]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["keyapi-stories", *args])


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
    written: set[str] = field(default_factory=set)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)

    def snapshot(self) -> Snapshot:
        stats = self.client.stats
        tally = self.tally
        now = time.monotonic()
        return Snapshot(
            done=tally.done,
            total=tally.total,
            ok=tally.ok,
            empty=tally.empty,
            failed=tally.failed + tally.not_attempted,
            requests=stats.requests_sent,
            rate_limited=stats.rate_limited,
            credits=stats.credits_spent,
            elapsed=now - tally.started,
            rate=self.meter.rate(now, stats.requests_sent),
            phase=self.phase,
        )


async def execute(
    client: KeyAPIClient,
    job: Job,
    settings: FetchSettings,
    *,
    redact: Callable[[str], str],
    resume_hint: str | None,
) -> int:
    """Fetch ``job.pending`` with ``client``, append every outcome to OUT, print the summary.

    Returns the exit status. Must run in the event loop that will receive
    Ctrl-C; it installs (and removes) the SIGINT/SIGTERM handlers itself.
    """
    writer = job.writer
    reporter = make_reporter(
        settings.progress, total=len(job.pending), interval=settings.progress_interval
    )
    run = _Run(
        job=job,
        client=client,
        reporter=reporter,
        tally=Tally(total=len(job.pending)),
        redact=redact,
    )
    if job.torn_bytes:
        reporter.note(f"resume: removed a torn final line ({job.torn_bytes} bytes) from OUT")
    _list_invalid(job.plan, reporter.note)
    try:
        for line in job.new_invalid:
            writer.write(invalid_line(line))
    except OSError as exc:
        raise CLIError(f"cannot write {job.output!r}: {exc.strerror or exc}") from None
    if job.already_done:
        reporter.note(f"resume: {job.already_done} targets already done in OUT are skipped")

    interrupted = False
    write_error: OSError | None = None
    if job.pending:
        reporter.start()
        try:
            interrupted, write_error = await _fetch_all(run, settings, resume_hint)
        finally:
            reporter.close()

    # Whatever the batch did not report (a --grace expiry cancelled it, or
    # writing failed) still gets its one line, so --resume retries it.
    if write_error is None:
        reason = "interrupted before an answer arrived" if interrupted else "no outcome reported"
        try:
            for target in job.pending:
                if target not in run.written:
                    writer.write(not_attempted_line(target, reason))
                    run.tally.record("not_attempted", None)
                    run.reasons[reason] += 1
        except OSError as exc:
            write_error = exc
    writer.close()
    if write_error is not None:
        raise CLIError(f"cannot write {job.output!r}: {write_error.strerror or write_error}")

    code = _exit_code(run, interrupted)
    _summarise(run, code, resume_hint)
    return code


async def _fetch_all(
    run: _Run, settings: FetchSettings, resume_hint: str | None
) -> tuple[bool, OSError | None]:
    """Run the batch to completion (or to the --grace deadline after Ctrl-C)."""
    loop = asyncio.get_running_loop()
    reporter, writer, tally, client = run.reporter, run.job.writer, run.tally, run.client
    interrupted = False
    write_error: OSError | None = None
    async with client:
        batch = client.fetch_many(run.job.pending)

        async def ticker(period: float) -> None:
            # Keeps the rate, 429 and ETA figures moving while no result
            # arrives (a long 429 cooldown, slow answers).
            while True:
                await asyncio.sleep(period)
                reporter.update(run.snapshot())

        ticking = asyncio.create_task(ticker(reporter.refresh))
        try:
            async with asyncio.timeout(None) as deadline:

                def on_first(signum: int) -> None:
                    nonlocal interrupted
                    interrupted = True
                    batch.stop("interrupted")
                    run.phase = "stopping"
                    deadline.reschedule(loop.time() + settings.grace)
                    reporter.note(
                        "Interrupted: sending no new requests; waiting up to "
                        f"{settings.grace:g}s for those in flight (Ctrl-C again to quit now)"
                    )

                def on_second(signum: int) -> None:
                    reporter.note("Interrupted again: exiting now; finished results are in OUT.")
                    reporter.close()
                    if settings.fsync:
                        writer.sync()
                    if resume_hint is not None:
                        print(f"To resume: {resume_hint}", file=sys.stderr, flush=True)
                    os._exit(ExitCode.INTERRUPTED)

                with Interrupts(on_first, on_second):
                    async for result in batch:
                        try:
                            writer.write(result_line(result, run.redact))
                        except OSError as exc:
                            write_error = exc
                            batch.stop("cannot write the ledger")
                            break
                        run.written.add(result.target)
                        error = result.error
                        tally.record(result.status, type(error).__name__ if error else None)
                        if isinstance(error, NotAttemptedError):
                            run.reasons[error.reason] += 1
                        elif (
                            isinstance(error, AuthenticationError | InsufficientCreditsError)
                            and run.fatal is None
                        ):
                            run.fatal = error
                            run.phase = "stopping"
                        reporter.update(run.snapshot())
        except TimeoutError:
            reporter.note(f"--grace of {settings.grace:g}s expired; abandoning requests in flight")
        finally:
            ticking.cancel()
            await batch.aclose()
        reporter.update(run.snapshot())
    return interrupted, write_error


def _exit_code(run: _Run, interrupted: bool) -> ExitCode:
    if interrupted:
        return ExitCode.INTERRUPTED
    if run.fatal is not None:
        return ExitCode.STOPPED
    tally = run.tally
    if tally.failed or tally.not_attempted or run.job.plan.invalid:
        return ExitCode.FAILED
    return ExitCode.OK


def _summarise(run: _Run, code: ExitCode, resume_hint: str | None) -> None:
    stats = run.client.stats
    tally = run.tally
    job = run.job
    stopped: str | None = None
    if code is ExitCode.INTERRUPTED:
        stopped = "interrupted"
    elif isinstance(run.fatal, InsufficientCreditsError):
        stopped = f"402 credits exhausted: {run.redact(run.fatal.message)}"
    elif isinstance(run.fatal, AuthenticationError):
        stopped = f"401 key rejected: {run.redact(run.fatal.message)}"
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
        stopped=stopped,
        top_errors=tally.error_types.most_common(5),
        reasons=run.reasons.most_common(3),
    )
    render_summary(summary)
    out = sys.stderr
    if code is ExitCode.STOPPED and isinstance(run.fatal, AuthenticationError):
        print(
            "The API rejected the key: check KEYAPI_API_KEY (or --api-key-file).",
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
    unfinished = tally.failed or tally.not_attempted
    if resume_hint is not None and (code is ExitCode.INTERRUPTED or unfinished):
        print(f"To resume: {resume_hint}", file=out)
    out.flush()
