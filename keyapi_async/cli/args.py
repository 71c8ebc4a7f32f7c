"""The command line of ``keyapi-stories``: subcommands, options and their help."""

from __future__ import annotations

import argparse
import textwrap
import typing
from collections.abc import Callable

from .. import __version__
from ..engine.config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_QPS,
    DEFAULT_TIMEOUT,
    REDIS_URL_ENV,
)
from ..engine.validate import count_option, number_option
from ..export import EXPORT_COLUMNS, ExportFormat
from ..media import DEFAULT_CONCURRENCY, DEFAULT_MAX_BYTES
from ..media.paths import DEFAULT_NAME_TEMPLATE, HIGHLIGHT_NAME_TEMPLATE, MEDIA_HOSTS_ENV
from ..testing.__main__ import EXIT_CODES_HELP as EMULATOR_EXIT_CODES_HELP
from ..testing.__main__ import add_emulator_arguments
from .exit import (
    EXIT_CODES_HELP,
    EXPORT_EXIT_CODES_HELP,
    IMPORT_EXIT_CODES_HELP,
    STATUS_EXIT_CODES_HELP,
    WATCH_EXIT_CODES_HELP,
)
from .highlights import add_highlight_options
from .invocation import PROG

__all__ = [
    "DEMO_OUTPUT",
    "PROG",
    "add_capture_options",
    "add_connection_options",
    "build_parser",
]

DEMO_OUTPUT = "keyapi-demo.jsonl"
DEFAULT_RETRIES = 4
DEFAULT_GRACE = 10.0

_DESCRIPTION = """\
Fetch the active Instagram stories of many accounts through keyapi.ai,
writing one JSON line per account to a ledger you can resume.
Start with:  keyapi-stories demo
"""

