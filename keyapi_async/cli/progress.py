"""What the user sees while a run goes and after it ends: a live bar or plain lines, a summary.

rich (the ``cli`` extra) draws a live bar on stderr when stderr is a
terminal, and the final summary as a table. Without rich everything falls
back to plain text, so the CLI works on a bare ``pip install keyapi-async``.
Only stderr is written to: stdout is left for output meant for programs.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.text import Text

__all__ = [
    "MediaCounts",
    "Reporter",
    "Snapshot",
    "Summary",
    "Tally",
    "make_reporter",
    "render_summary",
    "rich_available",
]


def rich_available() -> bool:
    """Whether rich can be imported (it is optional: the ``cli`` extra)."""
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(slots=True)
class Tally:
    """Outcomes of this run so far, counted as results are written."""

    total: int
    ok: int = 0
    empty: int = 0
    failed: int = 0
    not_attempted: int = 0
    started: float = field(default_factory=time.monotonic)
    error_types: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def done(self) -> int:
        """Targets with an outcome written (``not_attempted`` ones included)."""
        return self.attempted + self.not_attempted

    @property
    def attempted(self) -> int:
        """Targets that ended ``ok``, ``empty`` or ``error``: the progress actually made."""
        return self.ok + self.empty + self.failed

    def record(self, status: str, error_type: str | None) -> None:
        """Count one outcome (``error_type`` for failures, to rank them in the summary)."""
        if status == "ok":
            self.ok += 1
        elif status == "empty":
            self.empty += 1
        elif status == "not_attempted":
            self.not_attempted += 1
        else:
            self.failed += 1
            if error_type is not None:
                self.error_types[error_type] += 1


def byte_size(count: int) -> str:
    """A byte count for people: ``512 B``, ``48.2 kB``, ``3.4 MB``, ``1.20 GB``."""
    if count < 1000:
        return f"{count} B"
    if count < 1_000_000:
        return f"{count / 1e3:.1f} kB"
    if count < 1_000_000_000:
        return f"{count / 1e6:.1f} MB"
    return f"{count / 1e9:.2f} GB"


@dataclass(frozen=True, slots=True)
class MediaCounts:
    """The archive and media side of a run (``--archive``/``--download``) so far."""

    downloading: bool
    """Whether media is downloaded at all (``--download``)."""
    saved: int = 0
    """Files downloaded, verified and renamed into place in this run."""
    skipped: int = 0
    """Files already saved by an earlier run (nothing downloaded)."""
    expired: int = 0
    """Items whose signed URL the CDN refused (403/410)."""
    failed: int = 0
    """Items given up (retries used up, too large, refused URL), with a reason."""
    pending: int = 0
    """Items queued or in progress (at the end: left for the next run)."""
    bytes: int = 0
    """Bytes received from the CDN in this run."""
    stories: int = 0
    """Story items in the reels fetched this run."""
    new_stories: int = 0
    """Story ids the archive did not hold before this run."""
    resumed: int = 0
    """Unfinished files of earlier runs taken up again."""
    refreshed: int = 0
    """Accounts re-fetched for fresh media URLs (``--refresh-expired``)."""
    reasons: Sequence[tuple[str, int]] = ()
    """The most frequent reasons of failed items."""
    archive: str | None = None
    directory: str | None = None

    @property
    def files(self) -> int:
        """Files on disk for this run's items (saved now or earlier)."""
        return self.saved + self.skipped

    def phrase(self) -> str:
        """The media counts in a few words, for progress lines and the ``-q`` summary."""
        if not self.downloading:
            return f"{self.new_stories} new stories archived"
        text = f"files {self.saved} ({byte_size(self.bytes)})"
        if self.skipped:
            text += f", {self.skipped} already saved"
        if self.expired:
            text += f", {self.expired} expired"
        if self.failed:
            text += f", {self.failed} failed"
        if self.pending:
            text += f", {self.pending} pending"
        return text


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One frame of progress: outcome counts plus the client's request counters.

    ``done`` counts targets that ended ``ok``, ``empty`` or ``error``; targets
    given up after a stop are ``not_attempted``, shown apart and never as
    progress, so an interrupted run's bar does not jump to 100%.
    """

    done: int
    total: int
    ok: int
    empty: int
    failed: int
    not_attempted: int
    requests: int
    rate_limited: int
    credits: int
    elapsed: float
    rate: float
    """Requests per second over the last few seconds."""
    phase: str
    media: MediaCounts | None = None
    """Archive and download counters (None without ``--archive``/``--download``)."""

    @property
    def eta(self) -> float | None:
        """Seconds left at the average pace so far (None before the first outcome, or stopping)."""
        if self.done == 0 or self.elapsed <= 0 or self.phase != "fetching":
            return None
        return (self.total - self.done) * self.elapsed / self.done

    def line(self) -> str:
        """The frame as one plain-text line."""
        return (
            f"[{_duration(self.elapsed)}] {self.phase}: {self.done}/{self.total} "
            f"(ok {self.ok}, empty {self.empty}, failed {self.failed}"
            f"{f', not attempted {self.not_attempted}' if self.not_attempted else ''}) | "
            f"{self.rate:.1f} req/s | 429s {self.rate_limited} | "
            f"credits {self.credits} | ETA {_duration(self.eta)}"
            f"{f' | {self.media.phrase()}' if self.media is not None else ''}"
        )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    whole = int(seconds + 0.5)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Reporter(Protocol):
    """A progress display; the fetch loop calls ``update`` a few times a second."""

    refresh: float
    """Seconds between updates the display wants while no result arrives."""

    def start(self) -> None:
        """Begin displaying."""

    def update(self, snapshot: Snapshot) -> None:
        """Show a new frame (implementations decide whether to draw it)."""

    def note(self, message: str) -> None:
        """Print a message line without garbling the display."""

    def close(self) -> None:
        """Stop displaying (leaving the last frame visible)."""


class _Silent:
    """No progress; notes still go to stderr."""

    refresh = 1.0

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def start(self) -> None:
        pass

    def update(self, snapshot: Snapshot) -> None:
        pass

    def note(self, message: str) -> None:
        print(message, file=self._stream, flush=True)

    def close(self) -> None:
        pass


class _Quiet(_Silent):
    """``-q``: no progress and no notes; errors are printed by the caller."""

    def note(self, message: str) -> None:
        pass


class _PlainLines(_Silent):
    """One progress line every ``interval`` seconds, for logs and pipes."""

    def __init__(self, stream: IO[str], interval: float) -> None:
        super().__init__(stream)
        self._interval = interval
        self._next = time.monotonic() + interval
        self._last: Snapshot | None = None

    def update(self, snapshot: Snapshot) -> None:
        self._last = snapshot
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            self.note(snapshot.line())

    def close(self) -> None:
        # A final frame, so a log always ends with the complete count.
        if self._last is not None:
            self.note(self._last.line())


class _Swappable:
    """A renderable slot whose content is replaced atomically."""

    def __init__(self, renderable: Text) -> None:
        self.renderable = renderable

    def __rich__(self) -> Text:
        return self.renderable


class _RichBar:
    """rich's live display on stderr: the bar on one line, the counters on the next.

    Two short lines instead of one long one, so that everything stays
    readable in an 80-column terminal (rich would otherwise ellipsize it).
    """

    refresh = 0.25

    def __init__(self, console: Console, total: int) -> None:
        from rich.console import Group
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        self._text = Text
        self._progress: Progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=None),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
            expand=False,
        )
        self._task: TaskID = self._progress.add_task("fetching", total=total, eta="--")
        self._stats = _Swappable(Text(""))
        self._live: Live = Live(
            Group(self._progress, self._stats),
            console=console,
            refresh_per_second=8,
            # Keep the last frame on screen; the summary goes below it.
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def start(self) -> None:
        self._live.start()

    def update(self, snapshot: Snapshot) -> None:
        self._progress.update(
            self._task,
            completed=snapshot.done,
            description=snapshot.phase,
            eta=_duration(snapshot.eta),
        )
        stats = self._text()
        stats.append("  ok ", "green")
        stats.append(str(snapshot.ok))
        stats.append("  empty ", "cyan")
        stats.append(str(snapshot.empty))
        stats.append("  failed ", "red")
        stats.append(str(snapshot.failed))
        if snapshot.not_attempted:
            stats.append("  not attempted ", "yellow")
            stats.append(str(snapshot.not_attempted))
        stats.append(
            f"  |  {snapshot.rate:.1f} req/s  429s {snapshot.rate_limited}"
            f"  credits {snapshot.credits}"
        )
        if snapshot.media is not None:
            stats.append(f"  |  {snapshot.media.phrase()}")
        # Swapped in whole: rich renders from its own thread, and must never
        # see a half-built line.
        self._stats.renderable = stats

    def note(self, message: str) -> None:
        # Printed through the live console, the line lands above the display;
        # markup is off because targets are user text and may contain "[".
        self._live.console.print(message, markup=False, highlight=False)

    def close(self) -> None:
        self._live.stop()


def make_reporter(
    mode: bool | None,
    *,
    total: int,
    interval: float,
    stream: IO[str] | None = None,
    quiet: bool = False,
) -> Reporter:
    """Choose the display: ``mode`` None is auto (bar on a TTY, else nothing).

    ``True`` forces progress (the bar on a TTY, plain lines every ``interval``
    seconds otherwise or when rich is missing); ``False`` shows none.
    ``quiet`` (``-q``) shows neither progress nor notes.
    """
    out = stream if stream is not None else sys.stderr
    if quiet:
        return _Quiet(out)
    if mode is False:
        return _Silent(out)
    tty = out.isatty()
    if tty and rich_available():
        from rich.console import Console

        return _RichBar(Console(file=out), total)
    if mode is None and not tty:
        return _Silent(out)
    return _PlainLines(out, interval)


@dataclass(slots=True)
class Summary:
    """Everything the end-of-run table shows."""

    output: str
    lines_read: int
    targets: int
    invalid: int
    duplicates: int
    already_done: int
    tally: Tally
    requests: int
    retries: int
    rate_limited: int
    credits: int
    elapsed: float
    stopped: str | None = None
    top_errors: Sequence[tuple[str, int]] = ()
    """Most frequent error types among failed targets."""
    reasons: Sequence[tuple[str, int]] = ()
    """Why targets were not attempted."""
    media: MediaCounts | None = None
    """The archive and media side of the run, when there was one."""

    def counts(self) -> str:
        """The outcome counts in one phrase, for the ``-q`` summary line."""
        t = self.tally
        parts = [f"{t.ok} ok", f"{t.empty} empty", f"{t.failed} failed"]
        if t.not_attempted:
            parts.append(f"{t.not_attempted} not attempted")
        if self.invalid:
            parts.append(f"{self.invalid} invalid lines")
        if self.already_done:
            parts.append(f"{self.already_done} already done")
        return ", ".join(parts)

    def line(self, prog: str = "keyapi-stories") -> str:
        """The whole summary as one line (``-q``)."""
        state = f"stopped ({self.stopped})" if self.stopped else "done"
        return (
            # Of every distinct target: with --resume the tally holds only those sent now.
            f"{prog}: {state}: {self.counts()} of {self.targets} targets; "
            f"{self.requests} requests, {self.credits} credits, {self.elapsed:.1f}s; "
            f"{f'{self.media.phrase()}; ' if self.media is not None else ''}"
            f"ledger {self.output}"
        )

    def rows(self) -> list[tuple[str, str]]:
        """The table as (label, value) rows."""
        t = self.tally
        rate = self.requests / self.elapsed if self.elapsed > 0 else 0.0
        rows = [
            ("input lines", str(self.lines_read)),
            ("distinct valid targets", str(self.targets)),
            ("invalid lines", str(self.invalid)),
            ("duplicates skipped", str(self.duplicates)),
            ("already done (resume)", str(self.already_done)),
            ("attempted this run", f"{t.attempted} of {t.total}"),
            ("  ok (stories)", str(t.ok)),
            ("  empty (no stories)", str(t.empty)),
            ("  failed", str(t.failed)),
            ("  not attempted", str(t.not_attempted)),
            ("requests sent", f"{self.requests} ({self.retries} retries)"),
            ("429 answers", str(self.rate_limited)),
            ("credits spent", str(self.credits)),
            ("elapsed", f"{self.elapsed:.1f}s"),
            ("achieved rate", f"{rate:.1f} req/s"),
        ]
        if self.stopped:
            rows.append(("stopped", self.stopped))
        rows.extend((f"error: {name}", str(count)) for name, count in self.top_errors)
        rows.extend((f"not attempted: {why}", str(count)) for why, count in self.reasons)
        rows.append(("ledger", self.output))
        if self.media is not None:
            rows.extend(_media_rows(self.media))
        return rows


def _media_rows(media: MediaCounts) -> list[tuple[str, str]]:
    rows = [
        ("stories in fetched reels", str(media.stories)),
        ("  new to the archive", str(media.new_stories)),
    ]
    if media.downloading:
        rows += [
            ("media files saved", str(media.saved)),
            ("  bytes downloaded", f"{byte_size(media.bytes)} ({media.bytes})"),
            ("  skipped (already saved)", str(media.skipped)),
            ("  expired links", str(media.expired)),
            ("  failed downloads", str(media.failed)),
            ("  left pending", str(media.pending)),
        ]
        if media.resumed:
            rows.append(("  resumed from earlier runs", str(media.resumed)))
        if media.refreshed:
            rows.append(("  accounts re-fetched", str(media.refreshed)))
        rows.extend((f"media failed: {why}", str(count)) for why, count in media.reasons)
    if media.archive is not None:
        rows.append(("archive", media.archive))
    if media.directory is not None:
        rows.append(("download dir", media.directory))
    return rows


def render_summary(summary: Summary, stream: IO[str] | None = None) -> None:
    """Print the summary table to ``stream`` (stderr): rich if available, else text."""
    out = stream if stream is not None else sys.stderr
    rows = summary.rows()
    if rich_available():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title="keyapi-stories summary", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column(justify="right")
        for label, value in rows:
            table.add_row(Text(label), Text(value))
        Console(file=out, highlight=False).print(table)
        return
    width = max(len(label) for label, _ in rows)
    lines = ["keyapi-stories summary"] + [f"  {label:<{width}}  {value}" for label, value in rows]
    print("\n".join(lines), file=out, flush=True)
