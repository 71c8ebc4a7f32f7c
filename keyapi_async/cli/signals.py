"""Ctrl-C handling for a running fetch: the first stops gracefully, the second exits at once.

The handlers are installed with ``loop.add_signal_handler``, so they run as
ordinary event-loop callbacks: never in the middle of a ledger write, and
without a ``KeyboardInterrupt`` surfacing at some random ``await``. SIGTERM
(what service managers and ``timeout`` send) is treated like the first
Ctrl-C. Where the loop cannot install handlers (Windows), Ctrl-C stays a
``KeyboardInterrupt``; lines already written are still safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

__all__ = ["Interrupts", "grace_expired_note", "stopping_note"]

_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None
)


def stopping_note(grace: float) -> str:
    """What a run says on its first signal (the stories run and the highlights pass alike)."""
    return (
        f"Interrupted: sending no new requests; waiting up to {grace:g}s for those in flight "
        "(Ctrl-C again to quit now)"
    )


def grace_expired_note(grace: float) -> str:
    """What a run says when ``--grace`` ends before the answers in flight."""
    return f"--grace of {grace:g}s expired; abandoning requests in flight"


class Interrupts:
    """Routes the first SIGINT/SIGTERM to ``on_first`` and any later one to ``on_second``.

    Use as a context manager around the part of the run that sends requests;
    leaving it restores the default handlers.
    """

    def __init__(self, on_first: Callable[[int], None], on_second: Callable[[int], None]) -> None:
        self._on_first = on_first
        self._on_second = on_second
        self._loop: asyncio.AbstractEventLoop | None = None
        self._installed: list[int] = []
        self.received: int | None = None
        """The first signal number received, or None."""

    def _handle(self, signum: int) -> None:
        if self.received is None:
            self.received = signum
            self._on_first(signum)
        else:
            self._on_second(signum)

    def __enter__(self) -> Interrupts:
        self._loop = asyncio.get_running_loop()
        for signum in _SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.add_signal_handler(signum, self._handle, signum)
                self._installed.append(signum)
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        for signum in self._installed:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signum)
        self._installed.clear()
