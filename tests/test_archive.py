"""The story archive on real SQLite files: schema, upserts, media states, locks, ledger import."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest

from keyapi_async import ConfigurationError, KeyAPIError
from keyapi_async.archive import (
    SCHEMA_VERSION,
    ArchiveError,
    SchemaExtension,
    StoryArchive,
    import_ledger,
)
from keyapi_async.cli.ledger import LedgerError, LedgerLine, LedgerWriter
from keyapi_async.models import Reel, decode_reel
from keyapi_async.testing._data import build_reel

T0 = 1_773_000_000  # 2026-03-08T20:00:00Z
SHA = "ab" * 32


# -- building reels ------------------------------------------------------------


def image_item(
    story_id: str, taken_at: int = T0, *, tag: str = "a", **extra: Any
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": story_id,
        "taken_at": taken_at,
        "expiring_at": taken_at + 86_400,
        "media_type": 1,
        "original_width": 1320,
        "original_height": 2346,
        "image_versions": {
            "items": [
                {"url": f"https://cdn.example/{tag}/small.jpg", "width": 360, "height": 640},
                {"url": f"https://cdn.example/{tag}/big.jpg", "width": 1080, "height": 1920},
            ]
        },
    }
    item.update(extra)
    return item


def video_item(story_id: str, taken_at: int = T0, *, tag: str = "a") -> dict[str, Any]:
    item = image_item(story_id, taken_at, tag=tag)
    item.update(
        media_type=2,
        is_video=True,
        video_duration=7.25,
        video_versions=[
            {
                "type": 102,
                "width": 480,
                "height": 854,
                "url": f"https://cdn.example/{tag}/v480.mp4",
            },
            {
                "type": 101,
                "width": 720,
                "height": 1280,
                "url": f"https://cdn.example/{tag}/v720.mp4",
            },
            {
                "type": 103,
                "width": 360,
                "height": 640,
                "url": f"https://cdn.example/{tag}/v360.mp4",
            },
        ],
    )
    return item


def make_reel(username: str, user_id: str, *items: dict[str, Any]) -> Reel:
    user = {"id": user_id, "username": username}
    body = {
        "additional_data": {"id": user_id, "user": user},
        "count": len(items),
        "items": [{**item, "user": user} for item in items],
    }
    return decode_reel(msgspec.json.encode(body))


def synthetic_reel(key: str, seed: int = 0) -> Reel:
    """A reel of the emulator's synthetic data (1 to 5 items, images and videos)."""
    data = build_reel(f"username:{key}", seed, empty_ratio=0.0)["data"]
    return decode_reel(msgspec.json.encode(data))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "archive.sqlite3"


def pragma(path: Path, name: str) -> Any:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


# -- opening, schema, locks ----------------------------------------------------


async def test_new_archive_is_wal_and_versioned(db: Path) -> None:
    async with StoryArchive.open(db) as archive:
        assert archive.counts().stories == 0
        assert repr(archive) == f"<StoryArchive {str(db)!r} open>"
    assert archive.closed
    assert pragma(db, "journal_mode") == "wal"
    assert pragma(db, "user_version") == SCHEMA_VERSION
    conn = sqlite3.connect(db)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    assert {"accounts", "stories", "media", "runs", "schema_components"} <= tables


def test_migration_from_an_empty_file(db: Path) -> None:
    db.write_bytes(b"")
    with StoryArchive.connect(db) as archive:
        assert archive.counts().accounts == 0
    assert pragma(db, "user_version") == SCHEMA_VERSION
    # Opening again is a no-op migration.
    with StoryArchive.connect(db) as archive:
        assert archive.runs() == []


def test_refuses_other_sqlite_databases_and_other_files(db: Path, tmp_path: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ArchiveError, match="not a story archive"):
        StoryArchive.connect(db)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database, just some text" * 100)
    with pytest.raises(ArchiveError, match="not a SQLite database") as caught:
        StoryArchive.connect(garbage)
    assert isinstance(caught.value, KeyAPIError)
    assert caught.value.path == str(garbage)


def test_refuses_a_newer_schema(db: Path) -> None:
    StoryArchive.connect(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ArchiveError, match="newer than this library"):
        StoryArchive.connect(db)
    with pytest.raises(ArchiveError, match="newer than this library"):
        StoryArchive.connect(db, readonly=True)


