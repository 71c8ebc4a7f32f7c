"""Highlight media through the ``keyapi-stories`` command: a killed run resumed, custom layouts.

The real command runs in a subprocess against an emulator (API and CDN) served
by this test process on 127.0.0.1, so the emulator's logs show exactly what
the command sent; the archive is read back from its SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from keyapi_async.archive import StoryArchive
from keyapi_async.archive.highlights import HIGHLIGHTS_SCHEMA
from keyapi_async.testing import HighlightConfig, MediaConfig, MediaFault, run_emulator
from keyapi_async.testing._data import build_reel
from keyapi_async.testing._highlights import HIGHLIGHT_STORIES_PATH, highlight_ids
from keyapi_async.testing._media import MediaCDN, media_cdn
from tests.test_capture_cli import wait_until
from tests.test_cli import CLI, base_env, run_cli, write_targets
from tests.test_highlights_media import config, covers, files_below, folder, members

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
T = TypeVar("T")
ARCHIVE_FILES = {"archive.sqlite3", "archive.sqlite3-wal", "archive.sqlite3-shm"}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def saved_paths(root: Path) -> dict[str, str]:
    """Story id -> the recorded path of every saved file below ``root``'s archive."""
    with StoryArchive.connect(root / "archive.sqlite3", readonly=True) as db:
        return {
            s.story_id: s.media.path
            for s in db.stories()
            if s.media is not None and s.media.status == "saved" and s.media.path
        }


def read_live(db: Path, query: Callable[[sqlite3.Connection], T], empty: T) -> T:
    """``query`` on an archive another process writes (WAL: its last commit).

    ``empty`` before the archive or the tables the query reads exist.
    """
    if not db.exists():
        return empty
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as c:
            return query(c)
    except sqlite3.OperationalError:  # no such table (yet)
        return empty


Claims = tuple[set[str], set[str], set[str]]


def pending_members(conn: sqlite3.Connection) -> Claims:
    """``(highlights with recorded items, their story ids, those whose file is pending)``."""
    rows = conn.execute(
        "SELECT i.highlight_id, i.story_id, m.status FROM highlight_items i "
        "LEFT JOIN media m USING (story_id)"
    ).fetchall()
    return {r[0] for r in rows}, {r[1] for r in rows}, {r[1] for r in rows if r[2] == "pending"}


def check_one_file_each(root: Path, paths: dict[str, str], cdn: MediaCDN) -> None:
    """Each story's recorded file holds the CDN's bytes, and is its only file below ``root``."""
    finals = files_below(root) - ARCHIVE_FILES
    with StoryArchive.connect(root / "archive.sqlite3", readonly=True) as db:
        for story_id, path in paths.items():
            story = db.story(story_id)
            assert story is not None and story.media is not None and story.media_url
            assert sha(root / path) == story.media.sha256 == cdn.expected_sha256(story.media_url)
            assert [f for f in finals if f"_{story_id}." in f] == [path]


