"""Highlight media over real loopback HTTP: items and covers saved, hash-checked, once.

The emulator serves the API and its CDN on 127.0.0.1; the archive is a real
SQLite file and the files land in a real directory. Requests are counted at
the emulator, never inferred from the client.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from keyapi_async import KeyAPIClient, ResponseDecodeError
from keyapi_async.archive import StoryArchive
from keyapi_async.archive.highlights import HIGHLIGHTS_SCHEMA, save_highlights
from keyapi_async.highlight_media import HighlightMedia
from keyapi_async.media import MediaDownloader
from keyapi_async.media.paths import NameTemplate, template_fields
from keyapi_async.media.plan import cover_item, cover_story_id
from keyapi_async.models import Highlight, HighlightCover, User
from keyapi_async.testing import (
    EmulatorConfig,
    Fault,
    HighlightConfig,
    MediaConfig,
    MediaFault,
    run_emulator,
)
from keyapi_async.testing._data import build_reel
from keyapi_async.testing._highlights import (
    HIGHLIGHT_STORIES_PATH,
    TRAY_PATH,
    highlight_ids,
    highlight_stories_data,
)
from keyapi_async.testing._media import MediaCDN, media_cdn

Factory = Callable[..., KeyAPIClient]
FAST = {"backoff_base": 0.01, "backoff_cap": 0.05, "fsync": False}


def config(api_key: str, highlights: HighlightConfig, **options: object) -> EmulatorConfig:
    media = options.pop("media", MediaConfig(enabled=True))
    return EmulatorConfig(
        api_keys=frozenset({api_key}),
        highlights=highlights,
        media=media,  # type: ignore[arg-type]
        **options,  # type: ignore[arg-type]
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder(title: str | None, hid: str) -> str:
    """The highlight's folder as the layout must name it (the one sanitiser)."""
    fields = template_fields(
        story_id="x", username="u", user_id="", code="", taken_at=0, ext="", media_type="image",
        width=0, height=0, target="", highlight_id=hid, highlight_title=title,
    )  # fmt: skip
    return NameTemplate("{highlight_title}/{story_id}").render(fields)[0]


def downloader(root: Path, emu_base_url: str, **options: object) -> MediaDownloader:
    host = emu_base_url.removeprefix("http://")
    return MediaDownloader(root, allowed_hosts=[host], **{**FAST, **options})  # type: ignore[arg-type]


