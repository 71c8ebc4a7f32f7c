"""How a fetch run ends: its exit status, why it stopped, and the summary on stderr."""

from __future__ import annotations

import sys
import time

from .._errors import (
    AuthenticationError,
    InsufficientCreditsError,
    PermissionDeniedError,
)
from .batch_loop import Run
from .exit import ExitCode
from .progress import Summary, render_summary

__all__ = ["exit_code", "stop_reason", "summarise"]


def exit_code(run: Run) -> ExitCode:
    """The run's exit status: interrupted, stopped, failed (anything left undone) or ok."""
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


def stop_reason(run: Run, code: ExitCode) -> str | None:
    """Why the run stopped early, for the summary (None: it ran to the end)."""
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
    if run.tally.not_attempted and run.reasons:
        # The batch stopped itself: the API unreachable, the --max-credits budget spent.
        return run.redact(run.reasons.most_common(1)[0][0])
    return None


def summarise(run: Run, code: ExitCode, resume_hint: str | None, *, quiet: bool) -> None:
    """Print the summary (one line with ``quiet``) and the advice the outcome calls for."""
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
        stopped=stop_reason(run, code),
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
