"""The API key appears in no exception, repr or log line, on every error path.

Each path runs for real (the emulator, or tiny servers of our own on
127.0.0.1); every exception it produces is scanned together with its whole
``__cause__``/``__context__`` chain, its attributes and its formatted
traceback, and so is every log record captured at DEBUG level meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import socket
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from keyapi_async import KeyAPIClient, Target
from keyapi_async.engine.sansio import RequestBuilder
from keyapi_async.testing import Emulator, Fault

ENDPOINT = "/v1/instagram/fetch_user_stories"
SEED_BODY = (Path(__file__).parent / "data" / "seed_example.json").read_bytes()
MakeClient = Callable[..., KeyAPIClient]
Path_ = Callable[[Emulator, str, MakeClient], Awaitable[list[BaseException]]]


# -- scanning -----------------------------------------------------------------------


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and everything reachable from it: cause, context, group members, .cause."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException):
            todo.append(cause)
    return seen


def _texts(error: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(error))]
    for link in _chain(error):
        texts += [str(link), repr(link), repr(link.args)]
        texts += [repr(value) for value in getattr(link, "__dict__", {}).values()]
    return texts


def assert_no_secret(secret: str, texts: list[str]) -> None:
    # The random tail alone is checked too, in case something masks the prefix.
    needles = {secret, secret[-24:]}
    for text in texts:
        for needle in needles:
            assert needle not in text, f"key leaked in: {text[:400]!r}"


# -- servers ------------------------------------------------------------------------


@asynccontextmanager
async def serve(handler: Callable[[web.Request], Any]) -> AsyncIterator[str]:
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


@asynccontextmanager
async def serve_raw(answer: bytes) -> AsyncIterator[str]:
    """A TCP server that answers every request with ``answer`` bytes (not valid HTTP)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def _fetch_errors(
    new_client: Callable[[], KeyAPIClient], **kwargs: Any
) -> list[BaseException]:
    """Errors from one fetch inside a client's block, and from one escaping a block.

    Two clients, because after a 429 a client's gate pauses its next send.
    """
    errors: list[BaseException] = []
    async with new_client() as client:
        try:
            await client.fetch_user_stories(**kwargs)
        except Exception as exc:
            errors.append(exc)
    try:
        async with new_client() as client:
            await client.fetch_user_stories(**kwargs)
    except BaseException as exc:  # whatever the client's __aexit__ makes of it
        errors.append(exc)
    assert len(errors) == 2
    return errors


