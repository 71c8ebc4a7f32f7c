"""Which local file a media URL may serve: only one the archive recorded, only inside DIR.

A media URL names a story id, never a path: the path comes from the
archive's ``media`` row of a *saved* story, and is served only when it
resolves (symlinks followed) to a regular file inside the download
directory. An archive edited by hand, or a symlink planted in DIR, cannot
make the gallery serve ``/etc/passwd``: ``..``, an absolute or drive path, a
NUL byte, or a link leading out of DIR all end in 404 (pure checks here, the
filesystem is asked only by :func:`resolve_media`).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .._errors import ConfigurationError
from ..archive.writes import _check_relative as check_recorded_path

__all__ = ["is_safe_relative", "resolve_media"]


def is_safe_relative(recorded: str) -> bool:
    """Whether ``recorded`` is a plain relative path with no way up (pure).

    The archive's writer's own rule for the paths it records, so a path the
    writer would refuse is never served either.
    """
    if "\x00" in recorded:
        return False
    try:
        check_recorded_path(recorded)
    except ConfigurationError:
        return False
    return True


def resolve_media(root: str | os.PathLike[str], recorded: str) -> Path | None:
    """The file ``recorded`` names under ``root``, or ``None`` when it must not be served."""
    if not is_safe_relative(recorded):
        return None
    base = Path(root).resolve()
    try:
        target = (base / PurePosixPath(recorded.replace("\\", "/"))).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target
