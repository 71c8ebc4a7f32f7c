"""The real client against hostile answers from the emulator, over loopback HTTP.

Each answer here once escaped the error tree or was misjudged: bytes that are
not UTF-8, a Latin-1 proxy message, a reel announcing items it does not carry,
a 503's ``Retry-After`` ignored, 403/404 without their own classes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import pytest

from keyapi_async import (
    KeyAPIClient,
    NotFoundError,
    PermissionDeniedError,
    ResponseDecodeError,
    ServerError,
)
from keyapi_async.testing import Emulator, EmulatorConfig, EmulatorTransport, Fault

from .virtual_clock import run_virtual

MakeClient = Callable[..., KeyAPIClient]


def script(emulator: Emulator, target: str, *faults: Fault) -> None:
    emulator.config = replace(emulator.config, fault_script={f"username:{target}": faults})


async def test_non_utf8_in_a_200_is_a_billed_decode_error_never_bought_again(
    emulator: Emulator, make_client: MakeClient
) -> None:
    script(emulator, "javan", *[Fault.NON_UTF8] * 5)
    async with make_client(emulator, max_attempts=5) as client:
        with pytest.raises(ResponseDecodeError) as info:
            await client.fetch_user_stories(username="javan")
        sent = client.stats.requests_sent
    error = info.value
    assert error.billed
    assert error.message == "response body is not valid UTF-8"
    assert error.target is not None
    assert "javan" in error.target
    # A billed answer arrived whole: a retry would buy the same one again, whatever
    # max_attempts says (issue 18: it used to be bought twice).
    assert emulator.requests_total == sent == 1
    assert emulator.credits_spent == 2


async def test_latin1_message_on_a_500_is_a_server_error(
    emulator: Emulator, make_client: MakeClient
) -> None:
    script(emulator, "javan", *[Fault.SERVER_ERROR_LATIN1] * 3)
    async with make_client(emulator, max_attempts=3) as client:
        with pytest.raises(ServerError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert (error.status, error.code) == (500, 500)
    assert "\ufffd" in error.message
    assert emulator.requests_total == 3  # a 500 is transient: retried like any other
    assert emulator.credits_spent == 0


async def test_latin1_500_then_success_recovers(
    emulator: Emulator, make_client: MakeClient
) -> None:
    script(emulator, "javan", Fault.SERVER_ERROR_LATIN1)
    async with make_client(emulator, max_attempts=3) as client:
        reel = await client.fetch_user_stories(username="javan")
    assert reel.count == len(reel.items)
    assert emulator.requests_total == 2


async def test_count_without_items_is_a_decode_error_not_an_empty_reel(
    emulator: Emulator, make_client: MakeClient
) -> None:
    script(emulator, "javan", *[Fault.COUNT_WITHOUT_ITEMS] * 5)
    async with make_client(emulator, max_attempts=5) as client:
        with pytest.raises(ResponseDecodeError) as info:
            await client.fetch_user_stories(username="javan")
    assert info.value.billed
    assert info.value.message == "reel says count 3 but has no items"
    assert emulator.requests_total == 1


async def test_schema_drift_is_billed_and_final(
    emulator: Emulator, make_client: MakeClient
) -> None:
    script(emulator, "javan", Fault.SCHEMA_DRIFT)
    async with make_client(emulator, max_attempts=5) as client:
        with pytest.raises(ResponseDecodeError) as info:
            await client.fetch_user_stories(username="javan")
        assert client.stats.credits_spent == 2
    assert info.value.billed
    assert emulator.requests_total == 1
    assert emulator.credits_spent == 2  # the drifted answer was paid for, once


async def test_503_retry_after_2_is_honoured(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "javan", Fault.SERVICE_UNAVAILABLE)
    # Backoff alone would come back within 0.05 s.
    async with make_client(emulator, max_attempts=3, retry_after_cap=60.0) as client:
        reel = await client.fetch_user_stories(username="javan")
    assert reel.count == len(reel.items)
    first, second = emulator.log
    assert first.status == 503
    assert second.status == 200
    assert second.time - first.time >= 2.0 - 0.05


async def test_503_retry_after_is_capped(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "javan", Fault.SERVICE_UNAVAILABLE)
    async with make_client(emulator, max_attempts=3, retry_after_cap=0.3) as client:
        await client.fetch_user_stories(username="javan")
    first, second = emulator.log
    gap = second.time - first.time
    assert 0.3 - 0.05 <= gap < 1.9


async def test_403_is_permission_denied_and_not_retried(
    emulator: Emulator, make_client: MakeClient, api_key: str
) -> None:
    emulator.config = replace(emulator.config, forbidden_keys=frozenset({api_key}))
    async with make_client(emulator, max_attempts=5) as client:
        with pytest.raises(PermissionDeniedError) as info:
            await client.fetch_user_stories(username="javan")
        assert client.stats.requests_sent == 1
    assert (info.value.status, info.value.code) == (403, 403)
    assert api_key not in repr(info.value)
    assert api_key not in str(info.value)
    assert emulator.requests_total == 1


@pytest.mark.parametrize("username", ["ghost", "missing_alice"])
async def test_404_is_not_found_and_not_retried(
    emulator: Emulator, make_client: MakeClient, username: str
) -> None:
    emulator.config = replace(emulator.config, missing_accounts=frozenset({"username:ghost"}))
    async with make_client(emulator, max_attempts=5) as client:
        with pytest.raises(NotFoundError) as info:
            await client.fetch_user_stories(username=username)
        assert client.stats.requests_sent == 1
    assert (info.value.status, info.value.code, info.value.message) == (404, 404, "user not found")
    assert emulator.requests_total == 1
    assert emulator.credits_spent == 0


# -- the same on a virtual clock, through the in-memory transport ------------------------


def test_503_retry_after_on_a_virtual_clock(api_key: str) -> None:
    emulator = Emulator(
        EmulatorConfig(
            api_keys=frozenset({api_key}),
            latency=1.0,
            fault_script={"username:javan": [Fault.SERVICE_UNAVAILABLE]},
        )
    )

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        client = KeyAPIClient(
            api_key,
            transport=EmulatorTransport(emulator),
            qps=None,
            max_attempts=3,
            backoff_base=0.01,
            backoff_cap=0.05,
        )
        async with client:
            await client.fetch_user_stories(username="javan")
        return loop.time() - start

    elapsed = run_virtual(main)
    first, second = emulator.log
    # Exact on the virtual clock: 1 s latency, the server's 2 s, 1 s latency.
    assert second.time - first.time == pytest.approx(3.0, abs=0.01)
    assert elapsed == pytest.approx(4.0, abs=0.01)
