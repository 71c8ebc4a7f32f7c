"""The only module that touches aiohttp: send one request, return status, headers and body.

Three things here exist because each request costs the caller money:

* **No hidden re-sends.** aiohttp re-sends an idempotent request once, on a
  new connection, when a pooled connection is closed or reset before the
  answer's headers arrive (``ClientSession._retry_connection``, after RFC 9112
  §9.3.1). Each re-send is a paid request the client never counted, so it is
  switched off on the session this transport uses, owned or borrowed: a
  borrowed session gets the same treatment for all its requests. Retrying is
  the retry policy's job, through the rate gate and the attempt counter.
* **Errors without secrets.** Every aiohttp failure becomes a
  :class:`~keyapi_async.TransportError` raised after the ``except`` clause has
  ended: aiohttp's exceptions can carry request headers (the API key) or the
  proxy's credentials in their reprs, so they are chained in neither as
  ``__cause__`` nor as ``__context__``. Messages name hosts as ``host:port``
  (no query string) and proxies with their credentials masked. Failing to open
  a connection (refused, DNS, TLS handshake, connect timeout, proxy refused or
  answering the ``CONNECT`` with an error) is a
  :class:`~keyapi_async.ConnectError`; a connection lost after the request
  went out stays a plain TransportError, the total timeout a
  :class:`~keyapi_async.RequestTimeoutError`.
* **Proxies.** An explicit ``proxy`` URL (credentials allowed) is passed with
  every request, so a borrowed session uses it too. Otherwise an owned session
  honours the environment like httpx and requests: ``HTTPS_PROXY`` /
  ``HTTP_PROXY`` by the target's scheme, ``ALL_PROXY`` as fallback (aiohttp's
  own ``trust_env`` ignores it), ``NO_PROXY`` to bypass, read through
  :func:`urllib.request.getproxies` (so macOS and Windows system settings
  apply when no variable is set). The environment is read once per transport
  and origin, not per request, and aiohttp's ``trust_env`` stays off: it would
  cost two thread hops per request and read ``~/.netrc``, whose entry for the
  API host would clash with our ``Authorization`` header. An explicit proxy
  wins over the environment, ``NO_PROXY`` included. An https target is reached
  through a ``CONNECT`` tunnel, so the proxy sees ``host:port`` and encrypted
  bytes, never the key or the path; through a proxy, a plain-http target's
  request (key included) is readable by the proxy, which is logged once.

Each request passes ``raise_for_status=False`` and ``allow_redirects=False``
itself, so a caller's session configured otherwise cannot turn an API error
answer into a transport error or send the key on to a redirect target.
"""

from __future__ import annotations

import logging
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from ._config import mask_proxy_url, validate_proxy_url
from ._errors import ConfigurationError, ConnectError, RequestTimeoutError, TransportError
from ._sansio import Request

__all__ = [
    "AiohttpTransport",
    "RawResponse",
    "Transport",
]

_log = logging.getLogger(__name__)


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


def _env_proxies() -> dict[str, URL]:
    # Only the schemes the API can use, plus ALL_PROXY as the fallback that
    # httpx and requests honour. A value aiohttp cannot use (socks5://, say)
    # is skipped with a warning rather than failing every request, as
    # aiohttp's own trust_env does; a proxy given explicitly is checked strictly.
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


def _origin(url: str) -> str:
    start = url.find("//") + 2
    end = url.find("/", start)
    return url if end < 0 else url[:end]


