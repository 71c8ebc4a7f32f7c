"""One poll of one account: fetch its reel, record it, save its new stories' files.

What the poll found and what it cost come back as a :class:`PollOutcome`; the
watcher settles it (schedule, budget, statistics) and hands out the events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._errors import KeyAPIError, NotAttemptedError, NotFoundError, ResponseDecodeError
from ..archive import StoryArchive
from ..archive.highlights import save_highlights
from ..capture import MediaRecorder
from ..engine.fetch import STOP_ERRORS
from ..highlight_media import HighlightMedia
from ..models import Reel
from .events import StoryEvent
from .schedule import next_poll_at
from .schema import CREDITS_PER_POLL
from .store import PollRecord

if TYPE_CHECKING:
    from .._client import KeyAPIClient
    from ..media import MediaDownloader

__all__ = ["PollOutcome", "Poller"]

logger = logging.getLogger("keyapi_async.watch")


@dataclass(frozen=True, slots=True)
class PollOutcome:
    """What one poll found, cost and means for the schedule."""

    record: PollRecord
    """The row updates (next due time, credits, status)."""
    events: list[StoryEvent]
    """One per story new to the archive, in the reel's order."""
    fatal: KeyAPIError | None = None
    """A 401, 402 or 403, or the ``max_credits`` budget spent: the watch must stop."""


def _budget_spent(error: KeyAPIError) -> bool:
    """Whether ``error`` is ``max_credits`` refusing to send: nothing can go out again."""
    return isinstance(error, NotAttemptedError) and error.reason == NotAttemptedError.BUDGET_REACHED


class Poller:
    """Polls accounts with ``client``, recording into ``archive`` (and saving media)."""

    __slots__ = ("_downloader", "_media", "archive", "client", "every", "run_id")

    def __init__(
        self,
        client: KeyAPIClient,
        archive: StoryArchive,
        downloader: MediaDownloader | None,
        every: float,
    ) -> None:
        self.client = client
        self.archive = archive
        self.every = every
        self.run_id: int | None = None
        """The archive run new stories are recorded under."""
        self._downloader = downloader
        self._media = None if downloader is None else MediaRecorder(archive, downloader)

    async def poll(self, target: str, due: float, started: float) -> PollOutcome:
        """Poll ``target`` (due at ``due``, started at ``started``).

        API errors end in the outcome; archive and disk errors propagate.
        """
        spent, status, error = 0, "ok", None
        events: list[StoryEvent] = []
        fatal: KeyAPIError | None = None
        try:
            reel = await self.client.fetch_target(target)
        except STOP_ERRORS as exc:
            status, error, fatal = "fatal", str(exc), exc
        except KeyAPIError as exc:
            if _budget_spent(exc):  # like a 402: no poll can ever be sent again
                status, error, fatal = "fatal", str(exc), exc
            else:
                status, error = "error", f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ResponseDecodeError) and exc.billed:
                    spent = CREDITS_PER_POLL
                if isinstance(exc, NotFoundError):
                    status = "not_found"
                logger.warning("poll of %s failed: %s", target, error)
        else:
            spent = CREDITS_PER_POLL
            events = await self._capture(target, reel, started)
        on_grid = status in ("ok", "not_found")
        next_at = next_poll_at(due, started, self.every, on_grid=on_grid)
        record = PollRecord(target, started, next_at, spent, status, error, len(events))
        return PollOutcome(record, events, fatal)

    async def poll_tray(
        self, target: str, due: float, started: float, *, every: float, max_highlights: int | None
    ) -> PollOutcome:
        """Poll ``target``'s highlight tray, then fetch its changed highlights.

        At most ``max_highlights`` of them (the budget's room); ``every`` is
        the trays' period. Archive errors propagate; API errors end in the outcome.
        """
        downloader = self._downloader
        media = None if downloader is None else HighlightMedia(self.archive, downloader)
        run = await save_highlights(
            self.client,
            self.archive,
            [target],
            run_id=self.run_id,
            max_highlights=max_highlights,
            media=media,
        )
        failure = None if media is None else media.disk_full or media.error
        if failure is not None:
            raise failure  # as for a stories poll: a full disk or a failing archive stops it
        # Every answered request is billed (a tray, or a highlight's items).
        spent = CREDITS_PER_POLL * (run.trays + run.highlights_fetched)
        status = "fatal" if run.fatal else "error" if run.errors else "ok"
        error = "; ".join(f"{t}: {why}" for t, why in list(run.errors.items())[:3]) or None
        if error is not None:
            logger.warning("highlights of %s: %s", target, error)
        # A tray with highlights deferred by the budget is due again soon, like a failure.
        on_grid = status == "ok" and not run.deferred
        next_at = next_poll_at(due, started, every, on_grid=on_grid)
        record = PollRecord(target, started, next_at, spent, status, error, len(run.new_stories))
        spent_budget = next((e for e in run.errors.values() if _budget_spent(e)), None)
        return PollOutcome(record, [], run.fatal or spent_budget)

    async def _capture(self, target: str, reel: Reel | None, started: float) -> list[StoryEvent]:
        """Record ``reel``; save its new stories' media; one event per new story."""
        new_ids = await self.archive.record_reel(target, reel, started, run_id=self.run_id)
        if not new_ids or reel is None:
            return []
        wanted = set(new_ids)
        items = list({i.id: i for i in reel.items if i.id in wanted}.values())
        media = self._media
        if media is not None:
            await media.claim(items)
        events = []
        for item in items:
            outcome = None
            if media is not None:
                outcome = await media.download(item, target=target, owner=reel.user)
                if not outcome.ok:
                    logger.warning(
                        "media of story %s (%s) not saved: %s", item.id, target, outcome.reason
                    )
            owner = item.user or item.owner or reel.user
            events.append(StoryEvent(target, item.id, item, owner, started, outcome))
        return events