async def test_locked_archive_is_a_clear_error(db: Path) -> None:
    StoryArchive.connect(db).close()
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
        started = time.monotonic()
        with pytest.raises(ArchiveError, match="locked by another writer") as caught:
            async with StoryArchive.open(db, busy_timeout=0.2):
                pass
        assert time.monotonic() - started < 10  # the busy timeout, not forever
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        with pytest.raises(ArchiveError, match="locked"):
            StoryArchive.connect(db, busy_timeout=0)
        # Readers are not blocked by a writer in WAL mode.
        with StoryArchive.connect(db, readonly=True) as reader:
            assert reader.counts().stories == 0
        other.execute("ROLLBACK")
    finally:
        other.close()
    with StoryArchive.connect(db, busy_timeout=0.2):
        pass


def test_locked_before_wal_is_a_clear_error(db: Path) -> None:
    other = sqlite3.connect(db, isolation_level=None)
    try:
        other.execute("CREATE TABLE IF NOT EXISTS t (x)")  # make it a rollback-journal database
        other.execute("DROP TABLE t")
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ArchiveError, match="locked by another writer"):
            StoryArchive.connect(db, busy_timeout=0.1)
    finally:
        other.close()


def test_unusable_paths_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="cannot open archive"):
        StoryArchive.connect(tmp_path / "missing-dir" / "archive.sqlite3")
    with pytest.raises(ArchiveError, match="cannot open archive"):
        StoryArchive.connect(tmp_path)  # a directory
    with pytest.raises(ArchiveError, match="no archive at"):
        StoryArchive.connect(tmp_path / "nope.sqlite3", readonly=True)
    assert not (tmp_path / "nope.sqlite3").exists()


async def test_readonly_archive_reads_but_refuses_writes(db: Path) -> None:
    async with StoryArchive.open(db) as archive:
        await archive.record_reel("javan", make_reel("javan", "1", image_item("s1")), T0)
    async with StoryArchive.open(db, readonly=True) as reader:
        assert [s.story_id for s in reader.stories()] == ["s1"]
        assert await reader.known_story_ids() == {"s1"}
        with pytest.raises(ArchiveError, match="read-only"):
            await reader.record_reel("javan", None, T0)


async def test_closed_archive_refuses_calls(db: Path) -> None:
    archive = StoryArchive.connect(db)
    await archive.aclose()
    await archive.aclose()  # idempotent
    archive.close()
    with pytest.raises(ArchiveError, match="closed"):
        await archive.record_reel("javan", None, T0)
    with pytest.raises(ArchiveError, match="closed"):
        archive.counts()


async def test_queued_writes_finish_before_close(db: Path) -> None:
    archive = StoryArchive.connect(db)
    tasks = [
        asyncio.create_task(
            archive.record_reel(f"u{i}", make_reel(f"u{i}", str(i), image_item(f"s{i}")), T0)
        )
        for i in range(50)
    ]
    await asyncio.sleep(0)  # let every task queue its job
    await archive.aclose()
    assert [len(await task) for task in tasks] == [1] * 50
    with StoryArchive.connect(db) as again:
        assert again.counts().stories == 50


# -- recording reels -----------------------------------------------------------


async def test_same_reel_twice_is_the_same_rows(db: Path) -> None:
    reel = synthetic_reel("javan")
    async with StoryArchive.open(db) as archive:
        first = await archive.record_reel("javan", reel, T0 + 10)
        rows = archive.stories()
        second = await archive.record_reel("javan", reel, T0 + 10)
        assert first == [item.id for item in reel.items]
        assert second == []
        assert archive.stories() == rows
        assert len(rows) == len(reel.items)
        counts = archive.counts()
        assert (counts.accounts, counts.stories) == (1, len(reel.items))
        assert counts.images + counts.videos == counts.stories


