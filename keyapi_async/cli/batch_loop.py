"""One batch of a fetch run, in named steps: start, consume results, wind down, clean up.

:class:`Run` is the run's mutable state, shared by the loop, the signal
handlers and the summary; :class:`BatchLoop` drives one batch over it.
"""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .._client import KeyAPIClient
from .._errors import (
    KeyAPIError,
    NotAttemptedError,
)
from ..archive import ArchiveError
from ..engine.batch import StoryBatch, StoryResult
from ..engine.fetch import STOP_ERRORS
from .capture import Capture
from .client import FetchSettings
from .exit import ExitCode
from .job import Job
from .ledger import (
    result_line,
)
from .progress import Reporter, Snapshot, Tally
from .signals import Interrupts, grace_expired_note, stopping_note

__all__ = ["BatchLoop", "Run", "exit_now", "fetch_all", "late_interrupts"]

_RATE_WINDOW = 5.0
INTERRUPTED = "interrupted"
"""The reason recorded for targets left by Ctrl-C."""
#: After Ctrl-C, how often to check whether anything sent is still unanswered.
_IDLE_POLL = 0.02


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
class Run:
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
        """The progress figures now (for the live display and the last frame)."""
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


def exit_now(run: Run, settings: FetchSettings, resume_hint: str | None) -> None:
    """A second Ctrl-C: print the resume command and exit 130 at once (every line is whole)."""
    run.reporter.note("Interrupted again: exiting now; finished results are in OUT.")
    run.reporter.close()
    if settings.fsync:
        run.job.writer.sync()
    if resume_hint is not None:
        print(f"To resume: {resume_hint}", file=sys.stderr, flush=True)
    os._exit(ExitCode.INTERRUPTED)


def late_interrupts(run: Run, settings: FetchSettings, resume_hint: str | None) -> Interrupts:
    """The Ctrl-C handlers from the batch's end to the summary.

    Nothing is in flight any more: a first Ctrl-C only makes the run end as
    interrupted (after its summary), one after an earlier Ctrl-C exits at once
    as :func:`exit_now`. Without them a Ctrl-C there was a bare
    ``KeyboardInterrupt``: no summary and no resume command.
    """

    def first(signum: int) -> None:
        if run.interrupted:
            exit_now(run, settings, resume_hint)
        run.interrupted = True

    return Interrupts(first, lambda signum: exit_now(run, settings, resume_hint))


async def fetch_all(run: Run, settings: FetchSettings, resume_hint: str | None) -> OSError | None:
    """Run the batch to completion (or, after Ctrl-C, until nothing sent is unanswered)."""
    batch = run.client.fetch_many(run.job.pending)
    return await BatchLoop(run, settings, resume_hint, batch).go()


@dataclass(slots=True)
class BatchLoop:
    """One batch of a fetch run, in named steps: start, consume results, wind down, clean up."""

    run: Run
    settings: FetchSettings
    resume_hint: str | None
    batch: StoryBatch
    background: list[asyncio.Task[None]] = field(default_factory=list)
    write_error: OSError | None = None
    deadline: asyncio.Timeout | None = None

    async def go(self) -> OSError | None:
        """Run the batch (and the downloads it started) to its end; the ledger's write error."""
        run, capture = self.run, self.run.capture
        await self._start_capture()
        self.background.append(asyncio.create_task(self._tick(run.reporter.refresh)))
        # The handlers stay through the clean-up; the caller installs late_interrupts
        # next, so no Ctrl-C finds Python's default handler before the summary.
        with Interrupts(self._on_first, self._on_second):
            try:
                async with asyncio.timeout(None) as deadline:
                    self.deadline = deadline
                    if capture is not None:
                        capture.on_stop = self._on_capture_stop
                    await self._consume()
                    if capture is not None:
                        # The batch is over; the files it found are still coming.
                        run.phase = "downloading" if run.phase == "fetching" else run.phase
                        await capture.drain()
            except TimeoutError:
                run.leftover = f"{INTERRUPTED} before an answer arrived"
                run.reporter.note(grace_expired_note(self.settings.grace))
            finally:
                self.deadline = None
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
        if self.deadline is None:  # cleaning up: nothing is left to stop
            return
        if run.capture is not None:
            run.capture.interrupt()
        self.batch.stop(INTERRUPTED)
        self._wind_down(INTERRUPTED)
        self.deadline.reschedule(asyncio.get_running_loop().time() + self.settings.grace)
        run.reporter.note(stopping_note(self.settings.grace))

    def _on_second(self, signum: int) -> None:
        exit_now(self.run, self.settings, self.resume_hint)

    async def _clean_up(self) -> None:
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        capture = self.run.capture
        if capture is not None:
            capture.refetch = None
            await capture.cancel()
        await self.batch.aclose()
