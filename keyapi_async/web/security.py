"""The gallery's defences, as aiohttp middlewares: strict headers, Host check, optional token.

* **Headers on every answer.** A Content-Security-Policy that allows only
  this origin's own script, style, images and media (``default-src 'self'``,
  no inline script, no ``eval``, no plugins, no framing), ``X-Content-Type-Options: nosniff`` and
  ``Referrer-Policy: no-referrer``. Templates escape every text
  (Jinja2 autoescape); the CSP is the second wall, should a template ever
  forget.
* **The Host header must name the loopback address we bound.** A page on
  any web site can make a browser send requests to ``127.0.0.1:8080``
  through a DNS name it controls (DNS rebinding); such a request carries
  that name as its Host and is refused (421). Binding another address
  (``--allow-remote``) turns the check off: the user chose the names.
* **An optional token.** ``Authorization: Bearer T`` (for a Prometheus
  scraper), a cookie, or once ``?token=T``, which sets the cookie
  (``HttpOnly``, ``SameSite=Strict``) and redirects to the same URL without
  it, so the token does not linger in the address bar. Compared in
  constant time. ``/healthz`` and ``/readyz`` stay open: probes carry no
  credentials and the answers reveal nothing.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from aiohttp import typedefs, web

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "TOKEN_COOKIE",
    "host_check",
    "loopback_hosts",
    "security_headers",
    "token_check",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""What every page may load: its own origin's files, nothing inline."""

TOKEN_COOKIE: Final = "keyapi_gallery_token"
"""The cookie a ``?token=`` visit sets."""

_OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
_LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "[::1]")


def loopback_hosts(port: int) -> frozenset[str]:
    """The Host header values a browser sends to a loopback server on ``port``."""
    return frozenset(f"{name}:{port}" for name in _LOOPBACK_NAMES) | frozenset(_LOOPBACK_NAMES)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Add the CSP and friends to every answer, errors included; and the handler's time.

    ``Server-Timing: app;dur=<ms>`` is the time the request spent in the
    app (queries and templates, not the network): what the benchmark reads.
    """
    started = time.perf_counter()
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    headers = response.headers
    if not response.prepared:  # a file response streams its headers early
        headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["X-Frame-Options"] = "DENY"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if isinstance(response, web.HTTPException):
        raise response
    return response


def host_check(allowed: Iterable[str] | None) -> typedefs.Middleware:
    """Refuse (421) a request whose Host is not in ``allowed`` (``None``: accept any)."""
    names = None if allowed is None else frozenset(h.lower() for h in allowed)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if names is not None and request.host.lower() not in names:
            raise web.HTTPMisdirectedRequest(text="unexpected Host header\n")
        return await handler(request)

    return check


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def token_check(token: str | None) -> typedefs.Middleware:
    """Require ``token`` (bearer header, cookie or ``?token=``) on every path but the probes."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None or request.path in _OPEN_PATHS:
            return await handler(request)
        auth = request.headers.get("Authorization", "")
        bearer = auth[7:] if auth.startswith("Bearer ") else None
        if _same(bearer, token) or _same(request.cookies.get(TOKEN_COOKIE), token):
            return await handler(request)
        if _same(request.query.get("token"), token):
            query = request.url.query.copy()
            query.popall("token")
            found = web.HTTPSeeOther(request.url.relative().with_query(query))
            found.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
            raise found
        raise web.HTTPUnauthorized(
            text="a token is required: open the URL keyapi-stories serve printed\n",
            headers={"WWW-Authenticate": 'Bearer realm="keyapi-stories"'},
        )

    return check