def _fault_path(*faults: Fault, **changes: Any) -> Path_:
    async def run(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
        emu.config = dataclasses.replace(
            emu.config, fault_script={"username:javan": faults * 2}, **changes
        )
        options = {"max_attempts": len(faults)}
        if Fault.SLOW in faults:
            options["timeout"] = 0.3  # type: ignore[assignment]
        return await _fetch_errors(lambda: make_client(emu, **options), username="javan")

    return run


# -- the error paths ------------------------------------------------------------------


async def _wrong_key(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
    # Scanned for the client's own key, which the emulator does not know.
    emu.config = dataclasses.replace(emu.config, api_keys=frozenset({"sk_test_other"}))
    return await _fetch_errors(
        lambda: KeyAPIClient(key, base_url=emu.base_url, max_attempts=3), username="javan"
    )


async def _credits(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
    emu.config = dataclasses.replace(emu.config, credits=0)
    return await _fetch_errors(lambda: make_client(emu), user_id="18527")


async def _bad_request(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
    async def handler(request: web.Request) -> web.Response:
        body = {"code": 400, "data": None, "message": "Missing required parameter: handle"}
        return web.json_response(body, status=400)

    async with serve(handler) as base_url:
        return await _fetch_errors(lambda: KeyAPIClient(key, base_url=base_url), username="javan")


async def _redirect(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": f"{emu.base_url}{ENDPOINT}"})

    async with serve(handler) as base_url:
        return await _fetch_errors(lambda: KeyAPIClient(key, base_url=base_url), username="javan")


async def _malformed_http(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
    # aiohttp raises ClientResponseError here, whose repr shows the request headers.
    async with serve_raw(b"HTTP/1.1 abc not-a-status\r\n\r\n") as base_url:
        return await _fetch_errors(
            lambda: KeyAPIClient(key, base_url=base_url, max_attempts=2, backoff_base=0.01),
            username="javan",
        )


async def _raise_for_status_session(
    emu: Emulator, key: str, make_client: MakeClient
) -> list[BaseException]:
    emu.config = dataclasses.replace(
        emu.config, fault_script={"username:javan": [Fault.RATE_LIMIT] * 2}
    )
    async with aiohttp.ClientSession(raise_for_status=True) as session:
        return await _fetch_errors(
            lambda: make_client(emu, session=session, max_attempts=1), username="javan"
        )


async def _refused(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    return await _fetch_errors(
        lambda: KeyAPIClient(key, base_url=base_url, max_attempts=2, backoff_base=0),
        username="javan",
    )


async def _invalid_targets(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
    errors: list[BaseException] = []
    for kwargs in ({}, {"username": "a", "user_id": "1"}, {"username": "no way"}, {"user_id": "x"}):
        errors += await _fetch_errors(lambda: make_client(emu), **kwargs)
    return errors


async def _lifecycle(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
    errors: list[BaseException] = []
    client = make_client(emu)
    try:
        await client.fetch_user_stories(username="javan")
    except RuntimeError as exc:
        errors.append(exc)
    async with client:
        pass
    try:
        await client.__aenter__()
    except RuntimeError as exc:
        errors.append(exc)
    return errors


async def _configuration(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
    errors: list[BaseException] = []
    for kwargs in (
        {"api_key": key, "base_url": f"https://api.keyapi.ai/?apiKey={key}"},
        {"api_key": key, "base_url": f"https://user:{key}@api.keyapi.ai"},
        {"api_key": key, "base_url": f"https://api.keyapi.ai/#{key}"},
        {"api_key": key, "base_url": f"ftp://{key}@api.keyapi.ai"},
        {"api_key": key, "base_url": f"http://{key}@api.keyapi.ai:99999"},
        {"api_key": key + " tail"},
        {"api_key": key + "\x00"},
        {"api_key": key, "qps": 0},
    ):
        try:
            KeyAPIClient(**kwargs)
        except Exception as exc:
            errors.append(exc)
    assert len(errors) == 8
    return errors


async def _batch(emu: Emulator, key: str, make_client: MakeClient) -> list[BaseException]:
    client = KeyAPIClient(key, base_url=emu.base_url, concurrency=1, max_attempts=2)
    emu.config = dataclasses.replace(emu.config, api_keys=frozenset({"sk_test_other"}))
    errors: list[BaseException] = []
    async with client:
        async for result in client.fetch_many(["javan", "user0", "user1", "not valid"]):
            assert result.error is not None
            errors.append(result.error)
    return errors


PATHS: dict[str, Path_] = {
    "wrong key (401)": _wrong_key,
    "credits exhausted (402)": _credits,
    "bad request (400)": _bad_request,
    "429 with Retry-After": _fault_path(Fault.RATE_LIMIT),
    "429 without Retry-After": _fault_path(Fault.RATE_LIMIT, retry_after=False),
    "200 with code 429": _fault_path(Fault.RATE_LIMIT_200),
    "500": _fault_path(Fault.SERVER_ERROR),
    "HTML 502": _fault_path(Fault.BAD_GATEWAY_HTML),
    "200 with code 500": _fault_path(Fault.ERROR_CODE_200),
    "truncated body": _fault_path(Fault.TRUNCATED),
    "empty body": _fault_path(Fault.EMPTY),
    "reset mid-body": _fault_path(Fault.RESET),
    "timeout": _fault_path(Fault.SLOW, slow_seconds=2.0),
    "retries exhausted": _fault_path(Fault.SERVER_ERROR, Fault.RESET, Fault.EMPTY),
    "redirect": _redirect,
    "malformed HTTP answer": _malformed_http,
    "borrowed raise_for_status session": _raise_for_status_session,
    "connection refused": _refused,
    "invalid targets": _invalid_targets,
    "lifecycle misuse": _lifecycle,
    "configuration": _configuration,
    "batch after 401": _batch,
}


@pytest.mark.parametrize("path", PATHS.values(), ids=PATHS.keys())
async def test_key_in_no_error_and_no_log_line(
    path: Path_,
    emulator: Emulator,
    api_key: str,
    make_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("aiohttp", "aiohttp.client", "aiohttp.server", "aiohttp.web", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    errors = await path(emulator, api_key, make_client)
    assert errors, "the path produced no error to scan"
    for error in errors:
        assert_no_secret(api_key, _texts(error))
    log_texts = [caplog.text]
    for record in caplog.records:
        log_texts += [record.getMessage(), repr(record.args), repr(record.__dict__)]
        if record.exc_info and record.exc_info[1] is not None:
            log_texts += _texts(record.exc_info[1])
    assert_no_secret(api_key, log_texts)


def test_scanner_finds_a_key_in_a_context_chain() -> None:
    # The scan must be able to fail: a key hidden two links deep is found.
    key = "sk_test_" + secrets.token_hex(16)
    try:
        try:
            raise ValueError(f"Authorization: Bearer {key}")
        except ValueError:
            raise KeyError("outer") from None
    except KeyError as exc:
        error: BaseException = exc
    with pytest.raises(AssertionError, match="key leaked"):
        assert_no_secret(key, _texts(error))


async def test_key_in_no_repr(emulator: Emulator, api_key: str, make_client: MakeClient) -> None:
    client = make_client(emulator, user_agent="probe/1")
    texts = [repr(client), str(client), repr(client.config), str(client.config)]
    texts += [str(client.config.api_key), repr(client.config.api_key), f"{client.config.api_key}"]
    async with client:
        await client.fetch_user_stories(username="javan")
        texts += [repr(client), repr(client.stats), repr(client.config)]
    texts.append(repr(client))
    builder = RequestBuilder(base_url=emulator.base_url, api_key=api_key, user_agent="u")
    request = builder.build(Target.username("javan"))
    texts += [repr(request), str(request), repr(builder), str(builder)]
    assert_no_secret(api_key, texts)
    assert "Secret('**********')" in repr(client.config)
    assert "api_key=Secret('**********')" in repr(client)
    # The key does go where it must: the request header.
    assert request.headers["Authorization"] == f"Bearer {api_key}"
