"""``keyapi-stories watch`` (poll accounts forever) and ``keyapi-stories status`` (its report).

``watch`` is a thin shell around :class:`keyapi_async.watch.Watcher`: it
reads FILE (again every cycle, so edits take effect without a restart),
prints the credit forecast, logs one line per event worth knowing on stderr,
runs ``--on-new`` for each new story and turns SIGINT/SIGTERM into a
graceful stop (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import shlex
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from .._errors import (
    AuthenticationError,
    ConfigurationError,
    InsufficientCreditsError,
    NotAttemptedError,
)
from ..engine.fetch import STOP_ERRORS
from ..engine.validate import check_number
from .exit import CLIError, ExitCode
from .signals import Interrupts

if TYPE_CHECKING:
    from .._client import KeyAPIClient
    from ..archive import StoryArchive
    from ..media import MediaDownloader
    from ..watch import StoryEvent, Watcher, WatchStats

__all__ = ["parse_duration", "run_status", "run_watch"]

_WARN_PERIOD: Final = 18 * 3600.0  # beyond this a poll delayed by a few hours misses stories
_HOOK_CONCURRENCY: Final = 4
_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)

logger = logging.getLogger("keyapi_async.watch")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``1d`` -> seconds (argparse type)."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 15m, 12h)")
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    try:
        return check_number(seconds, f"the duration {text.strip()!r}", positive=True)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _human(seconds: float) -> str:
    for unit, size in (("d", 86_400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _iso(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class _Lines(logging.Handler):
    """Plain timestamped lines on stderr (a service's log, not a progress bar)."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self._redact = redact
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self._redact(self.format(record)), file=sys.stderr, flush=True)
        except Exception:  # logging must never stop the watch
            self.handleError(record)


@contextlib.contextmanager
def _logging(level: int, redact: Callable[[str], str]) -> Iterator[None]:
    root = logging.getLogger("keyapi_async")
    handler = _Lines(redact)
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def _accounts_reader(path: str, user_ids: bool) -> Callable[[], list[str]]:
    from .inputs import read_input

    def read() -> list[str]:
        plan = read_input(path, user_ids=user_ids)
        return plan.targets

    return read


async def _run_hook(argv: list[str], payload: bytes, limit: float, story_id: str) -> None:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=None,
        )
    except OSError as exc:
        logger.warning("--on-new for story %s could not start: %s", story_id, exc)
        return
    try:
        async with asyncio.timeout(limit):
            await process.communicate(payload)
    except TimeoutError:
        process.kill()
        await process.wait()
        logger.warning("--on-new for story %s killed after %g s", story_id, limit)
        return
    except (BrokenPipeError, ConnectionResetError):
        await process.wait()  # it did not read stdin: its exit status still counts
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    if process.returncode:
        logger.warning("--on-new for story %s exited with status %s", story_id, process.returncode)


def _hook_argv(command: str | None) -> list[str] | None:
    """``--on-new`` split like a shell line; a line that cannot be split is a usage error."""
    if command is None:
        return None
    try:
        argv = shlex.split(command)
    except ValueError as exc:  # an unclosed quote, a trailing backslash
        raise CLIError(f"--on-new {command!r}: {str(exc).lower()}") from None
    if not argv:
        raise CLIError("--on-new is empty")
    return argv


def run_watch(args: argparse.Namespace) -> int:
    """Run ``keyapi-stories watch``; return the exit status."""
    from .apikey import Redactor, resolve_api_key

    every: float = args.every
    if every >= 86_400 and not args.force:
        raise CLIError(
            f"--every {_human(every)} cannot capture every story: stories live 24 h, so a "
            "period of 24 h or more misses some. Use a shorter period (12h is typical) "
            "or add --force"
        )
    if args.archive is None and args.download is None:
        raise CLIError(
            "give --archive DB (or --download DIR, whose archive is DIR/archive.sqlite3)"
        )
    if args.refresh_expired:
        # Each poll brings fresh URLs anyway; re-fetching on top would pay twice.
        raise CLIError(
            "--refresh-expired is for fetch: watch polls every account each period, "
            "and a file left pending is downloaded from the next poll's fresh URL"
        )
    hook = _hook_argv(args.on_new)
    key = resolve_api_key(args.api_key_file)
    reader = _accounts_reader(args.input, args.user_ids)
    accounts = reader()
    if not accounts:
        raise CLIError(f"no valid accounts in {args.input!r}")
    redact = Redactor(key)
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose > 1 else logging.INFO
    with _logging(level, redact):
        return asyncio.run(_watch(args, key, reader, len(accounts), hook))


