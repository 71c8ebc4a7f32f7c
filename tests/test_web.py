"""The gallery (issue 20) over HTTP and its pure parts: pages, pagination, media, security, metrics.

Archives are written by the archive's own writer (:class:`StoryArchive`,
``keep_raw`` so the player has the raw item) with real JPEG bytes from the
emulator's CDN, or captured by the real ``fetch --download`` from the
emulator. The gallery runs on 127.0.0.1 and is asked over real HTTP.
The browser tests are in ``tests/test_web_browser.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keyapi_async.archive import SchemaExtension, StoryArchive
from keyapi_async.archive.highlights import HIGHLIGHTS_SCHEMA
from keyapi_async.models import (
    Caption,
    ImageCandidate,
    ImageVersions,
    MusicAssetInfo,
    MusicInfo,
    MusicMetadata,
    Reel,
    ReelMention,
    StoryItem,
    User,
    VideoVersion,
)
from keyapi_async.testing._media import media_bytes
from keyapi_async.web import GalleryConfig, is_loopback, running_gallery
from keyapi_async.web.files import is_safe_relative, resolve_media
from keyapi_async.web.health import Heartbeat, judge_ready
from keyapi_async.web.queries import StoryRow, decode_cursor, details_from_raw, encode_cursor
from keyapi_async.web.security import CONTENT_SECURITY_POLICY
from keyapi_async.web.templating import web_link
from tests.test_capture_cli import cdn_host, env_with, media_emulator
from tests.test_cli import CLI, base_env, run_cli, write_targets

DAY = 86_400
T0 = 1_780_000_000 - 1_780_000_000 % DAY  # a UTC midnight
HOSTILE = "<script>window.__pwned = 1</script>"
JS_URL = "javascript:window.__pwned=1"


# -- building archives with the archive's own writer ------------------------------------------


@dataclass(frozen=True)
class Story:
    """One story to write: enough for the pages and the player."""

    id: str
    account: str
    taken_at: int | None
    video: bool = False
    caption: str | None = None
    mentions: tuple[str, ...] = ()
    music: tuple[str, str] | None = None
    username: str | None = None
    links: tuple[str, ...] = ()
    saved: bool = True
    highlights: tuple[tuple[str, str], ...] = field(default=())
    """``(highlight id, title)`` of the highlights the story is in."""


def _item(story: Story) -> StoryItem:
    url = f"http://127.0.0.1:9/cdn/{story.id}"
    music = None
    if story.music is not None:
        artist, title = story.music
        info = MusicAssetInfo(title=title, display_artist=artist)
        music = MusicMetadata(music_info=MusicInfo(music_asset_info=info))
    return StoryItem(
        id=story.id,
        taken_at=story.taken_at,
        is_video=story.video,
        media_type=2 if story.video else 1,
        original_width=96,
        original_height=160,
        video_duration=3.0 if story.video else None,
        image_versions=ImageVersions(items=(ImageCandidate(url=url, width=96, height=160),)),
        video_versions=(VideoVersion(url=url + ".mp4", width=96, height=160),)
        if story.video
        else (),
        caption=None if story.caption is None else Caption(text=story.caption),
        reel_mentions=tuple(ReelMention(user=User(username=m)) for m in story.mentions),
        music_metadata=music,
        user=User(id="1" + story.account.encode().hex()[:8], username=story.username),
    )


def video_bytes() -> bytes:
    """A real 3-second WebM (VP8) that a browser plays and seeks, or the emulator's MP4."""
    try:
        import av
    except ImportError:
        return media_bytes("video", "mp4", 96, 160)
    import io

    out = io.BytesIO()
    with av.open(out, "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 160, "yuv420p"
        for n in range(30):
            frame = av.VideoFrame(96, 160, "yuv420p")
            for plane, value in zip(frame.planes, (40 + 6 * n, 90, 160), strict=True):
                plane.update(bytes([value]) * plane.buffer_size)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def _write_files(
    root: Path, stories: Sequence[Story], video: bytes | None
) -> list[tuple[str, str, int, str]]:
    clip = video if video is not None else media_bytes("video", "mp4", 96, 160)
    written = []
    for story in stories:
        if not story.saved:
            continue
        suffix = ".webm" if story.video else ".jpg"
        data = clip if story.video else media_bytes(story.id, "jpg", 96, 160)
        relative = f"{story.account}/{story.id}{suffix}"
        (root / story.account).mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
        written.append((story.id, relative, len(data), hashlib.sha256(data).hexdigest()))
    return written


async def write_archive(
    root: Path,
    stories: Sequence[Story],
    *,
    extensions: Iterable[SchemaExtension] = (),
    video: bytes | None = None,
) -> Path:
    """Write ``stories`` (and their files under ``root``) through the archive's writer."""
    db = root / "archive.sqlite3"
    files = _write_files(root, stories, video)
    exts = list(extensions)
    if any(s.highlights for s in stories) and HIGHLIGHTS_SCHEMA not in exts:
        exts.append(HIGHLIGHTS_SCHEMA)
    async with StoryArchive.open(db, keep_raw=True, extensions=exts) as archive:
        ordered = sorted(stories, key=lambda s: s.account)
        for account, group in itertools.groupby(ordered, key=lambda s: s.account):
            reel = Reel(items=tuple(_item(s) for s in group))
            await archive.record_reel(account, reel, fetched_at=T0 + 40 * DAY)
        for story_id, relative, size, digest in files:
            await archive.record_media(story_id, relative, size, digest, "saved")
        links = [(json.dumps([{"story_link": {"url": u}} for u in s.links]), s.id) for s in stories]
        highlights = {(h, t, s.account) for s in stories for h, t in s.highlights}
        items = [(h, s.id, n) for n, s in enumerate(stories) for h, _ in s.highlights]

        def extras(conn: sqlite3.Connection) -> None:
            # Link stickers are not part of StoryItem: an archive whose raw
            # items carry them (another writer, a later model) still shows them.
            conn.executemany(
                "UPDATE stories SET raw = json_set(raw, '$.story_link_stickers', json(?))"
                " WHERE story_id = ?",
                [row for row in links if row[0] != "[]"],
            )
            if not highlights:
                return
            conn.executemany(
                "INSERT INTO highlights (id, account, title, created_at, first_seen_at,"
                " last_seen_at) VALUES (?, ?, ?, ?, 0, 0)",
                [(h, a, t, T0) for h, t, a in sorted(highlights)],
            )
            conn.executemany(
                "INSERT INTO highlight_items (highlight_id, story_id, position) VALUES (?, ?, ?)",
                items,
            )

        await archive.transact(extras)
    return db


def timeline_stories(account: str, count: int, *, per_day: int = 10) -> list[Story]:
    """``count`` stories of ``account``, ``per_day`` a day, every third a video."""
    return [
        Story(
            id=f"{account}-{n:04d}",
            account=account,
            taken_at=T0 + (n // per_day) * DAY + (n % per_day) * 600,
            video=n % 3 == 2,
            username=account,
        )
        for n in range(count)
    ]


@contextlib.asynccontextmanager
async def gallery(
    root: Path, *, db: Path | None = None, **options: object
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    config = GalleryConfig(archive=db or root / "archive.sqlite3", media_root=root, **options)  # type: ignore[arg-type]
    async with (
        running_gallery(config, "127.0.0.1", 0) as url,
        aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True)  # cookies for an IP host
        ) as http,
    ):
        yield url, http


async def get_text(http: aiohttp.ClientSession, url: str, status: int = 200) -> str:
    async with http.get(url, allow_redirects=False) as response:
        text = await response.text()
        assert response.status == status, (url, response.status, text[:300])
        return text


def ids_on(page: str) -> list[str]:
    """The story ids of the tiles of a page, in page order."""
    found = []
    for chunk in page.split('data-story="')[1:]:
        found.append(chunk.split('"', 1)[0])
    return found


# -- pure parts ---------------------------------------------------------------------------------


def test_recorded_paths_that_may_be_served() -> None:
    assert is_safe_relative("acct/1.jpg")
    for bad in ("", "../x", "a/../../x", "/etc/passwd", "C:\\x", "a\\..\\..\\x", "a\x00b"):
        assert not is_safe_relative(bad), bad


def test_resolve_media_refuses_links_out_of_the_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "secret.txt"
    root.mkdir()
    outside.write_text("secret")
    (root / "ok.jpg").write_bytes(b"x")
    (root / "out.jpg").symlink_to(outside)
    (root / "dir").symlink_to(tmp_path)
    assert resolve_media(root, "ok.jpg") == (root / "ok.jpg").resolve()
    assert resolve_media(root, "out.jpg") is None
    assert resolve_media(root, "dir/secret.txt") is None
    assert resolve_media(root, "missing.jpg") is None
    assert resolve_media(root, "dir") is None  # not a file


def test_only_http_links_become_links() -> None:
    assert web_link("https://example.org/a?b=1") == "https://example.org/a?b=1"
    for bad in (JS_URL, " javascript:x", "JAVASCRIPT:x", "data:text/html,x", "//x", "http://", 7):
        assert web_link(bad) is None, bad


def test_cursor_round_trip_and_bad_cursors() -> None:
    row = StoryRow(7, "s", "a", None, 123, "image", None, None, None, "saved", "p")
    assert decode_cursor(encode_cursor(row)) == (123, 7)
    undated = StoryRow(9, "s", "a", None, None, "image", None, None, None, "saved", "p")
    assert decode_cursor(encode_cursor(undated)) == (None, 9)
    for bad in ("", "12", "x.1", "1.x", "1.-2"):
        with pytest.raises(ValueError, match="not a page cursor"):
            decode_cursor(bad)


def test_raw_details_keep_hostile_text_as_data() -> None:
    row = StoryRow(1, "s", "a", None, 1, "image", None, None, None, "saved", "p")
    raw = json.dumps(
        {
            "caption": {"text": HOSTILE},
            "reel_mentions": [{"user": {"username": HOSTILE}}, {"user": None}, "junk"],
            "story_link_stickers": [{"story_link": {"url": JS_URL}}],
            "music_metadata": {"music_info": {"music_asset_info": {"title": HOSTILE}}},
        }
    )
    details = details_from_raw(row, None, None, raw)
    assert details.caption == HOSTILE and details.mentions == [HOSTILE]
    assert details.links == [JS_URL] and details.music == HOSTILE
    assert details_from_raw(row, None, None, "{not json").caption is None
    assert details_from_raw(row, None, None, None).mentions == []


def test_readiness_rules() -> None:
    common = {"archive_error": None, "started": 0.0, "sent": 3, "reachable_within": 60.0}
    assert not judge_ready(
        archive_ok=False, watching=False, now=1, last_answer=None, **common
    ).ready  # type: ignore[arg-type]
    assert judge_ready(archive_ok=True, watching=False, now=1e6, last_answer=None, **common).ready  # type: ignore[arg-type]
    assert judge_ready(archive_ok=True, watching=True, now=30, last_answer=None, **common).ready  # type: ignore[arg-type]
    late = judge_ready(archive_ok=True, watching=True, now=100, last_answer=None, **common)  # type: ignore[arg-type]
    assert not late.ready and "has not answered" in late.reason
    assert judge_ready(archive_ok=True, watching=True, now=100, last_answer=90, **common).ready  # type: ignore[arg-type]
    assert not judge_ready(archive_ok=True, watching=True, now=200, last_answer=90, **common).ready  # type: ignore[arg-type]


def test_heartbeat_with_an_injected_clock() -> None:
    now = [100.0]
    beat = Heartbeat(interval=1.0, stall_after=5.0, clock=lambda: now[0])
    beat.started = beat.last_beat = 100.0
    now[0] = 103.5
    beat.beat(answers=4)
    assert beat.lag == pytest.approx(2.5) and beat.last_answer is None  # first count: baseline
    now[0] = 104.5
    beat.beat(answers=5)
    assert beat.last_answer == 104.5 and beat.healthy()
    now[0] = 110.0
    assert not beat.healthy()


def test_loopback_names() -> None:
    assert all(map(is_loopback, ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "192.0.2.1", "example.org", "::")))