async def test_new_story_ids_are_detected(db: Path) -> None:
    async with StoryArchive.open(db) as archive:
        day1 = make_reel("javan", "18527", image_item("s1"), video_item("s2"))
        day2 = make_reel("javan", "18527", video_item("s2"), image_item("s3"), image_item("s3"))
        assert await archive.record_reel("javan", day1, T0) == ["s1", "s2"]
        assert await archive.record_reel("javan", day2, T0 + 3600) == ["s3"]
        # Another target naming the same person does not duplicate stories.
        assert await archive.record_reel("id:18527", day2, T0 + 3700) == []
        assert await archive.known_story_ids() == {"s1", "s2", "s3"}
        assert await archive.known_story_ids(["s3", "nope"]) == {"s3"}
        assert await archive.known_story_ids(account="javan") == {"s1", "s2", "s3"}
        assert await archive.known_story_ids(["s1", "x"], account="id:18527") == set()
        accounts = archive.accounts()
        assert [(a.target, a.user_id, a.stories) for a in accounts] == [
            ("id:18527", "18527", 0),
            ("javan", "18527", 3),
        ]


async def test_seen_again_refreshes_url_and_keeps_first_seen(db: Path) -> None:
    async with StoryArchive.open(db) as archive:
        await archive.record_reel("javan", make_reel("javan", "1", image_item("s1", tag="v1")), T0)
        await archive.record_reel(
            "javan", make_reel("javan", "1", image_item("s1", tag="v2")), T0 + 600.9
        )
        story = archive.story("s1")
        assert story is not None
        assert story.media_url == "https://cdn.example/v2/big.jpg"
        assert (story.first_seen_at, story.fetched_at) == (T0, T0 + 600)
        # An older fetch (e.g. yesterday's ledger imported today) only moves first_seen back.
        await archive.record_reel(
            "javan", make_reel("javan", "1", image_item("s1", tag="v0")), T0 - 600
        )
        story = archive.story("s1")
        assert story is not None
        assert story.media_url == "https://cdn.example/v2/big.jpg"
        assert (story.first_seen_at, story.fetched_at) == (T0 - 600, T0 + 600)
        account = archive.accounts()[0]
        assert (account.first_seen_at, account.last_seen_at) == (T0 - 600, T0 + 600)


async def test_chosen_rendition_and_fields(db: Path) -> None:
    video = video_item("v1", T0 + 5)
    image = image_item("i1", T0 + 9)
    reel = make_reel("javan", "18527", video, image)
    async with StoryArchive.open(db, keep_raw=True) as archive:
        await archive.record_reel("javan", reel, T0 + 60)
        v, i = archive.stories()
        conn = sqlite3.connect(db)
        try:
            stored = conn.execute("SELECT raw FROM stories WHERE story_id = 'v1'").fetchone()[0]
        finally:
            conn.close()
    assert (v.story_id, v.media_type, v.width, v.height, v.duration) == (
        "v1",
        "video",
        720,
        1280,
        7.25,
    )
    assert v.media_url == reel.items[0].best_media_url == "https://cdn.example/a/v720.mp4"
    assert (i.media_type, i.width, i.height, i.duration) == ("image", 1080, 1920, None)
    assert i.media_url == reel.items[1].best_media_url
    assert (v.taken_at, v.expiring_at, v.user_id, v.username) == (
        T0 + 5,
        T0 + 5 + 86_400,
        "18527",
        "javan",
    )
    assert (v.account, v.media, v.media_status) == ("javan", None, "not_requested")
    assert msgspec.json.decode(stored)["id"] == "v1"


async def test_empty_reel_records_the_account(db: Path) -> None:
    async with StoryArchive.open(db) as archive:
        assert await archive.record_reel("ghost", None, T0) == []
        assert await archive.record_reel("ghost", make_reel("ghost", "9"), T0 + 1) == []
        [account] = archive.accounts()
        assert (account.target, account.user_id, account.last_seen_at, account.stories) == (
            "ghost",
            "9",
            T0 + 1,
            0,
        )


async def test_bad_arguments_raise_before_queueing(db: Path) -> None:
    async with StoryArchive.open(db) as archive:
        with pytest.raises(ValueError, match="target"):
            await archive.record_reel("", None, T0)
        with pytest.raises(ValueError, match="fetched_at"):
            await archive.record_reel("javan", None, float("nan"))


