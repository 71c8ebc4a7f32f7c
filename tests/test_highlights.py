"""Highlights through the one engine: pure decoding, then the emulator over loopback HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from keyapi_async import (
    HIGHLIGHT_STORIES,
    STORIES,
    USER_HIGHLIGHTS,
    ConfigurationError,
    Highlight,
    HighlightStories,
    HighlightTray,
    InvalidTargetError,
    KeyAPIClient,
    NotAttemptedError,
    RateLimitError,
    Reel,
    ResponseDecodeError,
    StoryItem,
    Target,
    estimate_credits,
)
from keyapi_async.archive import StoryArchive
from keyapi_async.archive.highlights import HIGHLIGHTS_SCHEMA, changed_highlights, save_highlights
from keyapi_async.engine.endpoints import MAX_TITLE_LENGTH
from keyapi_async.engine.sansio import RequestBuilder, parse_response
from keyapi_async.media.paths import HIGHLIGHT_NAME_TEMPLATE, NameTemplate, inside, template_fields
from keyapi_async.testing import (
    EmulatorConfig,
    Fault,
    HighlightConfig,
    MediaConfig,
    run_emulator,
)
from keyapi_async.testing._highlights import TRAY_PATH, highlight_ids

JSON = {"Content-Type": "application/json"}


def body(data: object, code: int = 0) -> bytes:
    return json.dumps({"code": code, "message": "success", "data": data}).encode()


def story(story_id: str) -> dict[str, object]:
    return {"id": story_id, "media_type": 1, "taken_at": 1_700_000_000}


# -- targets and requests (pure) ----------------------------------------------------


@pytest.mark.parametrize("raw", ["highlight:17912345678901234", "17912345678901234", 179123])
def test_highlight_ids_are_accepted_with_or_without_the_prefix(raw: str | int) -> None:
    target = HIGHLIGHT_STORIES.parse_target(raw)
    assert target.kind == "highlight_id"
    assert target.value == str(raw).removeprefix("highlight:")
    assert str(target) == "highlight:" + target.value


@pytest.mark.parametrize("raw", ["highlight:", "highlight:12a", "javan", "-5", True, None, 1.5])
def test_other_highlight_ids_are_invalid(raw: object) -> None:
    with pytest.raises(InvalidTargetError) as caught:
        HIGHLIGHT_STORIES.parse_target(raw)
    assert caught.value.value == raw


def test_an_account_endpoint_refuses_a_highlight_target_and_vice_versa() -> None:
    with pytest.raises(InvalidTargetError, match="names no account"):
        USER_HIGHLIGHTS.parse_target(Target.highlight("123"))
    with pytest.raises(InvalidTargetError, match="not a highlight"):
        HIGHLIGHT_STORIES.parse_target(Target.username("javan"))


def test_each_endpoint_builds_its_own_path_and_parameter() -> None:
    stories = RequestBuilder(base_url="http://h/", api_key="k", user_agent="u")
    tray = stories.for_endpoint(USER_HIGHLIGHTS)
    items = stories.for_endpoint(HIGHLIGHT_STORIES)
    assert stories.build(Target.username("javan")).url.endswith(
        "/fetch_user_stories?username=javan"
    )
    assert tray.build(Target.user_id("18527")).url == (
        "http://h/v1/instagram/fetch_user_highlights?user_id=18527"
    )
    assert items.build(Target.highlight("highlight:42")).url == (
        "http://h/v1/instagram/fetch_highlight_stories?highlight_id=42"
    )
    assert (
        items.build(Target.highlight("42")).headers is stories.build(Target.username("a")).headers
    )


def test_credits_are_two_per_answer_and_overridable() -> None:
    assert STORIES.credits == USER_HIGHLIGHTS.credits == HIGHLIGHT_STORIES.credits == 2
    assert USER_HIGHLIGHTS.with_credits(5).credits == 5
    assert estimate_credits(["1", "highlight:1", "bad", "2"], HIGHLIGHT_STORIES) == 4
    assert estimate_credits(["1", "2"], HIGHLIGHT_STORIES.with_credits(3)) == 6
    with pytest.raises(ConfigurationError, match="credits"):
        USER_HIGHLIGHTS.with_credits(-1)


# -- decoding (pure) ----------------------------------------------------------------


def tray_entry(hid: str, **extra: object) -> dict[str, object]:
    return {
        "id": hid,
        "title": "Trips",
        "created_at": 1_600_000_000,
        "latest_reel_media": 1_600_003_600,
        "media_count": 2,
        "cover_media": {"cropped_image_version": {"url": "https://c/x.jpg", "width": 9}},
        "user": {"pk": 18527, "username": "javan"},
        "unknown_field": {"ignored": True},
        **extra,
    }


def test_a_tray_decodes_into_typed_highlights_with_the_prefix_stripped() -> None:
    data = {"data": {"items": [tray_entry("highlight:11"), tray_entry("12")]}}
    tray = parse_response(200, JSON, body(data), target="javan", endpoint=USER_HIGHLIGHTS)
    assert isinstance(tray, HighlightTray)
    assert [h.id for h in tray.items] == ["11", "12"]
    first = tray.items[0]
    assert first.reel_id == "highlight:11"
    assert (first.title, first.media_count, first.latest_reel_media) == ("Trips", 2, 1_600_003_600)
    assert first.cover is not None and (first.cover.url, first.cover.width) == (
        "https://c/x.jpg",
        9,
    )
    assert first.cover.height is None
    assert first.user is not None and (first.user.id, first.user.username) == ("18527", "javan")
    assert tray.user == first.user
    assert tray.skipped == ()


def test_missing_optional_fields_are_none() -> None:
    tray = parse_response(
        200, JSON, body({"data": {"items": [{"id": "7"}]}}), endpoint=USER_HIGHLIGHTS
    )
    (only,) = tray.items
    assert (only.title, only.created_at, only.media_count, only.cover, only.user) == (None,) * 5


def test_unusable_tray_entries_are_skipped_with_a_logged_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    entries = [
        {"title": "no id"},
        tray_entry("13", media_count="three"),
        tray_entry("14", title="x" * (MAX_TITLE_LENGTH + 1)),
        tray_entry("highlight:15"),
        tray_entry("15"),
        tray_entry("not digits"),
        "not an object",
    ]
    with caplog.at_level(logging.WARNING, logger="keyapi_async"):
        tray = parse_response(
            200, JSON, body({"data": {"items": entries}}), target="javan", endpoint=USER_HIGHLIGHTS
        )
    assert [h.id for h in tray.items] == ["15"]
    assert len(tray.skipped) == 6
    assert "no usable id" in tray.skipped[0]
    assert "media_count" in tray.skipped[1]
    assert "title of 1001 characters" in tray.skipped[2]
    assert "listed twice" in tray.skipped[3]
    assert "not digits" in tray.skipped[4]
    assert len([r for r in caplog.records if "skipped tray entry" in r.getMessage()]) == 6
    assert all("x" * 50 not in r.getMessage() for r in caplog.records)


def test_a_tray_whose_items_are_not_a_list_is_a_billed_decode_error() -> None:
    with pytest.raises(ResponseDecodeError, match="highlight tray schema") as caught:
        parse_response(200, JSON, body({"data": {"items": "none"}}), endpoint=USER_HIGHLIGHTS)
    assert caught.value.billed


def test_an_empty_tray_and_an_error_code() -> None:
    assert parse_response(200, JSON, body({"data": None}), endpoint=USER_HIGHLIGHTS).is_empty
    with pytest.raises(Exception, match="user not found"):
        parse_response(
            404, JSON, json.dumps({"code": 404, "message": "user not found"}).encode(),
            endpoint=USER_HIGHLIGHTS,
        )  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        {"data": {"id": "highlight:42", "title": "T", "items": [story("1"), story("2")]}},
        {"data": {"reels": {"highlight:42": {"title": "T", "items": [story("1"), story("2")]}}}},
    ],
    ids=["items", "reels"],
)
def test_highlight_stories_decode_from_either_shape(data: dict[str, object]) -> None:
    got = parse_response(200, JSON, body(data), target="highlight:42", endpoint=HIGHLIGHT_STORIES)
    assert isinstance(got, HighlightStories)
    assert (got.highlight_id, got.title) == ("42", "T")
    assert [i.id for i in got.items] == ["1", "2"]
    assert all(type(i) is StoryItem for i in got.items)


def test_highlight_stories_with_repeated_ids_keep_one_and_malformed_ones_fail() -> None:
    data = {"data": {"items": [story("1"), story("1"), story("2")]}}
    got = parse_response(200, JSON, body(data), endpoint=HIGHLIGHT_STORIES)
    assert [i.id for i in got.items] == ["1", "2"]
    for broken in ({"data": {}}, {"data": {"reels": {"highlight:9": {"items": []}}}}):
        # Neither shape, or a reel for another highlight: malformed, not empty.
        target = "highlight:42"
        if "reels" in broken["data"]:
            broken["data"]["reels"]["highlight:8"] = {"items": []}  # type: ignore[index]
        with pytest.raises(ResponseDecodeError) as caught:
            parse_response(200, JSON, body(broken), target=target, endpoint=HIGHLIGHT_STORIES)
        assert caught.value.billed


# -- the emulator over loopback HTTP ------------------------------------------------

Factory = Callable[..., KeyAPIClient]


def config(api_key: str, **options: object) -> EmulatorConfig:
    return EmulatorConfig(api_keys=frozenset({api_key}), **options)  # type: ignore[arg-type]


async def test_trays_and_highlight_stories_for_many_accounts(
    api_key: str, make_client: Factory
) -> None:
    accounts = [f"acct{n}" for n in range(40)]
    async with run_emulator(config(api_key)) as emu, make_client(emu) as client:
        trays: dict[str, HighlightTray] = {}
        async with client.fetch_many(accounts, endpoint=USER_HIGHLIGHTS) as batch:
            async for result in batch:
                trays[result.target] = result.unwrap()
        assert sorted(trays) == sorted(accounts)
        ids: list[str] = []
        for name, tray in trays.items():
            assert [h.id for h in tray.items] == highlight_ids(
                f"username:{name}", 0, HighlightConfig()
            )
            assert all(h.user is not None and h.user.username == name for h in tray.items)
            ids += [h.id for h in tray.items]
        assert ids, "the emulator gave some accounts highlights"
        counts = {h.id: h.media_count for t in trays.values() for h in t.items}
        seen = 0
        async with client.fetch_many(
            [f"highlight:{i}" for i in ids], endpoint=HIGHLIGHT_STORIES
        ) as batch:
            async for result in batch:
                got = result.unwrap()
                seen += 1
                assert got.highlight_id == result.target.removeprefix("highlight:")
                assert len(got.items) == counts[got.highlight_id]
        assert seen == len(ids)
        one = await client.fetch_highlight_stories(ids[0])
        assert len(one.items) == counts[ids[0]]
        assert emu.successful_targets()[f"tray:username:{accounts[0]}"] == 1
        assert emu.successful_targets()[f"highlight:{ids[0]}"] == 2
        assert client.stats.credits_spent == 2 * (len(accounts) + len(ids) + 1)


async def test_an_invalid_highlight_id_sends_nothing(api_key: str, make_client: Factory) -> None:
    async with run_emulator(config(api_key)) as emu, make_client(emu) as client:
        with pytest.raises(InvalidTargetError):
            await client.fetch_highlight_stories("highlight:abc")
        async with client.fetch_many(["x1", "highlight:5", 5], endpoint=HIGHLIGHT_STORIES) as b:
            results = {r.target: r async for r in b}
        assert isinstance(results["x1"].error, InvalidTargetError)
        assert results["highlight:5"].ok
        assert len(results) == 2  # 5 and highlight:5 are one highlight
        assert emu.requests_total == 1


async def test_hostile_trays_skip_what_cannot_be_used(
    api_key: str, make_client: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    hostile = HighlightConfig(max_highlights=3, hostile=frozenset({"username:evil"}))
    async with run_emulator(config(api_key, highlights=hostile)) as emu, make_client(emu) as c:
        with caplog.at_level(logging.WARNING, logger="keyapi_async"):
            tray = await c.fetch_user_highlights(username="evil")
    good = highlight_ids("username:evil", 0, hostile)
    assert [h.id for h in tray.items] == good
    # No id, a wrong type, an id that is a list, a non-digit id, a 5 MB title, (a repeat).
    assert len(tray.skipped) == 5 + (1 if good else 0)
    assert any("5242880 characters" in reason for reason in tray.skipped)
    assert max(len(r.getMessage()) for r in caplog.records) < 1000


async def test_a_429_on_one_endpoint_pauses_the_others(api_key: str, make_client: Factory) -> None:
    script = {"username:a0": [Fault.RATE_LIMIT]}
    async with (
        run_emulator(config(api_key, fault_script=script)) as emu,
        make_client(emu, max_attempts=1) as client,
    ):
        with pytest.raises(RateLimitError):
            await client.fetch_user_highlights(username="a0")
        assert client.stats.cooldown_remaining > 0.5  # the emulator said Retry-After: 1
        await client.fetch_highlight_stories("highlight:77")
        await client.fetch_user_stories(username="a1")
    first, second, third = emu.log
    assert (first.path, first.status) == (TRAY_PATH, 429)
    # Neither other endpoint was sent before the pause ended.
    assert second.time - first.time >= 0.8
    assert third.time >= second.time


async def test_max_credits_is_exact_across_endpoints(api_key: str, make_client: Factory) -> None:
    async with (
        run_emulator(config(api_key, credits=1000)) as emu,
        make_client(emu, concurrency=4, max_credits=2 * 7) as client,
    ):
        async with client.fetch_many(["a0", "a1", "a2"], endpoint=USER_HIGHLIGHTS) as batch:
            trays = [r async for r in batch]
        await client.fetch_highlight_stories("123")
        async with client.fetch_many([f"b{n}" for n in range(5)]) as batch:
            rest = [r async for r in batch]
        assert all(r.ok for r in trays)
        # 3 trays and 1 highlight leave 6 credits: 3 of the 5 reels, never more.
        assert [r.status for r in rest].count("not_attempted") == 2
        assert all(isinstance(r.error, NotAttemptedError) for r in rest if not r.ok)
        assert client.stats.credits_spent == 14 == emu.credits_spent


async def test_a_highlight_that_gains_an_item_shows_it(api_key: str, make_client: Factory) -> None:
    base = HighlightConfig(max_highlights=4)
    async with run_emulator(config(api_key, highlights=base)) as emu, make_client(emu) as c:
        account = next(
            f"grow{n}" for n in range(100) if highlight_ids(f"username:grow{n}", 0, base)
        )
        before = await c.fetch_user_highlights(username=account)
        target = before.items[0]
        emu.config = config(api_key, highlights=HighlightConfig(added={target.id: 2}))
        after = await c.fetch_user_highlights(username=account)
        changed = [
            (b.id, b.media_count, a.media_count)
            for b, a in zip(before.items, after.items, strict=True)
            if (b.media_count, b.latest_reel_media) != (a.media_count, a.latest_reel_media)
        ]
        assert changed == [(target.id, target.media_count, (target.media_count or 0) + 2)]
        stories = await c.fetch_highlight_stories(target.id)
        assert len(stories.items) == (target.media_count or 0) + 2


async def test_media_urls_of_highlights_point_at_the_emulator(
    api_key: str, make_client: Factory
) -> None:
    media = MediaConfig(enabled=True)
    async with run_emulator(config(api_key, media=media)) as emu, make_client(emu) as client:
        account = next(
            f"m{n}" for n in range(100) if highlight_ids(f"username:m{n}", 0, HighlightConfig())
        )
        tray = await client.fetch_user_highlights(username=account)
        assert all(h.cover and h.cover.url.startswith(emu.base_url) for h in tray.items)
        got = await client.fetch_highlight_stories(tray.items[0].id)
        assert all((i.best_media_url or "").startswith(emu.base_url) for i in got.items)
    assert TRAY_PATH.endswith("fetch_user_highlights")


# -- the archive: only what changed -------------------------------------------------


async def test_a_second_run_fetches_trays_only_and_a_change_fetches_one_highlight(
    api_key: str, make_client: Factory, tmp_path: Path
) -> None:
    accounts = [f"user{n}" for n in range(200)]
    path = tmp_path / "archive.sqlite"
    highlights = HighlightConfig(max_highlights=3, max_items=2)
    emu_config = config(api_key, highlights=highlights)
    async with (
        run_emulator(emu_config) as emu,
        make_client(emu) as client,
        StoryArchive.open(path, extensions=[HIGHLIGHTS_SCHEMA]) as archive,
    ):
        first = await save_highlights(client, archive, accounts)
        expected = {
            hid: name
            for name in accounts
            for hid in highlight_ids(f"username:{name}", 0, highlights)
        }
        assert first.errors == {}
        assert (first.trays, first.highlights_fetched) == (200, len(expected))
        assert len(first.new_stories) == len(set(first.new_stories)) > 0

        def rows(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
            return conn.execute(
                "SELECT h.id, h.account, COUNT(i.story_id) FROM highlights h "
                "LEFT JOIN highlight_items i ON i.highlight_id = h.id GROUP BY h.id"
            ).fetchall()

        saved = archive.read(rows)
        assert {hid: account for hid, account, _ in saved} == expected
        assert all(count >= 1 for _, _, count in saved)

        sent = emu.requests_total
        second = await save_highlights(client, archive, accounts)
        assert emu.requests_total - sent == 200  # one tray each, no highlight stories
        assert (second.highlights_fetched, second.unchanged) == (0, len(expected))

        grown = next(iter(expected))
        emu.config = dataclasses.replace(
            emu_config, highlights=dataclasses.replace(highlights, added={grown: 1})
        )
        sent = emu.requests_total
        third = await save_highlights(client, archive, accounts)
        assert emu.requests_total - sent == 201
        assert third.highlights_fetched == 1 and len(third.new_stories) == 1
        assert [r.target for r in emu.log[-201:] if r.path != TRAY_PATH] == [f"highlight:{grown}"]

    # An archive written before highlights existed opens and gains the tables.
    old = tmp_path / "old.sqlite"
    async with StoryArchive.open(old) as archive:
        await archive.record_reel("javan", None)
    async with StoryArchive.open(old, extensions=[HIGHLIGHTS_SCHEMA]) as archive:
        assert (
            archive.read(lambda c: c.execute("SELECT COUNT(*) FROM highlights").fetchone())[0] == 0
        )


def test_changed_highlights_compares_both_counts() -> None:
    tray = HighlightTray(
        items=(
            Highlight(id="1", latest_reel_media=10, media_count=2),
            Highlight(id="2", latest_reel_media=10, media_count=2),
            Highlight(id="3", latest_reel_media=11, media_count=2),
            Highlight(id="4"),
        )
    )
    fetched = {"1": (10, 2), "2": (10, 1), "3": (10, 2), "4": (None, None)}
    assert [h.id for h in changed_highlights(tray, fetched)] == ["2", "3", "4"]


# -- media names --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "folder"),
    [
        ("Travel ✈️", "Travel ✈️"),
        ("a/b", "a_b"),
        ("..", "_"),
        ("CON", "_CON"),
        ("nul\x00byte", "nul_byte"),
        ("", "17912345678901234"),
        (None, "17912345678901234"),
    ],
)
def test_highlight_items_are_filed_under_their_sanitised_title(
    title: str | None, folder: str, tmp_path: Path
) -> None:
    fields = template_fields(
        story_id="3", username="javan", user_id="1", code="", taken_at=0, ext="jpg",
        media_type="image", width=1, height=1, target="javan",
        highlight_id="17912345678901234", highlight_title=title,
    )  # fmt: skip
    parts = NameTemplate(HIGHLIGHT_NAME_TEMPLATE).render(fields)
    assert parts == ("javan", "highlights", folder, "19700101_000000_3.jpg")
    root = tmp_path.resolve()
    assert root in inside(root, parts).parents


# -- the command line ---------------------------------------------------------------


async def test_fetch_highlights_only_then_again_sends_trays_only(
    api_key: str, tmp_path: Path
) -> None:
    from tests.test_cli import base_env, run_cli, write_targets

    names = [f"cli{n}" for n in range(30)]
    targets = write_targets(tmp_path / "targets.txt", names)
    db = tmp_path / "archive.sqlite3"
    highlights = HighlightConfig(max_highlights=2, max_items=2)
    async with run_emulator(config(api_key, highlights=highlights)) as emu:
        env = base_env(KEYAPI_BASE_URL=emu.base_url, KEYAPI_API_KEY=api_key)
        args = ("fetch", str(targets), "--highlights-only", "--archive", str(db), "--qps", "0")
        dry = await run_cli(
            "fetch", str(targets), "--highlights", "--dry-run", env=env, cwd=tmp_path
        )
        assert dry.code == 0, dry.stderr
        assert "highlight trays: 30 requests, at most 60 credits" in dry.stdout
        assert "depends on what changed" in dry.stdout
        assert emu.requests_total == 0
        first = await run_cli(*args, env=env, cwd=tmp_path)
        assert first.code == 0, first.stderr
        expected = sum(len(highlight_ids(f"username:{n}", 0, highlights)) for n in names)
        # The pass's report is a summary: on stderr, like the stories run's (stdout
        # carries only the --dry-run report).
        assert f"30 trays, {expected} highlights fetched" in first.stderr
        assert first.stdout == ""
        paths = [r.path for r in emu.log]
        assert paths.count(TRAY_PATH) == 30 and len(paths) == 30 + expected
        second = await run_cli(*args, env=env, cwd=tmp_path)
        assert second.code == 0, second.stderr
        assert "30 trays, 0 highlights fetched" in second.stderr and second.stdout == ""
        assert len(emu.log) == 60 + expected
        assert api_key not in first.stdout + first.stderr + second.stdout + second.stderr
        missing = await run_cli("fetch", str(targets), "--highlights-only", env=env, cwd=tmp_path)
        assert missing.code == 2 and "--highlights-only needs --archive" in missing.stderr
        # No ledger is written without a stories run: -o would be silently ignored.
        ledger = tmp_path / "run.jsonl"
        with_o = await run_cli(*args, "-o", str(ledger), env=env, cwd=tmp_path)
        assert with_o.code == 2, with_o.stderr
        assert "-o" in with_o.stderr and "--highlights-only" in with_o.stderr
        assert len(with_o.stderr.strip().splitlines()) == 1 and not ledger.exists()
        assert len(emu.log) == 60 + expected  # nothing sent


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_during_the_highlights_pass_stops_it_like_fetch(
    api_key: str, tmp_path: Path, signum: int
) -> None:
    # docs/cli.md: the first Ctrl-C or SIGTERM stops sending, lets what is in
    # flight finish, prints the summary and exits 130. The highlights pass too.
    from tests.test_cli import CLI, base_env, write_targets

    names = [f"sig{n}" for n in range(60)]
    targets = write_targets(tmp_path / "targets.txt", names)
    db = tmp_path / "archive.sqlite3"
    async with run_emulator(config(api_key, latency=0.05)) as emu:
        env = base_env(KEYAPI_BASE_URL=emu.base_url, KEYAPI_API_KEY=api_key)
        proc = await asyncio.create_subprocess_exec(
            *CLI, "fetch", str(targets), "--highlights-only", "--archive", str(db),
            "--qps", "10", "--no-progress",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env, cwd=tmp_path,
        )  # fmt: skip
        deadline = asyncio.get_running_loop().time() + 20
        while len(emu.log) < 5:
            assert asyncio.get_running_loop().time() < deadline, "no tray request arrived"
            await asyncio.sleep(0.05)
        proc.send_signal(signum)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        sent = len(emu.log)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    (line,) = [x for x in text.splitlines() if x.startswith("highlights: ") and "trays" in x]
    assert line.endswith("(interrupted)"), line
    assert sent < 60, "the pass went on after the signal"
    # Every tray answer that arrived was recorded: the archive is whole and readable.
    with StoryArchive.connect(db, readonly=True) as archive:
        assert archive.stories() is not None


async def test_export_names_the_highlight_of_a_story_one_row_each(tmp_path: Path) -> None:
    from keyapi_async.archive.highlights import record_highlight_stories, record_tray
    from keyapi_async.export import export_rows

    first = Highlight(id="11", title="Trips", latest_reel_media=5, media_count=2)
    second = Highlight(id="12", title="Again", latest_reel_media=5, media_count=1)
    items = tuple(StoryItem(id=i, taken_at=1_700_000_000) for i in ("a", "b"))
    async with StoryArchive.open(tmp_path / "a.sqlite3", extensions=[HIGHLIGHTS_SCHEMA]) as db:
        await db.record_reel("javan", Reel(count=1, items=(StoryItem(id="z"),)))
        tray = HighlightTray(items=(first, second))
        assert await record_tray(db, "javan", tray, 100) == [first, second]
        await record_highlight_stories(db, "javan", first, HighlightStories(items=items), 100)
        # "b" is in both highlights: still one row, naming the first.
        await record_highlight_stories(db, "javan", second, HighlightStories(items=items[1:]), 100)
        assert await record_tray(db, "javan", tray, 200) == []
        rows = {r.story_id: r for r in export_rows(db)}
    assert sorted(rows) == ["a", "b", "z"]
    assert (rows["a"].highlight_id, rows["a"].highlight_title, rows["a"].highlight_position) == (
        "11",
        "Trips",
        0,
    )
    assert (rows["b"].highlight_id, rows["b"].highlight_position) == ("11", 1)
    assert (rows["z"].highlight_id, rows["z"].highlight_title) == (None, None)


async def test_a_story_is_filed_under_the_highlight_that_listed_it_first(tmp_path: Path) -> None:
    from keyapi_async.archive.highlights import highlights_of, record_highlight_stories

    # Recorded in this order: the later one (by id too) is the one that claimed "b".
    later = Highlight(id="90", title="First listed")
    earlier = Highlight(id="10", title="Listed second")
    items = tuple(StoryItem(id=i, taken_at=1_700_000_000) for i in ("a", "b"))
    async with StoryArchive.open(tmp_path / "a.sqlite3", extensions=[HIGHLIGHTS_SCHEMA]) as db:
        for highlight, held in ((later, items), (earlier, items[1:])):
            await db.transact(
                lambda c, h=highlight: c.execute(
                    "INSERT INTO highlights (id, account, title, first_seen_at, last_seen_at) "
                    "VALUES (?, 'javan', ?, 1, 1)",
                    (h.id, h.title),
                )
            )
            await record_highlight_stories(db, "javan", highlight, HighlightStories(items=held))
        await db.record_reel("javan", Reel(count=1, items=(StoryItem(id="z"),)))
        found = await highlights_of(db, ["b", "a", "z", "nope", "b"])
        assert found == {"a": later, "b": later}
        assert await highlights_of(db, []) == {}
    # An archive never opened with the highlights tables: no story is in one.
    async with StoryArchive.open(tmp_path / "plain.sqlite3") as db:
        await db.record_reel("javan", Reel(count=1, items=items))
        assert await highlights_of(db, ["a", "b"]) == {}


def test_the_summary_line_does_not_give_cover_bytes_to_the_items() -> None:
    # HighlightMediaCounts.bytes counts items and covers: the line must not put
    # them beside the item count, as in "media: 0 saved (317.3 kB)".
    from keyapi_async.archive.highlights import HighlightsRun
    from keyapi_async.cli.highlights import summary_line
    from keyapi_async.highlight_media import HighlightMediaCounts

    counts = HighlightMediaCounts(saved=0, bytes=317_300, covers_saved=31)
    line = summary_line(HighlightsRun(trays=22), counts)
    assert "0 saved (" not in line, line
    assert line.endswith("covers: 31 saved, 0 already saved, 0 failed; 317.3 kB downloaded"), line
