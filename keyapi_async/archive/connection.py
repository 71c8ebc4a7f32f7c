"""One archive file: opening SQLite connections to it, and SQLite's errors as :class:`ArchiveError`.

The writer, the readers and the facade share one :class:`ArchiveFile`, so
that every connection is opened with the same pragmas and busy timeout and
every failure reads alike (locked, not writable, not a database, disk full).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .._errors import ArchiveError

__all__ = ["ArchiveFile"]

# SQLite primary result codes (``sqlite3.Error.sqlite_errorcode & 0xFF``).
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
_SQLITE_READONLY: Final = 8
_SQLITE_IOERR: Final = 10
_SQLITE_FULL: Final = 13
_SQLITE_CANTOPEN: Final = 14
_SQLITE_NOTADB: Final = 26

# UPSERT needs 3.24; nothing newer (no STRICT tables, no RETURNING) is used,
# so the archive works with the SQLite of every maintained Linux distribution.
_MIN_SQLITE: Final = (3, 24, 0)


@dataclass(frozen=True, slots=True)
class ArchiveFile:
    """The archive's path and how to open it (``readonly``: the whole archive was opened so)."""

    path: Path
    busy_timeout: float
    readonly: bool

    def closed_error(self) -> ArchiveError:
        """The error of any call on a closed archive."""
        return ArchiveError(f"archive {self.path} is closed", path=str(self.path))

    def error(self, exc: sqlite3.Error, doing: str) -> ArchiveError:
        """``exc`` (raised while ``doing``) as an :class:`ArchiveError` saying what to do."""
        path = str(self.path)
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(exc)
        if primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
            message = (
                f"archive {path} is locked by another writer (waited {self.busy_timeout:g} s "
                f"while {doing}); close the other program or use another archive"
            )
        elif primary == _SQLITE_READONLY:
            message = f"archive {path} is not writable ({text})"
        elif primary == _SQLITE_CANTOPEN:
            message = (
                f"cannot open archive {path}: the file or its directory is missing, "
                f"not a file, or not writable ({text})"
            )
        elif primary == _SQLITE_NOTADB:
            message = f"{path} is not a SQLite database (not a story archive)"
        elif primary == _SQLITE_FULL:
            message = f"disk full while {doing} in archive {path}"
        elif primary == _SQLITE_IOERR:
            message = f"I/O error while {doing} in archive {path} ({text})"
        else:
            message = f"archive {path}: {doing} failed ({type(exc).__name__}: {text})"
        error = ArchiveError(message, path=path)
        error.__cause__ = exc
        return error

    def _target(self, readonly: bool) -> tuple[str, bool]:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise ArchiveError(
                f"the archive needs SQLite >= 3.24 (this Python has {sqlite3.sqlite_version})",
                path=str(self.path),
            )
        if readonly and self.readonly and not self.path.is_file():
            # Never create a file when only asked to read one.
            raise ArchiveError(f"no archive at {self.path}", path=str(self.path))
        # Readers are ordinary connections with query_only, so that the last
        # one to close can still checkpoint and remove the -wal and -shm
        # files; mode=ro only for a file this process cannot write.
        writable = os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        if readonly and self.readonly and not writable:
            return self.path.resolve().as_uri() + "?mode=ro", True
        return str(self.path), False

    def connect(self, *, readonly: bool) -> sqlite3.Connection:
        """A new autocommit connection (foreign keys; query_only, or synchronous=NORMAL)."""
        target, uri = self._target(readonly)
        try:
            conn = sqlite3.connect(
                target,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=uri,
            )
        except sqlite3.Error as exc:
            raise self.error(exc, "opening") from exc
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            if readonly:
                conn.execute("PRAGMA query_only = ON")
            else:
                conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise self.error(exc, "opening") from exc
        except BaseException:
            conn.close()
            raise
        return conn
