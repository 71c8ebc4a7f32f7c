"""KeyAPIClient over loopback HTTP: the emulator, or tiny aiohttp.web servers of our own.

Nothing is mocked: every request crosses a real socket to a real server on
127.0.0.1. ``max_attempts=1`` is used wherever a retry would hide the first error.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import keyapi_async
from keyapi_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    InsufficientCreditsError,
    InvalidTargetError,
    KeyAPIClient,
    RateLimitError,
    Reel,
    RequestTimeoutError,
    ResponseDecodeError,
    ServerError,
    TransportError,
)
from keyapi_async.engine.sansio import parse_response
from keyapi_async.testing import Emulator, EmulatorConfig, Fault, run_emulator

ENDPOINT = "/v1/instagram/fetch_user_stories"
SEED_BODY = (Path(__file__).parent / "data" / "seed_example.json").read_bytes()
MakeClient = Callable[..., KeyAPIClient]


# -- helpers ------------------------------------------------------------------------


@asynccontextmanager
async def serve(handler: Callable[[web.Request], Any]) -> AsyncIterator[str]:
    """Serve ``handler`` for every GET path on a free loopback port; yield the base URL."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def script(emu: Emulator, target_key: str, *faults: Fault, **changes: Any) -> None:
    """Give ``target_key`` a fault script (and other config changes) from the next request on."""
    emu.config = dataclasses.replace(emu.config, fault_script={target_key: faults}, **changes)


def find_username(emu: Emulator, wanted: Callable[[dict[str, Any] | None], bool]) -> str:
    """The first ``userN`` whose synthetic reel (``data.data``) satisfies ``wanted``."""
    for i in range(2000):
        name = f"user{i}"
        if wanted(emu.reel_for(f"username:{name}")):
            return name
    raise AssertionError("no such target among the emulator's synthetic users")


def assert_reel_matches(reel: Reel, data: dict[str, Any] | None) -> None:
    assert data is not None
    assert reel.count == data["count"]
    assert [item.id for item in reel.items] == [item["id"] for item in data["items"]]
    assert reel.additional_data is not None
    assert reel.additional_data.id == data["additional_data"]["id"]


# -- success ------------------------------------------------------------------------


async def test_fetch_by_username(emulator: Emulator, make_client: MakeClient) -> None:
    async with make_client(emulator) as client:
        reel = await client.fetch_user_stories(username="@JaVan")
    assert isinstance(reel, Reel)
    assert not reel.is_empty
    assert_reel_matches(reel, emulator.reel_for("username:javan"))
    assert reel.user is not None
    assert reel.user.username == "javan"
    [record] = emulator.log
    assert (record.username, record.user_id, record.status, record.body_code) == (
        "javan",
        None,
        200,
        0,
    )
    # The emulator accepted the key: the client sent it as a Bearer token.
    assert record.authorized


async def test_fetch_by_user_id(emulator: Emulator, make_client: MakeClient) -> None:
    async with make_client(emulator) as client:
        reel = await client.fetch_user_stories(user_id=18527)
    assert_reel_matches(reel, emulator.reel_for("user_id:18527"))
    assert reel.user is not None
    assert reel.user.id == "18527"
    [record] = emulator.log
    assert (record.username, record.user_id, record.status) == (None, "18527", 200)


async def test_empty_reels(emulator: Emulator, make_client: MakeClient) -> None:
    null_reel = find_username(emulator, lambda data: data is None)
    no_items = find_username(emulator, lambda data: data is not None and not data["items"])
    async with make_client(emulator) as client:
        first = await client.fetch_user_stories(username=null_reel)
        second = await client.fetch_user_stories(username=no_items)
        stats = client.stats
    for reel in (first, second):
        assert isinstance(reel, Reel)
        assert reel.is_empty
        assert reel.items == ()
        assert reel.count == 0
    assert first.additional_data is None
    assert second.additional_data is not None
    assert (stats.successes, stats.empty, stats.credits_spent) == (2, 2, 4)