BAD_CALLS: list[tuple[str, Any, str]] = [
    ("empty target", lambda a: a.record_reel("", None, T0), "target"),
    ("target not a str", lambda a: a.record_reel(42, None, T0), "target"),
    ("NaN fetched_at", lambda a: a.record_reel("javan", None, float("nan")), "fetched_at"),
    ("bool fetched_at", lambda a: a.record_reel("javan", None, True), "fetched_at"),
    ("negative fetched_at", lambda a: a.record_reel("javan", None, -1), "fetched_at"),
    ("unknown status", lambda a: a.record_media("s1", None, None, None, "lost"), "status"),
    ("absolute path", lambda a: a.record_media("s1", "/etc/x", 1, SHA, "saved"), "relative"),
    ("path leaves", lambda a: a.record_media("s1", "a/../../x", 1, SHA, "saved"), "inside"),
    ("drive path", lambda a: a.record_media("s1", "C:\\x.jpg", 1, SHA, "saved"), "relative"),
    ("bad digest", lambda a: a.record_media("s1", "a.jpg", 1, "xyz", "saved"), "sha256"),
    ("negative bytes", lambda a: a.record_media("s1", "a.jpg", -1, SHA, "saved"), "bytes"),
    ("bool bytes", lambda a: a.record_media("s1", "a.jpg", True, SHA, "saved"), "bytes"),
    ("saved without file", lambda a: a.record_media("s1", None, None, None, "saved"), "saved"),
    ("infinite at", lambda a: a.record_media("s1", None, None, None, "failed", at=1e999), "at"),
    ("import run kind", lambda a: a.start_run(kind="import"), "kind"),
    ("empty run kind", lambda a: a.start_run(kind=""), "kind"),
    ("negative started_at", lambda a: a.start_run(started_at=-5), "started_at"),
    ("NaN finished_at", lambda a: a.finish_run(1, finished_at=float("nan")), "finished_at"),
    ("negative limit", lambda a: a.pending_media(limit=-1), "limit"),
    ("float limit", lambda a: a.pending_media(limit=2.5), "limit"),
    ("NaN alive_at", lambda a: a.pending_media(alive_at=float("nan")), "alive_at"),
]


