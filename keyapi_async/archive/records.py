"""What the archive's rows read as: the record types, and the SELECTs that fetch them.

Frozen dataclasses, so a record handed out can be kept, compared and shared
between threads; :func:`story_from_row` and :func:`media_from_row` are the one
mapping from the columns of :data:`STORY_SELECT` and :data:`MEDIA_SELECT`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "MEDIA_SELECT",
    "MEDIA_STATUSES",
    "STORY_SELECT",
    "AccountRecord",
    "ArchiveCounts",
    "MediaRecord",
    "MediaStatus",
    "RunRecord",
    "StoryRecord",
    "in_chunks",
    "media_from_row",
    "story_from_row",
]

MediaStatus = Literal["pending", "saved", "expired", "failed"]
"""The state of a story's media file, as the downloader records it."""

MEDIA_STATUSES: Final = frozenset({"pending", "saved", "expired", "failed"})

# The IN (...) lists stay far below SQLITE_MAX_VARIABLE_NUMBER (999 before 3.32).
_IN_CHUNK: Final = 500


def in_chunks(ids: Sequence[str]) -> Iterator[tuple[str, Sequence[str]]]:
    """``ids`` in slices short enough for one ``IN (...)`` list: ``("?,?,...", slice)``."""
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        yield ",".join("?" * len(chunk)), chunk


@dataclass(frozen=True, slots=True)
class MediaRecord:
    """What the archive knows about one story's media file.

    ``path`` is relative to the download directory (``/`` separators);
    ``bytes``, ``sha256`` and ``saved_at`` are set when ``status`` is
    ``saved``. ``failures`` counts ``failed``/``expired`` records since the
    last ``saved`` one; ``reason`` says why the last attempt did not save.
    """

    story_id: str
    status: MediaStatus
    path: str | None
    bytes: int | None
    sha256: str | None
    saved_at: int | None
    updated_at: int
    failures: int
    reason: str | None


@dataclass(frozen=True, slots=True)
class StoryRecord:
    """One story item as archived, with its media record (``None``: never requested).

    ``width``/``height`` are those of the chosen rendition at ``media_url``
    (the largest video rendition for videos, the largest image otherwise);
    ``duration`` is set for videos. ``fetched_at`` is the newest fetch that
    returned the story, ``first_seen_at`` the oldest.
    """

    story_id: str
    account: str
    user_id: str | None
    username: str | None
    taken_at: int | None
    expiring_at: int | None
    media_type: Literal["image", "video"]
    width: int | None
    height: int | None
    duration: float | None
    media_url: str | None
    first_seen_at: int
    fetched_at: int
    media: MediaRecord | None

    @property
    def media_status(self) -> Literal["pending", "saved", "expired", "failed", "not_requested"]:
        """The media's status, or ``not_requested`` when no download was recorded."""
        return "not_requested" if self.media is None else self.media.status


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """One account (target) of the archive with its story counts."""

    target: str
    """The normalised target the stories were fetched for (``javan``, ``id:18527``)."""
    user_id: str | None
    username: str | None
    first_seen_at: int
    last_seen_at: int
    """When a fetch for this target last succeeded (stories or none)."""
    stories: int
    """Story items archived for this target."""
    saved: int
    """Of which the media file is saved."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run (a ``fetch``, a ledger import, a watch session) and its counters."""

    id: int
    kind: str
    started_at: int
    finished_at: int | None
    ledger: str | None
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class ArchiveCounts:
    """Totals over the whole archive (for a status report)."""

    accounts: int
    stories: int
    images: int
    videos: int
    media: dict[str, int]
    """Story count per media status, ``not_requested`` included (every key present)."""
    saved_bytes: int
    runs: int


_STORY_COLUMNS: Final = """
    s.story_id, s.account, s.user_id, s.username, s.taken_at, s.expiring_at, s.media_type,
    s.width, s.height, s.duration, s.media_url, s.first_seen_at, s.fetched_at,
    m.status, m.path, m.bytes, m.sha256, m.saved_at, m.updated_at, m.failures, m.reason
"""
STORY_SELECT: Final = (
    f"SELECT {_STORY_COLUMNS} FROM stories AS s LEFT JOIN media AS m ON m.story_id = s.story_id"
)
"""Every story with its media columns (``s``: stories, ``m``: media); add WHERE/ORDER BY."""
MEDIA_SELECT: Final = (
    "SELECT story_id, status, path, bytes, sha256, saved_at, updated_at, failures, reason "
    "FROM media"
)
"""Every media record; add WHERE."""


def media_from_row(row: Sequence[Any]) -> MediaRecord:
    """The record of one row of :data:`MEDIA_SELECT`."""
    return MediaRecord(
        story_id=row[0],
        status=row[1],
        path=row[2],
        bytes=row[3],
        sha256=row[4],
        saved_at=row[5],
        updated_at=row[6],
        failures=row[7],
        reason=row[8],
    )


def story_from_row(row: Sequence[Any]) -> StoryRecord:
    """The record of one row of :data:`STORY_SELECT` (its media record included)."""
    media = None if row[13] is None else media_from_row((row[0], *row[13:]))
    return StoryRecord(
        story_id=row[0],
        account=row[1],
        user_id=row[2],
        username=row[3],
        taken_at=row[4],
        expiring_at=row[5],
        media_type=row[6],
        width=row[7],
        height=row[8],
        duration=row[9],
        media_url=row[10],
        first_seen_at=row[11],
        fetched_at=row[12],
        media=media,
    )