def _forecast(args: argparse.Namespace, count: int) -> None:
    from ..watch import forecast_credits_per_day

    every: float = args.every
    per_day = forecast_credits_per_day(count, every)
    print(
        f"watching {count} accounts every {_human(every)}: one poll every "
        f"{every / count:.1f} s, forecast {per_day:,.0f} credits/day "
        f"({count} accounts x {86_400 / every:.6g} polls/day x 2)",
        file=sys.stderr,
        flush=True,
    )
    if every >= 86_400:
        print("WARNING: a period of 24 h or more WILL miss stories (--force)", file=sys.stderr)
    elif every > _WARN_PERIOD:
        print(
            f"warning: --every {_human(every)} is close to a story's 24 h lifetime: a delayed "
            "poll (budget wait, outage, restart) can miss stories",
            file=sys.stderr,
        )
    trays: float | None = args.highlights_every
    if trays is not None:
        tray_credits = forecast_credits_per_day(count, trays)
        per_day += tray_credits
        print(
            f"highlight trays every {_human(trays)}: {tray_credits:,.0f} credits/day, plus 2 "
            "per highlight that changed (each fetched once per change)",
            file=sys.stderr,
            flush=True,
        )
    cap = args.max_credits_per_day
    if cap is not None and cap < per_day:
        print(
            f"warning: --max-credits-per-day {cap} is below the forecast; polls will wait "
            "for the budget and stories may expire unseen",
            file=sys.stderr,
        )


async def _watch(
    args: argparse.Namespace,
    key: str,
    reader: Callable[[], list[str]],
    count: int,
    hook: list[str] | None,
) -> int:
    """Open the parts (each unusable one is exit 2, before any poll), follow the watch, report."""
    from ..archive import ArchiveError
    from ..watch import Watcher
    from .serve import serving_watch

    try:
        async with _open_parts(args, key) as (client, archive, downloader):
            _forecast(args, count)
            watcher = Watcher(
                client,
                archive,
                reader,
                every=args.every,
                max_credits_per_day=args.max_credits_per_day,
                downloader=downloader,
                highlights_every=args.highlights_every,
            )
            stats = (lambda: client.stats, lambda: watcher.stats)
            async with (
                serving_watch(args, archive.path, *stats),
                _Hooks(hook, args.on_new_timeout) as hooks,
            ):
                code = await _follow(watcher, hooks, args.grace)
            _print_stats(watcher.stats)
    except ArchiveError as exc:
        raise CLIError(str(exc)) from None
    return code


@contextlib.asynccontextmanager
async def _open_parts(
    args: argparse.Namespace, key: str
) -> AsyncIterator[tuple[KeyAPIClient, StoryArchive, MediaDownloader | None]]:
    """The client, the archive and the downloader, built from the settings as for ``fetch``."""
    from ..archive.highlights import HIGHLIGHTS_SCHEMA
    from ..watch import open_watch_archive
    from .capture import capture_settings_from_args, open_downloader
    from .client import make_client, open_client, settings_from_args

    client = make_client(settings_from_args(args), key)
    media = capture_settings_from_args(args)
    assert media.archive_path is not None  # run_watch requires --archive or --download
    extensions = [HIGHLIGHTS_SCHEMA] if args.highlights_every is not None else []
    async with (
        open_downloader(media) as downloader,
        open_watch_archive(
            media.archive_path, extensions=extensions, keep_raw=media.keep_raw
        ) as archive,
        open_client(client),
    ):
        yield client, archive, downloader


