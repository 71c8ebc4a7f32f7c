"""The archive's schema: the core migrations, :class:`SchemaExtension`, and the version checks.

``PRAGMA user_version`` counts the core migrations applied and
``PRAGMA application_id`` tells an archive from any other SQLite file; each
extension's version is a row of ``schema_components``. Everything here runs
on a connection it is given (the writer's, when opening), inside the
transaction :func:`migrate` begins.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from .._errors import ArchiveError, ConfigurationError

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "SchemaExtension",
    "check_extensions",
    "check_schema",
    "migrate",
    "split_statements",
]

APPLICATION_ID: Final = 0x4B415059  # "KAPY": tells our archives from other SQLite files

_CORE_MIGRATIONS: Final[tuple[str, ...]] = (
    f"""
    PRAGMA application_id = {APPLICATION_ID};

    CREATE TABLE accounts (
        target        TEXT PRIMARY KEY,
        user_id       TEXT,
        username      TEXT,
        first_seen_at INTEGER NOT NULL,
        last_seen_at  INTEGER NOT NULL
    );
    CREATE INDEX accounts_user_id ON accounts (user_id);

    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        kind        TEXT NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER,
        ledger      TEXT,
        counts      TEXT NOT NULL DEFAULT '{{}}'
    );
    CREATE UNIQUE INDEX runs_import_ledger ON runs (ledger) WHERE kind = 'import';

    CREATE TABLE stories (
        story_id      TEXT PRIMARY KEY,
        account       TEXT NOT NULL REFERENCES accounts (target),
        user_id       TEXT,
        username      TEXT,
        taken_at      INTEGER,
        expiring_at   INTEGER,
        media_type    TEXT NOT NULL CHECK (media_type IN ('image', 'video')),
        width         INTEGER,
        height        INTEGER,
        duration      REAL,
        media_url     TEXT,
        first_seen_at INTEGER NOT NULL,
        fetched_at    INTEGER NOT NULL,
        first_run_id  INTEGER REFERENCES runs (id),
        last_run_id   INTEGER REFERENCES runs (id),
        raw           TEXT
    );
    CREATE INDEX stories_account ON stories (account, taken_at);
    CREATE INDEX stories_user_id ON stories (user_id);
    CREATE INDEX stories_taken_at ON stories (taken_at, story_id);
    CREATE INDEX stories_expiring_at ON stories (expiring_at);

    CREATE TABLE media (
        story_id   TEXT PRIMARY KEY REFERENCES stories (story_id) ON DELETE CASCADE,
        status     TEXT NOT NULL CHECK (status IN ('pending', 'saved', 'expired', 'failed')),
        path       TEXT,
        bytes      INTEGER,
        sha256     TEXT,
        saved_at   INTEGER,
        updated_at INTEGER NOT NULL,
        failures   INTEGER NOT NULL DEFAULT 0,
        reason     TEXT
    );
    CREATE INDEX media_status ON media (status);

    CREATE TABLE schema_components (
        name    TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    );
    """,
)

SCHEMA_VERSION: Final = len(_CORE_MIGRATIONS)
"""The core schema version this library writes (``PRAGMA user_version``)."""


@dataclass(frozen=True, slots=True)
class SchemaExtension:
    """Tables a later layer keeps in the archive, versioned under their own name.

    ``migrations[i]`` takes the extension from version ``i`` to ``i + 1``: a
    string of SQL statements separated by ``;``, or a callable given the
    connection. Pass extensions to :meth:`StoryArchive.open`; pending steps
    run in the same transaction as the core migrations. Append steps, never
    edit a released one::

        WATCH = SchemaExtension("watch", (
            "CREATE TABLE polls (target TEXT PRIMARY KEY, next_at INTEGER NOT NULL)",
        ))
    """

    name: str
    migrations: tuple[str | Callable[[sqlite3.Connection], None], ...]

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ConfigurationError(
                f"a schema extension needs a non-empty name, got {self.name!r}"
            )


def check_extensions(extensions: Iterable[SchemaExtension]) -> tuple[SchemaExtension, ...]:
    """The extensions as a tuple; a ConfigurationError when two share a name."""
    found = tuple(extensions)
    names = [ext.name for ext in found]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"duplicate schema extension names: {names}")
    return found


def split_statements(script: str) -> Iterator[str]:
    """The SQL statements of ``script``, one by one (the last may omit its ``;``)."""
    # executescript() would COMMIT the surrounding transaction first, which
    # would make a migration step non-atomic; run the statements one by one.
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statement = buffer.strip()
            buffer = ""
            if statement.rstrip(";").strip():
                yield statement
    if buffer.strip():
        if not sqlite3.complete_statement(buffer + ";"):
            raise ConfigurationError(
                f"incomplete SQL statement in migration: {buffer.strip()[:60]!r}"
            )
        yield buffer.strip()


def _component_version(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT version FROM schema_components WHERE name = ?", (name,))
    found = row.fetchone()
    return 0 if found is None else int(found[0])


def _version_message(path: str, version: int) -> str:
    if version > SCHEMA_VERSION:
        return (
            f"archive {path} has schema version {version}, newer than this "
            f"library's {SCHEMA_VERSION}: upgrade keyapi_async"
        )
    return (
        f"archive {path} has schema version {version}, older than this library's "
        f"{SCHEMA_VERSION}: open it for writing once to upgrade it"
    )


def _pragma(conn: sqlite3.Connection, name: str) -> int:
    return int(conn.execute(f"PRAGMA {name}").fetchone()[0])


def check_schema(
    conn: sqlite3.Connection, path: str, extensions: Sequence[SchemaExtension]
) -> None:
    """Raise :class:`ArchiveError` unless the file is an archive at exactly this library's versions.

    For a read-only archive, which must not be migrated.
    """
    version = _pragma(conn, "user_version")
    if version == 0 or _pragma(conn, "application_id") != APPLICATION_ID:
        raise ArchiveError(f"{path} is not a story archive", path=path)
    if version != SCHEMA_VERSION:
        raise ArchiveError(_version_message(path, version), path=path)
    for ext in extensions:
        have = _component_version(conn, ext.name)
        if have != len(ext.migrations):
            raise ArchiveError(
                f"archive {path} has {ext.name!r} tables at version {have}, "
                f"this library expects {len(ext.migrations)}; open it for writing once",
                path=path,
            )


def _check_archive(conn: sqlite3.Connection, path: str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise ArchiveError(_version_message(path, version), path=path)
    app = _pragma(conn, "application_id")
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables or app not in (0, APPLICATION_ID):
            raise ArchiveError(
                f"{path} is a SQLite database but not a story archive; "
                "refusing to add tables to it",
                path=path,
            )
    elif app != APPLICATION_ID:
        raise ArchiveError(f"{path} is not a story archive", path=path)


def _migrate_extension(conn: sqlite3.Connection, path: str, ext: SchemaExtension) -> None:
    have = _component_version(conn, ext.name)
    if have > len(ext.migrations):
        raise ArchiveError(
            f"archive {path} has {ext.name!r} tables at version {have}, "
            f"newer than this library's {len(ext.migrations)}: upgrade keyapi_async",
            path=path,
        )
    for migration in ext.migrations[have:]:
        if callable(migration):
            migration(conn)
        else:
            for statement in split_statements(migration):
                conn.execute(statement)
    if have != len(ext.migrations):
        conn.execute(
            "INSERT INTO schema_components (name, version) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            (ext.name, len(ext.migrations)),
        )


def migrate(conn: sqlite3.Connection, path: str, extensions: Sequence[SchemaExtension]) -> None:
    """Bring the file to this library's core and extension versions, in one transaction."""
    # BEGIN IMMEDIATE takes the write lock even when nothing is pending:
    # that is the check that another program is not holding it.
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _pragma(conn, "user_version")
        _check_archive(conn, path, version)
        for step in _CORE_MIGRATIONS[version:]:
            for statement in split_statements(step):
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for ext in extensions:
            _migrate_extension(conn, path, ext)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
