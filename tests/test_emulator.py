"""Tests of keyapi_async.testing: a real aiohttp server talked to over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import astuple, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from keyapi_async.testing import (
    DEFAULT_TEST_KEY,
    Emulator,
    EmulatorConfig,
    Fault,
    RequestRecord,
    run_emulator,
)

ENDPOINT = "/v1/instagram/fetch_user_stories"
REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = json.loads((Path(__file__).parent / "data" / "seed_example.json").read_text("utf-8"))
SEED_ITEM_OPTIONAL = {"story_comments", "reel_mentions", "story_hashtags"}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def fetch(
    session: aiohttp.ClientSession,
    emu: Emulator,
    *,
    key: str | None = DEFAULT_TEST_KEY,
    auth: str | None = None,
    **params: str,
) -> tuple[int, Any, bytes]:
    headers = {}
    if auth is not None:
        headers["Authorization"] = auth
    elif key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with session.get(emu.base_url + ENDPOINT, params=params, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


def without_request_id(body: bytes) -> bytes:
    head, sep, _ = body.rpartition(b',"requestId":')
    assert sep, body[-80:]
    return head


def reel(body: bytes) -> Any:
    return json.loads(body)["data"]["data"]


def error_body(body: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(body)
    assert isinstance(decoded.pop("requestId"), str)
    return decoded


async def first_non_empty(session: aiohttp.ClientSession, emu: Emulator) -> tuple[str, bytes]:
    for i in range(50):
        status, _, body = await fetch(session, emu, username=f"shape{i}")
        assert status == 200
        data = reel(body)
        if data and data["items"]:
            return f"shape{i}", body
    raise AssertionError("no non-empty target among 50")


# -- success bodies -----------------------------------------------------------------


async def test_success_body_matches_seed_shape(session: aiohttp.ClientSession) -> None:
    async with run_emulator() as emu:
        assert emu.base_url.startswith("http://127.0.0.1:")
        _, body = await first_non_empty(session, emu)
        decoded = json.loads(body)
        assert list(decoded) == ["code", "message", "data", "requestId"]
        assert (decoded["code"], decoded["message"]) == (0, "success")
        assert isinstance(decoded["requestId"], str)
        assert len(decoded["requestId"]) == 36
        assert set(decoded["data"]) == {"data"}
        data = decoded["data"]["data"]
        seed_data = SEED["data"]["data"]
        assert set(data) == set(seed_data)
        assert set(data["additional_data"]) == set(seed_data["additional_data"])
        assert set(data["additional_data"]["user"]) == set(seed_data["additional_data"]["user"])
        assert data["count"] == len(data["items"]) >= 1
        seed_item_keys = set(seed_data["items"][0]) - SEED_ITEM_OPTIONAL
        for item in data["items"]:
            assert seed_item_keys <= set(item)
            assert item["expiring_at"] == item["taken_at"] + 86400
            assert isinstance(item["id"], str)
            assert item["id"].isdigit()
            assert set(item["owner"]) == set(seed_data["items"][0]["owner"])
        latest = data["items"][-1]["taken_at"]
        assert data["additional_data"]["latest_reel_media"] == latest
        # Synthetic URLs must never point at real hosts.
        urls = [part.split('"')[0] for part in body.decode().split('"https://')[1:]]
        assert urls
        assert all(u.startswith("scontent.example.invalid/") for u in urls)
        # A seed-sized body: items carry the seed's bulk (signed URLs, owner copies).
        assert len(body) > 5000 * len(data["items"])


async def test_same_target_is_deterministic_apart_from_request_id(
    session: aiohttp.ClientSession,
) -> None:
    async with run_emulator() as emu:
        _, _, first = await fetch(session, emu, username="javan")
        _, _, second = await fetch(session, emu, username="javan")
    async with run_emulator() as other:
        _, _, third = await fetch(session, other, username="javan")
    assert first != second
    assert json.loads(first)["requestId"] != json.loads(second)["requestId"]
    assert without_request_id(first) == without_request_id(second) == without_request_id(third)
    # Request ids are seeded too, so a fresh emulator repeats the sequence.
    assert json.loads(first)["requestId"] == json.loads(third)["requestId"]


async def test_different_targets_differ(session: aiohttp.ClientSession) -> None:
    async with run_emulator(EmulatorConfig(empty_ratio=0.0)) as emu:
        _, _, a = await fetch(session, emu, username="alice")
        _, _, b = await fetch(session, emu, username="bob")
        _, _, c = await fetch(session, emu, user_id="18527")
    assert without_request_id(a) != without_request_id(b)
    user_a = reel(a)["additional_data"]["user"]
    assert user_a["username"] == "alice"
    assert user_a["id"].isdigit()
    user_c = reel(c)["additional_data"]["user"]
    assert (user_c["id"], user_c["username"]) == ("18527", "user_18527")
    assert reel(c)["additional_data"]["id"] == "18527"


async def test_seed_changes_content() -> None:
    assert Emulator(EmulatorConfig(seed=1)).reel_for("username:javan") != Emulator(
        EmulatorConfig(seed=2)
    ).reel_for("username:javan")


async def test_population_has_empty_targets_videos_hashtags_and_mentions(
    session: aiohttp.ClientSession,
) -> None:
    async with run_emulator() as emu:
        bodies = [(await fetch(session, emu, username=f"pop{i}"))[2] for i in range(50)]
    reels = [reel(b) for b in bodies]
    null_reels = sum(r is None for r in reels)
    zero_item_reels = sum(r is not None and r["count"] == 0 and r["items"] == [] for r in reels)
    assert null_reels >= 1
    assert zero_item_reels >= 1
    assert 3 <= null_reels + zero_item_reels <= 20  # ~20% of 50
    items = [item for r in reels if r for item in r["items"]]
    assert all(0 < r["count"] <= 5 for r in reels if r and r["items"])
    videos = [i for i in items if i["media_type"] == 2]
    images = [i for i in items if i["media_type"] == 1]
    assert videos
    assert images
    for video in videos:
        assert video["is_video"] is True
        assert isinstance(video["video_duration"], float)
        assert isinstance(video["has_audio"], bool)
        for version in video["video_versions"]:
            assert set(version) == {"type", "width", "height", "url", "id"}
            assert isinstance(version["id"], str)
    for image in images:
        candidates = image["image_versions"]["items"]
        assert len(candidates) == 2
        assert candidates[0]["width"] != candidates[1]["width"]
    hashtags = [h for i in items for h in i.get("story_hashtags", [])]
    mentions = [m for i in items for m in i.get("reel_mentions", [])]
    comments = [c for i in items for c in i.get("story_comments", [])]
    assert hashtags
    assert mentions
    assert comments
    assert {"x", "y", "width", "height", "rotation", "start_time_ms", "end_time_ms"} <= set(
        hashtags[0]
    )
    assert set(hashtags[0]["hashtag"]) == {"id", "name"}
    assert mentions[0]["display_type"] == "mention_username"
    assert set(mentions[0]["user"]) == {
        "id",
        "username",
        "full_name",
        "is_private",
        "is_verified",
        "profile_pic_id",
        "profile_pic_url",
    }


# -- errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "auth", "message"),
    [
        (None, None, "apiKey is null"),
        (None, "Token sk_test_emulator_key", "apiKey is null"),
        (None, "Bearer ", "apiKey is null"),
        ("sk_live_wrong", None, "apiKey is invalid"),
    ],
)
async def test_auth_errors(
    session: aiohttp.ClientSession, key: str | None, auth: str | None, message: str
) -> None:
    async with run_emulator() as emu:
        status, headers, body = await fetch(session, emu, key=key, auth=auth, username="javan")
    assert status == 401
    assert headers["Content-Type"] == "application/json"
    assert error_body(body) == {"code": 401, "data": None, "message": message}
    assert [(r.status, r.authorized) for r in emu.log] == [(401, False)]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "Missing required parameter: handle"),
        ({"username": ""}, "Missing required parameter: handle"),
        ({"username": "javan", "user_id": "18527"}, "Only one of username or user_id may be given"),
        ({"user_id": "12ab"}, "Invalid parameter: user_id"),
    ],
)
async def test_parameter_errors(
    session: aiohttp.ClientSession, params: dict[str, str], message: str
) -> None:
    async with run_emulator() as emu:
        status, _, body = await fetch(session, emu, **params)
        assert status == 400
        assert error_body(body) == {"code": 400, "data": None, "message": message}
        # Authentication is checked before parameters.
        status, _, body = await fetch(session, emu, key=None, **params)
        assert status == 401


async def test_other_paths_are_404(session: aiohttp.ClientSession) -> None:
    async with run_emulator() as emu:
        async with session.get(emu.base_url + "/v1/instagram/other") as resp:
            assert resp.status == 404
        assert emu.log == []


# -- QPS window and credits ---------------------------------------------------------


async def test_qps_window_accepts_exactly_qps_then_429_with_retry_after(
    session: aiohttp.ClientSession,
) -> None:
    async with run_emulator(EmulatorConfig(qps=5)) as emu:
        results = await asyncio.gather(
            *(fetch(session, emu, username=f"burst{i}") for i in range(8))
        )
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200] * 5 + [429] * 3
        for status, headers, body in results:
            if status == 429:
                assert int(headers["Retry-After"]) >= 1
                assert error_body(body) == {
                    "code": 429,
                    "data": None,
                    "message": "qps limit exceeded",
                }
            else:
                assert "Retry-After" not in headers
        assert emu.max_in_window() == 8
        assert emu.count(status=429) == 3
        assert emu.count(status=200, body_code=0) == 5

        # Strictly sliding: once a second has passed the slots are free again.
        await asyncio.sleep(1.05)
        status, _, _ = await fetch(session, emu, username="later")
        assert status == 200


async def test_qps_429_without_retry_after_when_disabled(session: aiohttp.ClientSession) -> None:
    async with run_emulator(EmulatorConfig(qps=2, retry_after=False)) as emu:
        results = await asyncio.gather(*(fetch(session, emu, username="x") for _ in range(4)))
    rejected = [headers for status, headers, _ in results if status == 429]
    assert len(rejected) == 2
    assert all("Retry-After" not in headers for headers in rejected)


async def test_credits_two_successes_then_402(session: aiohttp.ClientSession) -> None:
    async with run_emulator(EmulatorConfig(credits=4)) as emu:
        statuses = [(await fetch(session, emu, username="javan"))[0] for _ in range(2)]
        status, _, body = await fetch(session, emu, username="javan")
        assert statuses == [200, 200]
        assert status == 402
        assert error_body(body) == {
            "code": 402,
            "data": None,
            "message": "apiKey quota is not enough",
        }
        assert (emu.credits_remaining, emu.credits_spent) == (0, 4)
        # Topping up through a new config restores service.
        emu.config = replace(emu.config, credits=2)
        assert (await fetch(session, emu, username="javan"))[0] == 200
        assert emu.credits_remaining == 0


async def test_faulted_requests_cost_no_credits_but_count_in_window(
    session: aiohttp.ClientSession,
) -> None:
    config = EmulatorConfig(credits=2, qps=2, fault_script={"username:javan": [Fault.SERVER_ERROR]})
    async with run_emulator(config) as emu:
        first = await fetch(session, emu, username="javan")
        second = await fetch(session, emu, username="javan")
        third = await fetch(session, emu, username="javan")
    assert [first[0], second[0], third[0]] == [500, 200, 429]
    assert emu.credits_spent == 2


# -- faults -------------------------------------------------------------------------


async def test_each_scripted_fault_has_its_documented_effect(
    session: aiohttp.ClientSession,
) -> None:
    script = {f"username:{fault.value}": [fault] for fault in Fault}
    async with run_emulator(EmulatorConfig(fault_script=script, slow_seconds=0.2)) as emu:

        async def get(fault: Fault) -> tuple[int, Any, bytes]:
            return await fetch(session, emu, username=fault.value)

        status, headers, body = await get(Fault.SERVER_ERROR)
        assert status == 500
        assert error_body(body) == {"code": 500, "data": None, "message": "Internal server error"}

        status, headers, body = await get(Fault.BAD_GATEWAY_HTML)
        assert status == 502
        assert headers["Content-Type"].startswith("text/html")
        assert b"502 Bad Gateway" in body
        assert b"nginx" in body

        status, _, body = await get(Fault.ERROR_CODE_200)
        assert status == 200
        assert error_body(body) == {"code": 500, "data": None, "message": "Internal server error"}

        status, _, body = await get(Fault.RATE_LIMIT_200)
        assert status == 200
        assert error_body(body) == {"code": 429, "data": None, "message": "qps limit exceeded"}

        status, headers, body = await get(Fault.RATE_LIMIT)
        assert status == 429
        assert int(headers["Retry-After"]) >= 1
        assert error_body(body)["message"] == "qps limit exceeded"

        status, headers, body = await get(Fault.TRUNCATED)
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert int(headers["Content-Length"]) == len(body) > 0
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
        assert body.startswith(b'{"code":0,"message":"success"')

        status, headers, body = await get(Fault.EMPTY)
        assert (status, body) == (200, b"")
        assert headers["Content-Type"] == "application/json"

        async with session.get(
            emu.base_url + ENDPOINT,
            params={"username": Fault.RESET.value},
            headers={"Authorization": f"Bearer {DEFAULT_TEST_KEY}"},
        ) as resp:
            assert resp.status == 200
            with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
                await resp.read()

        started = time.monotonic()
        status, _, body = await get(Fault.SLOW)
        assert time.monotonic() - started >= 0.2
        assert status == 200
        assert json.loads(body)["code"] == 0

        # Scripts run out after one entry: every target now answers normally.
        for fault in Fault:
            status, _, body = await get(fault)
            assert status == 200
            assert json.loads(body)["code"] == 0

        for fault in Fault:
            (record, *_) = emu.records_for(f"username:{fault.value}")
            assert record.fault is fault
        assert emu.count(fault=Fault.RESET) == 1
        assert [r.status for r in emu.records_for("username:reset")] == [0, 200]
        assert emu.successful_targets()["username:slow"] == 2
        assert emu.successful_targets()["username:reset"] == 1


async def test_fault_rates_follow_the_configured_shares(session: aiohttp.ClientSession) -> None:
    config = EmulatorConfig(
        fault_rates={Fault.SERVER_ERROR: 0.25, Fault.RATE_LIMIT_200: 0.1}, seed=7
    )

    async def run() -> list[Fault | None]:
        async with run_emulator(config) as emu:
            for i in range(200):
                await fetch(session, emu, username=f"r{i % 20}")
        return [r.fault for r in emu.log]

    faults = await run()
    assert 25 <= faults.count(Fault.SERVER_ERROR) <= 80
    assert 5 <= faults.count(Fault.RATE_LIMIT_200) <= 40
    assert 80 <= faults.count(None) <= 170
    assert set(faults) == {None, Fault.SERVER_ERROR, Fault.RATE_LIMIT_200}
    # Same seed, same sequence.
    assert await run() == faults


async def test_runtime_config_change_applies_to_next_request(
    session: aiohttp.ClientSession,
) -> None:
    async with run_emulator() as emu:
        assert (await fetch(session, emu, username="a"))[0] == 200
        emu.config = replace(emu.config, fault_rates={Fault.SERVER_ERROR: 1.0})
        assert (await fetch(session, emu, username="a"))[0] == 500
        emu.config = replace(emu.config, fault_rates={})
        assert (await fetch(session, emu, username="a"))[0] == 200


# -- request log --------------------------------------------------------------------


async def test_request_log_never_contains_the_key(session: aiohttp.ClientSession) -> None:
    good, bad = "sk_test_secret_marker_1234", "sk_live_other_marker_5678"
    async with run_emulator(EmulatorConfig(api_keys=frozenset({good}))) as emu:
        assert (await fetch(session, emu, key=good, username="javan"))[0] == 200
        assert (await fetch(session, emu, key=bad, username="javan"))[0] == 401
        assert (await fetch(session, emu, key=good, user_id="1"))[0] == 200
    assert len(emu.log) == 3
    assert [r.authorized for r in emu.log] == [True, False, True]
    assert [r.seq for r in emu.log] == [1, 2, 3]
    for text in (repr(emu.log), *(repr(astuple(r)) for r in emu.log), repr(vars(emu))):
        assert good not in text
        assert bad not in text
        assert "marker" not in text


def test_max_in_window_is_half_open() -> None:
    emu = Emulator()
    emu.log.extend(
        RequestRecord(
            seq=i,
            time=t,
            username="a",
            user_id=None,
            status=200,
            body_code=0,
            fault=None,
            authorized=True,
        )
        for i, t in enumerate([10.0, 10.5, 11.0, 11.5, 11.6], start=1)
    )
    assert emu.max_in_window(1.0) == 3  # [10.5, 11.5) holds 10.5 and 11.0; [11.0, 12.0) holds 3
    assert emu.max_in_window(0.5) == 2
    assert emu.log[0].target == "username:a"


async def test_max_log_bounds_the_log_but_not_the_counters(
    session: aiohttp.ClientSession,
) -> None:
    async with run_emulator(max_log=10) as emu:
        for i in range(30):
            await fetch(session, emu, username=f"m{i}")
    assert len(emu.log) <= 10
    assert emu.log[-1].seq == 30
    assert emu.requests_total == emu.count() == emu.count(status=200, body_code=0) == 30
    assert sum(emu.successful_targets().values()) == 30


# -- configuration validation -------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"qps": 0}, "qps"),
        ({"qps": -1.0}, "qps"),
        ({"credits": -2}, "credits"),
        ({"fault_rates": {Fault.EMPTY: 0.7, Fault.RESET: 0.4}}, "fault_rates"),
        ({"fault_rates": {"nonsense": 0.1}}, "fault_rates"),
        ({"fault_script": {"javan": [Fault.EMPTY]}}, "fault_script"),
        ({"api_keys": frozenset()}, "api_keys"),
        ({"api_keys": "sk_test_emulator_key"}, "api_keys"),
        ({"latency": -0.1}, "latency"),
        ({"slow_seconds": float("nan")}, "slow_seconds"),
        ({"empty_ratio": 1.5}, "empty_ratio"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        EmulatorConfig(**kwargs)


def test_config_accepts_fault_names_as_strings() -> None:
    config = EmulatorConfig(
        fault_rates={"server_error": 0.5},  # type: ignore[dict-item]
        fault_script={"user_id:1": ["empty", Fault.RESET]},  # type: ignore[list-item]
    )
    assert dict(config.fault_rates) == {Fault.SERVER_ERROR: 0.5}
    assert tuple(config.fault_script["user_id:1"]) == (Fault.EMPTY, Fault.RESET)


async def test_refuses_non_loopback_host() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        async with run_emulator(host="0.0.0.0"):
            pass


# -- command line -------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_command_line_serves_until_signalled(
    session: aiohttp.ClientSession, signum: signal.Signals
) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # A different hash seed than ours shows the bodies do not depend on hash().
    env["PYTHONHASHSEED"] = "12345"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "keyapi_async.testing",
        "--port",
        "0",
        "--qps",
        "50",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=10)).decode()
        assert line.startswith("KEYAPI_BASE_URL=http://127.0.0.1:")
        assert line.endswith("\n")
        base_url = line.strip().split("=", 1)[1]
        async with session.get(
            base_url + ENDPOINT,
            params={"username": "javan"},
            headers={"Authorization": f"Bearer {DEFAULT_TEST_KEY}"},
        ) as resp:
            assert resp.status == 200
            body = await resp.read()
        async with run_emulator() as local:
            _, _, local_body = await fetch(session, local, username="javan")
        assert without_request_id(body) == without_request_id(local_body)

        proc.send_signal(signum)
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 0
        assert stdout == b""  # exactly one line in total
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