def files_below(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


MemberRow = tuple[str, str, str | None, str]


def members(archive: StoryArchive) -> list[MemberRow]:
    def job(conn: sqlite3.Connection) -> list[MemberRow]:
        return conn.execute(
            "SELECT i.story_id, h.id, h.title, h.account FROM highlight_items i "
            "JOIN highlights h ON h.id = i.highlight_id"
        ).fetchall()

    return archive.read(job)


CoverRow = tuple[str, str | None, str, str | None, str | None, str | None]


def covers(archive: StoryArchive) -> list[CoverRow]:
    def job(conn: sqlite3.Connection) -> list[CoverRow]:
        return conn.execute(
            "SELECT id, title, account, cover_url, cover_path, cover_sha256 FROM highlights"
        ).fetchall()

    return archive.read(job)


def check_saved(archive: StoryArchive, root: Path, cdn: MediaCDN) -> set[str]:
    """Every item and cover file: in its highlight's folder, hashed as the CDN served it."""
    expected: set[str] = set()
    for story_id, hid, title, account in members(archive):
        story = archive.story(story_id)
        assert story is not None and story.media is not None, story_id
        assert story.media.status == "saved", (story_id, story.media.reason)
        assert story.media.path is not None and story.media_url is not None
        assert sha(root / story.media.path) == story.media.sha256
        assert story.media.sha256 == cdn.expected_sha256(story.media_url)
        assert story.media.path.split("/")[:3] == [account, "highlights", folder(title, hid)]
        expected.add(story.media.path)
    for hid, title, account, url, path, digest in covers(archive):
        assert url is not None and path is not None, hid
        assert sha(root / path) == digest == cdn.expected_sha256(url)
        head, _, name = path.rpartition("/")
        assert head == f"{account}/highlights/{folder(title, hid)}"
        assert name.endswith(f"_{cover_story_id(hid)}.jpg")
        expected.add(path)
    return expected


# -- names and the cover item (pure) -------------------------------------------------


def test_a_cover_is_an_image_item_of_its_highlight() -> None:
    owner = User(id="1", username="javan")
    cover = HighlightCover(url="https://x.cdninstagram.com/c.jpg", width=150, height=150)
    highlight = Highlight(id="42", title="Trips", created_at=86_400, cover=cover, user=owner)
    item = cover_item(highlight)
    assert (item.id, item.taken_at, item.user, item.media_type) == ("cover_42", 86_400, owner, 1)
    assert item.best_media_url == cover.url
    assert cover_item(Highlight(id="43")).best_media_url is None


async def test_a_custom_highlight_template_uses_the_highlight_fields(tmp_path: Path) -> None:
    from keyapi_async.media import plan

    item = cover_item(Highlight(id="42", title="a/b", cover=HighlightCover(url="https://h/c.jpg")))
    draft = plan.draft(item, target="javan", owner=None)
    highlight = Highlight(id="42", title="a/b")
    fields = plan.name_fields(item, draft, None, highlight)
    rendered = NameTemplate("{highlight_id}-{highlight_title}/{story_id}.{ext}").render(fields)
    assert rendered == ("42-a_b", "cover_42.jpg")
    # Outside a highlight both fields are empty: no folder appears from them.
    plain = plan.name_fields(item, draft, None)
    assert NameTemplate("{highlight_title}/{story_id}.{ext}").render(plain) == ("cover_42.jpg",)


# -- the emulator can keep an active story in a highlight (pure) ---------------------


def test_keep_active_puts_the_newest_active_story_in_the_first_highlight() -> None:
    kept_cfg = HighlightConfig(keep_active=True)
    for n in range(50):
        key = f"username:k{n}"
        ids = highlight_ids(key, 0, kept_cfg)
        reel = build_reel(key)["data"]
        items = (reel or {}).get("items") or []
        if not ids or not items:
            continue
        plain = highlight_stories_data(ids[0], 0, HighlightConfig(), 0.0, key)["data"]
        kept = highlight_stories_data(ids[0], 0, kept_cfg, 0.0, key, items[-1])["data"]
        got = kept.get("items") or next(iter(kept["reels"].values()))["items"]
        before = plain.get("items") or next(iter(plain["reels"].values()))["items"]
        assert [i["id"] for i in got] == [i["id"] for i in before] + [items[-1]["id"]]
        assert got[-1] == items[-1]
        return
    pytest.fail("no account with both active stories and highlights among 50")


# -- 200 accounts over loopback ------------------------------------------------------


async def test_200_accounts_saved_hash_checked_then_only_what_changed(
    api_key: str, make_client: Factory, tmp_path: Path
) -> None:
    accounts = [f"hl{n}" for n in range(200)]
    highlights = HighlightConfig(max_highlights=3, max_items=2)
    emu_config = config(api_key, highlights)
    root = tmp_path / "dl"
    async with (
        run_emulator(emu_config) as emu,
        make_client(emu) as client,
        StoryArchive.open(tmp_path / "a.sqlite3", extensions=[HIGHLIGHTS_SCHEMA]) as archive,
        downloader(root, emu.base_url) as dl,
    ):
        cdn = media_cdn(emu)
        media = HighlightMedia(archive, dl)
        first = await save_highlights(client, archive, accounts, media=media)
        expected = {h: a for a in accounts for h in highlight_ids(f"username:{a}", 0, highlights)}
        counts = media.counts()
        assert first.errors == {} and first.highlights_fetched == len(expected) > 200
        assert counts.saved == len(first.new_stories) == len(members(archive))
        assert (counts.failed, counts.expired, counts.pending, counts.skipped) == (0, 0, 0, 0)
        assert counts.covers_saved == len(expected) and counts.covers_failed == 0
        saved = check_saved(archive, root, cdn)
        assert files_below(root) == saved  # no stray file, no .part left
        assert len(cdn.log) == len(saved)  # each file fetched once (no faults configured)
        assert not [r for r in cdn.log if r.has_credentials]  # the key never reaches the CDN
        assert all(root.resolve() in (root / f).resolve().parents for f in saved)
        # Every hostile title of the emulator was met, and made safe.
        titles = {t for _, t, *_ in covers(archive)}
        assert {"../../escape", "/etc", "nul\x00byte", "CON", "..", "Travel ✈️"} <= titles
        folders = {f.split("/")[2] for f in saved}
        assert {".._.._escape", "_etc", "nul_byte", "_CON", "_", "Travel ✈️"} <= folders

        # Nothing changed: one tray request per account, nothing else, no download.
        sent, fetched = emu.requests_total, len(cdn.log)
        again = HighlightMedia(archive, dl)
        second = await save_highlights(client, archive, accounts, media=again)
        assert emu.requests_total - sent == 200
        assert [r.path for r in emu.log[-200:]] == [TRAY_PATH] * 200
        assert emu.count(status=200) == 200 + len(expected) + 200
        assert second.highlights_fetched == 0 and second.unchanged == len(expected)
        assert len(cdn.log) == fetched
        assert again.counts().covers_skipped == len(expected)

        # One highlight gains an item: only it is fetched, only its new item downloaded.
        grown = next(iter(expected))
        emu.config = dataclasses.replace(
            emu_config, highlights=dataclasses.replace(highlights, added={grown: 1})
        )
        sent = emu.requests_total
        third = await save_highlights(client, archive, accounts, media=HighlightMedia(archive, dl))
        assert emu.requests_total - sent == 201
        others = [r for r in emu.log[-201:] if r.path != TRAY_PATH]
        assert [(r.path, r.target) for r in others] == [
            (HIGHLIGHT_STORIES_PATH, f"highlight:{grown}")
        ]
        (new,) = third.new_stories
        assert [r.story_id for r in cdn.log[fetched:]] == [new]
        assert (
            files_below(root)
            == check_saved(archive, root, cdn)
            == saved
            | {
                (archive.story(new).media.path)  # type: ignore[union-attr]
            }
        )


# -- active and kept: one row, one file ----------------------------------------------


async def highlights_pass(
    emu_base_url: str, api_key: str, root: Path, names: list[str]
) -> HighlightMedia:
    """The highlights pass into ``root`` (the archive at ``root/archive.sqlite3``), in-process."""
    async with (
        downloader(root, emu_base_url) as dl,  # first: it creates the directory
        KeyAPIClient(api_key, base_url=emu_base_url, qps=None) as client,
        StoryArchive.open(root / "archive.sqlite3", extensions=[HIGHLIGHTS_SCHEMA]) as archive,
    ):
        media = HighlightMedia(archive, dl)
        run = await save_highlights(client, archive, names, media=media)
        assert run.errors == {} and not media.unfinished
        return media


async def test_a_story_kept_from_active_is_one_row_and_one_file(
    api_key: str, tmp_path: Path
) -> None:
    from tests.test_cli import base_env, run_cli, write_targets

    names = [f"keep{n}" for n in range(30)]
    highlights = HighlightConfig(max_highlights=2, max_items=2, keep_active=True)
    kept: dict[str, str] = {}
    for name in names:
        reel = build_reel(f"username:{name}")["data"]
        items = (reel or {}).get("items") or []
        if items and highlight_ids(f"username:{name}", 0, highlights):
            kept[items[-1]["id"]] = name
    assert len(kept) >= 5
    targets = write_targets(tmp_path / "targets.txt", names)
    root = tmp_path / "dl"
    async with run_emulator(config(api_key, highlights)) as emu:
        cdn = media_cdn(emu)
        env = base_env(KEYAPI_BASE_URL=emu.base_url, KEYAPI_API_KEY=api_key)
        hosts = emu.base_url.removeprefix("http://")
        common = ("--download", str(root), "--media-hosts", hosts, "--qps", "0")
        # One command: the stories run saves the active stories, then its highlights
        # pass (--highlights) saves the highlights' media, skipping the kept ones.
        done = await run_cli(
            "fetch", str(targets), "-o", "run.jsonl", "--highlights", *common,
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert done.code == 0, done.stderr
        assert f"{len(kept)} already saved" in done.stdout + done.stderr
        async with StoryArchive.open(
            root / "archive.sqlite3", extensions=[HIGHLIGHTS_SCHEMA]
        ) as db:
            in_highlights = {sid for sid, *_ in members(db)}
            for story_id, name in kept.items():
                assert story_id in in_highlights
                rows = db.read(
                    lambda c, s=story_id: c.execute(
                        "SELECT COUNT(*) FROM stories WHERE story_id = ?", (s,)
                    ).fetchone()[0]
                )
                assert rows == 1
                story = db.story(story_id)
                assert story is not None and story.media is not None
                # Saved once, by the stories run, in the stories layout.
                assert story.media.path is not None
                assert story.media.path.split("/")[0] == name
                assert "/highlights/" not in story.media.path
                assert len(cdn.requests_for(story_id)) == 1
            on_disk = files_below(root) - {"archive.sqlite3", "archive.sqlite3-wal",
                                           "archive.sqlite3-shm"}  # fmt: skip
            paths = {s.media.path for s in db.stories() if s.media is not None}
            paths |= {c[4] for c in covers(db)}
        assert on_disk == paths
        assert len(cdn.log) == len(paths)
        assert api_key not in done.stdout + done.stderr

        # The other way round: kept first (the highlights pass), then the stories run skips it.
        other = tmp_path / "dl2"
        await highlights_pass(emu.base_url, api_key, other, names)
        before = len(cdn.log)
        common = ("--download", str(other), "--media-hosts", hosts, "--qps", "0")
        stories = await run_cli(
            "fetch", str(targets), "-o", "r2.jsonl", *common, env=env, cwd=tmp_path
        )
        assert stories.code == 0, stories.stderr
        fetched = {r.story_id for r in cdn.log[before:]}
        assert fetched and not fetched & set(kept)
        assert all(len(cdn.requests_for(s)) == 2 for s in kept)  # once per directory


# -- what goes wrong ------------------------------------------------------------------


async def test_hostile_trays_are_skipped_with_reasons_and_nothing_lands_outside(
    api_key: str, make_client: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = [f"evil{n}" for n in range(12)]
    highlights = HighlightConfig(hostile=frozenset(f"username:{n}" for n in names))
    root = tmp_path / "inside" / "dl"
    async with (
        run_emulator(config(api_key, highlights)) as emu,
        make_client(emu) as client,
        StoryArchive.open(tmp_path / "a.sqlite3", extensions=[HIGHLIGHTS_SCHEMA]) as archive,
        downloader(root, emu.base_url) as dl,
    ):
        media = HighlightMedia(archive, dl)
        with caplog.at_level(logging.WARNING, logger="keyapi_async"):
            run = await save_highlights(client, archive, names, media=media)
        assert run.errors == {}
        skipped = [r.getMessage() for r in caplog.records if "skipped tray entry" in r.getMessage()]
        assert len(skipped) >= 5 * len(names)  # no id, wrong type, list id, bad id, 5 MB title
        assert any("5242880 characters" in m for m in skipped)
        assert max(len(m) for m in skipped) < 1000
        check_saved(archive, root, media_cdn(emu))
    assert files_below(tmp_path) - {f"inside/dl/{f}" for f in files_below(root)} <= {
        "a.sqlite3",
        "a.sqlite3-wal",
        "a.sqlite3-shm",
    }


async def test_undecodable_answers_are_typed_errors_and_are_fetched_again(
    api_key: str, make_client: Factory, tmp_path: Path
) -> None:
    highlights = HighlightConfig(max_highlights=3)
    names = [
        n for n in (f"bad{i}" for i in range(40)) if highlight_ids(f"username:{n}", 0, highlights)
    ]
    broken_tray, owner = names[0], names[1]
    broken = highlight_ids(f"username:{owner}", 0, highlights)[0]
    script = {
        f"username:{broken_tray}": [Fault.SCHEMA_DRIFT],
        f"highlight:{broken}": [Fault.SCHEMA_DRIFT],
    }
    emu_config = config(api_key, highlights, fault_script=script)
    async with (
        run_emulator(emu_config) as emu,
        make_client(emu) as client,
        StoryArchive.open(tmp_path / "a.sqlite3", extensions=[HIGHLIGHTS_SCHEMA]) as archive,
        downloader(tmp_path / "dl", emu.base_url) as dl,
    ):
        run = await save_highlights(client, archive, names, media=HighlightMedia(archive, dl))
        assert set(run.errors) == {broken_tray, f"highlight:{broken}"}
        for error in run.errors.values():
            assert isinstance(error, ResponseDecodeError) and error.billed
            assert "schema" in str(error)
        again = await save_highlights(client, archive, names, media=HighlightMedia(archive, dl))
        assert again.errors == {}
        # The failed highlight and the failed tray's highlights, nothing else.
        wanted = {f"highlight:{broken}"} | {
            f"highlight:{h}" for h in highlight_ids(f"username:{broken_tray}", 0, highlights)
        }
        last = [r.target for r in emu.log[-(len(names) + len(wanted)) :] if r.path != TRAY_PATH]
        assert set(last) == wanted and len(last) == len(wanted)


async def test_an_expired_item_leaves_its_highlight_to_be_fetched_again(
    api_key: str, make_client: Factory, tmp_path: Path
) -> None:
    highlights = HighlightConfig(max_highlights=2, max_items=2)
    name = next(
        n for n in (f"exp{i}" for i in range(50)) if highlight_ids(f"username:{n}", 0, highlights)
    )
    hid = highlight_ids(f"username:{name}", 0, highlights)[0]
    data = highlight_stories_data(hid, 0, highlights, 0.0, f"username:{name}")["data"]
    story_id = (data.get("items") or next(iter(data["reels"].values()))["items"])[0]["id"]
    media = MediaConfig(enabled=True, fault_script={story_id: [MediaFault.EXPIRED]})
    async with (
        run_emulator(config(api_key, highlights, media=media)) as emu,
        make_client(emu) as client,
        StoryArchive.open(tmp_path / "a.sqlite3", extensions=[HIGHLIGHTS_SCHEMA]) as archive,
        downloader(tmp_path / "dl", emu.base_url) as dl,
    ):
        first_media = HighlightMedia(archive, dl)
        first = await save_highlights(client, archive, [name], media=first_media)
        assert first_media.counts().expired == 1 and first_media.unfinished
        record = await archive.media_status(story_id)
        assert record is not None and record.status == "expired"
        second_media = HighlightMedia(archive, dl)
        second = await save_highlights(client, archive, [name], media=second_media)
        # Only the highlight with the expired item is fetched again, for fresh URLs.
        assert second.highlights_fetched == 1 and first.highlights_fetched >= 1
        assert [r.target for r in emu.log if r.path == HIGHLIGHT_STORIES_PATH].count(
            f"highlight:{hid}"
        ) == 2
        assert second_media.counts().saved == 1 and not second_media.unfinished
        record = await archive.media_status(story_id)
        assert record is not None and record.status == "saved"
        third = await save_highlights(client, archive, [name], media=HighlightMedia(archive, dl))
        assert third.highlights_fetched == 0


async def test_the_highlights_pass_shows_progress_and_a_summary_with_media(
    api_key: str, tmp_path: Path
) -> None:
    import io

    from keyapi_async.cli.capture import capture_settings
    from keyapi_async.cli.client import FetchSettings
    from keyapi_async.cli.highlights import save_with_progress, summary_line
    from keyapi_async.cli.progress import make_reporter

    names = [f"prog{n}" for n in range(20)]
    highlights = HighlightConfig(max_highlights=2, max_items=2)
    # Slow answers, few in flight: the trays alone take about a second, many frames.
    async with run_emulator(config(api_key, highlights, latency=0.2)) as emu:
        settings = FetchSettings(base_url=emu.base_url, qps=None, concurrency=4, timeout=5.0)
        capture = capture_settings(
            download=str(tmp_path / "dl"),
            archive=None,
            extra_hosts=[emu.base_url.removeprefix("http://")],
            fsync=False,
        )
        shown = io.StringIO()
        reporter = make_reporter(True, total=len(names), interval=0.01, stream=shown)
        run, media = await save_with_progress(settings, api_key, capture, names, reporter)
        frames = [x for x in shown.getvalue().splitlines() if "] highlight" in x]
        assert frames and "highlights done" in frames[-1]
        assert "highlight trays: " in shown.getvalue()
        assert media is not None
        expected = sum(len(highlight_ids(f"username:{n}", 0, highlights)) for n in names)
        line = summary_line(run, media.counts())
        assert f"20 trays, {expected} highlights fetched" in line
        assert f"covers: {expected} saved" in line
        again, media = await save_with_progress(
            settings, api_key, capture, names, make_reporter(False, total=20, interval=1)
        )
        assert media is not None
        line = summary_line(again, media.counts())
        assert "20 trays, 0 highlights fetched" in line
        assert f"covers: 0 saved, {expected} already saved" in line


async def test_an_archive_with_the_first_highlights_tables_gains_the_cover_columns(
    tmp_path: Path,
) -> None:
    from keyapi_async.archive import ArchiveError, SchemaExtension

    path = tmp_path / "a.sqlite3"
    older = SchemaExtension("highlights", HIGHLIGHTS_SCHEMA.migrations[:1])
    async with StoryArchive.open(path, extensions=[older]) as archive:
        await archive.transact(
            lambda c: c.execute(
                "INSERT INTO highlights (id, account, first_seen_at, last_seen_at) "
                "VALUES ('7', 'javan', 1, 1)"
            )
        )
    async with StoryArchive.open(path, extensions=[HIGHLIGHTS_SCHEMA]) as archive:
        rows = covers(archive)
    assert rows == [("7", None, "javan", None, None, None)]
    # Opened by a library that knows only the first version: refused, not misread.
    with pytest.raises(ArchiveError, match="newer"):
        async with StoryArchive.open(path, extensions=[older]):
            pass
