"""An in-memory transport that answers with an :class:`Emulator`'s logic, without sockets."""

from __future__ import annotations

import asyncio
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

from .._errors import TransportError
from ..engine.sansio import Request
from ..engine.transport import RawResponse
from ._app import Emulator
from ._config import ENDPOINTS, Fault

__all__ = ["EmulatorTransport"]

# What aiohttp's router answers for an unknown path or a wrong method.
_NOT_FOUND: Final = (404, "text/plain; charset=utf-8", b"404: Not Found")
_NOT_ALLOWED: Final = (405, "text/plain; charset=utf-8", b"405: Method Not Allowed")


class EmulatorTransport:
    """A :class:`~keyapi_async.engine.transport.Transport` served by an emulator in memory.

    Pass it to ``KeyAPIClient(transport=EmulatorTransport(emulator))``: each
    request is decided by :meth:`Emulator.decide` (the code path the HTTP
    handler uses too, so logs, counts, credits, the QPS window and faults
    behave identically), the answer's latency is awaited with
    :func:`asyncio.sleep`, and no socket is opened. On a virtual-clock event
    loop a batch at 5 s latency therefore runs in milliseconds of real time
    with exact timestamps.

    Only the URL's path and query and the ``Authorization`` header are read;
    the host is ignored, so any ``base_url`` works (a path prefix in it gives
    404, as over HTTP). :attr:`Fault.RESET` raises :class:`TransportError`
    after the latency, as a cut connection would; :attr:`Fault.TRUNCATED`
    returns the half body. Media URLs are not rewritten (that needs the HTTP
    server's media route).

    The emulator is not owned: :meth:`aclose` only stops this transport.
    """

    __slots__ = ("_closed", "emulator")

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        """The emulator answering the requests."""
        self._closed = False

    async def send(self, request: Request, *, target: str | None = None) -> RawResponse:
        """Answer ``request`` as the emulator would over HTTP, after its latency."""
        if self._closed:
            raise TransportError("transport is closed", target=target)
        parts = urlsplit(request.url)
        if parts.path not in ENDPOINTS:
            return _plain(*_NOT_FOUND)
        if request.method != "GET":
            return _plain(*_NOT_ALLOWED)
        query: dict[str, str] = {}
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            # First value wins, as with aiohttp's request.query.get().
            query.setdefault(name, value)
        answer = self.emulator.decide(query, _authorization(request), path=parts.path)
        if answer.delay > 0:
            await asyncio.sleep(answer.delay)
        if answer.fault is Fault.RESET:
            raise TransportError(
                "connection reset before the whole response body arrived (emulated)",
                target=target,
            )
        headers = CIMultiDict(answer.headers)
        headers["Content-Length"] = str(len(answer.body))
        return RawResponse(answer.status, CIMultiDictProxy(headers), answer.body)

    async def aclose(self) -> None:
        """Stop answering; later sends raise :class:`TransportError`."""
        self._closed = True

    def __repr__(self) -> str:
        return f"EmulatorTransport(closed={self._closed})"


def _authorization(request: Request) -> str | None:
    headers = request.headers
    value = headers.get("Authorization")
    if value is not None:
        return value
    for name, candidate in headers.items():
        if name.lower() == "authorization":
            return candidate
    return None


def _plain(status: int, content_type: str, body: bytes) -> RawResponse:
    headers = CIMultiDict({"Content-Type": content_type, "Content-Length": str(len(body))})
    return RawResponse(status, CIMultiDictProxy(headers), body)
