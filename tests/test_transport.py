"""AiohttpTransport over loopback: no hidden re-sends, connect errors, proxies and tunnels.

Every test talks real HTTP (or HTTPS with a throwaway CA from ``trustme``) to
servers on 127.0.0.1, built here so that they do not depend on the client
or the emulator, both of which build on this transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import select
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from yarl import URL

from keyapi_async._errors import (
    ConfigurationError,
    ConnectError,
    RequestTimeoutError,
    TransportError,
)
from keyapi_async.engine.config import mask_proxy_url, validate_proxy_url
from keyapi_async.engine.sansio import ENDPOINT_PATH, Request, RequestBuilder
from keyapi_async.engine.targets import Target
from keyapi_async.engine.transport import AiohttpTransport

from ._proxy import ConnectProxy

BODY = b'{"code":0,"message":"ok","data":{"data":null}}'
PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def _clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine running the tests may have a proxy configured; each test
    # sets exactly the variables it is about.
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def api_key() -> str:
    return "sk_test_" + secrets.token_hex(16)


def build(base_url: str, api_key: str, username: str = "javan") -> Request:
    builder = RequestBuilder(base_url=base_url, api_key=api_key, user_agent="keyapi-test")
    return builder.build(Target.username(username))


def owned(**options: Any) -> AiohttpTransport:
    settings: dict[str, Any] = {"pool_size": 4, "timeout": 5.0, "connect_timeout": 2.0}
    settings.update(options)
    return AiohttpTransport(**settings)


def assert_clean(error: BaseException, *secrets_: str) -> None:
    """No aiohttp exception chained, no secret or query string in the text."""
    assert error.__cause__ is None
    assert error.__context__ is None
    text = f"{error} {error!r}"
    assert "?" not in text
    for secret in secrets_:
        assert secret not in text


# -- a scripted HTTP/1.1 server: decides per request, counts what reached it ----------


class ScriptedServer:
    """Raw keep-alive HTTP server; ``script[i]`` says what to do with request i.

    ``"ok"`` answers 200 and keeps the connection; ``"close"`` closes it
    without answering; ``"reset"`` aborts it with an RST; ``"cut"`` sends the
    headers and half the body, then resets; ``"hang"`` never answers. Past the
    script, every request gets ``"ok"``.
    """

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.requests = 0
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            # Closed sockets end the handlers; cancel only what still waits.
            _, pending = await asyncio.wait(set(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                try:
                    request = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, OSError):
                    return
                index = self.requests
                self.requests += 1
                action = self.script[index] if index < len(self.script) else "ok"
                head = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(BODY)
                )
                if action == "ok":
                    writer.write(head + BODY)
                    await writer.drain()
                    if b"\r\nconnection: close" in request.lower():
                        return
                elif action == "close":
                    return
                elif action in ("reset", "cut"):
                    if action == "cut":
                        writer.write(head + BODY[: len(BODY) // 2])
                        await writer.drain()
                    sock = writer.get_extra_info("socket")
                    # SO_LINGER 0: close() sends RST, not FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                elif action == "hang":
                    await reader.read()  # until the client gives up and closes
                    return
        except asyncio.CancelledError:
            pass  # only __aexit__ cancels; see tests/_proxy.py
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._tasks.discard(task)


@contextlib.asynccontextmanager
async def transport_for(kind: str, **options: Any) -> AsyncIterator[AiohttpTransport]:
    """An owned transport, or one over a borrowed session that outlives it."""
    if kind == "owned":
        transport = owned(**options)
        try:
            yield transport
        finally:
            await transport.aclose()
        return
    async with aiohttp.ClientSession() as session:
        transport = AiohttpTransport(session, timeout=5.0, connect_timeout=2.0, **options)
        yield transport
        await transport.aclose()
        assert not session.closed


# -- 1. no hidden re-sends --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["owned", "borrowed"])
@pytest.mark.parametrize("failure", ["close", "reset"])
async def test_a_dropped_kept_alive_connection_is_not_silently_resent(
    kind: str, failure: str, api_key: str
) -> None:
    # aiohttp would re-send request 2 on a new connection and return that
    # answer: two paid requests for one send. The server must see one.
    async with ScriptedServer(["ok", failure]) as server, transport_for(kind) as transport:
        first = await transport.send(build(server.base_url, api_key))
        assert first.status == 200
        with pytest.raises(TransportError) as caught:
            await transport.send(build(server.base_url, api_key), target="javan")
        assert not isinstance(caught.value, ConnectError | RequestTimeoutError)
        assert server.requests == 2, "a request reached the server that the client never sent"
        assert server.connections == 1
        assert caught.value.target == "javan"
        assert "127.0.0.1" in str(caught.value)
        assert_clean(caught.value, api_key)
        third = await transport.send(build(server.base_url, api_key))
        assert third.status == 200
        assert server.requests == 3


def test_aiohttp_still_has_the_resend_switch() -> None:
    # The transport relies on this private attribute; if a new aiohttp drops
    # or renames it, re-sends may be back: check the test above and the
    # transport before upgrading.
    async def probe() -> None:
        async with aiohttp.ClientSession() as session:
            assert session._retry_connection is True, (
                "aiohttp.ClientSession._retry_connection is gone or changed: "
                "the silent GET re-send can no longer be switched off this way"
            )
            AiohttpTransport(session, timeout=1.0, connect_timeout=1.0)
            assert session._retry_connection is False

    asyncio.run(probe())


URLS_AS_AIOHTTP_READS_THEM = [
    "http://127.0.0.1:8123/v1/instagram/fetch_user_stories?username=javan",
    "http://h?username=a.b_c-d~",
    "http://H:80/p/?user_id=12&x=1",
    "https://\u043f\u0440\u0438\u043c\u0435\u0440.\u0440\u0444/p?username=a",
    "http://h/a%2Fb/./c/../d?username=a",
    "http://h/a b?username=a",
    "http://u:p@h/p?username=a",
    # Sent as the string (aiohttp parses it): a query needing quoting, a
    # fragment before the '?', no query, a relative URL.
    "http://h/p?username=a%20b",
    "http://h/p?username=a b",
    "http://h/p#f?username=a",
    "http://h/p",
    "http://h/p?",
    "relative/p?username=a",
]


@pytest.mark.parametrize("url", URLS_AS_AIOHTTP_READS_THEM)
async def test_a_request_url_is_parsed_as_aiohttp_would(url: str) -> None:
    # The transport attaches the query to an endpoint URL parsed once; the
    # result must be exactly what aiohttp would make of the string.
    transport = owned()
    try:
        for _ in range(2):  # parsed, then from the cache
            sent = transport._url(url)
            as_parsed = URL(sent) if isinstance(sent, str) else sent
            assert str(as_parsed) == str(URL(url))
            assert as_parsed.raw_path_qs == URL(url).raw_path_qs
            assert as_parsed == URL(url)
    finally:
        await transport.aclose()


async def test_the_wire_carries_the_builder_headers_and_any_others(api_key: str) -> None:
    seen: list[tuple[str, str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        seen.append((request.path_qs, auth, request.headers.get("User-Agent", "")))
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get(ENDPOINT_PATH, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    transport = owned()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        for name in ("javan", "nasa"):
            assert (await transport.send(build(base, api_key, name))).status == 200
        other = Request("GET", f"{base}{ENDPOINT_PATH}?user_id=1", {"Authorization": "Bearer x"})
        assert (await transport.send(other)).status == 200
        assert (await transport.send(build(base, "sk_test_other", "javan"))).status == 200
    finally:
        await transport.aclose()
        await runner.cleanup()
    assert seen[:2] == [
        (f"{ENDPOINT_PATH}?username=javan", f"Bearer {api_key}", "keyapi-test"),
        (f"{ENDPOINT_PATH}?username=nasa", f"Bearer {api_key}", "keyapi-test"),
    ]
    assert seen[2][:2] == (f"{ENDPOINT_PATH}?user_id=1", "Bearer x")
    assert "keyapi-test" not in seen[2][2]
    assert seen[3][1] == "Bearer sk_test_other"


# -- 2. connect failures ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_connection_refused_is_a_connect_error_naming_host_and_port(api_key: str) -> None:
    port = free_port()
    async with transport_for("owned") as transport:
        with pytest.raises(ConnectError) as caught:
            await transport.send(build(f"http://127.0.0.1:{port}", api_key), target="javan")
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert caught.value.retryable
    assert_clean(caught.value, api_key, "javan?", "username=")


async def test_connect_timeout_is_a_connect_error(api_key: str) -> None:
    # A listener whose backlog is full leaves further SYNs unanswered (Linux);
    # where the kernel still completes the handshake the test cannot apply.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        _, writable, _ = select.select([], [fillers[-1]], [], 0.3)
        if writable:  # pragma: no cover - platform dependent
            pytest.skip("this platform completes connections past the listen backlog")
        async with transport_for("owned", connect_timeout=0.3) as transport:
            with pytest.raises(ConnectError) as caught:
                await transport.send(build(f"http://127.0.0.1:{port}", api_key))
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "0.3 s" in str(caught.value)
    assert_clean(caught.value, api_key)


async def test_reset_mid_response_stays_a_transport_error(api_key: str) -> None:
    async with ScriptedServer(["cut"]) as server, transport_for("owned") as transport:
        with pytest.raises(TransportError) as caught:
            await transport.send(build(server.base_url, api_key))
    assert type(caught.value) is TransportError
    assert server.requests == 1
    assert_clean(caught.value, api_key)


async def test_total_timeout_stays_a_request_timeout(api_key: str) -> None:
    async with ScriptedServer(["hang"]) as server, transport_for("owned", timeout=0.3) as transport:
        with pytest.raises(RequestTimeoutError) as caught:
            await transport.send(build(server.base_url, api_key))
    assert not isinstance(caught.value, ConnectError)
    assert server.requests == 1
    assert_clean(caught.value, api_key)


# -- 3. proxy URL validation ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:3128",
        "https://proxy.example:8443",
        "http://user:p%40ss@proxy.example:3128/",
        " http://[::1]:3128 ",
    ],
)
def test_valid_proxy_urls_are_returned_stripped(url: str) -> None:
    assert validate_proxy_url(url) == url.strip()


@pytest.mark.parametrize(
    "url",
    [
        "socks5://alice:hunter2@127.0.0.1:1080",
        "http://alice:hunter2@",
        "alice:hunter2@127.0.0.1:3128",
        "http://alice:hunter2@127.0.0.1:99999",
        "http://alice:hunter2@127.0.0.1:3128/path",
        "http://alice:hunter2@127.0.0.1:3128/?token=x",
        "http://alice:hunter2#x@127.0.0.1:3128",
        "http://alice:12?hunter2@127.0.0.1:3128",
        "",
    ],
)
def test_invalid_proxy_urls_are_configuration_errors_without_credentials(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        validate_proxy_url(url)
    text = f"{caught.value} {caught.value!r}"
    assert "hunter2" not in text
    assert "alice" not in text
    assert "token" not in text


def test_non_string_proxy_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="string"):
        validate_proxy_url(3128)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:hunter2@127.0.0.1:3128", "http://***@127.0.0.1:3128"),
        ("http://alice@proxy.example", "http://***@proxy.example:80"),
        ("https://proxy.example/", "https://proxy.example:443"),
        ("http://[::1]:3128", "http://[::1]:3128"),
        ("alice:hunter2@127.0.0.1:3128", "***@127.0.0.1:3128"),
        ("http://alice:12?x@127.0.0.1:3128", "http://***@127.0.0.1:3128"),
        ("http://alice:pa#ss@proxy.example", "http://***@proxy.example:80"),
        ("http://alice:hunter2@", "http://***@"),
    ],
)
def test_mask_proxy_url(url: str, shown: str) -> None:
    assert mask_proxy_url(url) == shown


def test_a_transport_rejects_a_bad_proxy() -> None:
    async def probe() -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ConfigurationError):
                AiohttpTransport(
                    session,
                    timeout=1.0,
                    connect_timeout=1.0,
                    proxy="ftp://alice:hunter2@127.0.0.1:21",
                )

    asyncio.run(probe())


# -- 4. proxies, over TLS end to end ----------------------------------------------------


@dataclass
class TLSApi:
    """An HTTPS server on loopback with the API's route; records what reached it."""

    base_url: str
    port: int
    client_context: ssl.SSLContext
    authorizations: list[str]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
