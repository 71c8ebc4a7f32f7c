"""``/healthz`` (the process and its event loop) and ``/readyz`` (archive and API), judged purely.

A heartbeat task wakes every ``interval`` seconds and records how late it
woke: an event loop blocked by a long synchronous call shows up as lag,
and ``/healthz`` turns unhealthy when the last beat is older than
``stall_after``. Readiness asks two things: the archive answers a query,
and, for a running watch, the API answered a request recently (the
client's count of answers moved within ``reachable_within`` seconds, or the
watch started less than that long ago).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Heartbeat", "Readiness", "judge_ready"]


@dataclass(slots=True)
class Heartbeat:
    """The event loop's pulse and the last time the API answered (monotonic seconds)."""

    interval: float = 1.0
    stall_after: float = 10.0
    clock: Callable[[], float] = time.monotonic
    started: float = 0.0
    last_beat: float = 0.0
    lag: float = 0.0
    last_answer: float | None = None
    _answers: int = -1

    def beat(self, answers: int | None) -> None:
        """Record a beat; ``answers`` is the client's count of answered requests, if any."""
        now = self.clock()
        if self.last_beat:
            self.lag = max(0.0, now - self.last_beat - self.interval)
        self.last_beat = now
        if answers is not None:
            if answers != self._answers and self._answers >= 0:
                self.last_answer = now
            self._answers = answers

    def healthy(self) -> bool:
        """Whether the loop beat recently."""
        return self.clock() - self.last_beat < self.stall_after

    async def run(self, answers: Callable[[], int] | None) -> None:
        """Beat forever (cancel to stop)."""
        self.started = self.last_beat = self.clock()
        if answers is not None:
            self._answers = answers()
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(self.interval)
                self.beat(None if answers is None else answers())


@dataclass(frozen=True, slots=True)
class Readiness:
    """The verdict of ``/readyz`` and why."""

    ready: bool
    reason: str


def judge_ready(
    *,
    archive_ok: bool,
    archive_error: str | None,
    watching: bool,
    now: float,
    started: float,
    last_answer: float | None,
    sent: int,
    reachable_within: float,
) -> Readiness:
    """Ready when the archive answers and (for a watch) the API answered recently (pure)."""
    if not archive_ok:
        return Readiness(False, f"archive unreadable: {archive_error}")
    if not watching:
        return Readiness(True, "archive readable")
    if last_answer is not None and now - last_answer <= reachable_within:
        return Readiness(True, f"API answered {now - last_answer:.0f} s ago")
    if last_answer is None and now - started <= reachable_within:
        return Readiness(True, f"watch starting ({sent} requests sent)")
    if last_answer is None:
        return Readiness(False, "the API has not answered since the watch started")
    return Readiness(False, f"the API has not answered for {now - last_answer:.0f} s")