def _host_port(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _disable_hidden_retry(session: aiohttp.ClientSession) -> None:
    # Private aiohttp state (3.9 to 3.14 at least). If it ever disappears the
    # test suite fails (tests/test_transport.py), and here the warning says
    # that re-sends may be back.
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    else:  # pragma: no cover - depends on a future aiohttp
        _log.warning(
            "aiohttp %s has no ClientSession._retry_connection: it may re-send a request "
            "after a connection reset without keyapi_async counting it",
            aiohttp.__version__,
        )


class AiohttpTransport:
    """Sends :class:`Request` objects over one pooled aiohttp session.

    The session is either owned (created by :meth:`create`, closed by
    :meth:`aclose`) or borrowed from the caller (left open). In both cases its
    silent re-send of a request after a connection reset is switched off (see
    the module docstring): every request on the wire is one the client counted.

    ``proxy`` (a URL checked by :func:`validate_proxy_url`) goes with every
    request. Without it, ``trust_env`` makes the transport pick a proxy from
    the environment per origin; for a borrowed session it defaults to off, so
    the session's own ``proxy``/``trust_env`` settings decide.
    """

    __slots__ = ("_env", "_owns", "_proxy", "_proxy_by_origin", "_session", "_timeout")

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        timeout: float,
        connect_timeout: float,
        owns_session: bool,
        proxy: str | None = None,
        trust_env: bool = False,
    ) -> None:
        self._session = session
        self._owns = owns_session
        # One timeout object for every request: built per call it would be
        # a measurable share of the hot path.
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._proxy = None if proxy is None else URL(validate_proxy_url(proxy))
        self._env = _env_proxies() if proxy is None and trust_env else {}
        # The API has one origin, so this holds one entry: the environment is
        # consulted once, not on every request.
        self._proxy_by_origin: dict[str, URL | None] = {}
        _disable_hidden_retry(session)

    @classmethod
    def create(
        cls,
        *,
        pool_size: int,
        timeout: float,
        connect_timeout: float,
        proxy: str | None = None,
        trust_env: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> AiohttpTransport:
        """Open an owned session whose pool holds up to ``pool_size`` connections.

        ``proxy``: explicit proxy URL, or ``None`` to follow the environment
        when ``trust_env`` is true. ``ssl_context``: certificates to trust for
        https (``None``: the system's).
        """
        connector = aiohttp.TCPConnector(
            limit=pool_size,
            limit_per_host=pool_size,
            ssl=True if ssl_context is None else ssl_context,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            # The key lives in per-request headers only; cookies are never
            # needed by the API and would grow without bound across a batch.
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )
        return cls(
            session,
            timeout=timeout,
            connect_timeout=connect_timeout,
            owns_session=True,
            proxy=proxy,
            trust_env=trust_env,
        )

    def _proxy_for(self, url: str) -> URL | None:
        origin = _origin(url)
        try:
            return self._proxy_by_origin[origin]
        except KeyError:
            pass
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

    async def send(self, request: Request, *, target: str | None = None) -> RawResponse:
        """Send ``request`` and read the whole body, or raise a TransportError."""
        proxy = self._proxy_for(request.url) if self._proxy is not None or self._env else None
        error: TransportError
        try:
            async with self._session.request(
                request.method,
                request.url,
                headers=request.headers,
                allow_redirects=False,
                raise_for_status=False,
                timeout=self._timeout,
                proxy=proxy,
            ) as response:
                body = await response.read()
                return RawResponse(response.status, response.headers, body)
        except aiohttp.ConnectionTimeoutError:
            error = ConnectError(
                f"no connection to {self._where(request.url, proxy)} "
                f"within {self._timeout.sock_connect} s",
                target=target,
            )
        except TimeoutError:
            error = RequestTimeoutError(
                f"no complete answer within {self._timeout.total} s", target=target
            )
        except aiohttp.ClientHttpProxyError as exc:
            error = ConnectError(
                f"the proxy refused the tunnel to {self._where(request.url, proxy)}: "
                f"HTTP {_status_text(exc.status)}",
                target=target,
            )
        except aiohttp.ClientConnectorError as exc:
            # host:port of the connection key (the proxy's when there is one),
            # and the OS error's text: never headers, the query or credentials.
            detail = exc.strerror or type(exc.os_error).__name__
            error = ConnectError(
                f"cannot connect to {self._where(request.url, proxy)}: {detail}", target=target
            )
        except aiohttp.ClientPayloadError:
            error = TransportError(
                "connection closed before the whole response body arrived", target=target
            )
        except aiohttp.ClientConnectionError as exc:
            error = TransportError(
                f"connection lost ({self._where(request.url, proxy)}): "
                f"{type(exc).__name__}: {_safe_text(exc)}",
                target=target,
            )
        except aiohttp.ClientError as exc:
            error = TransportError(f"HTTP client error: {type(exc).__name__}", target=target)
        # Raised here, with no exception being handled, so that not even
        # ``__context__`` refers to aiohttp's exception (``raise ... from None``
        # only hides it from tracebacks; a ClientResponseError's repr shows
        # the request headers, Authorization or Proxy-Authorization included).
        raise error

    @staticmethod
    def _where(url: str, proxy: URL | None) -> str:
        where = _host_port(url)
        if proxy is not None:
            where += f" through proxy {mask_proxy_url(str(proxy))}"
        return where

    @property
    def closed(self) -> bool:
        """Whether the underlying session is closed."""
        return self._session.closed

    async def aclose(self) -> None:
        """Close the session if this transport created it."""
        if self._owns and not self._session.closed:
            await self._session.close()


def _status_text(status: int) -> str:
    # The proxy's own reason phrase is not shown: it is text from a third party.
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _safe_text(exc: aiohttp.ClientConnectionError) -> str:
    # Connection errors describe the socket (host, port, errno), never the
    # request headers; ClientResponseError, which does, is not one of them.
    if isinstance(exc, aiohttp.ClientResponseError):
        return type(exc).__name__
    return str(exc) or "no detail"
