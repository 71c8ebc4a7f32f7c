"""Media downloads in the archive: what to skip before a download, what to record after.

The two steps every downloading run takes around
:class:`~keyapi_async.media.MediaDownloader`, whichever layout it saves in
(an account's stories, a highlight's items):

* :func:`prepare_downloads` before: the items whose file the archive records
  as saved come back as :class:`~keyapi_async.media.SavedMedia` (pass it as
  ``known=``: the downloader skips the item while that file has its size, so a
  story saved while active is not downloaded again from a highlight); every
  other item is marked ``pending`` before its first byte, so a crash leaves it
  findable by :meth:`~keyapi_async.archive.StoryArchive.pending_media`;
* :func:`record_outcome` after: one outcome becomes the story's media record
  (``saved`` with path, size and hash; ``expired``; ``failed`` with the
  reason) and the label a run counts it under.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final, Literal, TypeAlias

from ..media.outcome import MediaOutcome, MediaStatus, SavedMedia
from . import StoryArchive

__all__ = ["MAX_FAILURES", "Settled", "prepare_downloads", "record_outcome"]

MAX_FAILURES: Final = 3
"""Failed (or expired) records in a row after which a file is no longer retried by later runs:
a transient CDN problem heals, a URL off the allowlist never will."""

Settled: TypeAlias = Literal["saved", "skipped", "expired", "failed"]
"""What one download ended as, for a run's counters (``skipped``: the file was already there)."""


async def prepare_downloads(
    archive: StoryArchive, story_ids: Iterable[str]
) -> dict[str, SavedMedia]:
    """The saved files of ``story_ids`` by id; every other one is marked ``pending``.

    The stories must be archived already (:meth:`StoryArchive.record_reel`).
    """
    ids = list(dict.fromkeys(story_ids))
    records = await archive.media_records(ids)
    known: dict[str, SavedMedia] = {}
    unsaved: list[str] = []
    for story_id in ids:
        record = records.get(story_id)
        if record is not None and record.status == "saved" and record.path and record.bytes:
            known[story_id] = SavedMedia(record.path, record.bytes, record.sha256)
        else:
            unsaved.append(story_id)
    await asyncio.gather(*(archive.record_media(i, None, None, None, "pending") for i in unsaved))
    return known


async def record_outcome(
    archive: StoryArchive, outcome: MediaOutcome, *, was_known: bool
) -> Settled:
    """Record one download's ``outcome`` as its story's media; return what it ended as.

    ``was_known``: the downloader was given the archive's own record of the
    file (``known=``), so a skip changes nothing in the archive. A file found
    at its final name without such a record is recorded as saved (its hash
    was recomputed).
    """
    story_id = outcome.story_id
    if outcome.ok and outcome.relative_path:
        size = outcome.size if outcome.size is not None else outcome.bytes
        if not was_known and outcome.sha256 is not None:
            await archive.record_media(
                story_id, outcome.relative_path, size, outcome.sha256, "saved"
            )
        return "saved" if outcome.status is MediaStatus.SAVED else "skipped"
    if outcome.status is MediaStatus.EXPIRED:
        await archive.record_media(story_id, None, None, None, "expired", outcome.reason)
        return "expired"
    reason = outcome.reason or "unknown reason"
    await archive.record_media(story_id, None, None, None, "failed", reason)
    return "failed"