async def tls_api(ca: trustme.CA, client_context: ssl.SSLContext) -> AsyncIterator[TLSApi]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    authorizations: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        authorizations.append(request.headers.get("Authorization", ""))
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_get(ENDPOINT_PATH, handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context)
        await site.start()
        port = runner.addresses[0][1]
        yield TLSApi(f"https://127.0.0.1:{port}", port, client_context, authorizations)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def borrowed_tls(context: ssl.SSLContext, **options: Any) -> AsyncIterator[AiohttpTransport]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield AiohttpTransport(session, timeout=5.0, connect_timeout=2.0, **options)


def assert_tunnel_hid_the_request(proxy: ConnectProxy, api: TLSApi, api_key: str) -> None:
    assert proxy.connects == [f"127.0.0.1:{api.port}"]
    seen = bytes(proxy.relayed) + b"".join(proxy.heads)
    assert b"Bearer" not in seen
    assert api_key.encode() not in seen
    assert ENDPOINT_PATH.encode() not in seen
    assert b"javan" not in seen
    assert api.authorizations == [f"Bearer {api_key}"]


async def test_https_through_an_explicit_proxy_goes_through_a_tunnel(
    tls_api: TLSApi, api_key: str
) -> None:
    async with (
        ConnectProxy() as proxy,
        borrowed_tls(tls_api.client_context, proxy=proxy.url) as transport,
    ):
        answer = await transport.send(build(tls_api.base_url, api_key))
    assert answer.status == 200
    assert answer.body == BODY
    assert_tunnel_hid_the_request(proxy, tls_api, api_key)


