"""Whether an item's file is already saved: the rule that lets a second run download nothing.

* A file the caller's record (the archive's) names, still at its recorded
  size, is ``skipped`` as "already saved".
* A file at the item's name whose size contradicts that record is not it
  (truncated, edited): it is fetched again.
* Without a record, a file at the item's final name is trusted (final names
  are only ever complete, see :mod:`.files`) and rehashed: "file already present".
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from . import files
from .outcome import MediaOutcome, MediaStatus, SavedMedia

__all__ = ["skipped"]


async def skipped(
    root: Path,
    draft: MediaOutcome,
    path: Path,
    record: SavedMedia | None,
    *,
    skip_existing: bool,
) -> MediaOutcome | None:
    """The ``skipped`` outcome of ``draft`` (to be saved at ``path`` below ``root``), or None."""
    if record is not None:
        found = files.recorded_size(root, Path(record.path))
        if found is not None and found[1] == record.size:
            return _skip(root, draft, found[0], record.size, record.sha256, "already saved")
        if found is not None and found[0] == path:
            return None
    if skip_existing:
        present = await asyncio.to_thread(files.present_file, path)
        if present is not None:
            size, sha256 = present
            return _skip(root, draft, path, size, sha256, "file already present")
    return None


def _skip(
    root: Path, draft: MediaOutcome, path: Path, size: int, sha256: str | None, why: str
) -> MediaOutcome:
    return replace(
        draft,
        status=MediaStatus.SKIPPED,
        path=path,
        relative_path=path.relative_to(root).as_posix(),
        size=size,
        sha256=sha256,
        reason=why,
    )
