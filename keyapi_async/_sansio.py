"""The protocol without I/O: build a request, interpret an answer (all pure).

Nothing here touches the network or the clock unless handed one, so every
branch is tested directly with bytes. The transport (:mod:`._transport`) sends
what :class:`RequestBuilder` builds and hands ``(status, headers, body)`` back
to :func:`parse_response`.

How an answer is judged:

* HTTP status >= 300 is an error whatever the body says; its class follows the
  status (400, 401, 402, 429, 5xx), the body's ``code``/``message``/``requestId``
  are attached when the body is the API's JSON. A non-JSON error page (a proxy's
  HTML 502) still maps by status, so a 502 is a retryable :class:`ServerError`.
* A 2xx whose body is not the API's JSON (HTML, empty, truncated) is a
  :class:`ResponseDecodeError`: never mistaken for "no stories".
* A 2xx whose body ``code`` is non-zero is an error mapped by that code (a
  200 carrying ``code: 429`` is a rate limit).
* ``code == 0`` with ``data.data`` null or ``items: []`` is a normal, empty reel.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote

import msgspec

from ._errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)
from ._targets import Target
from .models import (
    ErrorEnvelope,
    Reel,
    StoriesEnvelope,
    decode_envelope,
    decode_error_envelope,
)

__all__ = [
    "ENDPOINT_PATH",
    "Request",
    "RequestBuilder",
    "error_for",
    "parse_response",
    "parse_retry_after",
]

ENDPOINT_PATH = "/v1/instagram/fetch_user_stories"
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")
_SNIPPET_BYTES = 160


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, ready for a transport. Its repr never shows the headers."""

    method: str
    url: str
    headers: Mapping[str, str]

    def __repr__(self) -> str:
        return f"Request(method={self.method!r}, url={self.url!r}, headers=<hidden>)"


class RequestBuilder:
    """Builds requests for targets; the endpoint and headers are computed once.

    The headers mapping is shared by every request it builds (read-only), so
    the hot path allocates one URL string and nothing else.
    """

    __slots__ = ("_endpoint", "_headers")

    def __init__(self, *, base_url: str, api_key: str, user_agent: str) -> None:
        self._endpoint = base_url.rstrip("/") + ENDPOINT_PATH + "?"
        self._headers: Mapping[str, str] = MappingProxyType(
            {
                "Authorization": f"Bearer {api_key}",
                "User-Agent": user_agent,
                "Accept": "application/json",
            }
        )

    def build(self, target: Target) -> Request:
        """Return the GET request that fetches ``target``'s stories."""
        kind, value = target.query
        # Validated targets hold only [a-z0-9._] or digits, unreserved in a
        # query: one regex check is cheaper than quote(), which stays as the
        # defence for a Target built without validation.
        if not _UNRESERVED.fullmatch(value):
            value = quote(value, safe="")
        return Request("GET", f"{self._endpoint}{kind}={value}", self._headers)

    def __repr__(self) -> str:
        return f"RequestBuilder(endpoint={self._endpoint[:-1]!r})"