# -- pages over HTTP ----------------------------------------------------------------------------


async def test_timeline_pages_filters_and_player_neighbours(tmp_path: Path) -> None:
    stories = timeline_stories("alice", 125) + timeline_stories("bob", 3)
    stories.append(Story("alice-undated", "alice", None, username="alice"))
    await write_archive(tmp_path, stories)
    expected = [s.id for s in sorted(stories[:125], key=lambda s: -(s.taken_at or 0))]
    expected.append("alice-undated")
    async with gallery(tmp_path, page_size=50) as (url, http):
        accounts = await get_text(http, url + "/")
        assert "alice" in accounts and "bob" in accounts
        assert ">126<" in accounts.replace(" ", "")  # alice's story count
        only_bob = await get_text(http, url + "/?q=bo")
        assert "/a/bob" in only_bob and "/a/alice" not in only_bob

        seen: list[str] = []
        page_url, pages = url + "/a/alice", 0
        while page_url:
            page = await get_text(http, page_url)
            seen += ids_on(page)
            pages += 1
            older = page.split('class="older" href="', 1)
            page_url = (
                url + older[1].split('"', 1)[0].replace("&amp;", "&") if len(older) > 1 else ""
            )
        assert seen == expected and pages == 3
        first = await get_text(http, url + "/a/alice")
        days = [d.split("<", 1)[0] for d in first.split("<h2>")[1:]]
        assert days == sorted(days, reverse=True) and len(days) == 6  # 5 + 4 x 10 + 5

        videos = ids_on(await get_text(http, url + "/a/alice?kind=video"))
        assert videos and all(int(i.split("-")[1]) % 3 == 2 for i in videos)
        day3 = f"{(T0 + 3 * DAY) // DAY}"
        from datetime import UTC, datetime

        iso = datetime.fromtimestamp(int(day3) * DAY, tz=UTC).date().isoformat()
        ranged = ids_on(await get_text(http, url + f"/a/alice?from={iso}&to={iso}"))
        assert ranged == expected[-1 - 40 : -1 - 30]  # the ten stories of day 3
        await get_text(http, url + "/a/alice?kind=gif", status=400)
        await get_text(http, url + "/a/alice?from=yesterday", status=400)
        await get_text(http, url + "/a/alice?after=nonsense", status=400)

        player = await get_text(http, url + f"/s/{expected[1]}")
        assert f'data-prev="/s/{expected[0]}"' in player
        assert f'data-next="/s/{expected[2]}"' in player
        last_dated = await get_text(http, url + f"/s/{expected[-2]}")
        assert 'data-next="/s/alice-undated"' in last_dated
        await get_text(http, url + "/s/no-such-story", status=404)


