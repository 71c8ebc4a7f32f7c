"""The media downloader's files: ``.part`` files written, verified and renamed into place.

Blocking functions, run in worker threads by the HTTP adapter, except
:meth:`PartFile.write`, which the event loop calls per chunk (an unbuffered
write of 256 KiB is cheaper than a thread hop). Rules kept here:

- a file at its final name is complete: bytes go to ``<final>.part``, which is
  fsynced (and its directory) before :func:`os.replace` gives it its name;
- a planted symlink at the ``.part`` name cannot redirect the writes
  (``O_NOFOLLOW``);
- writes are unbuffered, so a full disk shows at the write that hit it;
- the SHA-256 covers the whole file, a resumed ``.part``'s first bytes included.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Final

from .paths import inside

__all__ = [
    "CHUNK",
    "PartFile",
    "hash_file",
    "is_disk_full",
    "part_of",
    "prepare_dir",
    "present_file",
    "recorded_size",
    "unlink",
    "write_all",
]

CHUNK: Final = 256 * 1024
"""Bytes read from the CDN (and from disk when hashing) at a time: memory stays flat."""

_DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def part_of(path: Path) -> Path:
    """The ``.part`` name a file is written under until it is complete."""
    return path.with_name(path.name + ".part")


def is_disk_full(exc: OSError) -> bool:
    """Whether ``exc`` says the disk or the quota is full."""
    return exc.errno in _DISK_FULL_ERRNOS


def unlink(path: Path) -> None:
    """Delete ``path`` if it is there."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def hash_file(path: Path) -> tuple[hashlib._Hash, int]:
    """The SHA-256 of ``path`` (still open for more bytes) and its size."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            size += len(block)
    return digest, size


def write_all(handle: io.FileIO, chunk: bytes) -> None:
    """Write the whole of ``chunk`` (an unbuffered write may take only part of it)."""
    view = memoryview(chunk)
    while view:
        written = handle.write(view)
        if not written:
            raise OSError(errno.EIO, "write returned 0 bytes")
        view = view[written:]


def prepare_dir(dest_dir: Path) -> Path:
    """Create ``dest_dir``, prove it writable, return it resolved (raises OSError)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = dest_dir.resolve(strict=True)
    fd, probe = tempfile.mkstemp(prefix=".keyapi-probe-", dir=root)
    os.close(fd)
    os.unlink(probe)
    return root


def recorded_size(root: Path, recorded: Path) -> tuple[Path, int] | None:
    """Where a recorded file is, inside ``root``, and its size now; None if gone or outside."""
    if not recorded.is_absolute():
        recorded = root / recorded
    try:
        found = inside(root, recorded.relative_to(root).parts)
        return found, found.stat().st_size
    except (ValueError, OSError):
        return None


def present_file(path: Path) -> tuple[int, str] | None:
    """Size and SHA-256 of a file at its final name (always complete), or None if absent.

    A ``.part`` beside it is a leftover nobody will resume: it is deleted.
    """
    if not path.is_file():
        return None
    digest, size = hash_file(path)
    unlink(part_of(path))
    return size, digest.hexdigest()


def _nofollow_opener(path: str, flags: int) -> int:
    # A planted symlink at the .part name must not redirect our writes elsewhere.
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)


class PartFile:
    """One ``.part`` being written: opened to resume or start over, then committed.

    Use :meth:`open` (in a worker thread), :meth:`write` each chunk,
    :meth:`commit` (in a worker thread) or :meth:`close`.
    """

    __slots__ = ("_digest", "_handle", "path")

    def __init__(self, path: Path, handle: io.FileIO, digest: hashlib._Hash) -> None:
        self.path = path
        """The ``.part`` file."""
        self._handle = handle
        self._digest = digest

    @classmethod
    def open(cls, part: Path, offset: int) -> PartFile:
        """Append to ``part`` after its ``offset`` bytes (hashing them), or truncate it (0)."""
        part.parent.mkdir(parents=True, exist_ok=True)
        digest = hash_file(part)[0] if offset else hashlib.sha256()
        # Unbuffered: a full disk shows at the write that hit it, not at a later flush.
        handle = open(part, "ab" if offset else "wb", buffering=0, opener=_nofollow_opener)  # noqa: SIM115
        return cls(part, handle, digest)

    @classmethod
    def adopt(cls, part: Path) -> PartFile:
        """Take a ``.part`` that already holds the whole file, to commit it as it is."""
        digest, _ = hash_file(part)
        return cls(part, open(part, "ab", buffering=0, opener=_nofollow_opener), digest)

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of every byte in the file so far."""
        return self._digest.hexdigest()

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` and hash it."""
        write_all(self._handle, chunk)
        self._digest.update(chunk)

    def commit(self, final: Path, mtime: int | None, fsync: bool) -> None:
        """Fsync, close and rename to ``final`` (``mtime``: its modification time)."""
        if fsync:
            os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self.path, final)
        if mtime is not None:
            os.utime(final, (mtime, mtime))
        if fsync:
            with contextlib.suppress(OSError):  # not every platform can open a directory
                fd = os.open(final.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def close(self) -> None:
        """Close the file (kept for resuming); safe after :meth:`commit`."""
        with contextlib.suppress(OSError):
            self._handle.close()