async def test_proxy_credentials_from_the_url_are_sent_to_the_proxy_only(
    tls_api: TLSApi, api_key: str, client_context: ssl.SSLContext
) -> None:
    async with ConnectProxy(credentials=("alice", "hunter2")) as proxy:
        transport = owned(proxy=proxy.url_with("alice", "hunter2"), ssl_context=client_context)
        try:
            answer = await transport.send(build(tls_api.base_url, api_key))
        finally:
            await transport.aclose()
    assert answer.status == 200
    assert_tunnel_hid_the_request(proxy, tls_api, api_key)
    assert b"Proxy-Authorization: Basic" in proxy.heads[0]


@pytest.mark.parametrize(
    ("credentials", "refuse", "status"),
    [(("alice", "hunter2"), False, "407"), (None, True, "403")],
)
async def test_a_proxy_refusing_the_tunnel_is_a_connect_error_naming_it_masked(
    tls_api: TLSApi,
    api_key: str,
    credentials: tuple[str, str] | None,
    refuse: bool,
    status: str,
) -> None:
    async with ConnectProxy(credentials=credentials, refuse_connect=refuse) as proxy:
        url = proxy.url_with("alice", "wrong-secret")
        async with borrowed_tls(tls_api.client_context, proxy=url) as transport:
            with pytest.raises(ConnectError) as caught:
                await transport.send(build(tls_api.base_url, api_key), target="javan")
    text = str(caught.value)
    assert f"http://***@127.0.0.1:{proxy.port}" in text
    assert f"127.0.0.1:{tls_api.port}" in text
    assert status in text
    assert tls_api.authorizations == []
    assert_clean(caught.value, api_key, "wrong-secret", "alice")