async def _follow(watcher: Watcher, hooks: _Hooks, grace: float) -> ExitCode:
    """Run the watch until SIGINT/SIGTERM (exit 0) or a 401/402/403 (exit 3)."""
    consumer = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_first(signum: int) -> None:
        logger.info("stopping: finishing the polls in flight (up to %g s)", grace)
        watcher.stop()
        if consumer is not None:
            loop.call_later(grace, consumer.cancel)

    def on_second(signum: int) -> None:
        if consumer is not None:
            consumer.cancel()

    code = ExitCode.OK
    with Interrupts(on_first, on_second):
        try:
            async for event in watcher.events():
                hooks.start(event)
        except STOP_ERRORS as exc:
            print(
                f"keyapi-stories: stopped: the API answered {exc.status}: {exc.message}"
                + _advice(exc),
                file=sys.stderr,
            )
            code = ExitCode.STOPPED
        except NotAttemptedError as exc:  # the poller stops the watch only for --max-credits
            print(
                f"keyapi-stories: stopped: {exc.reason}: the --max-credits budget is spent "
                "(a total; --max-credits-per-day is the rolling cap that waits instead)",
                file=sys.stderr,
            )
            code = ExitCode.STOPPED
        except asyncio.CancelledError:
            if not watcher.stopping:
                raise
        await hooks.wait(grace)
    return code


def _print_stats(stats: WatchStats) -> None:
    print(
        f"watch stopped: {stats.polls} polls"
        + (f" and {stats.tray_polls} highlight-tray polls" if stats.tray_polls else "")
        + f", {stats.new_stories} new stories, "
        f"{stats.credits} credits, {stats.errors} errors",
        file=sys.stderr,
        flush=True,
    )


class _Hooks:
    """The ``--on-new`` commands: at most a few at once, waited for on a stop, then cancelled."""

    def __init__(self, argv: list[str] | None, limit: float) -> None:
        self._argv = argv
        self._limit = limit
        self._slots = asyncio.Semaphore(_HOOK_CONCURRENCY)
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> _Hooks:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def start(self, event: StoryEvent) -> None:
        """Run the command for ``event`` (nothing without ``--on-new``)."""
        if self._argv is None:
            return
        task = asyncio.ensure_future(self._run(self._argv, event.to_json(), event.story_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, argv: list[str], payload: bytes, story_id: str) -> None:
        async with self._slots:
            await _run_hook(argv, payload, self._limit, story_id)

    async def wait(self, grace: float) -> None:
        """Give the running commands up to ``grace`` seconds to finish."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(grace, 0.1)):
                    await asyncio.gather(*self._tasks, return_exceptions=True)


def _advice(exc: Exception) -> str:
    if isinstance(exc, AuthenticationError):
        return " (check KEYAPI_API_KEY or --api-key-file)"
    if isinstance(exc, InsufficientCreditsError):
        return " (the account is out of credits: top up, then run watch again)"
    return " (the key may not call this endpoint)"


def run_status(args: argparse.Namespace) -> int:
    """Print ``keyapi-stories status DB``: per account last/next poll, stories, credits."""
    from ..archive import ArchiveError, StoryArchive

    try:
        archive = StoryArchive.connect(args.archive, readonly=True)
    except ArchiveError as exc:
        raise CLIError(str(exc)) from None
    from ..watch import read_status

    with archive:
        status = archive.read(lambda conn: read_status(conn, time.time()))
        stories = {a.target: (a.stories, a.saved) for a in archive.accounts()}
    if status is None or not status.accounts:
        print(f"{args.archive}: no watch schedule (run keyapi-stories watch with this archive)")
        return ExitCode.OK
    rows = status.accounts
    width = max(7, *(len(r.target) for r in rows))
    print(
        f"{'account':<{width}}  {'last poll':<20}  {'next poll':<20}  {'polls':>5}  "
        f"{'stories':>7}  {'saved':>5}  status"
    )
    for row in rows:
        count, saved = stories.get(row.target, (0, 0))
        shown = (row.last_status or "-") if row.active else "removed"
        upcoming = _iso(row.next_poll_at) if row.active else "-"
        print(
            f"{row.target:<{width}}  {_iso(row.last_poll_at):<20}  {upcoming:<20}  "
            f"{row.polls:>5}  {count:>7}  {saved:>5}  {shown}"
        )
    cap = status.max_credits_per_day
    limit = "no cap" if cap is None else f"cap {cap}"
    active_count = sum(1 for r in rows if r.active)
    print(
        f"{active_count} accounts watched; credits used in the last 24 h: "
        f"{status.spent_last_day} ({limit})",
    )
    return ExitCode.OK
