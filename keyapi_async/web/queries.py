"""Read-only queries for the gallery, on connections that cannot write the archive.

The gallery never goes through :class:`~keyapi_async.archive.StoryArchive`
(whose opening takes the write lock to prove it can): it opens the file with
SQLite's ``mode=ro`` URI, so it works while a ``fetch`` or ``watch`` is
writing (WAL: readers and the writer never block each other) and cannot
change a byte of the archive whatever a page asks.

Design choices:

* **A small pool of connections, closed on shutdown.** Queries run in worker
  threads (``asyncio.to_thread``); each borrows a connection from the pool
  and returns it, so no connection is shared by two threads at once and
  every one is closed when the app stops.
* **Keyset pagination on an existing index.** A timeline page asks for the
  stories of one account older than the last one shown,
  ``(taken_at, rowid) < (?, ?)``, on the archive's
  ``stories_account (account, taken_at)`` index, whose entries end with the
  rowid: the seek and the order are the index's own, so page 500 costs what
  page 1 does (``OFFSET`` would not) and no migration was needed. Stories
  without a time come after every dated one.
* **"New" is by insertion order.** Stories are appended to the table, so
  its ``rowid`` grows with every story first recorded (the archive never
  runs ``VACUUM``, which could renumber them); the browser remembers the
  highest one it has shown, and "new since my last visit" is ``rowid > N``,
  a range of the table's own b-tree.
* **Extension tables are optional.** The watch tables exist only in an
  archive a watch wrote; every query of them checks first and answers with
  nothing rather than failing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from ..archive import ArchiveError
from ..watch import ScheduleRow, read_status

__all__ = [
    "DAY",
    "AccountRow",
    "ArchiveReader",
    "HighlightAlbum",
    "MediaKind",
    "MediaTotals",
    "RunRow",
    "StatusReport",
    "StoryDetails",
    "StoryRow",
    "TimelinePage",
    "decode_cursor",
    "details_from_raw",
    "encode_cursor",
]

T = TypeVar("T")

DAY: Final = 86_400
"""Seconds in a day: the rolling credit window and a story's lifetime."""

MediaKind = Literal["all", "image", "video"]
"""Which stories a timeline shows."""

_POOL_SIZE: Final = 4
_STORY_COLUMNS: Final = (
    "s.rowid, s.story_id, s.account, s.username, s.taken_at, s.media_type, s.width, s.height,"
    " s.duration, m.status, m.path"
)


@dataclass(frozen=True, slots=True)
class AccountRow:
    """One account on the accounts page."""

    target: str
    username: str | None
    stories: int
    latest_taken_at: int | None
    last_seen_at: int
    """When a fetch of this account last succeeded."""


@dataclass(frozen=True, slots=True)
class StoryRow:
    """One story in a list: enough for a thumbnail and a link."""

    seq: int
    """The story's insertion order in the archive (``rowid``)."""
    story_id: str
    account: str
    username: str | None
    taken_at: int | None
    media_type: Literal["image", "video"]
    width: int | None
    height: int | None
    duration: float | None
    media_status: str
    """``saved``, ``pending``, ``failed``, ``expired`` or ``not_requested``."""
    path: str | None
    """The recorded file, relative to the download directory (``None``: not saved)."""

    @property
    def saved(self) -> bool:
        """Whether a local file is recorded for this story."""
        return self.media_status == "saved" and self.path is not None


@dataclass(frozen=True, slots=True)
class TimelinePage:
    """One page of an account's timeline, newest first."""

    stories: list[StoryRow]
    next_cursor: str | None
    """The cursor of the next (older) page, ``None`` on the last one."""


@dataclass(frozen=True, slots=True)
class StoryDetails:
    """One story for the player: the row, its neighbours and what the raw item says."""

    story: StoryRow
    previous_id: str | None
    """The next newer story of the same account (left)."""
    next_id: str | None
    """The next older story of the same account (right)."""
    caption: str | None = None
    mentions: list[str] = field(default_factory=list)
    hashtags: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    """Link sticker URLs as the API sent them (the template links only http(s) ones)."""
    music: str | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class HighlightAlbum:
    """One highlight as an album: its title and, for a cover, its first saved photo."""

    highlight_id: str
    account: str
    title: str | None
    created_at: int | None
    stories: int
    """Stories of the highlight recorded in the archive."""
    cover_story: str | None
    """The story whose local file is the cover (``None``: no saved photo)."""