async def test_stats_count_requests_successes_and_credits(
    emulator: Emulator, make_client: MakeClient
) -> None:
    script(emulator, "username:broken", Fault.SERVER_ERROR)
    async with make_client(emulator, max_attempts=1) as client:
        before = client.stats
        for name in ("javan", "user0", "user1"):
            await client.fetch_user_stories(username=name)
        with pytest.raises(ServerError):
            await client.fetch_user_stories(username="broken")
        stats = client.stats
    assert (before.requests_sent, before.successes, before.credits_spent) == (0, 0, 0)
    assert stats.requests_sent == 4
    assert stats.successes == 3
    assert stats.failures == 1
    assert stats.retries == 0
    assert stats.rate_limited == 0
    assert stats.credits_spent == 6 == emulator.credits_spent
    assert stats.current_qps is None


# -- every error status, first attempt only -------------------------------------------


async def test_wrong_key_is_authentication_error(emulator: Emulator, api_key: str) -> None:
    client = KeyAPIClient(api_key + "x", base_url=emulator.base_url, max_attempts=5)
    async with client:
        with pytest.raises(AuthenticationError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert type(error) is AuthenticationError
    assert (error.status, error.code, error.message, error.target) == (
        401,
        401,
        "apiKey is invalid",
        "javan",
    )
    assert isinstance(error.request_id, str)
    assert len(error.request_id) == 36
    assert not error.retryable
    # Never retried, even with attempts to spare.
    assert [(r.status, r.authorized) for r in emulator.log] == [(401, False)]
    assert client.stats.failures == 1


async def test_request_without_key_is_apikey_null(emulator: Emulator) -> None:
    # The client always sends its key; the "apiKey is null" answer is taken
    # from the emulator with a bare request and mapped by the sans-I/O layer.
    async with (
        aiohttp.ClientSession() as session,
        session.get(emulator.base_url + ENDPOINT, params={"username": "javan"}) as response,
    ):
        status, headers, body = response.status, response.headers, await response.read()
    with pytest.raises(AuthenticationError) as info:
        parse_response(status, headers, body, target="javan")
    error = info.value
    assert (error.status, error.code, error.message, error.target) == (
        401,
        401,
        "apiKey is null",
        "javan",
    )
    assert error.request_id == json.loads(body)["requestId"]


async def test_missing_handle_is_bad_request_from_the_emulator(
    emulator: Emulator, api_key: str
) -> None:
    # The client validates targets before sending, so it cannot make the
    # emulator answer 400; a bare request can, and the sans-I/O layer maps it.
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            emulator.base_url + ENDPOINT, headers={"Authorization": f"Bearer {api_key}"}
        ) as response,
    ):
        status, headers, body = response.status, response.headers, await response.read()
    with pytest.raises(BadRequestError) as info:
        parse_response(status, headers, body)
    error = info.value
    assert (error.status, error.code, error.message) == (
        400,
        400,
        "Missing required parameter: handle",
    )
    assert error.request_id == json.loads(body)["requestId"]


async def test_bad_request_through_the_client_is_not_retried(api_key: str) -> None:
    hits: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        body = {"code": 400, "data": None, "message": "Missing required parameter: handle"}
        return web.json_response(body, status=400)

    async with (
        serve(handler) as base_url,
        KeyAPIClient(api_key, base_url=base_url, max_attempts=5) as client,
    ):
        with pytest.raises(BadRequestError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert type(error) is BadRequestError
    assert (error.status, error.code, error.request_id, error.target) == (400, 400, None, "javan")
    assert error.message == "Missing required parameter: handle"
    assert hits == [ENDPOINT + "?username=javan"]


async def test_credits_run_out(api_key: str, make_client: MakeClient) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), credits=2)
    async with run_emulator(config) as emu, make_client(emu, max_attempts=5) as client:
        reel = await client.fetch_user_stories(username="javan")
        assert not reel.is_empty
        with pytest.raises(InsufficientCreditsError) as info:
            await client.fetch_user_stories(username="user0")
        stats = client.stats
        log = [(r.username, r.status) for r in emu.log]
    error = info.value
    assert (error.status, error.code, error.message, error.target) == (
        402,
        402,
        "apiKey quota is not enough",
        "user0",
    )
    assert error.request_id is not None
    assert not error.retryable
    assert log == [("javan", 200), ("user0", 402)]
    assert (stats.successes, stats.failures, stats.credits_spent) == (1, 1, 2)