@posix_only
async def test_a_killed_highlights_run_is_resumed_in_the_highlight_layout(
    api_key: str, tmp_path: Path
) -> None:
    names = [f"res{n}" for n in range(16)]
    highlights = HighlightConfig(max_highlights=2, max_items=2, keep_active=True)
    expected = {h for n in names for h in highlight_ids(f"username:{n}", 0, highlights)}
    # Stories both active and kept in a highlight (the first highlight of each account).
    kept = set()
    for name in names:
        items = (build_reel(f"username:{name}")["data"] or {}).get("items") or []
        if items and highlight_ids(f"username:{name}", 0, highlights):
            kept.add(items[-1]["id"])
    assert len(expected) >= 6 and len(kept) >= 3
    targets = write_targets(tmp_path / "targets.txt", names)
    # Every body trickles: the kill lands after the items are recorded and
    # claimed, long before any of their files is complete.
    slow = MediaConfig(
        enabled=True, fault_rates={MediaFault.SLOW: 1.0}, slow_chunk=1024, slow_delay=0.5
    )
    async with run_emulator(config(api_key, highlights, media=slow)) as emu:
        cdn = media_cdn(emu)
        env = base_env(KEYAPI_BASE_URL=emu.base_url, KEYAPI_API_KEY=api_key)
        media = ("--media-hosts", emu.base_url.removeprefix("http://"), "--qps", "0")
        killed = tmp_path / "killed"
        proc = await asyncio.create_subprocess_exec(
            *CLI, "fetch", str(targets), "--highlights-only", "--download", str(killed), *media,
            env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        db = killed / "archive.sqlite3"
        answers = {f"highlight:{h}" for h in expected}

        def claimed() -> bool:
            """Every highlight answered and recorded, and every item of them pending."""
            hids, items, pending = read_live(db, pending_members, (set(), set(), set()))
            answered = {r.target for r in emu.log if r.path == HIGHLIGHT_STORIES_PATH}
            return hids == expected and answered == answers and pending == items

        try:
            await wait_until(claimed, proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        _, _, pending = read_live(db, pending_members, (set(), set(), set()))
        assert kept <= pending and not saved_paths(killed)  # nothing finished: all to resume
        again = tmp_path / "again"
        shutil.copytree(killed, again)
        emu.config = config(api_key, highlights)  # the CDN is fast again

        # Where an uninterrupted run puts every item: the reference.
        reference = tmp_path / "reference"
        whole = await run_cli(
            "fetch", str(targets), "--highlights-only", "--download", str(reference), *media,
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert whole.code == 0, whole.stderr
        layout = saved_paths(reference)
        assert set(layout) == pending
        with StoryArchive.connect(reference / "archive.sqlite3", readonly=True) as db:
            owners = {sid: (account, title, hid) for sid, hid, title, account in members(db)}
        for story_id, path in layout.items():
            account, title, hid = owners[story_id]
            assert path.split("/")[:3] == [account, "highlights", folder(title, hid)]

        # A plain stories run completes the killed run's files: in their highlight's folder.
        sent = len(cdn.log)
        plain = await run_cli(
            "fetch", str(targets), "-o", "plain.jsonl", "--download", str(killed), *media,
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert plain.code == 0, plain.stderr
        assert f"completing {len(pending)} files" in plain.stderr
        resumed = saved_paths(killed)
        assert {sid: resumed[sid] for sid in pending} == layout
        check_one_file_each(killed, resumed, cdn)
        # A kept story, active again in this run, is the resumed file: fetched once.
        assert all(len([r for r in cdn.log[sent:] if r.story_id == s]) == 1 for s in kept)

        # A stories-and-highlights run does the same, and its highlights pass
        # (fetching the unfinished highlights again) finds every item saved.
        both = await run_cli(
            "fetch", str(targets), "-o", "both.jsonl", "--highlights", "--download", str(again),
            *media, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert both.code == 0, both.stderr
        (line,) = [x for x in both.stderr.splitlines() if x.startswith("highlights:")]
        assert f"media: 0 saved, {len(pending)} already saved, 0 expired, 0 failed, 0 pending;" in (
            line
        ), line
        resumed = saved_paths(again)
        assert {sid: resumed[sid] for sid in pending} == layout
        check_one_file_each(again, resumed, cdn)
        async with StoryArchive.open(again / "archive.sqlite3", extensions=[HIGHLIGHTS_SCHEMA]):
            pass  # the archive the command left opens with the highlights tables


# -- --highlight-template -----------------------------------------------------------

STORIES = "stories/{username}/{story_id}.{ext}"
KEPT = "kept/{username}/{highlight_id}/{story_id}.{ext}"


def check_templated(root: Path, cdn: MediaCDN) -> int:
    """Every file below ``root`` is where the two templates put it, with the CDN's bytes.

    Returns the number of highlight item files.
    """
    recorded = set()
    with StoryArchive.connect(root / "archive.sqlite3", readonly=True) as db:
        owners = {sid: (account, hid) for sid, hid, _, account in members(db)}
        for story in db.stories():
            media = story.media
            assert media is not None and media.status == "saved" and media.path, story.story_id
            assert story.media_url is not None
            assert sha(root / media.path) == media.sha256 == cdn.expected_sha256(story.media_url)
            ext = media.path.rpartition(".")[2]
            if story.story_id in owners:
                account, hid = owners[story.story_id]
                assert media.path == f"kept/{account}/{hid}/{story.story_id}.{ext}"
            else:
                assert media.path == f"stories/{story.account}/{story.story_id}.{ext}"
            recorded.add(media.path)
        for hid, _, account, url, path, digest in covers(db):
            assert url is not None and path == f"kept/{account}/{hid}/cover_{hid}.jpg"
            assert sha(root / path) == digest == cdn.expected_sha256(url)
            recorded.add(path)
    assert files_below(root) - ARCHIVE_FILES == recorded
    return len(owners)


def watch_saved(conn: sqlite3.Connection) -> tuple[set[str], int]:
    """``(highlights whose cover is saved, highlight items not saved yet)``."""
    rows = conn.execute("SELECT id FROM highlights WHERE cover_path IS NOT NULL")
    saved = {row[0] for row in rows}
    (unsaved,) = conn.execute(
        "SELECT count(*) FROM highlight_items i LEFT JOIN media m USING (story_id) "
        "WHERE m.status IS NOT 'saved'"
    ).fetchone()
    return saved, int(unsaved)


@pytest.mark.parametrize("command", ["fetch", "watch"])
async def test_highlights_are_saved_by_the_highlight_template(
    api_key: str, tmp_path: Path, command: str
) -> None:
    names = [f"tpl{n}" for n in range(10)]
    highlights = HighlightConfig(max_highlights=2, max_items=2)
    expected = {h for n in names for h in highlight_ids(f"username:{n}", 0, highlights)}
    assert len(expected) >= 4
    targets = write_targets(tmp_path / "targets.txt", names)
    root = tmp_path / "dl"
    async with run_emulator(config(api_key, highlights)) as emu:
        cdn = media_cdn(emu)
        env = base_env(KEYAPI_BASE_URL=emu.base_url, KEYAPI_API_KEY=api_key)
        common = [
            "--download", str(root), "--name-template", STORIES, "--highlight-template", KEPT,
            "--media-hosts", emu.base_url.removeprefix("http://"),
        ]  # fmt: skip
        if command == "fetch":
            done = await run_cli(
                "fetch", str(targets), "-o", "run.jsonl", "--highlights", *common, "--qps", "0",
                env=env, cwd=tmp_path,
            )  # fmt: skip
            assert done.code == 0, done.stderr
        else:
            proc = await asyncio.create_subprocess_exec(
                *CLI, "watch", str(targets), "--every", "20s", "--highlights-every", "4s",
                *common, "--qps", "50", env=env, cwd=tmp_path,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            db = root / "archive.sqlite3"
            try:
                await wait_until(
                    lambda: read_live(db, watch_saved, (set(), -1)) == (expected, 0), proc
                )
            finally:
                proc.send_signal(signal.SIGTERM)
                _, err = await asyncio.wait_for(proc.communicate(), 20)
            assert proc.returncode == 0, err.decode()
        # Every story and cover where the templates put it (the watch's polls may
        # have saved more active stories meanwhile: they are checked too).
        assert check_templated(root, cdn) >= len(expected)
        assert {f.split("/")[2] for f in files_below(root) if f.startswith("kept/")} == expected


@pytest.mark.parametrize("command", ["fetch", "watch"])
@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{username}/{nope}/{story_id}.{ext}", "unknown field {nope}"),
        ("{username}/{highlight_id}.{ext}", "must contain {story_id}"),
    ],
)
async def test_a_bad_highlight_template_exits_2_having_sent_nothing(
    api_key: str, tmp_path: Path, command: str, template: str, problem: str
) -> None:
    targets = write_targets(tmp_path / "targets.txt", ["alpha", "beta"])
    root, ledger = tmp_path / "dl", tmp_path / "run.jsonl"
    extra = (
        ["-o", str(ledger), "--highlights"]
        if command == "fetch"
        else ["--every", "20s", "--highlights-every", "4s"]
    )
    async with run_emulator(config(api_key, HighlightConfig())) as emu:
        done = await run_cli(
            command, str(targets), *extra, "--download", str(root),
            "--highlight-template", template,
            "--media-hosts", emu.base_url.removeprefix("http://"),
            env=base_env(KEYAPI_BASE_URL=emu.base_url, KEYAPI_API_KEY=api_key), cwd=tmp_path,
        )  # fmt: skip
        assert emu.requests_total == 0 and media_cdn(emu).log == []
    assert done.code == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("keyapi-stories: error: --highlight-template") and problem in line
    assert api_key not in done.stderr and "Traceback" not in done.stderr
    assert not ledger.exists() and not root.exists()