@dataclass(frozen=True, slots=True)
class MediaTotals:
    """Media records by outcome: file counts and bytes."""

    files: Mapping[str, int]
    """Per status (``saved``, ``pending``, ``failed``, ``expired``); every key present."""
    bytes: Mapping[str, int]
    """Bytes recorded per status (a failed or expired record may carry a partial size)."""

    @property
    def saved_bytes(self) -> int:
        """Bytes of the saved files."""
        return self.bytes["saved"]


@dataclass(frozen=True, slots=True)
class RunRow:
    """One fetch, watch or import run recorded in the archive."""

    kind: str
    started_at: int
    finished_at: int | None
    counts: tuple[tuple[str, int], ...]
    """What the run counted (``new_stories``, ``media_saved``, ...), as it recorded them."""


def _run_counts(text: str | None) -> tuple[tuple[str, int], ...]:
    try:
        counts = json.loads(text or "{}")
    except ValueError:
        return ()
    if not isinstance(counts, dict):
        return ()
    return tuple((str(k), v) for k, v in counts.items() if isinstance(v, int))


@dataclass(frozen=True, slots=True)
class StatusReport:
    """What the status page and the metrics show."""

    now: float
    stories: int
    accounts: int
    media: MediaTotals
    polls: list[ScheduleRow]
    """Empty when the archive has no watch tables."""
    watched: bool
    """Whether the archive has watch tables."""
    credits_24h: int
    daily_cap: int | None
    every: float | None
    recent_errors: list[ScheduleRow]
    media_problems: list[tuple[str, str, str | None, int]]
    """Recent failed or expired media: ``(story_id, status, reason, updated_at)``."""
    last_success: Mapping[str, int]
    """Per account, when a fetch last succeeded (Unix seconds)."""
    runs: tuple[RunRow, ...] = ()
    """The latest runs, newest first."""

    @property
    def max_lag(self) -> float:
        """The largest poll lag of any watched account, in seconds."""
        return max((p.lag(self.now) for p in self.polls), default=0.0)


def _story_row(row: Sequence[Any]) -> StoryRow:
    return StoryRow(
        seq=row[0],
        story_id=row[1],
        account=row[2],
        username=row[3],
        taken_at=row[4],
        media_type=row[5],
        width=row[6],
        height=row[7],
        duration=row[8],
        media_status=row[9] or "not_requested",
        path=row[10],
    )


def encode_cursor(story: StoryRow) -> str:
    """The keyset cursor after ``story``: ``<taken_at>.<seq>`` (``-`` for an unknown time)."""
    taken = "-" if story.taken_at is None else str(story.taken_at)
    return f"{taken}.{story.seq}"


def decode_cursor(text: str) -> tuple[int | None, int]:
    """Parse a cursor from :func:`encode_cursor`; ``ValueError`` names a bad one."""
    taken, sep, seq = text.partition(".")
    try:
        if not sep or not seq.isdigit():
            raise ValueError
        return (None if taken == "-" else int(taken)), int(seq)
    except ValueError:
        raise ValueError(f"not a page cursor: {text!r}") from None


def _texts(items: object, *keys: str) -> list[str]:
    # Walk a list of dicts along ``keys``, keeping the strings found at the end.
    found: list[str] = []
    if not isinstance(items, list):
        return found
    for item in items:
        value: object = item
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            found.append(value)
    return found


