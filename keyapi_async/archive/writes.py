"""What the archive writes: the idempotent UPSERTs and the checks of what is written.

Functions here take the writer's connection and run inside the transaction
(and savepoint) of the job that calls them; the ``check_*`` functions run
first, on the caller's side, so a bad argument fails before anything is
queued. Bad arguments raise :class:`~keyapi_async.ConfigurationError` (also a
``ValueError``), numbers through :mod:`keyapi_async.engine.validate`.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath, PureWindowsPath
from typing import Final, cast

from .._errors import ArchiveError, ConfigurationError
from ..engine.validate import check_count, check_number
from ..models import Reel, StoryItem, User, encode
from .records import MEDIA_STATUSES, MediaStatus, in_chunks

__all__ = [
    "MediaWrite",
    "check_media",
    "check_target",
    "existing_ids",
    "finish_run",
    "insert_run",
    "record_media",
    "record_reels",
    "rendition",
    "timestamp",
]

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")

_UPSERT_ACCOUNT: Final = """
INSERT INTO accounts (target, user_id, username, first_seen_at, last_seen_at)
VALUES (?1, ?2, ?3, ?4, ?4)
ON CONFLICT (target) DO UPDATE SET
    user_id = CASE WHEN excluded.last_seen_at >= accounts.last_seen_at
                   THEN coalesce(excluded.user_id, accounts.user_id)
                   ELSE coalesce(accounts.user_id, excluded.user_id) END,
    username = CASE WHEN excluded.last_seen_at >= accounts.last_seen_at
                    THEN coalesce(excluded.username, accounts.username)
                    ELSE coalesce(accounts.username, excluded.username) END,
    first_seen_at = min(accounts.first_seen_at, excluded.first_seen_at),
    last_seen_at = max(accounts.last_seen_at, excluded.last_seen_at)
"""

# "newer" = this fetch is at least as recent as the stored one: it refreshes
# the signed URL and the rendition; an older one only extends first_seen_at.
_NEWER: Final = "excluded.fetched_at >= stories.fetched_at"
_UPSERT_STORY: Final = f"""
INSERT INTO stories (
    story_id, account, user_id, username, taken_at, expiring_at, media_type,
    width, height, duration, media_url, first_seen_at, fetched_at,
    first_run_id, last_run_id, raw)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13, ?13, ?14)
ON CONFLICT (story_id) DO UPDATE SET
    user_id = CASE WHEN {_NEWER} THEN coalesce(excluded.user_id, stories.user_id)
                   ELSE stories.user_id END,
    username = CASE WHEN {_NEWER} THEN coalesce(excluded.username, stories.username)
                    ELSE stories.username END,
    taken_at = coalesce(stories.taken_at, excluded.taken_at),
    expiring_at = CASE WHEN {_NEWER} THEN coalesce(excluded.expiring_at, stories.expiring_at)
                       ELSE stories.expiring_at END,
    width = CASE WHEN {_NEWER} THEN excluded.width ELSE stories.width END,
    height = CASE WHEN {_NEWER} THEN excluded.height ELSE stories.height END,
    duration = CASE WHEN {_NEWER} THEN excluded.duration ELSE stories.duration END,
    media_url = CASE WHEN {_NEWER} THEN coalesce(excluded.media_url, stories.media_url)
                     ELSE stories.media_url END,
    raw = CASE WHEN {_NEWER} THEN coalesce(excluded.raw, stories.raw) ELSE stories.raw END,
    last_run_id = CASE WHEN {_NEWER} THEN coalesce(excluded.last_run_id, stories.last_run_id)
                       ELSE stories.last_run_id END,
    first_run_id = coalesce(stories.first_run_id, excluded.first_run_id),
    first_seen_at = min(stories.first_seen_at, excluded.first_seen_at),
    fetched_at = max(stories.fetched_at, excluded.fetched_at)
