"""What a watch reports: a :class:`StoryEvent` per new story, and its :class:`WatchStats`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from ..models import StoryItem, User

if TYPE_CHECKING:
    from ..media import MediaOutcome

__all__ = ["StoryEvent", "WatchStats", "iso_time"]


def iso_time(at: float) -> str:
    """Unix seconds as an ISO 8601 UTC time to the second (``2026-12-07T09:00:00Z``)."""
    return datetime.fromtimestamp(at, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class StoryEvent:
    """A story the archive did not hold before this poll."""

    target: str
    """The normalised target polled (``javan``, ``id:18527``)."""
    story_id: str
    """The story item's id, as the API sent it."""
    item: StoryItem
    """The story item (its media URLs are signed and expire within hours)."""
    user: User | None
    """The reel's owner."""
    seen_at: float
    """When the poll that found it started (Unix seconds)."""
    media: MediaOutcome | None = None
    """The download's outcome when the watcher has a downloader, else ``None``."""

    def to_json(self) -> bytes:
        """The event as one JSON object (what ``--on-new`` commands get on stdin)."""
        media = self.media
        payload: dict[str, object] = {
            "target": self.target,
            "story_id": self.story_id,
            "seen_at": iso_time(self.seen_at),
            "username": self.user.username if self.user is not None else None,
            "file": str(media.path) if media is not None and media.path is not None else None,
            "media_status": str(media.status) if media is not None else None,
            "item": self.item,
        }
        return msgspec.json.encode(payload)


@dataclass(slots=True)
class WatchStats:
    """Counters of one :class:`~keyapi_async.watch.Watcher` since it started."""

    polls: int = 0
    """Stories polls that ended (whatever the outcome)."""
    tray_polls: int = 0
    """Highlight-tray polls that ended (``highlights_every``)."""
    errors: int = 0
    """Polls that ended in an error (the account is retried later)."""
    new_stories: int = 0
    """Stories new to the archive."""
    credits: int = 0
    """Credits this watcher spent."""
    budget_waits: int = 0
    """Times a poll waited for the rolling daily budget."""
    in_flight: int = 0
    """Polls running now."""