def details_from_raw(
    story: StoryRow, prev: str | None, nxt: str | None, raw: str | None
) -> StoryDetails:
    """The player's view of ``story`` from its raw item (pure; a broken raw shows no details)."""
    item: object = None
    if raw:
        with contextlib.suppress(ValueError):
            item = json.loads(raw)
    if not isinstance(item, dict):
        return StoryDetails(story, prev, nxt)
    caption = item.get("caption")
    caption_text = caption.get("text") if isinstance(caption, dict) else None
    links = _texts(item.get("story_link_stickers"), "story_link", "url")
    links += _texts(item.get("story_cta"), "links", "webUri")
    music = None
    asset = item.get("music_metadata")
    for key in ("music_info", "music_asset_info"):
        asset = asset.get(key) if isinstance(asset, dict) else None
    if isinstance(asset, dict):
        parts = [asset.get("display_artist"), asset.get("title")]
        music = " - ".join(p for p in parts if isinstance(p, str) and p) or None
    location = item.get("location")
    place = location.get("name") if isinstance(location, dict) else None
    return StoryDetails(
        story,
        prev,
        nxt,
        caption=caption_text if isinstance(caption_text, str) and caption_text else None,
        mentions=_texts(item.get("reel_mentions"), "user", "username"),
        hashtags=_texts(item.get("story_hashtags"), "hashtag", "name"),
        links=links,
        music=music,
        location=place if isinstance(place, str) and place else None,
    )


def _kind_clause(kind: MediaKind) -> tuple[str, list[str]]:
    return ("", []) if kind == "all" else (" AND s.media_type = ?", [kind])


def _dated_page(
    conn: sqlite3.Connection,
    account: str,
    kind: MediaKind,
    since: int | None,
    until: int | None,
    after: tuple[int | None, int] | None,
    limit: int,
) -> list[StoryRow]:
    # (account, taken_at) is the archive's stories_account index, and an index
    # entry ends with the rowid: ORDER BY taken_at DESC, rowid DESC walks it
    # backwards with no sort, and the (taken_at, rowid) row value seeks into it.
    where = "s.account = ? AND s.taken_at IS NOT NULL"
    params: list[str | int] = [account]
    extra, kinds = _kind_clause(kind)
    where += extra
    params += kinds
    if since is not None:
        where += " AND s.taken_at >= ?"
        params.append(since)
    if until is not None:
        where += " AND s.taken_at < ?"
        params.append(until)
    if after is not None and after[0] is not None:
        where += " AND (s.taken_at, s.rowid) < (?, ?)"
        params += [after[0], after[1]]
    sql = (
        f"SELECT {_STORY_COLUMNS} FROM stories AS s INDEXED BY stories_account"
        f" LEFT JOIN media AS m USING (story_id)"
        f" WHERE {where} ORDER BY s.taken_at DESC, s.rowid DESC LIMIT ?"
    )
    return [_story_row(r) for r in conn.execute(sql, (*params, limit))]


def _undated_page(
    conn: sqlite3.Connection, account: str, kind: MediaKind, before: int | None, limit: int
) -> list[StoryRow]:
    extra, kinds = _kind_clause(kind)
    where = f"s.account = ? AND s.taken_at IS NULL{extra}"
    params: list[str | int] = [account, *kinds]
    if before is not None:
        where += " AND s.rowid < ?"
        params.append(before)
    sql = (
        f"SELECT {_STORY_COLUMNS} FROM stories AS s INDEXED BY stories_account"
        f" LEFT JOIN media AS m USING (story_id)"
        f" WHERE {where} ORDER BY s.taken_at DESC, s.rowid DESC LIMIT ?"
    )
    return [_story_row(r) for r in conn.execute(sql, (*params, limit))]


