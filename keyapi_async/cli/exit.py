"""The process exit statuses of ``keyapi-stories`` (documented in ``--help``)."""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator

__all__ = [
    "EXIT_CODES_HELP",
    "EXPORT_EXIT_CODES_HELP",
    "IMPORT_EXIT_CODES_HELP",
    "STATUS_EXIT_CODES_HELP",
    "WATCH_EXIT_CODES_HELP",
    "CLIError",
    "ExitCode",
    "setting_errors",
]


class ExitCode(enum.IntEnum):
    """What the exit status of a ``keyapi-stories`` run means."""

    OK = 0
    """Every target ended ``ok`` or ``empty`` (including ones done by an earlier run)."""
    FAILED = 1
    """Some targets ended ``error`` or ``not_attempted``, input lines were invalid, or
    some media files ended expired, failed or pending (disk full included)."""
    USAGE = 2
    """Bad command line, unreadable input or ledger, no API key, OUT exists, or the
    download directory or archive is unusable; nothing was sent."""
    STOPPED = 3
    """The API answered 401 (bad key), 403 (key not allowed) or 402 (no credits); the rest
    were not sent."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C (SIGINT) or SIGTERM; everything finished was written."""


EXIT_CODES_HELP = """\
exit status:
  0    every target ended ok or empty
  1    some targets failed (error / not_attempted), some input lines were invalid,
       or some media files ended expired, failed or pending (a full disk included)
  2    usage or input error: bad arguments, unreadable input or ledger, no API key
       (set KEYAPI_API_KEY or use --api-key-file), OUT exists without --resume/--overwrite,
       or the download directory or archive cannot be used; nothing was sent
  3    stopped early: the API answered 401 (bad key), 403 (key not allowed to call
       the endpoint) or 402 (credits exhausted)
  130  interrupted (Ctrl-C / SIGTERM); finished results are in OUT, run with --resume
"""

WATCH_EXIT_CODES_HELP = """\
exit status:
  0    stopped by SIGINT / SIGTERM after finishing the polls in flight
  2    usage error: bad arguments, unreadable FILE, no API key, a period of 24 h or
       more without --force, or the download directory or archive cannot be used
  3    stopped: the API answered 401 (bad key), 403 (key not allowed to call the
       endpoint) or 402 (credits exhausted), or the --max-credits total is spent
"""

STATUS_EXIT_CODES_HELP = """\
exit status:
  0    the report was printed
  2    the archive cannot be read
"""

EXPORT_EXIT_CODES_HELP = """\
exit status:
  0    every story was written
  2    the archive is missing or unreadable, the format needs a missing library,
       or the output cannot be written (a file is never left half-written)
"""

IMPORT_EXIT_CODES_HELP = """\
exit status:
  0    the ledger was imported (a torn final line is ignored)
  1    a line in the middle of the ledger is unreadable; the lines before it were imported
  2    the ledger or the archive cannot be opened
"""


class CLIError(Exception):
    """A problem to report in one line on stderr, ending the run with ``code``.

    Raised for usage and input errors found after argparse has finished
    (unreadable files, a missing key, a corrupt ledger); ``main`` prints the
    message and returns the code instead of showing a traceback.
    """

    def __init__(self, message: str, code: ExitCode = ExitCode.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@contextlib.contextmanager
def setting_errors(prefix: str = "") -> Iterator[None]:
    """Turn a bad setting (``ConfigurationError``, or any ``ValueError``) into a :class:`CLIError`.

    The one mapping of "a setting cannot be used" to one stderr line and exit
    status 2, used wherever the client, the downloader or their settings are
    built or opened (``ConfigurationError`` is a ``ValueError``).
    """
    try:
        yield
    except ValueError as exc:
        raise CLIError(f"{prefix}{exc}") from None
