"""Media download against the emulator's CDN over loopback (keyapi_async.media)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import errno
import hashlib
import os
import subprocess
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDict

import keyapi_async
from keyapi_async._errors import ConfigurationError
from keyapi_async.engine.retry import backoff_delay
from keyapi_async.media import (
    MediaDiskFullError,
    MediaDownloader,
    MediaOutcome,
    MediaStatus,
    SavedMedia,
    plan,
)
from keyapi_async.media import files as media_files
from keyapi_async.media.paths import (
    HostAllowlist,
    NameTemplate,
    media_host_entries,
    media_hosts_from_env,
    parse_host_entry,
    sanitize_component,
)
from keyapi_async.models import ImageCandidate, Reel, StoryItem, decode_reel
from keyapi_async.testing import (
    DEFAULT_TEST_KEY,
    Emulator,
    EmulatorConfig,
    MediaConfig,
    MediaFault,
    run_emulator,
)
from keyapi_async.testing._data import IMAGE_RENDITIONS
from keyapi_async.testing._media import MediaCDN, media_bytes, media_cdn, media_sha256

ENDPOINT = "/v1/instagram/fetch_user_stories"
FAST: dict[str, Any] = {"backoff_base": 0.01, "backoff_cap": 0.05, "timeout": 5.0}


def media_config(**changes: Any) -> EmulatorConfig:
    return EmulatorConfig(empty_ratio=0.0, media=MediaConfig(enabled=True, **changes))


def loopback(emu: Emulator) -> list[str]:
    return [emu.base_url.removeprefix("http://")]


@contextlib.asynccontextmanager
async def media_emulator(**changes: Any) -> AsyncIterator[tuple[Emulator, MediaCDN]]:
    async with run_emulator(media_config(**changes)) as emu:
        yield emu, media_cdn(emu)


async def fetch_reels(emu: Emulator, names: list[str]) -> list[tuple[str, Reel]]:
    """Fetch reels with a Bearer key (as the client would) and decode them."""
    reels = []
    headers = {"Authorization": f"Bearer {DEFAULT_TEST_KEY}"}
    async with aiohttp.ClientSession() as session:
        for name in names:
            url = emu.base_url + ENDPOINT
            async with session.get(url, params={"username": name}, headers=headers) as resp:
                assert resp.status == 200
                body = await resp.read()
            data = msgspec.json.decode(body)["data"]["data"]
            reels.append((name, decode_reel(msgspec.json.encode(data))))
    return reels


def reel_of(*items: dict[str, Any], username: str = "mallory") -> Reel:
    full = [
        {"taken_at": 1_773_000_000, "user": {"username": username, "id": "1"}, **item}
        for item in items
    ]
    return decode_reel(msgspec.json.encode({"count": len(full), "items": full}))


def image_item(story_id: str, url: str, width: int = 1080, height: int = 1920) -> dict[str, Any]:
    return {
        "id": story_id,
        "media_type": 1,
        "image_versions": {"items": [{"url": url, "width": width, "height": height}]},
    }


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_no_credentials(cdn: MediaCDN, *secrets: str) -> None:
    assert cdn.log
    for record in cdn.log:
        assert not record.has_credentials, record
        assert record.header("Authorization") is None
        for secret in secrets:
            assert all(secret not in value for _, value in record.headers)
            assert secret not in record.path and secret not in str(dict(record.query))


# -- the happy path -----------------------------------------------------------------------


async def test_reels_are_saved_with_the_cdn_bytes(tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    async with media_emulator() as (emu, cdn):
        reels = await fetch_reels(emu, [f"user{i}" for i in range(12)])
        items = [item for _, reel in reels for item in reel.items]
        assert any(i.is_video_media for i in items) and any(not i.is_video_media for i in items)
        # Emulator answers point at its own CDN, largest rendition not listed first.
        first = items[0]
        assert first.image_versions is not None
        assert first.image_versions.items[0].url.startswith(emu.base_url + "/media/")
        assert [(c.width, c.height) for c in first.image_versions.items] == list(IMAGE_RENDITIONS)

        async with MediaDownloader(dest, allowed_hosts=loopback(emu), **FAST) as downloader:
            outcomes = [
                o for target, reel in reels for o in await downloader.download_reel(target, reel)
            ]

        assert len(outcomes) == len(items)
        assert {o.status for o in outcomes} == {MediaStatus.SAVED}
        for item, outcome in zip(items, outcomes, strict=True):
            assert outcome.story_id == item.id
            assert outcome.path is not None and outcome.url is not None
            assert outcome.sha256 == cdn.expected_sha256(outcome.url) == sha(outcome.path)
            assert outcome.size == outcome.bytes == outcome.path.stat().st_size
            expected_url = item.best_video_url if item.is_video_media else item.best_image_url
            assert outcome.url == expected_url
            assert outcome.width is not None and outcome.height is not None
            ext = "mp4" if item.is_video_media else "jpg"
            assert outcome.content_type == ("video/mp4" if ext == "mp4" else "image/jpeg")
            # DIR/<username>/<YYYYMMDD_HHMMSS>_<story_id>.<ext>, UTC of taken_at, mtime = taken_at.
            assert item.taken_at is not None and item.user is not None
            stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(item.taken_at))
            assert outcome.relative_path == f"{item.user.username}/{stamp}_{item.id}.{ext}"
            assert outcome.path == dest.resolve() / outcome.relative_path
            assert int(outcome.path.stat().st_mtime) == item.taken_at
        bytes_seen = outcomes[0].path.read_bytes()  # type: ignore[union-attr]
        assert bytes_seen[:2] == b"\xff\xd8" or bytes_seen[4:8] == b"ftyp"
        assert not [p for p in files_under(dest) if p.name.endswith(".part")]
        assert len(files_under(dest)) == len(items)
        assert_no_credentials(cdn, DEFAULT_TEST_KEY)


async def test_media_files_are_valid_jpeg_and_mp4() -> None:
    jpeg = media_bytes("123", "jpg", 1080, 1920)
    assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
    mp4 = media_bytes("123", "mp4", 720, 1280)
    position, boxes = 0, []
    while position < len(mp4):
        size = int.from_bytes(mp4[position : position + 4], "big")
        boxes.append(mp4[position + 4 : position + 8])
        position += size
    assert position == len(mp4)
    assert boxes == [b"ftyp", b"moov", b"mdat"]
    assert 10_000 < len(jpeg) < 100_000
    assert media_sha256("123", "jpg", 1080, 1920) == hashlib.sha256(jpeg).hexdigest()
    assert media_bytes("124", "jpg", 1080, 1920) != jpeg
    big = media_bytes("1", "jpg", 1, 1, sizes={"1": 300_001})
    assert len(big) == 300_001 and big[-2:] == b"\xff\xd9"


async def test_second_run_downloads_nothing(tmp_path: Path) -> None:
    async with media_emulator() as (emu, cdn):
        reels = await fetch_reels(emu, ["ann", "bob", "cid"])
        async with MediaDownloader(tmp_path, allowed_hosts=loopback(emu), **FAST) as dl:
            first = [o for t, r in reels for o in await dl.download_reel(t, r)]
        assert all(o.status is MediaStatus.SAVED for o in first)
        requests_before = len(cdn.log)
        known = {
            o.story_id: SavedMedia(o.relative_path or "", o.size or 0, o.sha256) for o in first
        }

        async with MediaDownloader(
            tmp_path, allowed_hosts=loopback(emu), known_saved=known.get, **FAST
        ) as dl:
            second = [o for t, r in reels for o in await dl.download_reel(t, r)]
        assert [o.status for o in second] == [MediaStatus.SKIPPED] * len(first)
        assert sum(o.bytes for o in second) == 0
        assert [o.sha256 for o in second] == [o.sha256 for o in first]
        assert len(cdn.log) == requests_before

        # A recorded file whose size changed is fetched again; without a record an
        # existing final file is trusted (rehashed), since final names are only ever complete.
        victim = first[0].path
        assert victim is not None
        victim.write_bytes(b"x")
        async with MediaDownloader(
            tmp_path, allowed_hosts=loopback(emu), known_saved=known, skip_existing=False, **FAST
        ) as dl:
            third = [o for t, r in reels for o in await dl.download_reel(t, r)]
        assert [o.status for o in third].count(MediaStatus.SAVED) == 1
        assert sha(victim) == first[0].sha256
        async with MediaDownloader(tmp_path, allowed_hosts=loopback(emu), **FAST) as dl:
            fourth = [o for t, r in reels for o in await dl.download_reel(t, r)]
        assert {o.status for o in fourth} == {MediaStatus.SKIPPED}
        assert [o.sha256 for o in fourth] == [o.sha256 for o in first]


async def test_download_many_streams_outcomes(tmp_path: Path) -> None:
    async with media_emulator() as (emu, _):
        reels = await fetch_reels(emu, [f"m{i}" for i in range(6)])

        async def source() -> AsyncIterator[tuple[str | None, Reel]]:
            for pair in reels:
                yield pair

        async with MediaDownloader(
            tmp_path, allowed_hosts=loopback(emu), concurrency=3, **FAST
        ) as dl:
            async with contextlib.aclosing(dl.download_many(source())) as stream:
                outcomes = [o async for o in stream]
    assert sorted(o.story_id for o in outcomes) == sorted(i.id for _, r in reels for i in r.items)
    assert {o.status for o in outcomes} == {MediaStatus.SAVED}


# -- faults -------------------------------------------------------------------------------


async def test_faults_end_saved_expired_or_failed_never_partial(tmp_path: Path) -> None:
    rates = {
        MediaFault.TRUNCATED: 0.10,
        MediaFault.RESET: 0.05,
        MediaFault.EXPIRED: 0.02,
        MediaFault.WRONG_LENGTH: 0.03,
        MediaFault.SLOW: 0.03,
        MediaFault.SERVER_ERROR: 0.03,
        MediaFault.REDIRECT: 0.02,
    }
    async with media_emulator(fault_rates=rates, slow_delay=0.001) as (emu, cdn):
        reels = await fetch_reels(emu, [f"f{i}" for i in range(40)])
        async with MediaDownloader(tmp_path, allowed_hosts=loopback(emu), **FAST) as dl:
            outcomes = [o for t, r in reels for o in await dl.download_reel(t, r)]
        for fault in (MediaFault.TRUNCATED, MediaFault.RESET, MediaFault.EXPIRED):
            assert cdn.count(fault=fault) >= 1, fault
        expected = {o.story_id: cdn.expected_sha256(o.url or "") for o in outcomes}

    statuses = {o.status for o in outcomes}
    assert statuses <= {MediaStatus.SAVED, MediaStatus.EXPIRED, MediaStatus.FAILED}
    assert MediaStatus.SAVED in statuses and MediaStatus.EXPIRED in statuses
    for outcome in outcomes:
        if outcome.status is MediaStatus.SAVED:
            assert outcome.path is not None and sha(outcome.path) == expected[outcome.story_id]
        else:
            assert outcome.reason and outcome.path is None
        if outcome.status is MediaStatus.EXPIRED:
            assert outcome.reason.startswith("HTTP 403")  # type: ignore[union-attr]
    # Every file at a final name is complete and right; only .part files may be partial.
    by_name = {o.path.name: o for o in outcomes if o.path is not None}
    for path in files_under(tmp_path):
        if path.name.endswith(".part"):
            continue
        assert sha(path) == expected[by_name[path.name].story_id]


async def test_retries_resume_a_cut_off_body_with_range(tmp_path: Path) -> None:
    async with media_emulator() as (emu, cdn):
        [(target, reel)] = await fetch_reels(emu, ["javan"])
        story = reel.items[0].id
        script = {story: [MediaFault.TRUNCATED, MediaFault.RESET, MediaFault.WRONG_LENGTH]}
        # Big enough that the client has consumed bytes before the cut arrives
        # (aiohttp drops what is still buffered when a body ends early).
        sizes = {story: 4 * 2**20}
        emu.config = dataclasses.replace(
            emu.config,
            media=dataclasses.replace(emu.config.media, fault_script=script, sizes=sizes),
        )
        async with MediaDownloader(tmp_path, allowed_hosts=loopback(emu), **FAST) as dl:
            [outcome, *_] = await dl.download_reel(target, reel)
        assert outcome.status is MediaStatus.SAVED, outcome.reason
        assert outcome.attempts == 4
        assert outcome.size == 4 * 2**20
        assert outcome.sha256 == cdn.expected_sha256(outcome.url or "")
        records = cdn.requests_for(story)
        assert [r.fault for r in records] == [*script[story], None]
        ranges = [r.header("Range") for r in records]
        assert ranges[0] is None and ranges[1] is not None and ranges[2] is not None
        # Resumed, not restarted: far fewer bytes than four whole files crossed the wire.
        assert outcome.bytes < 3 * 4 * 2**20


async def test_leftover_part_is_resumed_with_range(tmp_path: Path) -> None:
    async with media_emulator() as (emu, cdn):
        [(target, reel)] = await fetch_reels(emu, ["javan"])
        item = reel.items[0]
        async with MediaDownloader(tmp_path / "probe", allowed_hosts=loopback(emu), **FAST) as dl:
            reference = await dl.download_item(item, target=target)
        assert reference.path is not None and reference.relative_path is not None
        full = reference.path.read_bytes()
        part = tmp_path / "dl" / (reference.relative_path + ".part")
        part.parent.mkdir(parents=True)
        part.write_bytes(full[:5000])  # what a killed run left behind
        log_start = len(cdn.log)
        async with MediaDownloader(tmp_path / "dl", allowed_hosts=loopback(emu), **FAST) as dl:
            resumed = await dl.download_item(item, target=target)
        assert resumed.status is MediaStatus.SAVED
        assert resumed.bytes == len(full) - 5000
        assert resumed.sha256 == reference.sha256
        assert not part.exists()
        [request] = cdn.log[log_start:]
        assert (request.header("Range"), request.status) == ("bytes=5000-", 206)

        # A CDN without Range support: the .part is restarted, not appended to.
        part.write_bytes(full[:5000])
        assert resumed.path is not None
        resumed.path.unlink()
        emu.config = dataclasses.replace(
            emu.config, media=dataclasses.replace(emu.config.media, ranges=False)
        )
        async with MediaDownloader(tmp_path / "dl", allowed_hosts=loopback(emu), **FAST) as dl:
            restarted = await dl.download_item(item, target=target)
        assert restarted.status is MediaStatus.SAVED
        assert restarted.bytes == len(full) and restarted.sha256 == reference.sha256


async def test_expired_and_oversized(tmp_path: Path) -> None:
    async with media_emulator(url_ttl=0) as (emu, _):
        [(target, reel)] = await fetch_reels(emu, ["javan"])
        async with MediaDownloader(tmp_path, allowed_hosts=loopback(emu), **FAST) as dl:
            outcomes = await dl.download_reel(target, reel)
    assert {o.status for o in outcomes} == {MediaStatus.EXPIRED}
    assert all(o.reason == "HTTP 403: URL signature expired" for o in outcomes)
    assert files_under(tmp_path) == []

    async with media_emulator() as (emu, _):
        [(target, reel)] = await fetch_reels(emu, ["javan"])
        async with MediaDownloader(
            tmp_path, allowed_hosts=loopback(emu), max_bytes=2000, **FAST
        ) as dl:
            outcomes = await dl.download_reel(target, reel)
    assert {o.status for o in outcomes} == {MediaStatus.FAILED}
    assert all("max_bytes=2000" in (o.reason or "") for o in outcomes)
    assert files_under(tmp_path) == []


# -- security -----------------------------------------------------------------------------


async def test_hostile_answers_stay_inside_dir_and_on_the_allowlist(tmp_path: Path) -> None:
    dest = tmp_path / "dl"
    async with (
        run_emulator() as offsite,
        media_emulator() as (emu, cdn),
    ):
        emu.config = dataclasses.replace(
            emu.config,
            media=dataclasses.replace(
                emu.config.media,
                offsite_base=offsite.base_url,
                fault_script={"redirected": [MediaFault.REDIRECT_OFFSITE]},
            ),
        )
        good = cdn.url_for("evil-bytes", "jpg", 1080, 1920)
        offsite_url = media_cdn(offsite).url_for("x", "jpg", 1080, 1920)
        reel = reel_of(
            image_item("../../evil", good),
            image_item("..", good),
            image_item("foreign", "https://evil.example.com/media/x.jpg"),
            image_item("offsite", offsite_url),
            image_item("plainhttp", "http://scontent-lax3-1.cdninstagram.com/x.jpg"),
            image_item("redirected", cdn.url_for("redirected", "jpg", 1080, 1920)),
            image_item("userinfo", good.replace("http://", "http://user:pw@")),
            username="../../../etc",
        )
        async with MediaDownloader(dest, allowed_hosts=loopback(emu), **FAST) as dl:
            outcomes = {o.story_id: o for o in await dl.download_reel("mallory", reel)}
        assert len(media_cdn(offsite).log) == 0
        assert offsite.requests_total == 0
        assert_no_credentials(cdn)

    assert outcomes["../../evil"].status is MediaStatus.SAVED
    assert outcomes[".."].status is MediaStatus.SAVED
    for story in ("foreign", "offsite", "plainhttp", "redirected", "userinfo"):
        assert outcomes[story].status is MediaStatus.REJECTED, outcomes[story]
        assert outcomes[story].attempts <= 1
    assert "not in the allowed hosts" in (outcomes["foreign"].reason or "")
    assert "plain http" in (outcomes["plainhttp"].reason or "")
    assert (outcomes["redirected"].reason or "").startswith("redirect refused")
    # Everything written is below DIR, in one sanitised folder.
    written = files_under(tmp_path)
    assert written and all(dest.resolve() in p.resolve().parents for p in written)
    assert {p.parent.name for p in written} == {".._.._.._etc"}
    names = sorted(p.name for p in written)
    assert len(names) == 2
    assert names[0].endswith("_.._.._evil.jpg") or names[1].endswith("_.._.._evil.jpg")


async def test_given_session_lends_only_its_connection_pool(tmp_path: Path) -> None:
    secret = "sk_test_" + os.urandom(8).hex()
    async with media_emulator() as (emu, cdn):
        [(target, reel)] = await fetch_reels(emu, ["javan"])
        headers = {"Authorization": f"Bearer {secret}", "X-API-Key": secret}
        async with aiohttp.ClientSession(headers=headers, cookies={"k": secret}) as session:
            async with MediaDownloader(
                tmp_path, session=session, allowed_hosts=loopback(emu), **FAST
            ) as dl:
                outcomes = await dl.download_reel(target, reel)
            assert not session.closed
        assert {o.status for o in outcomes} == {MediaStatus.SAVED}
        assert_no_credentials(cdn, secret)


async def test_symlink_out_of_dir_is_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "mallory").symlink_to(outside)
    async with media_emulator() as (emu, cdn):
        reel = reel_of(image_item("1", cdn.url_for("1", "jpg", 10, 10)))
        async with MediaDownloader(dest, allowed_hosts=loopback(emu), **FAST) as dl:
            [outcome] = await dl.download_reel(None, reel)
        assert cdn.log == []
    assert outcome.status is MediaStatus.REJECTED
    assert list(outside.iterdir()) == []


def test_allowlist_rules() -> None:
    allow = HostAllowlist(["127.0.0.1:8080", "mirror.example.org", "*.cdn.example"])
    assert allow.check("https://scontent-lax3-1.cdninstagram.com/v/x.jpg") is None
    assert allow.check("https://video.xx.fbcdn.net/o1/x.mp4") is None
    assert allow.check("https://cdninstagram.com.evil.net/x.jpg") is not None
    assert allow.check("https://evilcdninstagram.com/x.jpg") is not None
    assert allow.check("http://scontent.cdninstagram.com/x.jpg") is not None
    assert allow.check("http://127.0.0.1:8080/m.jpg") is None
    assert allow.check("http://127.0.0.1:8081/m.jpg") is not None
    assert allow.check("http://mirror.example.org:9000/m.jpg") is None
    assert allow.check("http://a.cdn.example/m.jpg") is not None  # http needs an exact host
    assert allow.check("https://a.cdn.example/m.jpg") is None
    assert allow.check("ftp://mirror.example.org/m.jpg") is not None
    assert allow.check("https://u:p@mirror.example.org/m.jpg") is not None
    assert allow.check("/relative.jpg") is not None
    assert parse_host_entry("[::1]:8443") == ("::1", 8443)
    for bad in ("http://x.org", "x.org/path", "*", "a:b:c", "x.org:0", "", "*.*.org"):
        with pytest.raises(ConfigurationError, match="host"):
            parse_host_entry(bad)
    env = {"KEYAPI_MEDIA_HOSTS": " 127.0.0.1:9000, ,mirror.example.org "}
    assert media_hosts_from_env(env) == ("127.0.0.1:9000", "mirror.example.org")
    assert media_hosts_from_env({}) == ()
    with pytest.raises(ValueError, match="https://x"):
        media_hosts_from_env({"KEYAPI_MEDIA_HOSTS": "https://x"})


def test_a_bad_media_hosts_variable_is_a_configuration_error_naming_it() -> None:
    env = {"KEYAPI_MEDIA_HOSTS": "mirror.example.org, bad host!!"}
    with pytest.raises(ConfigurationError) as caught:
        media_hosts_from_env(env)
    assert "KEYAPI_MEDIA_HOSTS" in str(caught.value)
    assert "'bad host!!'" in str(caught.value)
    assert isinstance(caught.value, ValueError)  # except ValueError keeps working


def test_media_host_entries_name_their_source() -> None:
    assert media_host_entries(" a.example, ,127.0.0.1:9 ", source="--media-hosts") == (
        "a.example",
        "127.0.0.1:9",
    )
    with pytest.raises(ConfigurationError, match=r"^--media-hosts: .*'bad host!!'"):
        media_host_entries("a.example,bad host!!", source="--media-hosts")


def test_names_are_sanitised() -> None:
    assert sanitize_component("../../evil") == ".._.._evil"
    assert sanitize_component("..") == "_"
    assert sanitize_component("") == "_"
    assert sanitize_component("CON") == "_CON"
    assert sanitize_component("com1.jpg", keep_suffix=".jpg") == "_com1.jpg"
    assert sanitize_component('a<b>c:d"e|f?g*h\\i/j\x00k') == "a_b_c_d_e_f_g_h_i_j_k"
    assert sanitize_component("name. . ") == "name"
    long = sanitize_component("é" * 300 + ".jpg", keep_suffix=".jpg")
    assert long.endswith(".jpg") and len(long.encode()) <= 200
    template = NameTemplate("{taken_at:%Y/%m}/{username}-{story_id}.{ext}")
    fields = {
        "taken_at": __import__("datetime").datetime(2026, 3, 1),
        "username": "a/b",
        "story_id": "../x",
        "ext": "jpg",
    }
    # Only the template's own '/' make folders; a value's '/' never does.
    assert template.render(fields) == ("2026_03", "a_b-.._x.jpg")
    for bad in ("{nope}.jpg", "{story_id.__class__}", "/abs/{story_id}", "{username}.jpg"):
        with pytest.raises(ConfigurationError, match="name_template"):
            NameTemplate(bad)


async def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="concurrency"):
        MediaDownloader(tmp_path, concurrency=0)
    bad_numbers: list[tuple[str, object]] = [
        ("timeout", float("nan")),
        ("timeout", 0),
        ("connect_timeout", 0.0),
        ("timeout", float("inf")),
        ("backoff_base", float("inf")),
        ("backoff_cap", -1),
        ("backoff_base", True),
        ("max_attempts", 1.5),
        ("max_bytes", True),
    ]
    for name, value in bad_numbers:
        with pytest.raises(ConfigurationError, match=rf"^{name} must be .*got {value!r}$"):
            MediaDownloader(tmp_path, **{name: value})  # type: ignore[arg-type]
    MediaDownloader(tmp_path, backoff_base=0, backoff_cap=0)  # no backoff is a choice
    with pytest.raises(ConfigurationError, match="host"):
        MediaDownloader(tmp_path, allowed_hosts=["http://x"])
    with pytest.raises(ConfigurationError, match=r"^name_template: unknown field"):
        MediaDownloader(tmp_path, name_template="{foo}/{story_id}")
    # Each template's error names its own argument.
    for bad in ("{foo}/{story_id}", "{username}.jpg", " "):
        with pytest.raises(ConfigurationError, match=r"^highlight_template"):
            MediaDownloader(tmp_path, highlight_template=bad)
    with pytest.raises(ConfigurationError, match=r"^--x-template must contain"):
        NameTemplate("{username}", name="--x-template")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigurationError, match="not writable"):
        async with MediaDownloader(blocker / "sub"):
            pass
    # A file where the directory should be is named as such, not as "File exists".
    for in_the_way in (blocker, blocker / "sub"):
        with pytest.raises(ConfigurationError, match="not a directory") as caught:
            async with MediaDownloader(in_the_way):
                pass
        assert "File exists" not in str(caught.value) and str(in_the_way) in str(caught.value)
    with pytest.raises(ValueError, match="url_ttl"):
        MediaConfig(url_ttl=-1)
    with pytest.raises(ValueError, match="unknown media fault"):
        MediaConfig(fault_rates={"nope": 0.1})  # type: ignore[dict-item]


# -- disk full ----------------------------------------------------------------------------


async def test_disk_full_stops_with_a_distinct_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = media_files.write_all

    def filling_disk(handle: Any, chunk: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(handle, chunk)

    async with media_emulator() as (emu, _):
        reels = await fetch_reels(emu, [f"d{i}" for i in range(8)])
        monkeypatch.setattr(media_files, "write_all", filling_disk)
        async with MediaDownloader(
            tmp_path, allowed_hosts=loopback(emu), concurrency=1, **FAST
        ) as dl:
            with pytest.raises(MediaDiskFullError) as caught:
                async with contextlib.aclosing(dl.download_many(reels)) as stream:
                    async for _ in stream:
                        pass
    assert caught.value.story_id
    assert "disk full" in str(caught.value)
    # Complete files stay; the file that hit the full disk left nothing behind.
    for path in files_under(tmp_path):
        assert not path.name.endswith(".part") or caught.value.story_id not in path.name


def _can_mount_tmpfs(target: Path) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


async def test_disk_full_on_a_tiny_filesystem(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if not _can_mount_tmpfs(small):
        pytest.skip("needs root to mount a 256 KiB tmpfs")
    try:
        async with media_emulator() as (emu, cdn):
            reels = await fetch_reels(emu, [f"t{i}" for i in range(15)])
            async with MediaDownloader(
                small, allowed_hosts=loopback(emu), concurrency=2, **FAST
            ) as dl:
                saved: list[MediaOutcome] = []
                with pytest.raises(MediaDiskFullError) as caught:
                    for target, reel in reels:
                        saved.extend(await dl.download_reel(target, reel))
            saved.extend(caught.value.outcomes)
            reported = {o.path: o.sha256 for o in saved if o.path is not None}
            assert reported
            cdn_sha = {
                item.id: cdn.expected_sha256(item.best_media_url or "")
                for _, reel in reels
                for item in reel.items
            }
            finished = [p for p in files_under(small) if not p.name.endswith(".part")]
            for path in finished:
                # Every final-name file is whole; one whose rename was under way when
                # the disk filled up is complete too, though cancelled before reporting.
                assert sha(path) == cdn_sha[path.stem.rpartition("_")[2]], path
                assert reported.get(path, sha(path)) == sha(path)
            assert set(reported) <= set(finished)
    finally:
        subprocess.run(["umount", str(small)], check=False)  # noqa: ASYNC221


# -- memory -------------------------------------------------------------------------------


async def test_large_file_streams_with_flat_memory(tmp_path: Path) -> None:
    size = 60 * 2**20
    async with media_emulator(sizes={"big": size}, chunk_size=256 * 1024) as (emu, cdn):
        url = cdn.url_for("big", "mp4", 720, 1280)
        reel = reel_of({"id": "big", "media_type": 2, "video_versions": [{"url": url}]})
        async with MediaDownloader(
            tmp_path, allowed_hosts=loopback(emu), fsync=False, **FAST
        ) as dl:
            tracemalloc.start()
            try:
                [outcome] = await dl.download_reel("big", reel)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        expected = cdn.expected_sha256(url)
    assert outcome.status is MediaStatus.SAVED, outcome.reason
    assert outcome.size == size and outcome.sha256 == expected
    # Server and client share this process: both must stream (a buffered copy is 60 MB).
    assert peak < 8 * 2**20, peak


# -- one rule, one place --------------------------------------------------------------------


def test_media_disk_full_error_is_in_the_tree_and_still_importable_from_media() -> None:
    assert MediaDiskFullError is keyapi_async.MediaDiskFullError
    assert issubclass(MediaDiskFullError, keyapi_async.KeyAPIError)
    assert "MediaDiskFullError" in keyapi_async.__all__


async def test_the_rendition_downloaded_is_the_models_one_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever StoryItem.best_rendition says is the file, the downloader fetches:
    # here it is told to take the smallest image, which no copy of the rule would pick.
    def smallest(self: StoryItem) -> ImageCandidate | None:
        images = self.image_versions.items if self.image_versions else ()
        return min(images, key=lambda c: c.width * c.height, default=None)

    async with media_emulator() as (emu, cdn):
        reels = await fetch_reels(emu, [f"pics{n}" for n in range(6)])
        images = [(t, i) for t, reel in reels for i in reel.items if not i.is_video_media]
        assert images
        monkeypatch.setattr(StoryItem, "best_rendition", property(smallest))
        async with MediaDownloader(tmp_path, allowed_hosts=loopback(emu), **FAST) as dl:
            outcomes = [await dl.download_item(item, target=target) for target, item in images]
    small = min(IMAGE_RENDITIONS, key=lambda wh: wh[0] * wh[1])
    for outcome in outcomes:
        assert outcome.status is MediaStatus.SAVED, outcome.reason
        assert (outcome.width, outcome.height) == small
        assert outcome.url is not None and outcome.sha256 == cdn.expected_sha256(outcome.url)


async def test_retry_after_as_an_http_date_is_honoured(tmp_path: Path) -> None:
    body = b"\xff\xd8 not really a jpeg \xff\xd9"
    seen: list[float] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        if len(seen) == 1:
            # An HTTP date 2 s ahead: a wait of 1-2 s once rounded to the second.
            when = email.utils.formatdate(time.time() + 2, usegmt=True)
            return web.Response(status=503, headers={"Retry-After": when})
        return web.Response(body=body, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/m/{name}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        reel = reel_of(image_item("dated", f"http://127.0.0.1:{port}/m/dated.jpg"))
        async with MediaDownloader(
            tmp_path, allowed_hosts=[f"127.0.0.1:{port}"], backoff_base=0.01, backoff_cap=30
        ) as dl:
            [outcome] = await asyncio.wait_for(dl.download_reel("t", reel), 30)
    finally:
        await runner.cleanup()
    assert outcome.status is MediaStatus.SAVED, outcome.reason
    assert outcome.attempts == 2 and len(seen) == 2
    # The old whole-seconds-only reading ignored the date and waited ~10 ms.
    assert seen[1] - seen[0] >= 0.9


def test_media_waits_by_the_engines_rules() -> None:
    headers = CIMultiDict({"Retry-After": "1.5"})
    verdict = plan.judge(503, headers, offset=0, max_bytes=100)
    assert verdict == plan.Retry("HTTP 503", wait=1.5)  # not only whole seconds
    ms = plan.judge(429, CIMultiDict({"retry-after-ms": "250"}), offset=0, max_bytes=100)
    assert ms == plan.Retry("HTTP 429", wait=0.25)
    dated = email.utils.formatdate(time.time() + 60, usegmt=True)
    later = plan.judge(503, CIMultiDict({"Retry-After": dated}), offset=0, max_bytes=100)
    assert isinstance(later, plan.Retry) and later.wait is not None and 50 < later.wait <= 60
    for attempt in (1, 3, 70):  # the engine's clamp: no overflow at huge attempt numbers
        expected = backoff_delay(attempt, base=0.5, cap=10.0, rand=lambda: 0.75)
        assert plan.retry_wait(attempt, None, base=0.5, cap=10.0, rand=lambda: 0.75) == expected
    assert plan.retry_wait(1, 4.0, base=0.5, cap=10.0, rand=lambda: 0.5) == 4.0
    assert plan.retry_wait(1, 99.0, base=0.5, cap=10.0, rand=lambda: 0.5) == 10.0


def test_judge_turns_status_and_headers_into_one_decision() -> None:
    def judge(status: int, offset: int = 0, **headers: str) -> plan.Verdict:
        named = CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
        return plan.judge(status, named, offset=offset, max_bytes=1000)

    assert judge(302, Location="/x") == plan.Redirect("/x")
    assert judge(301) == plan.GiveUp(MediaStatus.FAILED, "HTTP 301 without Location")
    assert judge(403) == plan.Expired(403) and judge(410) == plan.Expired(410)
    assert judge(404) == plan.GiveUp(MediaStatus.FAILED, "HTTP 404")
    assert judge(416) == plan.GiveUp(MediaStatus.FAILED, "HTTP 416")  # nothing to resume
    assert judge(416, 40, Content_Range="bytes */40") == plan.Adopt(40)
    restart = judge(416, 40, Content_Range="bytes */90")
    assert isinstance(restart, plan.Retry) and restart.restart
    assert judge(500) == plan.Retry("HTTP 500")
    assert judge(200, 40, Content_Length="90") == plan.Receive(0, 90)  # starts over
    assert judge(206, 40, Content_Length="50", Content_Range="bytes 40-89/90") == plan.Receive(
        40, 50
    )
    moved = judge(206, 40, Content_Range="bytes 10-89/90")
    assert isinstance(moved, plan.Retry) and moved.restart
    encoded = judge(200, Content_Length="90", Content_Encoding="gzip")
    assert encoded == plan.Receive(0, None)  # the header counts encoded bytes
    big = judge(200, Content_Length="1001")
    assert big == plan.GiveUp(
        MediaStatus.FAILED, "file is 1001 bytes, over max_bytes=1000", discard=True
    )
    assert plan.request_headers(0) == {"Accept-Encoding": "identity"}
    assert plan.request_headers(7)["Range"] == "bytes=7-"