def _neighbour(conn: sqlite3.Connection, story: StoryRow, *, older: bool) -> str | None:
    # The same order as the timeline: (taken_at, rowid), unknown times last.
    op, order = ("<", "DESC") if older else (">", "ASC")
    if story.taken_at is not None:
        row = conn.execute(
            "SELECT story_id FROM stories INDEXED BY stories_account"
            f" WHERE account = ? AND taken_at IS NOT NULL AND (taken_at, rowid) {op} (?, ?)"
            f" ORDER BY taken_at {order}, rowid {order} LIMIT 1",
            (story.account, story.taken_at, story.seq),
        ).fetchone()
        if row is not None or not older:
            return None if row is None else str(row[0])
        row = conn.execute(
            "SELECT story_id FROM stories INDEXED BY stories_account"
            " WHERE account = ? AND taken_at IS NULL ORDER BY taken_at DESC, rowid DESC LIMIT 1",
            (story.account,),
        ).fetchone()
        return None if row is None else str(row[0])
    row = conn.execute(
        "SELECT story_id FROM stories INDEXED BY stories_account"
        f" WHERE account = ? AND taken_at IS NULL AND rowid {op} ?"
        f" ORDER BY taken_at {order}, rowid {order} LIMIT 1",
        (story.account, story.seq),
    ).fetchone()
    if row is not None or older:
        return None if row is None else str(row[0])
    row = conn.execute(
        "SELECT story_id FROM stories INDEXED BY stories_account"
        " WHERE account = ? AND taken_at IS NOT NULL ORDER BY taken_at ASC, rowid ASC LIMIT 1",
        (story.account,),
    ).fetchone()
    return None if row is None else str(row[0])