"""

# The UPSERT's INSERT part alone, for ids known to be absent.
_INSERT_STORY: Final = _UPSERT_STORY[: _UPSERT_STORY.index("ON CONFLICT")]

_UPSERT_MEDIA: Final = """
INSERT INTO media (story_id, status, path, bytes, sha256, saved_at, updated_at, failures, reason)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?2 IN ('failed', 'expired') THEN 1 ELSE 0 END, ?8)
ON CONFLICT (story_id) DO UPDATE SET
    status = excluded.status,
    path = excluded.path,
    bytes = excluded.bytes,
    sha256 = excluded.sha256,
    saved_at = excluded.saved_at,
    updated_at = excluded.updated_at,
    reason = excluded.reason,
    failures = CASE excluded.status WHEN 'saved' THEN 0 WHEN 'pending' THEN media.failures
                                    ELSE media.failures + 1 END
"""

MediaWrite = tuple[str, str, str | None, int | None, str | None, int | None, int, str | None]
"""The parameters of one media UPSERT, checked: ``(story_id, status, path, bytes, sha256,
saved_at, updated_at, reason)``."""


# -- checks, on the caller's side ----------------------------------------------


def timestamp(value: float | None, what: str) -> int:
    """``value`` (Unix seconds; ``None``: now) as integer seconds, or a ConfigurationError."""
    if value is None:
        return int(time.time())
    return math.floor(check_number(value, what))


def check_target(target: object) -> str:
    """A target as recorded: a non-empty string."""
    if not isinstance(target, str) or not target:
        raise ConfigurationError(f"target must be a non-empty string, got {target!r}")
    return target


def _check_relative(path: object) -> str:
    if not isinstance(path, str) or not path:
        raise ConfigurationError(f"media path must be a non-empty string, got {path!r}")
    posix = path.replace("\\", "/")
    if PurePosixPath(posix).is_absolute() or PureWindowsPath(path).drive:
        raise ConfigurationError(f"media path must be relative to the download directory: {path!r}")
    if ".." in PurePosixPath(posix).parts:
        raise ConfigurationError(f"media path must stay inside the download directory: {path!r}")
    return posix


def check_media(
    story_id: str,
    status: MediaStatus,
    path: str | None,
    size: int | None,
    sha256: str | None,
    reason: str | None,
    at: float | None,
) -> MediaWrite:
    """The checked parameters of one media record (paths with ``/``, the digest lower-case)."""
    if status not in MEDIA_STATUSES:
        raise ConfigurationError(f"status must be one of {sorted(MEDIA_STATUSES)}, got {status!r}")
    rel = None if path is None else _check_relative(path)
    count = None if size is None else check_count(size, "bytes")
    digest = None
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ConfigurationError(f"sha256 must be 64 hex digits, got {sha256!r}")
        digest = sha256.lower()
    if status == "saved" and (rel is None or count is None or digest is None):
        raise ConfigurationError("a saved media record needs path, bytes and sha256")
    when = timestamp(at, "at")
    saved_at = when if status == "saved" else None
    return (story_id, status, rel, count, digest, saved_at, when, reason)


# -- writes, on the writer's connection -------------------------------------------


def rendition(item: StoryItem) -> tuple[str | None, int | None, int | None]:
    """URL, width and height of the story's own media (:attr:`StoryItem.best_rendition`)."""
    best = item.best_rendition
    if best is None:
        return None, None, None
    return best.url, best.width or None, best.height or None


def _story_row(
    item: StoryItem, target: str, owner: User | None, fetched_at: int, run_id: int | None, raw: bool
) -> tuple[object, ...]:
    user = item.user or item.owner or owner
    url, width, height = rendition(item)
    video = item.is_video_media
    return (
        item.id,
        target,
        user.id if user else None,
        user.username if user else None,
        item.taken_at,
        item.expiring_at,
        "video" if video else "image",
        width,
        height,
        item.video_duration if video else None,
        url,
        fetched_at,
        run_id,
        encode(item).decode() if raw else None,
    )


