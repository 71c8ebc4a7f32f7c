"""The protocol without I/O: build a request, judge an answer (pure, tested with bytes).

The transport sends what :class:`RequestBuilder` builds and hands
``(status, headers, body)`` to :func:`parse_response`, which returns the typed
result of the endpoint (a reel, a highlight tray, a highlight's stories) or
raises a :class:`~keyapi_async.KeyAPIError` subclass, whatever the bytes. How
answers map to errors: docs/errors.md#how-an-answer-is-judged; what differs
between endpoints (path, target, decoder, credits): :mod:`.endpoints`.

The wire envelopes are private (users get :mod:`.models` types); their decoders
are built once, at import.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar, overload
from urllib.parse import quote

import msgspec

from .._errors import STATUS_ERRORS, APIStatusError, KeyAPIError, ResponseDecodeError, ServerError
from ..models import Reel
from .endpoints import (
    STORIES,
    Answer,
    Endpoint,
    ErrorEnvelope,
    StoriesData,
    StoriesEnvelope,
    WireReel,
    decode_envelope,
    decode_error_envelope,
)
from .targets import Target

# Re-exported: the stories envelope is this module's oldest public face.
__all__ = [
    "ENDPOINT_PATH",
    "ErrorEnvelope",
    "Request",
    "RequestBuilder",
    "StoriesData",
    "StoriesEnvelope",
    "WireReel",
    "decode_envelope",
    "decode_error_envelope",
    "error_for",
    "parse_response",
    "parse_retry_after",
]

R = TypeVar("R")

#: The path of ``fetch_user_stories`` (every endpoint's path: :mod:`.endpoints`).
ENDPOINT_PATH = STORIES.path
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")
# What decoding untrusted bytes may raise: msgspec's errors (all ValueErrors, as
# is UnicodeDecodeError), and RecursionError for absurd nesting.
_DECODE_FAILURES = (ValueError, RecursionError)


class Request(msgspec.Struct, frozen=True, gc=False):
    """One HTTP request, ready for a transport. Its repr never shows the headers."""

    method: str
    url: str
    headers: Mapping[str, str]

    def __repr__(self) -> str:
        return f"Request(method={self.method!r}, url={self.url!r}, headers=<hidden>)"


class RequestBuilder:
    """Builds requests for one endpoint; its URL and the (shared, read-only) headers once."""

    __slots__ = ("_base", "_endpoint", "_headers")

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        user_agent: str,
        endpoint: Endpoint[object] | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._endpoint = self._base + (endpoint or STORIES).path + "?"
        self._headers: Mapping[str, str] = MappingProxyType(
            {
                "Authorization": f"Bearer {api_key}",
                "User-Agent": user_agent,
                "Accept": "application/json",
            }
        )

    def for_endpoint(self, endpoint: Endpoint[object]) -> RequestBuilder:
        """A builder for ``endpoint`` on the same base URL, sharing these headers."""
        builder = object.__new__(RequestBuilder)
        builder._base = self._base
        builder._endpoint = self._base + endpoint.path + "?"
        builder._headers = self._headers
        return builder

    def build(self, target: Target) -> Request:
        """The GET request for ``target``: URL with its one query parameter, and headers."""
        kind, value = target.query
        # Validated targets need no quoting: one regex check is cheaper than
        # quote(), which stays for a Target built without validation.
        if not _UNRESERVED.fullmatch(value):
            value = quote(value, safe="")
        return Request("GET", f"{self._endpoint}{kind}={value}", self._headers)

    def __repr__(self) -> str:
        return f"RequestBuilder(endpoint={self._endpoint[:-1]!r})"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Plain dicts are case-sensitive, aiohttp's CIMultiDictProxy is not: scan.
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


def _positive(value: str | float | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _seconds_until(http_date: str, now: float | None) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
        if when.tzinfo is None:  # RFC 9110 dates are GMT, zone-less forms included
            when = when.replace(tzinfo=datetime.UTC)
        return when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asks us to wait, or ``None`` (then the caller uses its backoff).

    ``retry-after-ms`` wins over ``Retry-After``: delay-seconds or an HTTP-date,
    measured against ``now`` (POSIX seconds; default: the wall clock).
    """
    millis = _positive(_header(headers, "retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    return _positive(raw) or _positive(_seconds_until(raw.strip(), now))


def error_for(
    status: int,
    headers: Mapping[str, str],
    target: str | None,
    envelope: ErrorEnvelope | Answer[object] | None,
    message: str = "",
) -> APIStatusError:
    """The exception for an API error answer: by HTTP status if that says error, else by code.

    The body's ``envelope`` gives the code, message and request id; without
    one (no usable body), ``message`` says what came instead.
    """
    code = request_id = None
    if envelope is not None:
        code, request_id = envelope.code, envelope.request_id
        message = envelope.message or (f"HTTP {status}" if status >= 300 else f"code {code}")
    kind = status if status >= 300 or code is None else code
    cls = STATUS_ERRORS.get(kind) or (ServerError if kind >= 500 else APIStatusError)
    wait = parse_retry_after(headers)
    return cls(
        message, status=status, code=code, request_id=request_id, target=target, retry_after=wait
    )


def _salvage(body: bytes) -> tuple[ErrorEnvelope | None, bool]:
    # The body's code/message/requestId if readable, and whether it is JSON. Read
    # leniently: a proxy's Latin-1 message must not hide the code next to it.
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
        return error_for(status, headers, target, envelope)
    if 300 <= status < 400:
        location = _header(headers, "location") or "nowhere"
        message = f"redirect to {location} not followed (the API key is only sent to base_url)"
    elif is_json:
        message = f"HTTP {status} with a JSON body that has no usable code"
    elif not body:
        message = f"HTTP {status} with an empty body"
    else:
        content_type = _header(headers, "content-type") or "no content type"
        message = f"HTTP {status} with a non-JSON body ({content_type})"
    return error_for(status, headers, target, None, message)


def _undecodable(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    target: str | None,
    failure: Exception,
    what: str,
) -> KeyAPIError:
    envelope, is_json = _salvage(body)
    if envelope is not None and envelope.code != 0:
        return error_for(status, headers, target, envelope)  # its code decides
    if isinstance(failure, RecursionError):
        reason = "response JSON is nested too deeply"
    elif not isinstance(failure, msgspec.ValidationError) and not _is_utf8(body):
        reason = "response body is not valid UTF-8"
    elif is_json:
        reason = f"response JSON does not match the {what} schema"
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


def _is_utf8(body: bytes) -> bool:
    # Asked of the bytes: msgspec's exception for bad UTF-8 changed between versions.
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _snippet(body: bytes) -> str:
    return body[:160].decode("utf-8", errors="replace")


@overload
def parse_response(
    status: int, headers: Mapping[str, str], body: bytes, *, target: str | None = None
) -> Reel: ...


@overload
def parse_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    target: str | None = None,
    endpoint: Endpoint[R],
) -> R: ...


def parse_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    target: str | None = None,
    endpoint: Endpoint[R] | Endpoint[Reel] = STORIES,
) -> R | Reel:
    """Turn one HTTP answer into the endpoint's typed result, or raise a ``KeyAPIError``.

    The error names ``target``; ``endpoint`` defaults to ``fetch_user_stories``.
    """
    if status >= 300 or status < 200:
        raise _error_status(status, headers, body, target)
    error: KeyAPIError
    try:
        envelope = endpoint.decode(body)
    except _DECODE_FAILURES as exc:
        error = _undecodable(status, headers, body, target, exc, endpoint.what)
    else:
        if envelope.code != 0:
            raise error_for(status, headers, target, envelope)
        result = envelope.result(target)
        if not isinstance(result, str):
            return result
        error = ResponseDecodeError(
            result,
            status=status,
            snippet=_snippet(body),
            request_id=envelope.request_id,
            target=target,
            billed=True,
        )
    # Raised outside the ``except`` clause so that msgspec's exception (which
    # can quote the body) is not chained as ``__context__`` either.
    raise error