async def test_http_429_with_retry_after(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "username:javan", Fault.RATE_LIMIT)
    async with make_client(emulator, max_attempts=1) as client:
        with pytest.raises(RateLimitError) as info:
            await client.fetch_user_stories(username="javan")
        assert client.stats.rate_limited == 1
    error = info.value
    assert (error.status, error.code, error.message, error.target) == (
        429,
        429,
        "qps limit exceeded",
        "javan",
    )
    assert isinstance(error.retry_after, float)
    assert error.retry_after >= 1
    assert error.request_id is not None
    assert error.retryable
    assert emulator.count(status=429) == 1


async def test_http_429_without_retry_after(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "username:javan", Fault.RATE_LIMIT, retry_after=False)
    async with make_client(emulator, max_attempts=1) as client:
        with pytest.raises(RateLimitError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert (error.status, error.code, error.retry_after) == (429, 429, None)


async def test_http_200_with_code_429(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "username:javan", Fault.RATE_LIMIT_200)
    async with make_client(emulator, max_attempts=1) as client:
        with pytest.raises(RateLimitError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert (error.status, error.code, error.message, error.retry_after, error.target) == (
        200,
        429,
        "qps limit exceeded",
        None,
        "javan",
    )
    assert error.request_id is not None


async def test_http_500(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "username:javan", Fault.SERVER_ERROR)
    async with make_client(emulator, max_attempts=1) as client:
        with pytest.raises(ServerError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert type(error) is ServerError
    assert (error.status, error.code, error.message, error.target) == (
        500,
        500,
        "Internal server error",
        "javan",
    )
    assert error.request_id is not None
    assert len(emulator.log) == 1


async def test_html_502_is_server_error_without_code(
    emulator: Emulator, make_client: MakeClient
) -> None:
    # By design (see _sansio's docstring) a non-JSON error page maps by status.
    script(emulator, "username:javan", Fault.BAD_GATEWAY_HTML)
    async with make_client(emulator, max_attempts=1) as client:
        with pytest.raises(ServerError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert (error.status, error.code, error.request_id, error.target) == (502, None, None, "javan")
    assert error.message == "HTTP 502 with a non-JSON body (text/html)"
    assert error.retryable


async def test_http_200_with_error_code(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "username:javan", Fault.ERROR_CODE_200)
    async with make_client(emulator, max_attempts=1) as client:
        with pytest.raises(ServerError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert (error.status, error.code, error.message) == (200, 500, "Internal server error")
    assert str(error).startswith("HTTP 200 (code 500): Internal server error [request ")


async def test_truncated_body(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "username:javan", Fault.TRUNCATED)
    async with make_client(emulator, max_attempts=1) as client:
        with pytest.raises(ResponseDecodeError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert (error.status, error.message, error.target) == (
        200,
        "response body is not valid JSON",
        "javan",
    )
    assert error.snippet.startswith('{"code":0,"message":"success","data":')
    assert len(error.snippet) == 160


async def test_empty_body(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "username:javan", Fault.EMPTY)
    async with make_client(emulator, max_attempts=1) as client:
        with pytest.raises(ResponseDecodeError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert (error.status, error.message, error.snippet, error.target) == (
        200,
        "empty response body",
        "",
        "javan",
    )


async def test_reset_mid_body(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "username:javan", Fault.RESET)
    async with make_client(emulator, max_attempts=1) as client:
        with pytest.raises(TransportError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert type(error) is TransportError
    assert error.message == "connection closed before the whole response body arrived"
    assert error.target == "javan"
    assert error.__cause__ is None
    assert error.__context__ is None
    assert [r.fault for r in emulator.log] == [Fault.RESET]


async def test_timeout(emulator: Emulator, make_client: MakeClient) -> None:
    script(emulator, "username:javan", Fault.SLOW, slow_seconds=2.0)
    async with make_client(emulator, max_attempts=1, timeout=0.3) as client:
        with pytest.raises(RequestTimeoutError) as info:
            await client.fetch_user_stories(username="javan")
    error = info.value
    assert isinstance(error, TransportError)
    assert error.message == "no complete answer within 0.3 s"
    assert error.target == "javan"
    assert error.retryable


async def test_connection_refused(api_key: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there any more.
    async with KeyAPIClient(api_key, base_url=f"http://127.0.0.1:{port}", max_attempts=1) as c:
        with pytest.raises(TransportError) as info:
            await c.fetch_user_stories(username="javan")
    assert type(info.value) is ConnectError
    assert f"127.0.0.1:{port}" in info.value.message
    assert info.value.target == "javan"


# -- retries ------------------------------------------------------------------------


async def test_transient_faults_are_retried_until_success(
    emulator: Emulator, make_client: MakeClient
) -> None:
    script(emulator, "username:javan", Fault.SERVER_ERROR, Fault.RESET, Fault.TRUNCATED)
    async with make_client(emulator, max_attempts=5) as client:
        reel = await client.fetch_user_stories(username="javan")
        stats = client.stats
    assert_reel_matches(reel, emulator.reel_for("username:javan"))
    records = emulator.records_for("username:javan")
    assert [(r.status, r.fault) for r in records] == [
        (500, Fault.SERVER_ERROR),
        (0, Fault.RESET),
        (200, Fault.TRUNCATED),
        (200, None),
    ]
    assert (stats.requests_sent, stats.retries, stats.successes, stats.failures) == (4, 3, 1, 0)
    assert stats.credits_spent == 2


async def test_retries_are_bounded_by_max_attempts(
    emulator: Emulator, make_client: MakeClient
) -> None:
    script(emulator, "username:javan", *[Fault.BAD_GATEWAY_HTML] * 3, Fault.SERVER_ERROR)
    async with make_client(emulator, max_attempts=3) as client:
        with pytest.raises(ServerError) as info:
            await client.fetch_user_stories(username="javan")
    assert (info.value.status, info.value.code) == (502, None)
    assert len(emulator.records_for("username:javan")) == 3


# -- nothing is sent for bad input ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give a username or a user_id"),
        ({"username": "javan", "user_id": "18527"}, "give either username or user_id, not both"),
        ({"username": "not a handle"}, "username must be 1-30 letters, digits, '.' or '_'"),
        ({"username": "x" * 31}, "username must be 1-30 letters, digits, '.' or '_'"),
        ({"username": "@"}, "username is empty"),
        ({"user_id": "12a"}, "user_id must be 1-30 digits"),
        ({"user_id": True}, "user_id must be a string of digits"),
    ],
)
async def test_invalid_target_sends_nothing(
    emulator: Emulator, make_client: MakeClient, kwargs: dict[str, Any], message: str
) -> None:
    async with make_client(emulator) as client:
        with pytest.raises(InvalidTargetError) as info:
            await client.fetch_user_stories(**kwargs)
        assert client.stats.requests_sent == 0
    assert info.value.message == message
    assert emulator.log == []
    assert emulator.requests_total == 0


# -- what goes over the wire ----------------------------------------------------------


async def test_request_headers(api_key: str) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.method, request.path_qs, dict(request.headers)))
        return web.Response(body=SEED_BODY, content_type="application/json")

    async with serve(handler) as base_url:
        async with KeyAPIClient(api_key, base_url=base_url) as client:
            await client.fetch_user_stories(username="javan")
        async with KeyAPIClient(api_key, base_url=base_url, user_agent="my-app/2.1") as client:
            await client.fetch_user_stories(user_id="18527")
    [(method, path, headers), (_, path2, headers2)] = seen
    assert method == "GET"
    assert path == ENDPOINT + "?username=javan"
    assert path2 == ENDPOINT + "?user_id=18527"
    assert headers["Authorization"] == f"Bearer {api_key}"
    assert headers["Accept"] == "application/json"
    version = keyapi_async.__version__
    assert headers["User-Agent"] == f"keyapi-async/{version} aiohttp/{aiohttp.__version__}"
    assert (
        headers2["User-Agent"] == f"my-app/2.1 keyapi-async/{version} aiohttp/{aiohttp.__version__}"
    )
    assert "Cookie" not in headers2


async def test_redirect_is_not_followed(api_key: str) -> None:
    elsewhere: list[dict[str, str]] = []

    async def collector(request: web.Request) -> web.Response:
        elsewhere.append(dict(request.headers))
        return web.Response(body=SEED_BODY, content_type="application/json")

    async with serve(collector) as other_url:
        location = f"{other_url}{ENDPOINT}?username=javan"
        redirects: list[str] = []

        async def redirector(request: web.Request) -> web.Response:
            redirects.append(request.path_qs)
            return web.Response(status=302, headers={"Location": location})

        async with (
            serve(redirector) as base_url,
            KeyAPIClient(api_key, base_url=base_url, max_attempts=5) as client,
        ):
            with pytest.raises(APIStatusError) as info:
                await client.fetch_user_stories(username="javan")
    error = info.value
    assert type(error) is APIStatusError
    assert (error.status, error.code, error.target) == (302, None, "javan")
    assert error.message == (
        f"redirect to {location} not followed (the API key is only sent to base_url)"
    )
    assert redirects == [ENDPOINT + "?username=javan"]  # once: a redirect is not retried
    assert elsewhere == []


async def test_borrowed_session_is_used_and_left_open(
    emulator: Emulator, make_client: MakeClient, api_key: str
) -> None:
    async with aiohttp.ClientSession() as session:
        async with make_client(emulator, session=session) as client:
            await client.fetch_user_stories(username="javan")
        assert not session.closed
        # Still usable by its owner.
        async with session.get(
            emulator.base_url + ENDPOINT,
            params={"username": "user0"},
            headers={"Authorization": f"Bearer {api_key}"},
        ) as response:
            assert response.status == 200
    assert [r.username for r in emulator.log] == ["javan", "user0"]


async def test_borrowed_session_settings_do_not_change_error_mapping(
    emulator: Emulator, make_client: MakeClient, api_key: str
) -> None:
    # A caller's session that raises for status must not turn API answers
    # into transport errors (which would also be retried).
    script(emulator, "username:javan", Fault.SERVER_ERROR)
    async with aiohttp.ClientSession(raise_for_status=True) as session:
        async with make_client(emulator, session=session, max_attempts=1) as client:
            with pytest.raises(ServerError) as info:
                await client.fetch_user_stories(username="javan")
            ok = await client.fetch_user_stories(username="javan")
        async with KeyAPIClient(
            api_key + "x", base_url=emulator.base_url, session=session, max_attempts=3
        ) as other:
            with pytest.raises(AuthenticationError):
                await other.fetch_user_stories(username="javan")
    assert (info.value.status, info.value.code) == (500, 500)
    assert not ok.is_empty
    assert [r.status for r in emulator.log] == [500, 200, 401]


async def test_owned_session_is_closed(emulator: Emulator, make_client: MakeClient) -> None:
    client = make_client(emulator)
    async with client:
        await client.fetch_user_stories(username="javan")
        # A peek at the transport the client opened (its session is not public).
        transport = client._transport
        assert transport is not None
        assert transport.closed is False  # type: ignore[attr-defined]
    assert transport.closed is True  # type: ignore[attr-defined]


# -- lifecycle -------------------------------------------------------------------------


async def test_use_outside_async_with_is_a_helpful_runtime_error(
    emulator: Emulator, make_client: MakeClient
) -> None:
    client = make_client(emulator)
    with pytest.raises(RuntimeError) as before:
        await client.fetch_user_stories(username="javan")
    assert str(before.value) == "KeyAPIClient is new: use `async with KeyAPIClient(...) as client:`"
    with pytest.raises(RuntimeError, match="KeyAPIClient is new"):
        client.fetch_many(["javan"])
    async with client:
        pass
    with pytest.raises(RuntimeError) as after:
        await client.fetch_user_stories(username="javan")
    assert str(after.value) == (
        "KeyAPIClient is closed: use `async with KeyAPIClient(...) as client:`"
    )
    assert emulator.log == []


async def test_client_cannot_be_entered_twice(emulator: Emulator, make_client: MakeClient) -> None:
    client = make_client(emulator)
    async with client:
        with pytest.raises(RuntimeError) as nested:
            await client.__aenter__()
        assert str(nested.value) == "a KeyAPIClient can be opened once; this one is open"
        await client.fetch_user_stories(username="javan")  # still open and working
    with pytest.raises(RuntimeError) as again:
        async with client:
            pass
    assert str(again.value) == "a KeyAPIClient can be opened once; this one is closed"


async def test_aclose_is_idempotent(emulator: Emulator, make_client: MakeClient) -> None:
    client = make_client(emulator)
    await client.__aenter__()
    await client.aclose()
    await client.aclose()
    assert "state='closed'" in repr(client)
    with pytest.raises(RuntimeError, match="KeyAPIClient is closed"):
        await client.fetch_user_stories(username="javan")


async def test_error_escaping_the_async_with_block_keeps_its_type(
    emulator: Emulator, api_key: str
) -> None:
    with pytest.raises(AuthenticationError):
        async with KeyAPIClient(api_key + "x", base_url=emulator.base_url) as client:
            await client.fetch_user_stories(username="javan")