@pytest.mark.parametrize(
    ("call", "named"), [(c, n) for _, c, n in BAD_CALLS], ids=[i for i, _, _ in BAD_CALLS]
)
async def test_bad_arguments_are_configuration_errors_naming_them(
    db: Path, call: Any, named: str
) -> None:
    # ConfigurationError, not a bare ValueError (it is one too, so a caller's
    # `except ValueError` keeps working), raised before anything is queued.
    async with StoryArchive.open(db) as archive:
        with pytest.raises(ConfigurationError, match=named):
            await call(archive)
        assert archive.counts().stories == 0 and archive.runs() == []


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"busy_timeout": -1}, "busy_timeout"),
        ({"busy_timeout": float("inf")}, "busy_timeout"),
        ({"busy_timeout": "5"}, "busy_timeout"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": True}, "max_batch"),
        ({"extensions": [SchemaExtension("x", ()), SchemaExtension("x", ())]}, "duplicate"),
    ],
)
def test_bad_options_are_configuration_errors_naming_them(
    db: Path, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        StoryArchive.connect(db, **options)
    assert not db.exists()  # refused before the file was created


def test_bad_reads_and_extensions_are_configuration_errors(db: Path) -> None:
    with pytest.raises(ConfigurationError, match="name"):
        SchemaExtension("", ())
    with StoryArchive.connect(db) as archive, pytest.raises(ConfigurationError, match="batch"):
        archive.iter_stories(batch=0)


async def test_hostile_ids_are_stored_verbatim(db: Path) -> None:
    evil = "../../evil"
    injection = "x'); DROP TABLE stories; --"
    reel = make_reel("we/ird\\name", "1", image_item(evil), image_item(injection))
    async with StoryArchive.open(db) as archive:
        assert await archive.record_reel("we/ird\\name", reel, T0) == [evil, injection]
        await archive.record_media(evil, "weird_name/20260308_200000_evil.jpg", 3, SHA, "saved")
        assert {s.story_id for s in archive.stories()} == {evil, injection}
        story = archive.story(evil)
        assert story is not None and story.username == "we/ird\\name"
        assert story.media is not None and story.media.path == "weird_name/20260308_200000_evil.jpg"
        with pytest.raises(ValueError, match="inside the download directory"):
            await archive.record_media(evil, "../outside.jpg", 3, SHA, "saved")
        with pytest.raises(ValueError, match="relative"):
            await archive.record_media(evil, "/etc/passwd", 3, SHA, "saved")


# -- media ---------------------------------------------------------------------


async def test_media_status_transitions(db: Path) -> None:
    async with StoryArchive.open(db) as archive:
        await archive.record_reel(
            "javan", make_reel("javan", "1", image_item("s1"), video_item("s2")), T0
        )
        assert await archive.media_status("s1") is None

        await archive.record_media("s1", "javan/s1.jpg", None, None, "pending", at=T0 + 1)
        record = await archive.media_status("s1")
        assert record is not None and (record.status, record.failures, record.saved_at) == (
            "pending",
            0,
            None,
        )

        await archive.record_media("s1", None, None, None, "failed", "HTTP 503", at=T0 + 2)
        await archive.record_media("s1", None, None, None, "expired", "HTTP 403", at=T0 + 3)
        record = await archive.media_status("s1")
        assert record is not None
        assert (record.status, record.reason, record.failures, record.updated_at) == (
            "expired",
            "HTTP 403",
            2,
            T0 + 3,
        )

        await archive.record_media("s1", "javan/s1.jpg", 1234, SHA.upper(), "saved", at=T0 + 4)
        record = await archive.media_status("s1")
        assert record is not None
        assert (record.status, record.path, record.bytes, record.sha256) == (
            "saved",
            "javan/s1.jpg",
            1234,
            SHA,
        )
        assert (record.saved_at, record.failures, record.reason) == (T0 + 4, 0, None)

        # A file deleted on disk is downloaded again: saved may go back to pending.
        await archive.record_media("s1", "javan/s1.jpg", None, None, "pending", at=T0 + 5)
        record = await archive.media_status("s1")
        assert record is not None and (record.status, record.saved_at) == ("pending", None)

        records = await archive.media_records(["s1", "s2", "nope"])
        assert set(records) == {"s1"}

        with pytest.raises(ArchiveError, match="not in the archive"):
            await archive.record_media("nope", "x.jpg", 1, SHA, "saved")
        with pytest.raises(ValueError, match="needs path, bytes and sha256"):
            await archive.record_media("s1", "x.jpg", 1, None, "saved")
        with pytest.raises(ValueError, match="status"):
            await archive.record_media("s1", None, None, None, "lost")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="sha256"):
            await archive.record_media("s1", "x.jpg", 1, "zz", "saved")
        with pytest.raises(ValueError, match="bytes"):
            await archive.record_media("s1", "x.jpg", -1, SHA, "saved")
        # The failed calls changed nothing.
        record = await archive.media_status("s1")
        assert record is not None and record.status == "pending"


async def test_pending_media_is_what_remains_to_download(db: Path) -> None:
    async with StoryArchive.open(db) as archive:
        reel = make_reel(
            "javan",
            "1",
            image_item("late", T0 + 500),
            image_item("early", T0 + 100),
            image_item("saved", T0 + 200),
            image_item("failed", T0 + 300),
            image_item("expired", T0 + 400),
            image_item("pending", T0 + 450),
        )
        await archive.record_reel("javan", reel, T0 + 600)
        await archive.record_media("saved", "a.jpg", 1, SHA, "saved")
        await archive.record_media("failed", None, None, None, "failed", "reset")
        await archive.record_media("expired", None, None, None, "expired", "HTTP 410")
        await archive.record_media("pending", "p.jpg", None, None, "pending")

        ids = [s.story_id for s in await archive.pending_media()]
        assert ids == ["early", "failed", "pending", "late"]  # soonest-expiring first
        everything = await archive.pending_media(include_expired=True)
        assert [s.story_id for s in everything] == ["early", "failed", "expired", "pending", "late"]
        only_resume = await archive.pending_media(include_not_requested=False, include_failed=False)
        assert [(s.story_id, s.media_status) for s in only_resume] == [("pending", "pending")]
        alive = await archive.pending_media(alive_at=T0 + 86_400 + 350)
        assert [s.story_id for s in alive] == ["pending", "late"]
        assert [s.story_id for s in await archive.pending_media(limit=1)] == ["early"]
        assert await archive.pending_media(account="other") == []
        counts = archive.counts()
        assert counts.media == {
            "saved": 1,
            "pending": 1,
            "failed": 1,
            "expired": 1,
            "not_requested": 2,
        }
        assert counts.saved_bytes == 1
        assert archive.accounts()[0].saved == 1