@pytest.mark.parametrize("kind", ["owned", "borrowed"])
async def test_a_dead_proxy_is_a_connect_error_naming_it_without_credentials(
    kind: str, tls_api: TLSApi, api_key: str
) -> None:
    port = free_port()
    url = f"http://alice:hunter2@127.0.0.1:{port}"
    if kind == "owned":
        transport = owned(proxy=url, ssl_context=tls_api.client_context)
        try:
            with pytest.raises(ConnectError) as caught:
                await transport.send(build(tls_api.base_url, api_key))
        finally:
            await transport.aclose()
    else:
        async with borrowed_tls(tls_api.client_context, proxy=url) as transport:
            with pytest.raises(ConnectError) as caught:
                await transport.send(build(tls_api.base_url, api_key))
    assert f"proxy http://***@127.0.0.1:{port}" in str(caught.value)
    assert_clean(caught.value, api_key, "hunter2", "alice")
    assert tls_api.authorizations == []


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
async def test_an_owned_session_honours_the_proxy_environment(
    variable: str, monkeypatch: pytest.MonkeyPatch, tls_api: TLSApi, api_key: str
) -> None:
    async with ConnectProxy() as proxy:
        monkeypatch.setenv(variable, proxy.url)
        transport = owned(ssl_context=tls_api.client_context)
        try:
            answer = await transport.send(build(tls_api.base_url, api_key))
            await transport.send(build(tls_api.base_url, api_key))
        finally:
            await transport.aclose()
    assert answer.status == 200
    assert proxy.connects == [f"127.0.0.1:{tls_api.port}"]  # one tunnel, kept alive
    seen = bytes(proxy.relayed)
    assert b"Bearer" not in seen
    assert api_key.encode() not in seen


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
async def test_no_proxy_bypasses_the_environment_proxy(
    no_proxy: str, monkeypatch: pytest.MonkeyPatch, tls_api: TLSApi, api_key: str
) -> None:
    async with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", no_proxy)
        transport = owned(ssl_context=tls_api.client_context)
        try:
            answer = await transport.send(build(tls_api.base_url, api_key))
        finally:
            await transport.aclose()
    assert answer.status == 200
    assert proxy.connects == []
    assert proxy.heads == []


