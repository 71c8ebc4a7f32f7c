"""The protocol without I/O: build a request, judge an answer (pure, tested with bytes).

The transport sends what :class:`RequestBuilder` builds and hands
``(status, headers, body)`` to :func:`parse_response`, which returns the typed
reel or raises a :class:`~keyapi_async.KeyAPIError` subclass, whatever the
bytes. How answers map to errors: docs/errors.md#how-an-answer-is-judged.

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
from urllib.parse import quote

import msgspec

from .._errors import STATUS_ERRORS, APIStatusError, KeyAPIError, ResponseDecodeError, ServerError
from ..models import Reel, ReelInfo, StoryItem
from .targets import Target

ENDPOINT_PATH = "/v1/instagram/fetch_user_stories"
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]+")
# What decoding untrusted bytes may raise: msgspec's errors (all ValueErrors, as
# is UnicodeDecodeError), and RecursionError for absurd nesting.
_DECODE_FAILURES = (ValueError, RecursionError)
_EMPTY_REEL = Reel()  # frozen, so one shared instance is safe


class WireReel(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The reel as sent: a missing ``items`` stays UNSET, so that malformed is not empty."""

    additional_data: ReelInfo | None = None
    count: int = 0
    items: tuple[StoryItem, ...] | msgspec.UnsetType = msgspec.UNSET

    def to_reel(self) -> Reel:
        """The public reel; a missing ``items`` becomes ``()`` (check before calling)."""
        items = () if self.items is msgspec.UNSET else self.items
        return Reel(additional_data=self.additional_data, count=self.count, items=items)


class StoriesData(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The envelope's ``data`` object, which wraps the reel in another ``data``."""

    data: WireReel | None = None


class StoriesEnvelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The full keyapi response for ``fetch_user_stories``."""

    code: int
    message: str | None = ""
    data: StoriesData | None = None
    request_id: str | None = msgspec.field(default=None, name="requestId")

    @property
    def reel(self) -> WireReel | None:
        """The reel inside ``data.data``, or None when the envelope has none."""
        return None if self.data is None else self.data.data


class ErrorEnvelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A keyapi error body; ``data`` is ignored (whatever its shape), a null message kept."""

    code: int
    message: str | None = ""
    request_id: str | None = msgspec.field(default=None, name="requestId")


#: Decode a ``fetch_user_stories`` body; raises msgspec.DecodeError (or its
#: ValidationError), another ValueError, or RecursionError for absurd nesting.
decode_envelope = msgspec.json.Decoder(StoriesEnvelope).decode
#: Decode a keyapi error body (bytes or str), raising like ``decode_envelope``.
decode_error_envelope = msgspec.json.Decoder(ErrorEnvelope).decode


class Request(msgspec.Struct, frozen=True, gc=False):
    """One HTTP request, ready for a transport. Its repr never shows the headers."""

    method: str
    url: str
    headers: Mapping[str, str]

    def __repr__(self) -> str:
        return f"Request(method={self.method!r}, url={self.url!r}, headers=<hidden>)"


class RequestBuilder:
    """Builds requests for targets; the endpoint and the (shared, read-only) headers once."""

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
    envelope: ErrorEnvelope | StoriesEnvelope | None,
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
    status: int, headers: Mapping[str, str], body: bytes, target: str | None, failure: Exception
) -> KeyAPIError:
    envelope, is_json = _salvage(body)
    if envelope is not None and envelope.code != 0:
        return error_for(status, headers, target, envelope)  # its code decides
    if isinstance(failure, RecursionError):
        reason = "response JSON is nested too deeply"
    elif not isinstance(failure, msgspec.ValidationError) and not _is_utf8(body):
        reason = "response body is not valid UTF-8"
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


def _is_utf8(body: bytes) -> bool:
    # Asked of the bytes: msgspec's exception for bad UTF-8 changed between versions.
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _snippet(body: bytes) -> str:
    return body[:160].decode("utf-8", errors="replace")


def parse_response(
    status: int, headers: Mapping[str, str], body: bytes, *, target: str | None = None
) -> Reel:
    """Turn one HTTP answer into the typed reel, or raise a ``KeyAPIError`` naming ``target``."""
    if status >= 300 or status < 200:
        raise _error_status(status, headers, body, target)
    error: KeyAPIError
    try:
        envelope = decode_envelope(body)
    except _DECODE_FAILURES as exc:
        error = _undecodable(status, headers, body, target, exc)
    else:
        if envelope.code != 0:
            raise error_for(status, headers, target, envelope)
        wire = None if envelope.data is None else envelope.data.data
        if wire is None:
            return _EMPTY_REEL
        if wire.items is not msgspec.UNSET or wire.count <= 0:
            return wire.to_reel()
        # Malformed is not empty: "no stories" would make a resumed run skip the account.
        error = ResponseDecodeError(
            f"reel says count {wire.count} but has no items",
            status=status,
            snippet=_snippet(body),
            request_id=envelope.request_id,
            target=target,
            billed=True,
        )
    # Raised outside the ``except`` clause so that msgspec's exception (which
    # can quote the body) is not chained as ``__context__`` either.
    raise error
