"""Tests of keyapi_async.testing: a real aiohttp server talked to over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import astuple, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from keyapi_async import Target, TransportError
from keyapi_async.engine.sansio import Request, RequestBuilder
from keyapi_async.testing import (
    BILLED_FAULTS,
    DEFAULT_TEST_KEY,
    Answer,
    Emulator,
    EmulatorConfig,
    EmulatorTransport,
    Fault,
    RequestRecord,
    run_emulator,
)

from .virtual_clock import run_virtual

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


async def check_hostile_faults(get: Callable[[Fault], Awaitable[tuple[int, Any, bytes]]]) -> None:
    """The hostile answers, each once (the caller scripts one of each per target)."""
    status, headers, body = await get(Fault.NON_UTF8)
    assert status == 200
    assert b"\xff" in body
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    assert json.loads(body.decode("utf-8", errors="replace"))["code"] == 0

    status, headers, body = await get(Fault.SERVER_ERROR_LATIN1)
    assert status == 500
    assert headers["Content-Type"] == "application/json; charset=iso-8859-1"
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    latin1 = json.loads(body.decode("latin-1"))
    assert latin1["code"] == 500
    assert "délai" in latin1["message"]

    status, _, body = await get(Fault.SCHEMA_DRIFT)
    assert status == 200
    drifted = json.loads(body)
    assert drifted["code"] == 0
    items = drifted["data"]["data"]["items"]
    assert items
    assert all(isinstance(item["id"], int) for item in items)

    status, _, body = await get(Fault.COUNT_WITHOUT_ITEMS)
    assert status == 200
    reel = json.loads(body)["data"]["data"]
    assert reel["count"] == 3
    assert "items" not in reel

    status, headers, body = await get(Fault.SERVICE_UNAVAILABLE)
    assert status == 503
    assert headers["Retry-After"] == "2"
    assert error_body(body) == {
        "code": 503,
        "data": None,
        "message": "Service temporarily unavailable",
    }


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

        await check_hostile_faults(get)

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
        ({"latency_jitter": -1.0}, "latency_jitter"),
        ({"latency_jitter": float("inf")}, "latency_jitter"),
        ({"forbidden_keys": "sk_test_x"}, "forbidden_keys"),
        ({"forbidden_keys": frozenset({"has space"})}, "forbidden_keys"),
        ({"missing_accounts": frozenset({"ghost"})}, "missing_accounts"),
        ({"missing_accounts": "username:ghost"}, "missing_accounts"),
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


# -- hostile answers, 403 and 404 ----------------------------------------------------


async def test_billed_hostile_faults_cost_credits_like_a_success(
    session: aiohttp.ClientSession,
) -> None:
    hostile = [
        Fault.NON_UTF8,
        Fault.SERVER_ERROR_LATIN1,
        Fault.SCHEMA_DRIFT,
        Fault.COUNT_WITHOUT_ITEMS,
        Fault.SERVICE_UNAVAILABLE,
    ]
    script = {f"username:{fault.value}": [fault] for fault in hostile}
    async with run_emulator(EmulatorConfig(fault_script=script, credits=100)) as emu:
        for fault in hostile:
            await fetch(session, emu, username=fault.value)
    billed = {Fault.NON_UTF8, Fault.SCHEMA_DRIFT, Fault.COUNT_WITHOUT_ITEMS}
    assert billed < BILLED_FAULTS
    assert emu.credits_spent == 2 * len(billed)
    assert emu.credits_remaining == 100 - 2 * len(billed)
    # They said code 0, so they are logged as such, but they are not successes.
    assert emu.count(status=200, body_code=0) == len(billed)
    assert not emu.successful_targets()
    assert [(r.status, r.body_code, r.fault) for r in emu.log] == [
        (200, 0, Fault.NON_UTF8),
        (500, 500, Fault.SERVER_ERROR_LATIN1),
        (200, 0, Fault.SCHEMA_DRIFT),
        (200, 0, Fault.COUNT_WITHOUT_ITEMS),
        (503, 503, Fault.SERVICE_UNAVAILABLE),
    ]
    for fault in hostile:
        assert emu.count(fault=fault) == 1


async def test_billed_faults_need_credits_like_a_success(session: aiohttp.ClientSession) -> None:
    config = EmulatorConfig(fault_script={"username:a": [Fault.SCHEMA_DRIFT]}, credits=1)
    async with run_emulator(config) as emu:
        status, _, body = await fetch(session, emu, username="a")
    assert (status, json.loads(body)["code"]) == (402, 402)
    assert emu.credits_spent == 0


async def test_schema_drift_and_count_without_items_on_an_empty_target(
    session: aiohttp.ClientSession,
) -> None:
    # empty_ratio=1: every reel is empty, yet the hostile shape must still show.
    script = {"username:e1": [Fault.SCHEMA_DRIFT], "username:e2": [Fault.COUNT_WITHOUT_ITEMS]}
    async with run_emulator(EmulatorConfig(fault_script=script, empty_ratio=1.0)) as emu:
        _, _, drift = await fetch(session, emu, username="e1")
        _, _, counted = await fetch(session, emu, username="e2")
    assert [type(item["id"]) for item in reel(drift)["items"]] == [int]
    assert reel(counted)["count"] == 3
    assert "items" not in reel(counted)


async def test_non_utf8_lands_in_a_modelled_string_for_an_empty_target(
    session: aiohttp.ClientSession,
) -> None:
    script = {f"username:n{i}": [Fault.NON_UTF8] for i in range(12)}
    async with run_emulator(EmulatorConfig(fault_script=script, empty_ratio=0.5)) as emu:
        for i in range(12):
            _, _, body = await fetch(session, emu, username=f"n{i}")
            assert b'"full_name":"\xff' in body or b'"message":"succ\xffss"' in body
    assert emu.credits_spent == 24


async def test_forbidden_key_gets_403_before_anything_else(session: aiohttp.ClientSession) -> None:
    good, denied = "sk_test_good_1", "sk_test_denied_2"
    config = EmulatorConfig(
        api_keys=frozenset({good}), forbidden_keys=frozenset({denied}), qps=1, credits=10
    )
    async with run_emulator(config) as emu:
        status, _, body = await fetch(session, emu, key=denied, username="javan")
        assert status == 403
        assert error_body(body) == {
            "code": 403,
            "data": None,
            "message": "apiKey has no permission for this endpoint",
        }
        # Even without a handle: permission is checked before parameters.
        assert (await fetch(session, emu, key=denied))[0] == 403
        # Neither entered the QPS window nor cost credits.
        assert (await fetch(session, emu, key=good, username="javan"))[0] == 200
    assert [(r.status, r.authorized) for r in emu.log] == [(403, True), (403, True), (200, True)]
    assert emu.count(status=403, body_code=403) == 2
    assert emu.credits_spent == 2
    assert denied not in repr(config)
    assert denied not in repr(emu.log)


async def test_missing_accounts_get_404(session: aiohttp.ClientSession) -> None:
    config = EmulatorConfig(
        missing_accounts=frozenset({"username:ghost", "user_id:404"}),
        fault_script={"username:ghost": [Fault.SERVER_ERROR]},
        credits=100,
    )
    async with run_emulator(config) as emu:
        for params in ({"username": "ghost"}, {"user_id": "404"}, {"username": "missing_bob"}):
            status, _, body = await fetch(session, emu, **params)
            assert status == 404, params
            assert error_body(body) == {"code": 404, "data": None, "message": "user not found"}
        assert (await fetch(session, emu, username="bob"))[0] == 200
        assert (await fetch(session, emu, user_id="405"))[0] == 200
    assert emu.count(status=404) == 3
    assert emu.credits_spent == 4  # 404s are free
    assert [r.fault for r in emu.log] == [None] * 5  # no fault applies to a missing account


async def test_no_credits_is_402_before_404(session: aiohttp.ClientSession) -> None:
    async with run_emulator(EmulatorConfig(credits=0)) as emu:
        assert (await fetch(session, emu, username="missing_x"))[0] == 402


async def test_missing_accounts_enter_the_qps_window(session: aiohttp.ClientSession) -> None:
    async with run_emulator(EmulatorConfig(qps=1)) as emu:
        assert (await fetch(session, emu, username="missing_x"))[0] == 404
        assert (await fetch(session, emu, username="javan"))[0] == 429


# -- the loop's clock, latency jitter and the in-memory transport ---------------------


def _request(path_user: str, key: str = DEFAULT_TEST_KEY, base: str = "http://emu.invalid") -> Any:
    builder = RequestBuilder(base_url=base, api_key=key, user_agent="test/1")
    return builder.build(Target.username(path_user))


def test_decide_runs_without_a_loop_and_returns_the_delay() -> None:
    emu = Emulator(EmulatorConfig(latency=0.25, fault_script={"username:s": [Fault.SLOW]}))
    answer = emu.decide({"username": "s"}, f"Bearer {DEFAULT_TEST_KEY}")
    assert isinstance(answer, Answer)
    assert (answer.status, answer.body_code, answer.fault) == (200, 0, Fault.SLOW)
    assert answer.delay == pytest.approx(0.25 + 2.0)
    assert emu.decide({"username": "s"}, None).status == 401
    assert emu.requests_total == 2


def test_the_emulator_runs_on_the_loops_clock() -> None:
    emu = Emulator(EmulatorConfig(qps=2, latency=1.5))
    transport = EmulatorTransport(emu)

    async def main() -> list[tuple[int, float, float]]:
        loop = asyncio.get_running_loop()
        out = []
        for _ in range(3):
            sent = loop.time()
            response = await transport.send(_request("javan"))
            out.append((response.status, sent, loop.time()))
        await asyncio.sleep(10.0)
        response = await transport.send(_request("javan"))
        out.append((response.status, 0.0, loop.time()))
        await transport.aclose()
        return out

    results = run_virtual(main)
    # Sequential sends 1.5 s apart: all three fit the 2-per-second window.
    assert [status for status, _, _ in results] == [200, 200, 200, 200]
    for _, sent, done in results[:3]:
        assert done - sent == pytest.approx(1.5, abs=1e-3)
    # The log holds the virtual arrival times, not wall-clock ones.
    assert [r.time for r in emu.log[:3]] == pytest.approx([0.0, 1.5, 3.0], abs=1e-3)
    assert emu.log[3].time == pytest.approx(14.5, abs=1e-3)


def test_the_qps_window_on_a_virtual_clock() -> None:
    emu = Emulator(EmulatorConfig(qps=2))
    transport = EmulatorTransport(emu)

    async def main() -> list[int]:
        statuses = [
            r.status
            for r in await asyncio.gather(*(transport.send(_request(f"q{i}")) for i in range(3)))
        ]
        await asyncio.sleep(1.0)
        statuses.append((await transport.send(_request("q3"))).status)
        return statuses

    assert run_virtual(main) == [200, 200, 429, 200]
    assert emu.max_in_window(1.0) == 3


def test_latency_jitter_is_uniform_bounded_and_seeded() -> None:
    def delays(seed: int) -> list[float]:
        emu = Emulator(EmulatorConfig(latency=0.5, latency_jitter=0.3, seed=seed))
        transport = EmulatorTransport(emu)

        async def main() -> list[float]:
            loop = asyncio.get_running_loop()
            out = []
            for i in range(40):
                start = loop.time()
                await transport.send(_request(f"j{i}"))
                out.append(loop.time() - start)
            return out

        return run_virtual(main)

    first = delays(3)
    assert all(0.5 - 1e-3 <= d <= 0.8 + 1e-3 for d in first)
    assert max(first) - min(first) > 0.1  # it does vary
    assert delays(3) == first
    assert delays(4) != first


async def test_transport_answers_byte_for_byte_like_http(session: aiohttp.ClientSession) -> None:
    config = EmulatorConfig(seed=11, fault_script={"username:b": [Fault.SERVICE_UNAVAILABLE]})
    async with run_emulator(config) as emu:
        over_http = [await fetch(session, emu, username=name) for name in ("javan", "b")]
    memory = EmulatorTransport(Emulator(config))
    in_memory = [await memory.send(_request(name)) for name in ("javan", "b")]
    await memory.aclose()
    for (status, headers, body), answer in zip(over_http, in_memory, strict=True):
        assert answer.status == status
        assert answer.body == body
        assert answer.headers["content-type"] == headers["Content-Type"]
        assert int(answer.headers["Content-Length"]) == len(body)
    assert in_memory[1].headers["retry-after"] == "2"


async def test_transport_faults_reset_truncated_and_closed() -> None:
    script = {"username:r": [Fault.RESET], "username:t": [Fault.TRUNCATED]}
    emu = Emulator(EmulatorConfig(fault_script=script))
    transport = EmulatorTransport(emu)
    with pytest.raises(TransportError, match="connection reset") as info:
        await transport.send(_request("r"), target="r")
    assert info.value.target == "r"
    truncated = await transport.send(_request("t"))
    assert truncated.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(truncated.body)
    full = await transport.send(_request("t"))
    assert len(truncated.body) == len(full.body) // 2
    assert [r.status for r in emu.log] == [0, 200, 200]
    await transport.aclose()
    with pytest.raises(TransportError, match="closed"):
        await transport.send(_request("t"))
    assert repr(transport) == "EmulatorTransport(closed=True)"


async def test_transport_paths_methods_and_auth() -> None:
    emu = Emulator()
    transport = EmulatorTransport(emu)
    wrong_path = await transport.send(_request("javan", base="http://emu.invalid/prefix"))
    assert (wrong_path.status, wrong_path.body) == (404, b"404: Not Found")
    post = Request("POST", _request("javan").url, _request("javan").headers)
    assert (await transport.send(post)).status == 405
    assert emu.requests_total == 0  # like aiohttp's router: never reached the emulator
    lower = Request("GET", _request("javan").url, {"authorization": f"Bearer {DEFAULT_TEST_KEY}"})
    assert (await transport.send(lower)).status == 200
    assert (await transport.send(_request("javan", key="sk_test_wrong"))).status == 401
    repeated = Request(
        "GET",
        "http://emu.invalid/v1/instagram/fetch_user_stories?username=a&username=b",
        {"Authorization": f"Bearer {DEFAULT_TEST_KEY}"},
    )
    assert (await transport.send(repeated)).status == 200
    assert emu.log[-1].username == "a"
    await transport.aclose()
