"""A small HTTP proxy on loopback for tests: ``CONNECT`` tunnels and absolute-form forwarding.

It records what a real proxy would see: the ``CONNECT`` targets, the request
lines it forwarded, the heads it parsed itself (``Proxy-Authorization``
included) and every byte it relayed in either direction, so a test can assert
that a tunnelled request never showed the proxy the API key or the path.

Only loopback upstreams are served (anything else gets 403), and every
connection and task is closed on exit so tests run with warnings as errors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from types import TracebackType

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class ConnectProxy:
    """``async with ConnectProxy() as proxy:`` serves on ``proxy.url`` until the block ends.

    ``credentials=("user", "pass")`` makes it demand ``Proxy-Authorization``
    (407 otherwise). ``refuse_connect=True`` answers every ``CONNECT`` with 403. With
    ``ssl_context`` clients reach the proxy itself over TLS (an https proxy).
    """

    def __init__(
        self,
        *,
        credentials: tuple[str, str] | None = None,
        refuse_connect: bool = False,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.credentials = credentials
        self.ssl_context = ssl_context
        self.refuse_connect = refuse_connect
        self.connects: list[str] = []
        """``host:port`` of every CONNECT request, in order."""
        self.forwarded: list[str] = []
        """Request lines of absolute-form requests forwarded to a plain-http origin."""
        self.heads: list[bytes] = []
        """Every request head the proxy parsed itself (before any tunnel)."""
        self.relayed = bytearray()
        """Every byte relayed between client and upstream, both directions."""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` with an ``ssl_context``), without credentials."""
        return f"{self._scheme}://127.0.0.1:{self.port}"

    @property
    def _scheme(self) -> str:
        return "http" if self.ssl_context is None else "https"

    def url_with(self, user: str, password: str) -> str:
        """The proxy's URL carrying ``user:password@``."""
        return f"{self._scheme}://{user}:{password}@127.0.0.1:{self.port}"

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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

    def _track(self, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._track(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return
            self.heads.append(head)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if self.credentials is not None and not self._authorized(head):
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\n'
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                return
            if method == "CONNECT":
                connection = await self._connect(target, writer)
                if connection is None:
                    return
                up_reader, upstream = connection
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await self._pipe_both(reader, writer, up_reader, upstream)
            elif target.startswith("http://"):
                await self._forward(method, target, head, reader, writer)
            else:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            # Cancelled only by __aexit__; a handler task ending cancelled
            # makes asyncio.start_server log an error.
            pass
        finally:
            if upstream is not None:
                await self._close(upstream)
            await self._close(writer)
            self._tasks.discard(task)

    def _authorized(self, head: bytes) -> bool:
        assert self.credentials is not None
        expected = base64.b64encode(":".join(self.credentials).encode()).decode()
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "proxy-authorization":
                return value.strip() == f"Basic {expected}"
        return False

    async def _connect(
        self, target: str, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        self.connects.append(target)
        host, _, port = target.rpartition(":")
        if self.refuse_connect or host not in _LOOPBACK:
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return None
        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return None
        self._track(up_writer)
        return up_reader, up_writer

    async def _forward(
        self,
        method: str,
        target: str,
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        # Absolute-form (RFC 9112 §3.2.2): rewrite to origin-form, drop the
        # hop-by-hop proxy headers and close after one answer (no body: GET).
        self.forwarded.append(f"{method} {target}")
        rest = target[len("http://") :]
        authority, slash, path = rest.partition("/")
        connection = await self._connect(authority, writer)
        self.connects.pop()  # not a CONNECT: only _connect's dial is reused
        if connection is None:
            return
        up_reader, up_writer = connection
        lines = [f"{method} {slash}{path} HTTP/1.1".encode()]
        for line in head.split(b"\r\n")[1:]:
            name = line.split(b":", 1)[0].strip().lower()
            if line and name not in (b"proxy-authorization", b"proxy-connection", b"connection"):
                lines.append(line)
        lines.append(b"Connection: close")
        request = b"\r\n".join(lines) + b"\r\n\r\n"
        self.relayed += request
        up_writer.write(request)
        try:
            await up_writer.drain()
            # The client must not reuse this connection: say so in the answer.
            answer = await up_reader.readuntil(b"\r\n\r\n")
            kept = [
                line
                for line in answer[:-4].split(b"\r\n")
                if line.split(b":", 1)[0].strip().lower() not in (b"connection", b"keep-alive")
            ]
            answer = b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n"
            self.relayed += answer
            writer.write(answer)
            await self._pipe(up_reader, writer)
        except asyncio.IncompleteReadError:
            pass
        finally:
            await self._close(up_writer)

    async def _pipe_both(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        to_upstream = asyncio.ensure_future(self._pipe(reader, up_writer))
        to_client = asyncio.ensure_future(self._pipe(up_reader, writer))
        try:
            await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in (to_upstream, to_client):
                pipe.cancel()
            await asyncio.gather(to_upstream, to_client, return_exceptions=True)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await source.read(65536):
                self.relayed += chunk
                sink.write(chunk)
                await sink.drain()