class ArchiveReader:
    """Read-only queries over the archive at ``path`` (blocking; call from a worker thread).

    Opening checks that the file exists and is a story archive, so a wrong
    path fails at start-up with :class:`~keyapi_async.archive.ArchiveError`.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = Path(os.fspath(path))
        self._timeout = busy_timeout
        self._pool: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        if not self.path.is_file():
            raise ArchiveError(f"no archive at {self.path}", path=str(self.path))
        self.read(self._check)

    @staticmethod
    def _check(conn: sqlite3.Connection) -> None:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if not {"stories", "media", "accounts"} <= tables:
            raise sqlite3.DatabaseError("not a story archive (no stories table)")

    def _connect(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(
            uri, uri=True, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        with self._lock:
            self._all.append(conn)
        return conn

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in one read transaction (one snapshot of the archive)."""
        if self._closed:
            raise ArchiveError(f"archive {self.path} is closed", path=str(self.path))
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            try:
                conn = self._connect()
            except sqlite3.Error as exc:
                raise ArchiveError(
                    f"cannot open archive {self.path}: {exc}", path=str(self.path)
                ) from exc
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise ArchiveError(
                f"archive {self.path}: reading failed ({exc})", path=str(self.path)
            ) from exc
        finally:
            if self._pool.qsize() < _POOL_SIZE and not self._closed:
                self._pool.put(conn)
            else:
                self._discard(conn)

    def _discard(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        conn.close()

    def close(self) -> None:
        """Close every connection (a query still running finishes first on its own)."""
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    # -- pages ------------------------------------------------------------------

    def latest_seq(self) -> int:
        """The highest story ``rowid`` (0 for an empty archive)."""
        return self.read(
            lambda c: int(c.execute("SELECT coalesce(max(rowid), 0) FROM stories").fetchone()[0])
        )

    def has_account(self, account: str) -> bool:
        """Whether the archive knows ``account`` (a target it fetched, stories or not)."""
        return self.read(
            lambda c: (
                c.execute(
                    "SELECT 1 FROM accounts WHERE target = ? UNION ALL "
                    "SELECT 1 FROM stories WHERE account = ? LIMIT 1",
                    (account, account),
                ).fetchone()
                is not None
            )
        )

    def accounts(
        self, *, search: str = "", sort: Literal["name", "stories", "latest", "polled"] = "name"
    ) -> list[AccountRow]:
        """Every account with its story count and latest story, filtered by username text."""
        order = {
            "name": "lower(coalesce(a.username, a.target)), a.target",
            "stories": "coalesce(n.stories, 0) DESC, a.target",
            "latest": "n.latest IS NULL, n.latest DESC, a.target",
            "polled": "a.last_seen_at DESC, a.target",
        }[sort]
        where, params = "", []
        if search:
            # LIKE with the user's text as data: % and _ escaped, never interpolated.
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            params = [f"%{escaped}%"] * 2
            where = (
                "WHERE coalesce(a.username, a.target) LIKE ? ESCAPE '\\'"
                " OR a.target LIKE ? ESCAPE '\\'"
            )
        sql = f"""
            SELECT a.target, a.username, coalesce(n.stories, 0), n.latest, a.last_seen_at
            FROM accounts AS a
            LEFT JOIN (SELECT account, count(*) AS stories, max(taken_at) AS latest
                       FROM stories GROUP BY account) AS n ON n.account = a.target
            {where} ORDER BY {order}
        """

        def fetch(conn: sqlite3.Connection) -> list[AccountRow]:
            return [AccountRow(*row) for row in conn.execute(sql, params)]

        return self.read(fetch)

    def timeline(
        self,
        account: str,
        *,
        kind: MediaKind = "all",
        since: int | None = None,
        until: int | None = None,
        cursor: str | None = None,
        limit: int = 60,
    ) -> TimelinePage:
        """Stories of ``account`` newest first, ``limit`` per page, taken in ``[since, until)``.

        ``ValueError`` for a bad ``cursor``. Stories with no known time come
        after every dated one (and only when no date range is asked).
        """
        after = None if cursor is None else decode_cursor(cursor)

        def fetch(conn: sqlite3.Connection) -> TimelinePage:
            rows: list[StoryRow] = []
            if after is None or after[0] is not None:
                rows = _dated_page(conn, account, kind, since, until, after, limit + 1)
            if len(rows) <= limit and since is None and until is None:
                before = after[1] if after is not None and after[0] is None else None
                rows += _undated_page(conn, account, kind, before, limit + 1 - len(rows))
            more = len(rows) > limit
            rows = rows[:limit]
            return TimelinePage(rows, encode_cursor(rows[-1]) if more and rows else None)

        return self.read(fetch)

    def new_since(self, seq: int, *, limit: int = 200) -> list[StoryRow]:
        """Stories first recorded after insertion number ``seq``, newest first."""
        sql = (
            f"SELECT {_STORY_COLUMNS} FROM stories AS s LEFT JOIN media AS m USING (story_id)"
            " WHERE s.rowid > ? ORDER BY s.rowid DESC LIMIT ?"
        )
        return self.read(lambda c: [_story_row(r) for r in c.execute(sql, (seq, limit))])

    def story(self, story_id: str) -> StoryDetails | None:
        """One story with its neighbours in its account's timeline and its raw details."""

        def fetch(conn: sqlite3.Connection) -> StoryDetails | None:
            row = conn.execute(
                f"SELECT {_STORY_COLUMNS}, s.raw FROM stories AS s"
                " LEFT JOIN media AS m USING (story_id) WHERE s.story_id = ?",
                (story_id,),
            ).fetchone()
            if row is None:
                return None
            story = _story_row(row)
            newer = _neighbour(conn, story, older=False)
            older = _neighbour(conn, story, older=True)
            return details_from_raw(story, newer, older, row[11])

        return self.read(fetch)

    def highlights(self, account: str | None = None) -> list[HighlightAlbum]:
        """The highlight albums (of ``account``, or all), newest first; empty without the tables."""

        def fetch(conn: sqlite3.Connection) -> list[HighlightAlbum]:
            if not {"highlights", "highlight_items"} <= _tables(conn):
                return []
            where, params = ("WHERE h.account = ?", [account]) if account else ("", [])
            sql = f"""
                SELECT h.id, h.account, h.title, h.created_at, count(i.story_id),
                       (SELECT i2.story_id FROM highlight_items AS i2
                        JOIN media AS m ON m.story_id = i2.story_id AND m.status = 'saved'
                        JOIN stories AS s2 ON s2.story_id = i2.story_id
                        WHERE i2.highlight_id = h.id AND s2.media_type = 'image'
                        ORDER BY i2.position LIMIT 1)
                FROM highlights AS h LEFT JOIN highlight_items AS i ON i.highlight_id = h.id
                {where} GROUP BY h.id
                ORDER BY h.created_at IS NULL, h.created_at DESC, h.id
            """
            return [HighlightAlbum(*r) for r in conn.execute(sql, params)]

        return self.read(fetch)

    def highlight(self, highlight_id: str) -> tuple[HighlightAlbum, list[StoryRow]] | None:
        """One album and its stories in the highlight's order (``None``: no such highlight)."""

        def fetch(conn: sqlite3.Connection) -> tuple[HighlightAlbum, list[StoryRow]] | None:
            if not {"highlights", "highlight_items"} <= _tables(conn):
                return None
            albums = self._albums_by_id(conn, highlight_id)
            if not albums:
                return None
            rows = conn.execute(
                f"SELECT {_STORY_COLUMNS} FROM highlight_items AS i"
                " JOIN stories AS s ON s.story_id = i.story_id"
                " LEFT JOIN media AS m ON m.story_id = s.story_id"
                " WHERE i.highlight_id = ? ORDER BY i.position, s.story_id",
                (highlight_id,),
            )
            return albums[0], [_story_row(r) for r in rows]

        return self.read(fetch)

    @staticmethod
    def _albums_by_id(conn: sqlite3.Connection, highlight_id: str) -> list[HighlightAlbum]:
        row = conn.execute(
            "SELECT h.id, h.account, h.title, h.created_at,"
            " (SELECT count(*) FROM highlight_items WHERE highlight_id = h.id), NULL"
            " FROM highlights AS h WHERE h.id = ?",
            (highlight_id,),
        ).fetchone()
        return [] if row is None else [HighlightAlbum(*row)]

    def media_path(self, story_id: str) -> str | None:
        """The recorded file of a saved story (relative to the download directory), or ``None``."""

        def fetch(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT path FROM media WHERE story_id = ? AND status = 'saved'", (story_id,)
            ).fetchone()
            return None if row is None or not isinstance(row[0], str) else row[0]

        return self.read(fetch)

    # -- status -------------------------------------------------------------------

    def status(self, now: float | None = None) -> StatusReport:
        """The schedule, credits, recent errors and media totals, in one snapshot."""
        at = time.time() if now is None else now
        return self.read(lambda conn: _status(conn, at))


def _status(conn: sqlite3.Connection, at: float) -> StatusReport:
    files = dict.fromkeys(("saved", "pending", "failed", "expired"), 0)
    sizes = dict(files)
    for status, count, size in conn.execute(
        "SELECT status, count(*), coalesce(sum(bytes), 0) FROM media GROUP BY status"
    ):
        files[status], sizes[status] = count, size
    problems = [
        (r[0], r[1], r[2], r[3])
        for r in conn.execute(
            "SELECT story_id, status, reason, updated_at FROM media"
            " WHERE status IN ('failed', 'expired') ORDER BY updated_at DESC LIMIT 20"
        )
    ]
    runs = tuple(
        RunRow(r[0], r[1], r[2], _run_counts(r[3]))
        for r in conn.execute(
            "SELECT kind, started_at, finished_at, counts FROM runs ORDER BY id DESC LIMIT 10"
        )
    )
    # The watch tables are read by the watch's own store (one home for that SQL).
    watch = read_status(conn, at)
    polls = [] if watch is None else sorted(watch.accounts, key=_schedule_order)
    errors = sorted((p for p in polls if p.last_error), key=lambda p: -(p.last_poll_at or 0.0))
    return StatusReport(
        now=at,
        stories=conn.execute("SELECT count(*) FROM stories").fetchone()[0],
        accounts=conn.execute("SELECT count(*) FROM accounts").fetchone()[0],
        media=MediaTotals(files, sizes),
        polls=polls,
        watched=watch is not None,
        credits_24h=0 if watch is None else watch.spent_last_day,
        daily_cap=None if watch is None else watch.max_credits_per_day,
        every=None if watch is None else watch.every,
        recent_errors=errors[:20],
        media_problems=problems,
        last_success=dict(conn.execute("SELECT target, last_seen_at FROM accounts")),
        runs=runs,
    )


def _schedule_order(row: ScheduleRow) -> tuple[bool, float]:
    return (not row.active, row.next_poll_at)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _int_or_none(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:  # "None": no cap
        return None


def _float_or_none(text: str | None) -> float | None:
    try:
        value = None if text is None else float(text)
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