def _snippet(body: bytes) -> str:
    return body[:_SNIPPET_BYTES].decode("utf-8", errors="replace")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Plain dicts are case-sensitive, aiohttp's CIMultiDictProxy is not; scan
    # so that both work. Only the error path calls this.
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Read how long the server asks us to wait, in seconds, or ``None``.

    ``retry-after-ms`` (milliseconds, as OpenAI's API sends) wins over
    ``Retry-After``, which may be delay-seconds (fractions tolerated) or an
    HTTP-date, measured against ``now`` (POSIX seconds; defaults to the wall
    clock). Missing, unparseable, non-finite, zero or negative values give
    ``None`` so that the caller falls back to its own backoff.
    """
    raw_ms = _header(headers, "retry-after-ms")
    if raw_ms is not None:
        try:
            millis = float(raw_ms.strip())
        except ValueError:
            millis = math.nan
        if math.isfinite(millis) and millis > 0:
            return millis / 1000.0
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    text = raw.strip()
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        seconds = _seconds_until_http_date(text, now)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


def _seconds_until_http_date(text: str, now: float | None) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are always GMT; a zone-less parse (the asctime form
        # ``Sun Nov  6 08:49:37 1994``, or ``-0000``) means GMT too.
        when = when.replace(tzinfo=datetime.UTC)
    if now is None:
        import time

        now = time.time()
    return when.timestamp() - now


def error_for(
    *,
    status: int,
    code: int | None,
    message: str,
    request_id: str | None,
    target: str | None,
    headers: Mapping[str, str],
) -> APIStatusError:
    """Build the exception for an API error answer.

    The class follows the HTTP status when it signals an error, otherwise the
    body's ``code`` (the API also reports errors inside HTTP 200 answers).
    """
    kind = status if status >= 300 or code is None else code
    if kind == 429:
        return RateLimitError(
            message,
            status=status,
            code=code,
            request_id=request_id,
            target=target,
            retry_after=parse_retry_after(headers),
        )
    cls: type[APIStatusError]
    if kind == 400:
        cls = BadRequestError
    elif kind == 401:
        cls = AuthenticationError
    elif kind == 402:
        cls = InsufficientCreditsError
    elif kind >= 500:
        cls = ServerError
    else:
        cls = APIStatusError
    return cls(message, status=status, code=code, request_id=request_id, target=target)


def _error_status(
    status: int, headers: Mapping[str, str], body: bytes, target: str | None
) -> APIStatusError:
    try:
        envelope = decode_error_envelope(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        if isinstance(exc, msgspec.ValidationError) and not 300 <= status < 400:
            message = f"HTTP {status} with a JSON body that has no usable code"
        else:
            message = _describe_non_json(status, headers, body)
        return error_for(
            status=status,
            code=None,
            message=message,
            request_id=None,
            target=target,
            headers=headers,
        )
    return _from_envelope(envelope, status, headers, target)


def _from_envelope(
    envelope: ErrorEnvelope | StoriesEnvelope,
    status: int,
    headers: Mapping[str, str],
    target: str | None,
) -> APIStatusError:
    """The error an API JSON body with a non-zero ``code`` (or an error status) stands for."""
    fallback = f"HTTP {status}" if status >= 300 else f"code {envelope.code}"
    return error_for(
        status=status,
        code=envelope.code,
        message=envelope.message or fallback,
        request_id=envelope.request_id,
        target=target,
        headers=headers,
    )


def _describe_non_json(status: int, headers: Mapping[str, str], body: bytes) -> str:
    if 300 <= status < 400:
        location = _header(headers, "location") or "nowhere"
        return f"redirect to {location} not followed (the API key is only sent to base_url)"
    content_type = _header(headers, "content-type") or "no content type"
    if not body:
        return f"HTTP {status} with an empty body"
    return f"HTTP {status} with a non-JSON body ({content_type})"


def parse_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    target: str | None = None,
) -> Reel:
    """Turn one HTTP answer into the typed reel, or raise the matching error.

    ``target`` (the rendered target) is attached to any error raised.
    """
    if status >= 300 or status < 200:
        raise _error_status(status, headers, body, target)
    try:
        envelope = decode_envelope(body)
    except msgspec.ValidationError:
        # Valid JSON, unexpected shape: an error body with an odd ``data`` or
        # a success body we cannot type. Salvage the code if there is one.
        try:
            fallback = decode_error_envelope(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            fallback = None
        if fallback is not None and fallback.code != 0:
            raise _from_envelope(fallback, status, headers, target) from None
        raise ResponseDecodeError(
            "response JSON does not match the stories schema",
            status=status,
            snippet=_snippet(body),
            request_id=fallback.request_id if fallback is not None else None,
            target=target,
        ) from None
    except msgspec.DecodeError:
        reason = "empty response body" if not body.strip() else "response body is not valid JSON"
        raise ResponseDecodeError(
            reason, status=status, snippet=_snippet(body), target=target
        ) from None
    if envelope.code != 0:
        raise _from_envelope(envelope, status, headers, target)
    outer = envelope.data
    reel = outer.data if outer is not None else None
    return reel if reel is not None else _EMPTY_REEL


# Reels are frozen, so one shared empty instance is safe to hand out.
_EMPTY_REEL = Reel()