async def test_an_account_not_in_the_archive_is_a_404(tmp_path: Path) -> None:
    # Like /s/ and /h/: a typo in /a/NAME says so, rather than "No stories."
    # as if the archive followed that account.
    await write_archive(tmp_path, [Story("d1", "dave", T0)])
    async with gallery(tmp_path) as (url, http):
        assert "no such account" in await get_text(http, url + "/a/nobody", status=404)
        assert ids_on(await get_text(http, url + "/a/dave")) == ["d1"]
        # A known account whose filter matches nothing is still its (empty) page.
        assert ids_on(await get_text(http, url + "/a/dave?kind=video")) == []


async def test_new_since_and_highlight_albums(tmp_path: Path) -> None:
    stories = [
        Story("h1", "carol", T0, highlights=(("1790", "Trips"),)),
        Story("h2", "carol", T0 + 60, video=True, highlights=(("1790", "Trips"),)),
        Story("x", "carol", T0 + 120),
    ]
    await write_archive(tmp_path, stories)
    async with gallery(tmp_path) as (url, http):
        timeline = await get_text(http, url + "/a/carol")
        assert 'data-highlight="1790"' in timeline and "Trips" in timeline
        assert 'src="/media/h1"' in timeline  # the cover is the first saved photo
        album = await get_text(http, url + "/h/1790")
        assert ids_on(album) == ["h1", "h2"]
        await get_text(http, url + "/h/404", status=404)
        assert sorted(ids_on(await get_text(http, url + "/new?after=1"))) == ["h2", "x"]
        assert ids_on(await get_text(http, url + "/new?after=3")) == []
        await get_text(http, url + "/new?after=-1", status=400)


