"""``-v/--verbose``: the library's own log lines on stderr, routed around the progress display.

The library logs through the ``keyapi_async`` logger and adds no handler of
its own (a library must not decide where logs go). The CLI attaches one for
the run: ``-v`` shows INFO (batch stops, 429 cooldowns, retries given up),
``-vv`` DEBUG (every retry and its wait). Each line passes the redactor on
its way out, a second line of defence should a message ever carry the key.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

__all__ = ["LIBRARY_LOGGER", "LineSink", "library_logs"]

LIBRARY_LOGGER = "keyapi_async"

LineSink = Callable[[str], None]


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _SinkHandler(logging.Handler):
    """Formats a record and hands the redacted line to a swappable sink."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.sink: LineSink = _to_stderr
        self._redact = redact
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self._redact(self.format(record))
            self.sink(line)
        except Exception:  # logging must never break the run
            self.handleError(record)


@contextlib.contextmanager
def library_logs(verbosity: int, redact: Callable[[str], str]) -> Iterator[_SinkHandler | None]:
    """Show the ``keyapi_async`` logger's records while the block runs (none at verbosity 0).

    Yields the handler (or None), whose ``sink`` the caller may point at the
    progress display's ``note`` so log lines land above a live bar.
    """
    if verbosity <= 0:
        yield None
        return
    logger = logging.getLogger(LIBRARY_LOGGER)
    handler = _SinkHandler(redact)
    level = logging.INFO if verbosity == 1 else logging.DEBUG
    handler.setLevel(level)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()