def existing_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    """Those of ``ids`` that are archived stories."""
    known: set[str] = set()
    for marks, chunk in in_chunks(ids):
        sql = f"SELECT story_id FROM stories WHERE story_id IN ({marks})"
        known.update(row[0] for row in conn.execute(sql, chunk))
    return known


def record_reels(
    conn: sqlite3.Connection,
    reels: Iterable[tuple[str, Reel | None, int]],
    run_id: int | None,
    keep_raw: bool,
) -> list[list[str]]:
    """Record ``(target, reel, fetched_at)`` fetches in order; the ids each made new.

    The same rows as one :func:`record_reel <StoryArchive.record_reel>` per
    fetch, with one statement per table for all of them: an id new to the
    archive counts as new in the first fetch that holds it, once.
    """
    accounts: list[tuple[object, ...]] = []
    stories: list[tuple[object, ...]] = []
    ids: list[list[str]] = []
    for target, reel, fetched_at in reels:
        owner = reel.user if reel is not None else None
        items = reel.items if reel is not None else ()
        accounts.append(
            (target, owner.id if owner else None, owner.username if owner else None, fetched_at)
        )
        stories += [_story_row(i, target, owner, fetched_at, run_id, keep_raw) for i in items]
        ids.append(list(dict.fromkeys(item.id for item in items)))
    conn.executemany(_UPSERT_ACCOUNT, accounts)
    if not stories:
        return [[] for _ in ids]
    known = existing_ids(conn, list(dict.fromkeys(i for group in ids for i in group)))
    # The first row of an id not yet archived is a plain INSERT: with foreign
    # keys on, SQLite's UPSERT also looks up the child (media) rows of every
    # row it inserts, which made a large import 2.5x slower. Every other row
    # (an id archived before, or seen earlier in these fetches) is an UPSERT
    # run after the INSERTs in its original order: the same rows as UPSERTs
    # alone, as rows of different ids do not touch each other.
    inserts: list[tuple[object, ...]] = []
    upserts: list[tuple[object, ...]] = []
    seen = set(known)
    for row in stories:
        if row[0] in seen:
            upserts.append(row)
        else:
            seen.add(cast(str, row[0]))
            inserts.append(row)
    conn.executemany(_INSERT_STORY, inserts)
    conn.executemany(_UPSERT_STORY, upserts)
    new: list[list[str]] = []
    for group in ids:
        fresh = [story_id for story_id in group if story_id not in known]
        known.update(fresh)
        new.append(fresh)
    return new


def record_media(conn: sqlite3.Connection, write: MediaWrite, location: str) -> None:
    """Upsert one checked media record; ArchiveError when its story is not archived."""
    found = conn.execute("SELECT 1 FROM stories WHERE story_id = ?", (write[0],))
    if found.fetchone() is None:
        raise ArchiveError(
            f"story {write[0]!r} is not in the archive (record its reel first)", path=location
        )
    conn.execute(_UPSERT_MEDIA, write)


def insert_run(conn: sqlite3.Connection, kind: str, started: int, ledger: str | None) -> int:
    """A new run row; its id."""
    where = None if ledger is None else os.path.abspath(ledger)
    cursor = conn.execute(
        "INSERT INTO runs (kind, started_at, ledger) VALUES (?, ?, ?)", (kind, started, where)
    )
    return int(cast(int, cursor.lastrowid))


def finish_run(
    conn: sqlite3.Connection, run_id: int, finished: int, counts: Mapping[str, int], location: str
) -> None:
    """Set a run's end and counters; ArchiveError when there is no such run."""
    payload = json.dumps(dict(counts), sort_keys=True)
    cursor = conn.execute(
        "UPDATE runs SET finished_at = ?, counts = ? WHERE id = ?", (finished, payload, run_id)
    )
    if cursor.rowcount != 1:
        raise ArchiveError(f"no run {run_id} in the archive", path=location)