async def test_media_only_from_recorded_files_inside_dir(tmp_path: Path) -> None:
    root = tmp_path / "dl"
    stories = [Story(f"m{n}", "dave", T0 + n) for n in range(6)]
    db = await write_archive(root, stories)
    (tmp_path / "secret.txt").write_text("secret")
    (root / "dave" / "link.jpg").symlink_to(tmp_path / "secret.txt")
    bad = [
        ("../secret.txt", "m1"),
        (str(tmp_path / "secret.txt"), "m2"),
        ("dave/link.jpg", "m3"),
        ("dave/missing.jpg", "m4"),
    ]
    async with StoryArchive.open(db) as archive:
        # The writer refuses such paths; an archive edited by hand may hold them.
        await archive.transact(
            lambda conn: conn.executemany("UPDATE media SET path = ? WHERE story_id = ?", bad)
        )
        await archive.record_media("m5", None, None, None, "failed", "HTTP 500")
    async with gallery(root) as (url, http):
        async with http.get(url + "/media/m0") as response:
            assert response.status == 200 and response.content_type == "image/jpeg"
            assert await response.read() == media_bytes("m0", "jpg", 96, 160)
        async with http.get(url + "/media/m0", headers={"Range": "bytes=10-19"}) as response:
            assert response.status == 206
            assert await response.read() == media_bytes("m0", "jpg", 96, 160)[10:20]
        for story_id in ("m1", "m2", "m3", "m4", "m5", "nope", "..%2F..%2Fsecret.txt"):
            async with http.get(url + f"/media/{story_id}") as response:
                assert response.status == 404, story_id
                assert b"secret" not in await response.read()
        for path in ("/static/../archive.sqlite3", "/static/%2e%2e/web/app.py", "/dave/m0.jpg"):
            async with http.get(url + path) as response:
                assert response.status == 404, path


