"""The only module that touches aiohttp: send one request, return status, headers and body.

Every aiohttp failure becomes a :class:`~keyapi_async.TransportError` raised
``from None``: aiohttp's own exceptions can carry request headers (and with
them the API key) in their reprs, so they are never chained into ours. Only
their class name and, for connection errors, their text (host and OS error)
are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from ._errors import RequestTimeoutError, TransportError
from ._sansio import Request

__all__ = ["AiohttpTransport", "RawResponse"]


@dataclass(frozen=True, slots=True)
class RawResponse:
    """What came back: HTTP status, headers (case-insensitive) and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


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
        try:
            async with self._session.request(
                request.method,
                request.url,
                headers=request.headers,
                allow_redirects=False,
                timeout=self._timeout,
            ) as response:
                body = await response.read()
                return RawResponse(response.status, response.headers, body)
        except TimeoutError:
            raise RequestTimeoutError(
                f"no complete answer within {self._timeout.total} s", target=target
            ) from None
        except aiohttp.ClientPayloadError:
            raise TransportError(
                "connection closed before the whole response body arrived", target=target
            ) from None
        except aiohttp.ClientConnectionError as exc:
            raise TransportError(
                f"connection failed: {type(exc).__name__}: {_safe_text(exc)}", target=target
            ) from None
        except aiohttp.ClientError as exc:
            raise TransportError(
                f"HTTP client error: {type(exc).__name__}", target=target
            ) from None

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