_FETCH_DESCRIPTION = f"""\
Read targets one per line: usernames, @handles, profile or story URLs, or id:<digits>
for numeric user ids (bare digits with --user-ids). Blank lines and # comments
are ignored; duplicates (after normalisation) are fetched once.

Each target gets exactly one line in OUT, written as soon as its outcome is
known: {{"target", "status" (ok|empty|error|not_attempted), "fetched_at",
"attempts", "stories" (the reel) or null, "error" {{"type", "status", "code",
"message", "request_id"}} or null}}. Invalid lines get an error line of type
InvalidTargetError and are never sent.

The API key comes from ${API_KEY_ENV} or --api-key-file, never from an argument.
Ctrl-C stops sending, lets in-flight requests finish (up to --grace seconds),
writes everything and prints the command to resume; a second Ctrl-C exits at once.
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-wrapped descriptions and shows defaults where they help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _verbosity_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output").add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only errors and a one-line summary (no progress, no notes)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="also show the library's log lines on stderr (-v: INFO, -vv: DEBUG)",
    )


def _progress_options(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live bar on a terminal, periodic lines otherwise; default: bar only on a terminal",
    )
    parser.add_argument(
        "--progress-interval",
        type=number_option("--progress-interval", positive=True),
        default=10.0,
        metavar="SECONDS",
        help="seconds between plain progress lines when not on a terminal (default: 10)",
    )


def add_connection_options(group: argparse._ActionsContainer) -> None:
    """Add the API request options (--qps ... --redis-namespace) shared by fetch and watch."""
    _add_pacing_options(group)
    _add_destination_options(group)


def _add_pacing_options(group: argparse._ActionsContainer) -> None:
    """How fast, how much and how persistently to send."""
    group.add_argument(
        "--qps",
        type=number_option("--qps"),
        default=DEFAULT_QPS,
        help=f"max requests per second; 0 = no client-side cap (default: {DEFAULT_QPS:g})",
    )
    group.add_argument(
        "--concurrency",
        type=count_option("--concurrency", minimum=1),
        default=None,
        metavar="N",
        help=(
            "max requests in flight (default: derived from --qps and --timeout "
            "so the cap is filled at any API latency)"
        ),
    )
    group.add_argument(
        "--max-credits",
        type=count_option("--max-credits", minimum=0),
        default=None,
        metavar="N",
        help="never spend more than N credits (2 per account); the rest are not_attempted",
    )
    group.add_argument(
        "--timeout",
        type=number_option("--timeout", positive=True),
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"per-request timeout (default: {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--retries",
        type=count_option("--retries", minimum=0),
        default=DEFAULT_RETRIES,
        metavar="N",
        help=f"retries of a transient failure (5xx, 429, network) (default: {DEFAULT_RETRIES})",
    )


def _add_destination_options(group: argparse._ActionsContainer) -> None:
    """Where requests go and with which key: the API, a proxy, the shared gate."""
    group.add_argument(
        "--base-url",
        default=None,
        metavar="URL",
        help=f"API root (default: ${BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    group.add_argument(
        "--api-key-file",
        metavar="PATH",
        help=f"read the API key from PATH instead of ${API_KEY_ENV}",
    )
    group.add_argument(
        "--proxy",
        default=None,
        metavar="URL",
        help="send API requests through this HTTP proxy (default: $HTTPS_PROXY/$HTTP_PROXY)",
    )
    group.add_argument(
        "--redis-url",
        default=None,
        metavar="URL",
        help=(
            f"share the rate limit and credit budget with other processes through Redis "
            f"(default: ${REDIS_URL_ENV})"
        ),
    )
    group.add_argument(
        "--redis-namespace",
        default=None,
        metavar="NAME",
        help="a separate shared gate and budget under the same key (with --redis-url)",
    )


def add_capture_options(parser: argparse.ArgumentParser) -> None:
    """Add the archive and media download options (--download ... --refresh-expired)."""
    group = parser.add_argument_group("archive and media download")
    group.add_argument(
        "--download",
        metavar="DIR",
        default=None,
        help="save every story's photo or video below DIR as it is fetched",
    )
    group.add_argument(
        "--archive",
        metavar="DB",
        default=None,
        help="record every story in this SQLite archive (default with --download: "
        "DIR/archive.sqlite3)",
    )
    group.add_argument(
        "--name-template",
        metavar="TEMPLATE",
        default=None,
        help=f"file layout below DIR (default: {DEFAULT_NAME_TEMPLATE.replace('%', '%%')})",
    )
    group.add_argument(
        "--highlight-template",
        metavar="TEMPLATE",
        default=None,
        help="file layout of highlights' items and covers below DIR (default: "
        f"{HIGHLIGHT_NAME_TEMPLATE.replace('%', '%%')})",
    )
    group.add_argument(
        "--media-hosts",
        metavar="HOSTS",
        default=None,
        help=f"extra CDN hosts to download from, comma separated host[:port] "
        f"(added to ${MEDIA_HOSTS_ENV} and the Instagram CDN)",
    )
    group.add_argument(
        "--max-media-bytes",
        type=count_option("--max-media-bytes", minimum=1),
        default=DEFAULT_MAX_BYTES,
        metavar="N",
        help=f"per-file size cap (default: {DEFAULT_MAX_BYTES})",
    )
    group.add_argument(
        "--media-concurrency",
        type=count_option("--media-concurrency", minimum=1),
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"media downloads in flight (default: {DEFAULT_CONCURRENCY})",
    )
    group.add_argument(
        "--refresh-expired",
        action="store_true",
        help="re-fetch an account once (2 credits) when its media links have expired",
    )
    group.add_argument(
        "--keep-raw",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep each story's JSON in the archive (captions, mentions, music for "
        "`serve`; a few kB a story); --no-keep-raw keeps only the typed columns",
    )


def _add_fetch(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fetch = commands.add_parser(
        "fetch",
        help="fetch targets from FILE (or stdin) into OUT.jsonl",
        description=_FETCH_DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    fetch.add_argument(
        "input", nargs="?", default="-", metavar="FILE", help="targets, one per line; - is stdin"
    )
    fetch.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        help="the JSONL ledger to write (required unless --dry-run)",
    )
    fetch.add_argument(
        "--user-ids", action="store_true", help="treat bare lines as numeric user ids"
    )
    mode = fetch.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue OUT: skip targets already ok/empty, retry the rest, append",
    )
    mode.add_argument(
        "--overwrite", action="store_true", help="start OUT over if it exists (default: refuse)"
    )
    fetch.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and count the input and estimate credits; send nothing",
    )
    add_connection_options(fetch.add_argument_group("request settings"))
    add_capture_options(fetch)
    add_highlight_options(fetch)
    run = fetch.add_argument_group("run control")
    _progress_options(run)
    run.add_argument(
        "--grace",
        type=number_option("--grace"),
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help=f"after Ctrl-C, wait this long for in-flight requests (default: {DEFAULT_GRACE:g})",
    )
    run.add_argument(
        "--fsync", action="store_true", help="fsync OUT after every line (survives power loss)"
    )
    _verbosity_options(fetch)


def _add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="run a fetch against the built-in emulator (no key, no network)",
        description=(
            "Start the offline emulator on a free loopback port (with a QPS cap and a few\n"
            "injected faults, so retries and 429 handling show), fetch N synthetic\n"
            "accounts from it with the real fetch engine, and print the summary.\n"
            f"Uses the emulator's own fake key; ${API_KEY_ENV} is never read."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    demo.add_argument(
        "--accounts",
        type=count_option("--accounts", minimum=1),
        default=300,
        metavar="N",
        help="synthetic accounts to fetch (default: 300, about 15 s)",
    )
    demo.add_argument(
        "--qps",
        type=number_option("--qps", positive=True),
        default=25.0,
        help="the emulator's QPS cap; the client runs 20%% above it to provoke 429s (default: 25)",
    )
    demo.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        default=None,
        help=f"ledger path (default: ./{DEMO_OUTPUT}, replaced on every demo run)",
    )
    demo.add_argument(
        "--overwrite", action="store_true", help="replace OUT if it exists (given with -o)"
    )
    demo.add_argument(
        "--download",
        metavar="DIR",
        default=None,
        help="save the synthetic stories' media (and archive.sqlite3) in DIR "
        "(default: a temporary directory, removed at the end)",
    )
    _progress_options(demo)
    _verbosity_options(demo)


def _add_emulator(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    emulator = commands.add_parser(
        "emulator",
        help="serve the offline emulator of the API for your own tests",
        description=(
            "Serve the offline emulator of keyapi.ai's fetch_user_stories API on loopback\n"
            "until Ctrl-C. Prints one KEYAPI_BASE_URL=... line on stdout, and on stderr\n"
            "the `export` line to paste into another shell (with the emulator's fake key).\n"
            "The same command as `python -m keyapi_async.testing`."
        ),
        epilog=EMULATOR_EXIT_CODES_HELP,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    # One definition of the options for both spellings of the command.
    add_emulator_arguments(emulator)


def _add_export(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = commands.add_parser(
        "export",
        help="write an archive's stories as CSV, JSON Lines or Parquet",
        description="\n".join(
            [
                *textwrap.wrap(
                    "Write one row per story item of the archive DB: "
                    f"{', '.join(EXPORT_COLUMNS)}. Timestamps are ISO 8601 UTC (Z).",
                    width=80,
                ),
                "Written to a temporary file renamed into place, or to stdout with -o -.",
            ]
        ),
        epilog=EXPORT_EXIT_CODES_HELP,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    export.add_argument(
        "archive", metavar="DB", help="the archive (from fetch --archive/--download)"
    )
    export.add_argument(
        "-f",
        "--format",
        choices=typing.get_args(ExportFormat),
        default="csv",
        help="csv (RFC 4180), jsonl, or parquet (needs pyarrow) (default: csv)",
    )
    export.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default="-",
        help="where to write; - is stdout (default: -; parquet to a pipe, not a terminal)",
    )


def _add_import_ledger(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imported = commands.add_parser(
        "import-ledger",
        help="record the stories of an existing JSONL ledger in an archive",
        description=(
            "Record every fetched reel of a fetch ledger in the archive DB (created if\n"
            "missing). Idempotent: importing the same ledger twice adds nothing."
        ),
        epilog=IMPORT_EXIT_CODES_HELP,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    imported.add_argument("ledger", metavar="LEDGER", help="a ledger written by fetch -o")
    imported.add_argument(
        "--archive", metavar="DB", required=True, help="the archive to record into"
    )


# -- watch and status (watch mode, issue 10) ----------------------------------


def _add_watch(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .serve import parse_address
    from .watch import parse_duration

    watch = commands.add_parser(
        "watch",
        help="poll the accounts of FILE forever, capturing every new story once",
        description=(
            "Poll every account of FILE once per --every period, spread evenly across it\n"
            "(1,000 accounts every 12h is one poll every 43 s), recording every new story\n"
            "in the archive (and saving its media with --download). The schedule and the\n"
            "daily credit budget live in the archive: a restart polls nothing before it is\n"
            "due. FILE is re-read every cycle, so edits take effect without a restart.\n"
            "SIGINT/SIGTERM finish the polls in flight and exit 0."
        ),
        epilog=WATCH_EXIT_CODES_HELP,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    watch.add_argument("input", metavar="FILE", help="accounts, one per line (re-read every cycle)")
    _add_watch_schedule(watch, parse_duration)
    _add_watch_hooks(watch)
    watch.add_argument(
        "--force", action="store_true", help="accept a period of 24h or more (misses stories)"
    )
    watch.add_argument(
        "--user-ids", action="store_true", help="treat bare lines as numeric user ids"
    )
    watch.add_argument(
        "--grace",
        type=number_option("--grace"),
        default=2.5,
        metavar="SECONDS",
        help="on SIGINT/SIGTERM, wait this long for polls in flight (default: 2.5)",
    )
    add_connection_options(watch.add_argument_group("request settings"))
    add_capture_options(watch)
    web = watch.add_argument_group("status page and metrics (the web extra)")
    web.add_argument(
        "--serve",
        type=parse_address,
        default=None,
        metavar="ADDR",
        help="serve /status, /metrics, /healthz and /readyz on ADDR (127.0.0.1:9100 or :9100)",
    )
    _web_guard_options(web)
    _verbosity_options(watch)


def _web_guard_options(group: argparse._ActionsContainer) -> None:
    group.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow an address other than loopback (reachable from other machines)",
    )
    group.add_argument(
        "--token",
        default=None,
        metavar="TOKEN",
        help="require TOKEN on every page (also KEYAPI_SERVE_TOKEN); open /?token=TOKEN once",
    )


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="browse a capture in a local web gallery, with status page and /metrics",
        description=(
            "Serve a local gallery over a capture: DIR (a download directory with its\n"
            "DIR/archive.sqlite3) or an archive file (its media relative to its folder).\n"
            "Read-only, works while fetch or watch writes. Pages: accounts, timelines,\n"
            "a story player, new since your last visit, /status; and /metrics,\n"
            "/healthz, /readyz. Binds 127.0.0.1 unless told otherwise."
        ),
        epilog=STATUS_EXIT_CODES_HELP.replace("the report was printed", "stopped by Ctrl-C"),
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    serve.add_argument("target", metavar="DIR_OR_ARCHIVE", help="download directory or archive")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=count_option("--port", minimum=0),
        default=8080,
        help="port to bind (default: 8080; 0 picks a free one)",
    )
    _web_guard_options(serve)


def _add_watch_schedule(
    watch: argparse.ArgumentParser, parse_duration: Callable[[str], float]
) -> None:
    """When ``watch`` polls and what it may spend."""
    watch.add_argument(
        "--every",
        type=parse_duration,
        required=True,
        metavar="PERIOD",
        help="poll each account once per PERIOD (90s, 15m, 12h; under 24h)",
    )
    watch.add_argument(
        "--max-credits-per-day",
        type=count_option("--max-credits-per-day", minimum=2),
        default=None,
        metavar="N",
        help="rolling 24-hour credit cap kept in the archive; polls wait when it is reached",
    )
    watch.add_argument(
        "--highlights-every",
        type=parse_duration,
        default=None,
        metavar="PERIOD",
        help="also poll each account's highlight tray once per PERIOD (e.g. 24h; default: "
        "off) and fetch the highlights that changed, inside the same daily budget",
    )


def _add_watch_hooks(watch: argparse.ArgumentParser) -> None:
    """What ``watch`` runs for each new story."""
    watch.add_argument(
        "--on-new",
        metavar="CMD",
        default=None,
        help="run CMD (split like a shell line, never run by a shell) for each new story, "
        "with the story's JSON on stdin",
    )
    watch.add_argument(
        "--on-new-timeout",
        type=number_option("--on-new-timeout", positive=True),
        default=60.0,
        metavar="SECONDS",
        help="kill an --on-new command after this long (default: 60)",
    )


def _add_status(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status",
        help="show a watch archive's schedule: last and next poll, stories, credits",
        description=(
            "Print, for every account a watch follows in the archive DB, the last poll,\n"
            "the next poll, the stories captured and saved, and the credits used in the\n"
            "last 24 hours. Read-only: safe while the watch runs."
        ),
        epilog=STATUS_EXIT_CODES_HELP,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    status.add_argument("archive", metavar="DB", help="the watch's archive")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``keyapi-stories`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=_DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=_Formatter,
        # Exact option names only: the resume hint re-uses the user's own
        # arguments, and abbreviations would make "--resume" detection fuzzy.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    _add_fetch(commands)
    _add_demo(commands)
    _add_emulator(commands)
    _add_export(commands)
    _add_import_ledger(commands)
    _add_watch(commands)
    _add_status(commands)
    _add_serve(commands)
    return parser
