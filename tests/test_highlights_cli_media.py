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
from pathlib import Path

import pytest

from keyapi_async.archive import StoryArchive
from keyapi_async.archive.highlights import HIGHLIGHTS_SCHEMA
from keyapi_async.testing import HighlightConfig, MediaConfig, MediaFault, run_emulator
from keyapi_async.testing._data import build_reel
from keyapi_async.testing._highlights import HIGHLIGHT_STORIES_PATH, highlight_ids
from keyapi_async.testing._media import MediaCDN, media_cdn
from tests.test_cli import CLI, base_env, run_cli, write_targets
from tests.test_highlights_media import config, files_below, folder, members

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
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


def pending_members(db: Path) -> tuple[set[str], set[str]]:
    """``(highlight ids with recorded items, story ids of items whose file is pending)``.

    Read while the command writes (WAL: a reader sees the last commit); empty
    before the archive or its highlights tables exist.
    """
    if not db.exists():
        return set(), set()
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as c:
            hids = {row[0] for row in c.execute("SELECT highlight_id FROM highlight_items")}
            pending = c.execute(
                "SELECT i.story_id FROM highlight_items i JOIN media m USING (story_id) "
                "WHERE m.status = 'pending'"
            )
            return hids, {row[0] for row in pending}
    except sqlite3.OperationalError:  # no tables yet, or a write lock held a moment
        return set(), set()


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
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                hids, pending = pending_members(killed / "archive.sqlite3")
                answered = {r.target for r in emu.log if r.path == HIGHLIGHT_STORIES_PATH}
                if hids == expected and answered == {f"highlight:{h}" for h in expected}:
                    with StoryArchive.connect(killed / "archive.sqlite3", readonly=True) as db:
                        if pending == {sid for sid, *_ in members(db)}:
                            break
                assert proc.returncode is None, "the run ended before it was killed"
                assert asyncio.get_running_loop().time() < deadline, "no pending items in 30 s"
                await asyncio.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
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
        (line,) = [x for x in both.stdout.splitlines() if x.startswith("highlights:")]
        assert "media: 0 saved (" in line, line  # its bytes are the covers'
        assert f"), {len(pending)} already saved, 0 expired, 0 failed, 0 pending;" in line, line
        resumed = saved_paths(again)
        assert {sid: resumed[sid] for sid in pending} == layout
        check_one_file_each(again, resumed, cdn)
        async with StoryArchive.open(again / "archive.sqlite3", extensions=[HIGHLIGHTS_SCHEMA]):
            pass  # the archive the command left opens with the highlights tables