# -- runs, extensions, transactions ----------------------------------------------


async def test_runs_are_recorded(db: Path, tmp_path: Path) -> None:
    async with StoryArchive.open(db) as archive:
        run = await archive.start_run(tmp_path / "run1.jsonl", started_at=T0)
        await archive.record_reel(
            "javan", make_reel("javan", "1", image_item("s1")), T0 + 1, run_id=run
        )
        await archive.finish_run(run, {"ok": 1, "new_stories": 1}, finished_at=T0 + 2)
        [record] = archive.runs()
        assert (record.id, record.kind, record.started_at, record.finished_at) == (
            run,
            "fetch",
            T0,
            T0 + 2,
        )
        assert record.ledger == str(tmp_path / "run1.jsonl")
        assert record.counts == {"new_stories": 1, "ok": 1}
        with pytest.raises(ArchiveError, match="no run 99"):
            await archive.finish_run(99)
        with pytest.raises(ValueError, match="kind"):
            await archive.start_run(kind="import")


WATCH_V1 = """
CREATE TABLE polls (target TEXT PRIMARY KEY REFERENCES accounts (target), next_at INTEGER NOT NULL);
CREATE INDEX polls_next_at ON polls (next_at);
"""


def add_spent_column(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE credits (spent_at INTEGER NOT NULL, credits INTEGER NOT NULL)")


async def test_schema_extensions_and_transact(db: Path) -> None:
    v1 = SchemaExtension("watch", (WATCH_V1,))
    async with StoryArchive.open(db, extensions=[v1]) as archive:
        await archive.record_reel("javan", None, T0)

        def schedule(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO polls VALUES ('javan', ?)", (T0 + 43,))
            return 1

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO polls VALUES ('javan', 0)")  # duplicate key

        results = await asyncio.gather(
            archive.transact(schedule),
            archive.transact(broken),
            archive.record_reel("other", None, T0),
            return_exceptions=True,
        )
        assert results[0] == 1 and results[2] == []
        assert isinstance(results[1], ArchiveError)  # rolled back alone
        assert archive.read(lambda c: c.execute("SELECT * FROM polls").fetchall()) == [
            ("javan", T0 + 43)
        ]
        with pytest.raises(ArchiveError):
            archive.read(lambda c: c.execute("DELETE FROM polls"))  # the reader refuses writes
    v2 = SchemaExtension("watch", (WATCH_V1, add_spent_column))
    with StoryArchive.connect(db, extensions=[v2]) as archive:
        assert archive.read(lambda c: c.execute("SELECT count(*) FROM credits").fetchone()[0]) == 0
        assert (
            archive.read(
                lambda c: c.execute(
                    "SELECT version FROM schema_components WHERE name = 'watch'"
                ).fetchone()[0]
            )
            == 2
        )
    with pytest.raises(ArchiveError, match="newer than this library"):
        StoryArchive.connect(db, extensions=[v1])
    with pytest.raises(ArchiveError, match="expects 3"):
        StoryArchive.connect(
            db,
            readonly=True,
            extensions=[SchemaExtension("watch", (WATCH_V1, add_spent_column, ""))],
        )
    with pytest.raises(ValueError, match="duplicate"):
        StoryArchive.connect(db, extensions=[v1, v1])


async def test_a_failed_extension_migration_changes_nothing(db: Path) -> None:
    bad = SchemaExtension("watch", ("CREATE TABLE polls (x); CREATE TABLE polls (y);",))
    with pytest.raises(ArchiveError):
        StoryArchive.connect(db, extensions=[bad])
    # The whole opening transaction, core tables included, was rolled back.
    assert pragma(db, "user_version") == 0
    with StoryArchive.connect(db) as archive:
        assert archive.counts().stories == 0


# -- ledger import -------------------------------------------------------------


def write_ledger(path: Path, lines: list[LedgerLine], tail: bytes = b"") -> Path:
    writer = LedgerWriter(str(path), mode="new", fsync=False)
    try:
        for line in lines:
            writer.write(line)
    finally:
        writer.close()
    if tail:
        with path.open("ab") as handle:
            handle.write(tail)
    return path


Status = Literal["ok", "empty", "error", "not_attempted"]


def ledger_line(
    target: str, status: Status, reel: Reel | None, at: str = "2026-03-10T02:13:01.123Z"
) -> LedgerLine:
    error = None if status in ("ok", "empty") else LedgerError(type="ServerError", message="boom")
    return LedgerLine(
        target=target, status=status, fetched_at=at, attempts=1, stories=reel, error=error
    )


async def test_ledger_import_is_idempotent(db: Path, tmp_path: Path) -> None:
    javan = synthetic_reel("javan")
    anna = synthetic_reel("anna", seed=3)
    ledger = write_ledger(
        tmp_path / "run.jsonl",
        [
            ledger_line("javan", "ok", javan),
            ledger_line("ghost", "empty", None),
            ledger_line("broke", "error", None),
            ledger_line("later", "not_attempted", None),
            ledger_line("anna", "ok", anna, at="2026-03-10T02:14:00.000Z"),
        ],
        tail=b'{"target":"torn","sta',
    )
    total = len(javan.items) + len(anna.items)
    async with StoryArchive.open(db) as archive:
        first = await import_ledger(archive, ledger)
        rows = archive.stories()
        second = await import_ledger(archive, ledger)
        assert (first.lines, first.reels, first.skipped, first.torn) == (5, 3, 2, True)
        assert first.stories == first.new_stories == total
        assert sorted(first.new_story_ids) == sorted(s.story_id for s in rows)
        assert (second.new_stories, second.stories, second.run_id) == (0, total, first.run_id)
        assert archive.stories() == rows
        assert {a.target for a in archive.accounts()} == {"javan", "ghost", "anna"}
        [run] = archive.runs()
        assert (run.kind, run.ledger, run.counts["new_stories"]) == ("import", str(ledger), 0)
        fetched = {s.fetched_at for s in rows if s.account == "anna"}
        assert fetched == {1_773_108_840}  # the line's fetched_at, 2026-03-10T02:14:00Z
        # A live run that recorded the same reels adds nothing either.
        assert await archive.record_reel("javan", javan, 1_773_108_781) == []


async def test_ledger_import_stops_at_a_bad_middle_line(db: Path, tmp_path: Path) -> None:
    ledger = tmp_path / "bad.jsonl"
    write_ledger(ledger, [ledger_line("javan", "ok", make_reel("javan", "1", image_item("s1")))])
    with ledger.open("ab") as handle:
        handle.write(b"not json\n")
    write_ledger(
        tmp_path / "more.jsonl",
        [ledger_line("anna", "ok", make_reel("anna", "2", image_item("s2")))],
    )
    with ledger.open("ab") as handle:
        handle.write((tmp_path / "more.jsonl").read_bytes())
    async with StoryArchive.open(db) as archive:
        with pytest.raises(ArchiveError, match="line 2 is not a valid ledger line"):
            await import_ledger(archive, ledger)
        assert await archive.known_story_ids() == {"s1"}
        with pytest.raises(ArchiveError, match="cannot read ledger"):
            await import_ledger(archive, tmp_path / "missing.jsonl")


def story_rows(path: Path) -> list[tuple[Any, ...]]:
    """Every column of every story and account but the run ids, which differ by design."""
    conn = sqlite3.connect(path)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(stories)")]
        kept = ", ".join(c for c in columns if c not in ("first_run_id", "last_run_id"))
        stories = conn.execute(f"SELECT {kept} FROM stories ORDER BY story_id").fetchall()
        accounts = conn.execute("SELECT * FROM accounts ORDER BY target").fetchall()
        return stories + accounts
    finally:
        conn.close()


async def test_ledger_import_rows_equal_recording_each_line_in_order(
    db: Path, tmp_path: Path
) -> None:
    # An import inserts ids new to the archive and upserts the rest; the
    # rows must be those of one record_reel per line, in ledger order: the
    # same id twice in one chunk (newer then older fetch, two accounts at one
    # fetched_at) and an id archived before the import.
    t1, t2 = "2026-03-10T02:00:00.000Z", "2026-03-10T03:00:00.000Z"
    lines = [
        ledger_line("javan", "ok", make_reel("javan", "1", video_item("s1", tag="new")), at=t2),
        ledger_line(
            "javan",
            "ok",
            make_reel("javan", "1", image_item("s1", tag="old"), image_item("s3")),
            at=t1,
        ),
        ledger_line("anna", "ok", make_reel("anna", "2", image_item("s1", tag="anna")), at=t2),
        ledger_line(
            "anna", "ok", make_reel("anna", "2", image_item("s2"), image_item("s2")), at=t1
        ),
    ]
    before = make_reel("javan", "1", image_item("s3", tag="before"))
    ledger = write_ledger(tmp_path / "dups.jsonl", lines)
    async with StoryArchive.open(db) as archive:
        await archive.record_reel("javan", before, T0)
        result = await import_ledger(archive, ledger)
    assert (result.stories, result.new_stories) == (6, 2)
    assert result.new_story_ids == ["s1", "s2"]
    one_by_one = tmp_path / "one_by_one.sqlite3"
    async with StoryArchive.open(one_by_one) as archive:
        await archive.record_reel("javan", before, T0)
        for line in lines:
            seconds = int(datetime.fromisoformat(line.fetched_at).timestamp())
            await archive.record_reel(line.target, line.stories, seconds)
    assert story_rows(db) == story_rows(one_by_one)
    counted_only = tmp_path / "counted_only.sqlite3"
    async with StoryArchive.open(counted_only) as archive:
        quiet = await import_ledger(archive, ledger, new_ids=False)
    assert (quiet.new_stories, quiet.new_story_ids) == (3, [])  # s3 too: not archived before
    with StoryArchive.connect(db, readonly=True) as archive:
        s1 = archive.story("s1")
    assert s1 is not None
    # The last line at the newest fetched_at won; the first account is kept.
    assert (s1.account, s1.username) == ("javan", "anna")
    assert s1.media_url == "https://cdn.example/anna/big.jpg"


async def test_an_unknown_ledger_status_is_an_invalid_line(db: Path, tmp_path: Path) -> None:
    # Not skipped like error/not_attempted: a status this library never
    # writes means the line is not ours; in the middle it stops the import
    # (the lines before it are in), as the last line it counts as torn, the
    # rule --resume follows too.
    good = ledger_line("javan", "ok", make_reel("javan", "1", image_item("s1")))
    later = ledger_line("anna", "ok", make_reel("anna", "2", image_item("s2")))
    weird = msgspec.json.encode(good).replace(b'"status":"ok"', b'"status":"archived"')
    middle = write_ledger(tmp_path / "middle.jsonl", [good])
    with middle.open("ab") as handle:
        handle.write(weird + b"\n" + msgspec.json.encode(later) + b"\n")
    last = write_ledger(tmp_path / "last.jsonl", [later], tail=weird + b"\n")
    async with StoryArchive.open(db) as archive:
        with pytest.raises(ArchiveError, match="line 2 is not a valid ledger line"):
            await import_ledger(archive, middle)
        assert await archive.known_story_ids() == {"s1"}
        result = await import_ledger(archive, last)
        assert (result.lines, result.skipped, result.torn) == (1, 0, True)
        assert await archive.known_story_ids() == {"s1", "s2"}


# -- the event loop keeps running --------------------------------------------------


async def measure_stalls(
    archive: StoryArchive, reels: list[tuple[str, Reel]]
) -> tuple[float, float, float]:
    """Record reels (in concurrent waves) while a 1 ms ticker measures its own lateness."""
    lateness: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.001)
            lateness.append(loop.time() - before - 0.001)

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    for start in range(0, len(reels), 100):
        wave = reels[start : start + 100]
        await asyncio.gather(*(archive.record_reel(t, r, T0) for t, r in wave))
    elapsed = time.perf_counter() - started
    done.set()
    await tick
    return max(lateness), statistics.median(lateness), elapsed


async def test_writes_do_not_stall_the_event_loop(db: Path) -> None:
    reels = [
        (
            f"acct{n}",
            make_reel(
                f"acct{n}", str(n), image_item(f"{n}a"), video_item(f"{n}b"), image_item(f"{n}c")
            ),
        )
        for n in range(1000)
    ]
    async with StoryArchive.open(db) as archive:
        worst, median, elapsed = await measure_stalls(archive, reels)
        assert archive.counts().stories == 3000
    # Generous bounds: a shared CI core can be slow; the measured figures are
    # in docs/archive.md.
    assert worst < 1.0, f"loop stalled {worst * 1000:.1f} ms (median {median * 1000:.2f} ms)"
    assert elapsed < 60