async def test_an_explicit_proxy_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tls_api: TLSApi, api_key: str
) -> None:
    async with ConnectProxy() as chosen, ConnectProxy() as ambient:
        monkeypatch.setenv("HTTPS_PROXY", ambient.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        transport = owned(proxy=chosen.url, ssl_context=tls_api.client_context)
        try:
            answer = await transport.send(build(tls_api.base_url, api_key))
        finally:
            await transport.aclose()
    assert answer.status == 200
    assert chosen.connects == [f"127.0.0.1:{tls_api.port}"]
    assert ambient.heads == []


async def test_trust_env_false_and_borrowed_sessions_ignore_the_environment(
    monkeypatch: pytest.MonkeyPatch, tls_api: TLSApi, api_key: str
) -> None:
    async with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        transport = owned(trust_env=False, ssl_context=tls_api.client_context)
        try:
            assert (await transport.send(build(tls_api.base_url, api_key))).status == 200
        finally:
            await transport.aclose()
        async with borrowed_tls(tls_api.client_context) as borrowed:
            assert (await borrowed.send(build(tls_api.base_url, api_key))).status == 200
    assert proxy.heads == []


async def test_an_unusable_environment_proxy_is_skipped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tls_api: TLSApi,
    api_key: str,
) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://alice:hunter2@127.0.0.1:1080")
    with caplog.at_level(logging.WARNING, logger="keyapi_async"):
        transport = owned(ssl_context=tls_api.client_context)
    try:
        assert (await transport.send(build(tls_api.base_url, api_key))).status == 200
    finally:
        await transport.aclose()
    assert "socks5://***@127.0.0.1:1080" in caplog.text
    assert "hunter2" not in caplog.text


async def test_plain_http_through_a_proxy_is_forwarded_and_the_exposure_logged(
    caplog: pytest.LogCaptureFixture, api_key: str
) -> None:
    async with ScriptedServer([]) as server, ConnectProxy() as proxy:
        transport = owned(proxy=proxy.url)
        try:
            with caplog.at_level(logging.WARNING, logger="keyapi_async"):
                for _ in range(2):
                    answer = await transport.send(build(server.base_url, api_key))
                    assert answer.status == 200
        finally:
            await transport.aclose()
    assert proxy.connects == []
    request_line = f"GET {server.base_url}{ENDPOINT_PATH}?username=javan"
    assert proxy.forwarded == [request_line, request_line]
    assert server.requests == 2
    assert caplog.text.count("can read its requests") == 1
    assert api_key not in caplog.text


async def test_an_untrusted_certificate_is_a_connect_error(tls_api: TLSApi, api_key: str) -> None:
    async with transport_for("owned") as transport:  # trusts the system CAs only
        with pytest.raises(ConnectError) as caught:
            await transport.send(build(tls_api.base_url, api_key))
    assert f"127.0.0.1:{tls_api.port}" in str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert tls_api.authorizations == []
    assert_clean(caught.value, api_key)


async def test_an_https_proxy_carries_the_tunnel_inside_tls(
    ca: trustme.CA, tls_api: TLSApi, api_key: str
) -> None:
    proxy_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(proxy_context)
    async with ConnectProxy(ssl_context=proxy_context, credentials=("alice", "hunter2")) as proxy:
        url = proxy.url_with("alice", "hunter2")
        assert url.startswith("https://")
        transport = owned(proxy=url, ssl_context=tls_api.client_context)
        try:
            answer = await transport.send(build(tls_api.base_url, api_key))
        finally:
            await transport.aclose()
    assert answer.status == 200
    assert_tunnel_hid_the_request(proxy, tls_api, api_key)