async def test_hostile_text_is_escaped_and_headers_are_strict(tmp_path: Path) -> None:
    story = Story(
        "evil",
        "mallory",
        T0,
        caption=HOSTILE,
        mentions=(HOSTILE,),
        music=(HOSTILE, HOSTILE),
        username=HOSTILE,
        links=(JS_URL, "https://example.org/ok"),
    )
    await write_archive(tmp_path, [story])
    async with gallery(tmp_path) as (url, http):
        pages = [url + "/", url + "/s/evil", url + "/a/mallory", url + "/new", url + "/status"]
        for page_url in pages:
            async with http.get(page_url) as response:
                assert response.status == 200, page_url
                text = await response.text()
                assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
                assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
                assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert "<script>window" not in text, page_url
            assert text.count("<script") == 1  # the one static script
        player = await get_text(http, url + "/s/evil")
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in player
        assert 'href="javascript' not in player and JS_URL in player  # shown as text
        assert 'href="https://example.org/ok"' in player


async def test_host_check_and_token(tmp_path: Path) -> None:
    await write_archive(tmp_path, [Story("t1", "erin", T0)])
    token = "tok-" + hashlib.sha256(os.urandom(8)).hexdigest()[:12]
    async with gallery(tmp_path, token=token) as (url, http):
        await get_text(http, url + "/", status=401)
        async with http.get(url + "/healthz") as response:
            assert response.status == 200
        async with http.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
        async with http.get(url + f"/a/erin?token={token}", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/a/erin"
            assert "HttpOnly" in r.headers["Set-Cookie"]
        page = await get_text(http, url + "/a/erin")  # the cookie from now on
        assert token not in page
        async with http.get(url + "/", headers={"Host": "rebind.example:80"}) as r:
            assert r.status == 421


async def test_metrics_and_status_of_a_quiet_archive(tmp_path: Path) -> None:
    stories = [Story(f"q{n}", "frank", T0 + n, video=n == 0) for n in range(4)]
    stories.append(Story("q-unsaved", "gina", T0, saved=False))
    db = await write_archive(tmp_path, stories)
    async with StoryArchive.open(db) as archive:
        await archive.record_media("q-unsaved", None, None, None, "expired", "HTTP 403")
    async with gallery(tmp_path) as (url, http):
        text = await get_text(http, url + "/metrics")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        with sqlite3.connect(db) as conn:
            saved_bytes = conn.execute(
                "SELECT sum(bytes) FROM media WHERE status = 'saved'"
            ).fetchone()[0]
        assert samples[("keyapi_archive_stories", ())] == 5
        assert samples[("keyapi_media_files", (("outcome", "saved"),))] == 4
        assert samples[("keyapi_media_files", (("outcome", "expired"),))] == 1
        assert samples[("keyapi_media_bytes", (("outcome", "saved"),))] == saved_bytes
        assert ("keyapi_account_last_success_timestamp_seconds", (("account", "frank"),)) in samples
        status = await get_text(http, url + "/status")
        assert "HTTP 403" in status and "<b>4</b> media saved" in status
        async with http.get(url + "/readyz") as response:
            assert response.status == 200 and (await response.json())["status"] == "ready"


async def test_reads_while_a_writer_writes(tmp_path: Path) -> None:
    db = await write_archive(tmp_path, [Story("w0", "hank", T0)])
    before = db.stat().st_mtime_ns
    async with gallery(tmp_path) as (url, http):
        assert db.stat().st_mtime_ns == before
        async with StoryArchive.open(db) as archive:  # the writer stays open meanwhile
            for n in range(1, 6):
                item = _item(Story(f"w{n}", "hank", T0 + n))
                await archive.record_reel("hank", Reel(items=(item,)), fetched_at=T0 + n)
                page = await get_text(http, url + "/a/hank")
                assert ids_on(page)[0] == f"w{n}"
    async with gallery(tmp_path) as (url, http):
        # A read-only connection cannot write, whatever a page asks.
        assert "w5" in await get_text(http, url + "/a/hank")
    with sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True) as conn:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM stories")


