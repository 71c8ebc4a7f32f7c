"""What a media download reports, and what an earlier run saved.

:class:`MediaStatus` and :class:`MediaOutcome` (one per story item, always),
:class:`SavedMedia` and :data:`KnownSaved` (the caller's record of files
already on disk) and :func:`lookup_saved`, which asks that record. Plain
values without I/O: every other media module speaks in these types.
"""

from __future__ import annotations

import enum
import inspect
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

__all__ = ["KnownSaved", "MediaOutcome", "MediaStatus", "SavedMedia", "lookup_saved"]


class MediaStatus(enum.StrEnum):
    """What happened to one story item's media."""

    SAVED = "saved"
    """Downloaded, verified and renamed into place in this call."""
    SKIPPED = "skipped"
    """Already present (known-saved record or an existing final file); nothing downloaded."""
    EXPIRED = "expired"
    """The CDN answered 403/410: the signed URL is no longer valid (refetch the reel)."""
    FAILED = "failed"
    """Gave up (retries exhausted, too large, HTTP error, local I/O error); see ``reason``."""
    REJECTED = "rejected"
    """Never requested: the URL or a redirect is off the allowlist, or no safe name exists."""


@dataclass(frozen=True, slots=True)
class MediaOutcome:
    """The result for one story item (every item gets exactly one)."""

    story_id: str
    """The story item's id, as the API sent it (not sanitised)."""
    status: MediaStatus
    """See :class:`MediaStatus`."""
    path: Path | None = None
    """Absolute path of the saved (or already present) file."""
    bytes: int = 0
    """Bytes received from the CDN for this item in this call (0 when skipped)."""
    sha256: str | None = None
    """Hex SHA-256 of the whole file (when saved, or known / recomputed when skipped)."""
    reason: str | None = None
    """Why the item is not ``saved`` (or why it was skipped); None when saved."""
    width: int | None = None
    """Width of the chosen rendition."""
    height: int | None = None
    """Height of the chosen rendition."""
    size: int | None = None
    """Size of the file on disk."""
    relative_path: str | None = None
    """``path`` relative to the download directory, with ``/`` separators."""
    target: str | None = None
    """The target label the caller passed with the reel."""
    username: str | None = None
    """The story owner's username (as sent, unsanitised)."""
    media_type: str | None = None
    """``"image"`` or ``"video"``."""
    url: str | None = None
    """The media URL that was (or would have been) requested."""
    content_type: str | None = None
    """The CDN's ``Content-Type`` for a saved file."""
    attempts: int = 0
    """HTTP requests made for this item (redirect hops included)."""

    @property
    def ok(self) -> bool:
        """Whether the file is on disk (``saved`` or ``skipped``)."""
        return self.status in (MediaStatus.SAVED, MediaStatus.SKIPPED)


@dataclass(frozen=True, slots=True)
class SavedMedia:
    """A file an earlier run saved (what a ``known_saved`` lookup returns)."""

    path: str | os.PathLike[str]
    """Where it is: absolute, or relative to the download directory."""
    size: int
    """Its recorded size; the item is skipped only if the file still has it."""
    sha256: str | None = None
    """Its recorded hash, copied into the ``skipped`` outcome."""


_SavedLike: TypeAlias = SavedMedia | tuple[str | os.PathLike[str], int]
KnownSaved: TypeAlias = (
    Mapping[str, _SavedLike]
    | Callable[[str], _SavedLike | None]
    | Callable[[str], Awaitable[_SavedLike | None]]
)
"""Story id -> record of a saved file: a mapping, or a (sync or async) lookup function."""


async def lookup_saved(known: KnownSaved | None, story_id: str) -> SavedMedia | None:
    """Ask ``known`` about ``story_id``: its :class:`SavedMedia`, or None.

    Raises:
        TypeError: The lookup gave something other than ``SavedMedia`` or ``(path, size)``.

    """
    if known is None:
        return None
    found: object
    if isinstance(known, Mapping):
        found = known.get(story_id)
    else:
        found = known(story_id)
        if inspect.isawaitable(found):
            found = await found
    if found is None:
        return None
    if isinstance(found, SavedMedia):
        return found
    if isinstance(found, tuple) and len(found) == 2:
        return SavedMedia(path=found[0], size=int(found[1]))
    raise TypeError(f"known_saved gave {type(found).__name__}, not SavedMedia or (path, size)")
