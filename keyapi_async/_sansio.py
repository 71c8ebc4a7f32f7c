"""The protocol without I/O: build a request, interpret an answer (all pure).

Nothing here touches the network or the clock unless handed one, so every
branch is tested directly with bytes. The transport (:mod:`._transport`) sends
what :class:`RequestBuilder` builds and hands ``(status, headers, body)`` back
to :func:`parse_response`.

How an answer is judged:

* HTTP status >= 300 is an error whatever the body says; its class follows the
  status (400, 401, 402, 403, 404, 429, 5xx), the body's ``code``/``message``/
  ``requestId`` are attached when the body is the API's JSON (read leniently:
  a proxy's Latin-1 message still yields the code). A non-JSON error page (a
  proxy's HTML 502) still maps by status, so a 502 is a retryable
  :class:`ServerError`. ``Retry-After`` is read for every error, whatever its
  status, and attached as ``retry_after``.
* A 2xx whose body is not the API's JSON (HTML, empty, truncated, not UTF-8,
  too deeply nested, or JSON of an unexpected shape) is a
  :class:`ResponseDecodeError`: never mistaken for "no stories". When that body
  still says ``code: 0`` the API billed it, and the error says so (``billed``).
* A 2xx whose body ``code`` is non-zero is an error mapped by that code (a
  200 carrying ``code: 429`` is a rate limit, ``code: 404`` a missing account).
* ``code == 0`` with ``data.data`` null, ``items: []``, or no ``items`` and no
  positive ``count`` is a normal, empty reel. A reel announcing ``count > 0``
  without an ``items`` key is a billed :class:`ResponseDecodeError`: malformed
  is not empty, and "no stories" would make a resumed run skip the account.

Nothing but :class:`~keyapi_async.KeyAPIError` subclasses ever leaves
:func:`parse_response`, whatever the bytes.
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
    KeyAPIError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
)
from ._targets import Target
from ._wire import ErrorEnvelope, StoriesEnvelope, decode_envelope, decode_error_envelope
from .models import Reel

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
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are always GMT; a zone-less parse (the asctime form
        # ``Sun Nov  6 08:49:37 1994``, or ``-0000``) means GMT too.
        when = when.replace(tzinfo=datetime.UTC)
    if now is None:
        import time

        now = time.time()
    try:
        return when.timestamp() - now
    except (OverflowError, ValueError):
        return None


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
    ``retry_after`` comes from the headers whatever the class: a 503 may ask
    for a pause as well as a 429.
    """
    kind = status if status >= 300 or code is None else code
    cls = _CLASS_BY_KIND.get(kind)
    if cls is None:
        cls = ServerError if kind >= 500 else APIStatusError
    return cls(
        message,
        status=status,
        code=code,
        request_id=request_id,
        target=target,
        retry_after=parse_retry_after(headers),
    )


_CLASS_BY_KIND: Mapping[int, type[APIStatusError]] = MappingProxyType(
    {
        400: BadRequestError,
        401: AuthenticationError,
        402: InsufficientCreditsError,
        403: PermissionDeniedError,
        404: NotFoundError,
        429: RateLimitError,
    }
)

# What decoding untrusted bytes may raise: msgspec.DecodeError and its
# ValidationError, UnicodeDecodeError for non-UTF-8 bytes inside a modelled
# string (msgspec < 0.23; later versions raise DecodeError), all ValueErrors,
# and RecursionError for absurd nesting, even inside fields msgspec skips.
_DECODE_FAILURES = (ValueError, RecursionError)


def _is_utf8(body: bytes) -> bool:
    # Asked of the bytes, not of msgspec's exception, whose type for bad
    # UTF-8 changed between versions. Error path only.
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _salvage(body: bytes) -> tuple[ErrorEnvelope | None, bool]:
    """The body's ``code``/``message``/``requestId`` if any can be read, and whether it is JSON.

    Bytes that are not UTF-8 are re-read with replacement characters: a
    proxy's Latin-1 message must not hide the code next to it. Error path only.
    """
    try:
        return decode_error_envelope(body), True
    except msgspec.ValidationError:
        return None, True
    except _DECODE_FAILURES:
        if _is_utf8(body):
            return None, False
    try:
        return decode_error_envelope(body.decode("utf-8", errors="replace")), True
    except msgspec.ValidationError:
        return None, True
    except _DECODE_FAILURES:
        return None, False


def _error_status(
    status: int, headers: Mapping[str, str], body: bytes, target: str | None
) -> APIStatusError:
    envelope, is_json = _salvage(body)
    if envelope is not None:
        return _from_envelope(envelope, status, headers, target)
    if is_json and not 300 <= status < 400:
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


def _undecodable(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    target: str | None,
    failure: BaseException,
) -> KeyAPIError:
    """The error for a 2xx body the stories decoder rejected."""
    envelope, is_json = _salvage(body)
    if envelope is not None and envelope.code != 0:
        # An error body with an odd ``data``, or an odd message: its code decides.
        return _from_envelope(envelope, status, headers, target)
    if (
        isinstance(failure, ValueError)
        and not isinstance(failure, msgspec.ValidationError)
        and not _is_utf8(body)
    ):
        reason = "response body is not valid UTF-8"
    elif isinstance(failure, RecursionError):
        reason = "response JSON is nested too deeply"
    elif is_json:
        reason = "response JSON does not match the stories schema"
    elif not body.strip():
        reason = "empty response body"
    else:
        reason = "response body is not valid JSON"
    return ResponseDecodeError(
        reason,
        status=status,
        snippet=_snippet(body),
        request_id=envelope.request_id if envelope is not None else None,
        target=target,
        billed=envelope is not None,  # it said code 0: the API charged for it
    )


def parse_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    target: str | None = None,
) -> Reel:
    """Turn one HTTP answer into the typed reel, or raise the matching error.

    Raises only :class:`~keyapi_async.KeyAPIError` subclasses (an
    :class:`~keyapi_async.APIStatusError` or a
    :class:`~keyapi_async.ResponseDecodeError`), whatever ``body`` holds.
    ``target`` (the rendered target) is attached to any error raised.
    """
    if status >= 300 or status < 200:
        raise _error_status(status, headers, body, target)
    error: KeyAPIError
    try:
        envelope = decode_envelope(body)
    except _DECODE_FAILURES as exc:
        error = _undecodable(status, headers, body, target, exc)
    else:
        if envelope.code != 0:
            raise _from_envelope(envelope, status, headers, target)
        outer = envelope.data
        wire = outer.data if outer is not None else None
        if wire is None:
            return _EMPTY_REEL
        if wire.items is not msgspec.UNSET or wire.count <= 0:
            return wire.to_reel()
        error = ResponseDecodeError(
            f"reel says count {wire.count} but has no items",
            status=status,
            snippet=_snippet(body),
            request_id=envelope.request_id,
            target=target,
            billed=True,
        )
    # Raised outside the ``except`` clause so msgspec's exception is not
    # chained as ``__context__`` either (it can quote the body).
    raise error


# Reels are frozen, so one shared empty instance is safe to hand out.
_EMPTY_REEL = Reel()