# -- the command --------------------------------------------------------------------------------


async def _serve(tmp_path: Path, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "serve", *args, env=base_env(), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stderr.readline(), 30)
    return proc, line.decode()


async def test_serve_command_refuses_remote_and_captured_archive_end_to_end(
    tmp_path: Path, api_key: str
) -> None:
    names = [f"acct_{n}" for n in range(4)]
    targets = write_targets(tmp_path / "targets.txt", names)
    dest = tmp_path / "media"
    async with media_emulator(api_key) as (emu, _cdn):
        env = env_with(emu, api_key)
        args = ["fetch", str(targets), "-o", "out.jsonl", "--download", str(dest)]
        done = await run_cli(*args, "--media-hosts", cdn_host(emu), env=env, cwd=tmp_path)
        assert done.code == 0, done.stderr
    db = dest / "archive.sqlite3"
    with sqlite3.connect(db) as conn:
        saved = conn.execute(
            "SELECT m.story_id, m.sha256, s.account FROM media AS m JOIN stories AS s"
            " USING (story_id) WHERE status = 'saved'"
        ).fetchall()
    assert saved
    with contextlib.closing(sqlite3.connect(db)) as conn:
        raws = dict(conn.execute("SELECT story_id, raw FROM stories").fetchall())
    # fetch keeps each story's JSON by default (--keep-raw): the player's details.
    assert raws and all(raw is not None for raw in raws.values())
    mentioned: dict[str, str] = {
        sid: item["reel_mentions"][0]["user"]["username"]
        for sid, raw in raws.items()
        if (item := json.loads(raw)).get("reel_mentions")
    }
    assert mentioned, "no captured story carries a mention: pick other account names"

    refused = await run_cli("serve", str(dest), "--host", "192.0.2.1", env=base_env(), cwd=tmp_path)
    assert refused.code == 2 and "--allow-remote" in refused.stderr
    warned = await run_cli(
        "serve", str(dest), "--host", "192.0.2.1", "--allow-remote", env=base_env(), cwd=tmp_path
    )
    assert "WARNING" in warned.stderr and warned.code == 2  # 192.0.2.1 is not ours to bind
    too_far = await run_cli("serve", str(dest), "--port", "70000", env=base_env(), cwd=tmp_path)
    assert too_far.code == 2 and "--port must be <= 65535" in too_far.stderr
    missing = await run_cli("serve", str(tmp_path / "nothing"), env=base_env(), cwd=tmp_path)
    assert missing.code == 2 and "no archive" in missing.stderr

    proc, line = await _serve(tmp_path, str(dest), "--port", "0")
    try:
        assert line.startswith("serving http://127.0.0.1:"), line
        url = line.split()[1].rstrip("/")
        async with aiohttp.ClientSession() as http:
            accounts = await get_text(http, url + "/")
            assert all(f"/a/{name}" in accounts for name in names)
            status = await get_text(http, url + "/status")
            assert "Recent runs" in status and "<td>fetch</td>" in status
            assert f"media saved {len(saved)}" in status  # the run's own counts
            for story_id, sha256, account in saved:
                async with http.get(f"{url}/media/{story_id}") as response:
                    assert response.status == 200
                    assert hashlib.sha256(await response.read()).hexdigest() == sha256
                assert story_id in ids_on(await get_text(http, f"{url}/a/{account}"))
            for story_id, username in mentioned.items():
                assert f"@{username}" in await get_text(http, f"{url}/s/{story_id}")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert api_key not in out.decode() + err.decode()
    assert sys.executable  # the same interpreter served and fetched
