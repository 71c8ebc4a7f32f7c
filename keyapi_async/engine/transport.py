"""The only module that touches aiohttp: send one request, return status, headers and body.

No hidden re-sends (aiohttp's re-send after a connection reset is switched
off); no redirects, and error statuses never raise, even on a borrowed session;
every aiohttp failure becomes a :class:`~keyapi_async.TransportError` with no
secret in it and no aiohttp exception chained; an explicit ``proxy`` goes with
every request, else an owned session follows the environment.
Rationale: docs/decisions.md#proxies and #secrets, docs/errors.md.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import urllib.request
from collections.abc import Mapping
from http import HTTPStatus
from types import MappingProxyType
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import msgspec
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .._errors import ConfigurationError, ConnectError, RequestTimeoutError, TransportError
from .config import mask_proxy_url, validate_proxy_url
from .sansio import Request

_log = logging.getLogger(__name__)

# A query of these characters reads the same whether yarl re-quotes it or not.
_PLAIN_QUERY = re.compile(r"[A-Za-z0-9._~=&-]+")


class RawResponse(msgspec.Struct, frozen=True, gc=False):
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


def _env_proxies() -> dict[str, URL]:
    # As httpx and requests read them; one aiohttp cannot use (socks5://) is skipped.
    found: dict[str, URL] = {}
    for scheme, value in urllib.request.getproxies().items():
        if scheme not in ("http", "https", "all") or not value:
            continue
        if "://" not in value:
            value = "http://" + value  # "host:3128", as httpx and requests read it
        try:
            found[scheme] = URL(validate_proxy_url(value))
        except (ConfigurationError, ValueError):
            _log.warning(
                "ignoring the %s proxy from the environment, %r: only http(s) proxies are used",
                scheme,
                mask_proxy_url(value),
            )
    return found


def _endpoint_url(text: str) -> URL | None:
    """``text`` parsed, if a query can be attached to it as is (absolute, no query or fragment)."""
    try:
        url = URL(text)
    except ValueError:
        return None  # aiohttp says what is wrong with it
    return url if url.absolute and not url.raw_query_string and not url.raw_fragment else None


class AiohttpTransport:
    """Sends :class:`Request` objects over one pooled aiohttp session, owned or borrowed.

    Without ``session`` it opens its own, of up to ``pool_size`` connections
    trusting ``ssl_context`` (``None``: the system's certificates), and
    :meth:`aclose` closes it; a borrowed session is left open. ``proxy`` goes
    with every request; without it, ``trust_env`` (default: only for an owned
    session) picks one from the environment.
    """

    __slots__ = (
        "_env",
        "_headers_given",
        "_headers_sent",
        "_owns",
        "_proxy",
        "_proxy_by_origin",
        "_session",
        "_timeout",
        "_urls",
    )

    def __init__(
        self,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: float,
        connect_timeout: float,
        proxy: str | None = None,
        trust_env: bool | None = None,
        pool_size: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._proxy = None if proxy is None else URL(validate_proxy_url(proxy))
        self._owns = session is None
        if session is None:
            connector = aiohttp.TCPConnector(limit=pool_size, ssl=ssl_context or True)
            # No cookies: the API needs none, and a jar would grow across a batch.
            session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False
            )
        self._session = session
        # One timeout object for every request: built per call it shows on the hot path.
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        env = self._owns if trust_env is None else trust_env
        self._env = _env_proxies() if proxy is None and env else {}
        self._proxy_by_origin: dict[str, URL | None] = {}
        # Parsed once, not per request: every request of a client carries the
        # builder's one read-only header mapping and one of a few endpoint URLs.
        self._urls: dict[str, URL | None] = {}
        self._headers_given: Mapping[str, str] | None = None
        self._headers_sent: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())
        # Private aiohttp state (3.9 to 3.14 at least); tests/test_transport.py
        # fails if it disappears, and so does this warning.
        if hasattr(session, "_retry_connection"):
            session._retry_connection = False
        else:  # pragma: no cover - depends on a future aiohttp
            _log.warning(
                "aiohttp %s has no ClientSession._retry_connection: it may re-send a request "
                "after a connection reset without keyapi_async counting it",
                aiohttp.__version__,
            )

    def _proxy_for(self, url: str) -> URL | None:
        # Cached per origin: the environment is read once, not per request.
        end = url.find("/", url.find("//") + 2)
        origin = url if end < 0 else url[:end]
        if origin in self._proxy_by_origin:
            return self._proxy_by_origin[origin]
        proxy = self._proxy
        parts = urlsplit(origin)
        if proxy is None and self._env and not urllib.request.proxy_bypass(parts.netloc):
            proxy = self._env.get(parts.scheme) or self._env.get("all")
        if proxy is not None and parts.scheme != "https":
            _log.warning(
                "%s is plain http: the proxy %s can read its requests, API key included",
                origin,
                mask_proxy_url(str(proxy)),
            )
        self._proxy_by_origin[origin] = proxy
        return proxy

    def _url(self, url: str) -> URL | str:
        # What aiohttp would make of ``url``, at a third of the cost: the part
        # before the query parsed once, the query (already percent-encoded by
        # the builder) attached as it is. Anything unusual goes as the string.
        head, _, query = url.partition("?")
        parsed = self._urls.get(head)
        if parsed is None:
            if head in self._urls or len(self._urls) >= 64:
                return url
            self._urls[head] = parsed = _endpoint_url(head)
            if parsed is None:
                return url
        return parsed.with_query(query) if _PLAIN_QUERY.fullmatch(query) else url

    def _headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        # aiohttp copies a multidict about three times faster than other mappings.
        if headers is self._headers_given:
            return self._headers_sent
        if type(headers) is not MappingProxyType:  # may change between requests
            return headers
        self._headers_given = headers
        self._headers_sent = CIMultiDictProxy(CIMultiDict(headers))
        return self._headers_sent

    async def send(self, request: Request, *, target: str | None = None) -> RawResponse:
        """Send ``request`` once: its status, headers and body, or a ``TransportError``."""
        proxy = self._proxy_for(request.url) if self._proxy is not None or self._env else None
        try:
            async with self._session.request(
                request.method,
                self._url(request.url),
                headers=self._headers(request.headers),
                allow_redirects=False,
                raise_for_status=False,
                timeout=self._timeout,
                proxy=proxy,
            ) as response:
                body = await response.read()
                return RawResponse(response.status, response.headers, body)
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind, message = self._describe(exc, request.url, proxy)
        # Raised with no exception being handled, so that not even ``__context__``
        # refers to aiohttp's exception, whose repr can show the request headers.
        raise kind(message, target=target)

    def _describe(
        self, exc: BaseException, url: str, proxy: URL | None
    ) -> tuple[type[TransportError], str]:
        # Hosts as host:port (no query), proxies masked, OS errors by their text.
        where = mask_proxy_url(url).partition("://")[2].lower()
        if proxy is not None:
            where += f" through proxy {mask_proxy_url(str(proxy))}"
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return ConnectError, f"no connection to {where} within {self._timeout.sock_connect} s"
        if isinstance(exc, TimeoutError):
            return RequestTimeoutError, f"no complete answer within {self._timeout.total} s"
        if isinstance(exc, aiohttp.ClientHttpProxyError):
            # Not the proxy's own reason phrase: that is text from a third party.
            status = str(exc.status)
            with contextlib.suppress(ValueError):
                status += f" {HTTPStatus(exc.status).phrase}"
            return ConnectError, f"the proxy refused the tunnel to {where}: HTTP {status}"
        if isinstance(exc, aiohttp.ClientConnectorError):
            detail = exc.strerror or type(exc.os_error).__name__
            return ConnectError, f"cannot connect to {where}: {detail}"
        if isinstance(exc, aiohttp.ClientPayloadError):
            return TransportError, "connection closed before the whole response body arrived"
        if isinstance(exc, aiohttp.ClientConnectionError):
            # A ClientResponseError's text would show the request headers.
            unsafe = isinstance(exc, aiohttp.ClientResponseError)
            detail = type(exc).__name__ if unsafe else str(exc) or "no detail"
            return TransportError, f"connection lost ({where}): {type(exc).__name__}: {detail}"
        return TransportError, f"HTTP client error: {type(exc).__name__}"

    @property
    def closed(self) -> bool:
        """Whether the underlying session is closed."""
        return self._session.closed

    async def aclose(self) -> None:
        """Close the session if this transport created it."""
        if self._owns and not self._session.closed:
            await self._session.close()
