"""The only module that touches aiohttp: send one request, return status, headers and body.

Every aiohttp failure becomes a :class:`~keyapi_async.TransportError` raised
after the ``except`` clause has ended: aiohttp's own exceptions can carry
request headers (and with them the API key) in their reprs, so they are never
chained into ours, neither as ``__cause__`` nor as ``__context__``. Only
their class name and, for connection errors, their text (host and OS error)
are kept.

Each request passes ``raise_for_status=False`` and ``allow_redirects=False``
itself, so a caller's session configured otherwise cannot turn an API error
answer into a transport error or send the key on to a redirect target.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from ._errors import RequestTimeoutError, TransportError
from ._sansio import Request

__all__ = ["AiohttpTransport", "RawResponse", "Transport"]


@dataclass(frozen=True, slots=True)
class RawResponse:
    """What came back: HTTP status, headers (case-insensitive) and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """What the client needs from a transport: send one request, close."""

    async def send(self, request: Request, *, target: str | None = None) -> RawResponse:
        """Send ``request``; return the answer or raise a TransportError."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class AiohttpTransport:
    """Sends :class:`Request` objects over one pooled aiohttp session.

    The session is either owned (created here, closed by :meth:`aclose`) or
    borrowed from the caller (left open).
    """

    __slots__ = ("_owns", "_session", "_timeout")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout: float,
        connect_timeout: float,
        owns_session: bool,
    ) -> None:
        self._session = session
        self._owns = owns_session
        # One timeout object for every request: built per call it would be
        # a measurable share of the hot path.
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)

    @classmethod
    def create(cls, *, pool_size: int, timeout: float, connect_timeout: float) -> AiohttpTransport:
        """Open an owned session whose pool holds up to ``pool_size`` connections."""
        connector = aiohttp.TCPConnector(limit=pool_size, limit_per_host=pool_size)
        session = aiohttp.ClientSession(
            connector=connector,
            # The key lives in per-request headers only; cookies are never
            # needed by the API and would grow without bound across a batch.
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )
        return cls(session, timeout=timeout, connect_timeout=connect_timeout, owns_session=True)

    async def send(self, request: Request, *, target: str | None = None) -> RawResponse:
        """Send ``request`` and read the whole body, or raise a TransportError."""
        error: TransportError
        try:
            async with self._session.request(
                request.method,
                request.url,
                headers=request.headers,
                allow_redirects=False,
                raise_for_status=False,
                timeout=self._timeout,
            ) as response:
                body = await response.read()
                return RawResponse(response.status, response.headers, body)
        except TimeoutError:
            error = RequestTimeoutError(
                f"no complete answer within {self._timeout.total} s", target=target
            )
        except aiohttp.ClientPayloadError:
            error = TransportError(
                "connection closed before the whole response body arrived", target=target
            )
        except aiohttp.ClientConnectionError as exc:
            error = TransportError(
                f"connection failed: {type(exc).__name__}: {_safe_text(exc)}", target=target
            )
        except aiohttp.ClientError as exc:
            error = TransportError(f"HTTP client error: {type(exc).__name__}", target=target)
        # Raised here, with no exception being handled, so that not even
        # ``__context__`` refers to aiohttp's exception (``raise ... from None``
        # only hides it from tracebacks; a ClientResponseError's repr shows
        # the request headers, Authorization included).
        raise error

    @property
    def closed(self) -> bool:
        """Whether the underlying session is closed."""
        return self._session.closed

    async def aclose(self) -> None:
        """Close the session if this transport created it."""
        if self._owns and not self._session.closed:
            await self._session.close()


def _safe_text(exc: aiohttp.ClientConnectionError) -> str:
    # Connection errors describe the socket (host, port, errno), never the
    # request headers; ClientResponseError, which does, is not one of them.
    if isinstance(exc, aiohttp.ClientResponseError):
        return type(exc).__name__
    return str(exc) or "no detail"
