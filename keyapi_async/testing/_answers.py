"""What the emulator answers with: the bodies, the error envelopes and the request ids.

:class:`Answers` builds every :class:`Answer` :class:`~keyapi_async.testing.Emulator`
sends once it has decided (authentication, parameters, the QPS window, credits,
faults): success reels, highlight data, the hostile bodies the API still bills,
and each error as the real API words it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import msgspec
from aiohttp import hdrs

from ._churn import churn_reel
from ._config import ENDPOINT, EmulatorConfig, Fault
from ._data import build_reel, encoded_reel
from ._highlights import (
    TRAY_PATH,
    highlight_ids,
    highlight_stories_data,
    tray_data,
)
from ._highlights import encode as encode_data
from ._window import QpsWindow

__all__ = ["Answer", "Answers", "loop_time"]

MSG_NO_KEY: Final = "apiKey is null"
MSG_BAD_KEY: Final = "apiKey is invalid"
MSG_NO_HANDLE: Final = "Missing required parameter: handle"
MSG_BOTH_HANDLES: Final = "Only one of username or user_id may be given"
MSG_BAD_USER_ID: Final = "Invalid parameter: user_id"
MSG_NO_HIGHLIGHT: Final = "Missing required parameter: highlight_id"
MSG_BAD_HIGHLIGHT: Final = "Invalid parameter: highlight_id"
HIGHLIGHT_PREFIX: Final = "highlight:"
MSG_QPS: Final = "qps limit exceeded"
MSG_QUOTA: Final = "apiKey quota is not enough"
MSG_SERVER_ERROR: Final = "Internal server error"
MSG_FORBIDDEN: Final = "apiKey has no permission for this endpoint"
MSG_NOT_FOUND: Final = "user not found"
MSG_UNAVAILABLE: Final = "Service temporarily unavailable"
# What a proxy in front of the API might say, sent as Latin-1 bytes.
MSG_LATIN1: Final = "Erreur interne du serveur : délai dépassé, réessayez".encode("latin-1")
MISSING_PREFIX: Final = "missing_"
UNAVAILABLE_RETRY_AFTER: Final = "2"
ANNOUNCED_COUNT: Final = 3

JSON: Final = "application/json"
JSON_HEADERS: Final[Mapping[str, str]] = {hdrs.CONTENT_TYPE: JSON}
HTML_HEADERS: Final[Mapping[str, str]] = {hdrs.CONTENT_TYPE: "text/html"}
LATIN1_HEADERS: Final[Mapping[str, str]] = {
    hdrs.CONTENT_TYPE: "application/json; charset=iso-8859-1"
}
UNAVAILABLE_HEADERS: Final[Mapping[str, str]] = {
    hdrs.CONTENT_TYPE: JSON,
    hdrs.RETRY_AFTER: UNAVAILABLE_RETRY_AFTER,
}
BAD_GATEWAY_PAGE: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)

# The success envelope is assembled around the cached reel bytes so that a
# cache hit costs one join instead of re-encoding ~10-40 KB of JSON.
_SUCCESS_HEAD: Final = b'{"code":0,"message":"success","data":'
_REQUEST_ID_HEAD: Final = b',"requestId":"'
_SUCCESS_TAIL: Final = b'"}'


class Answer(NamedTuple):
    """What the emulator decided to answer one request (see :meth:`Emulator.decide`)."""

    status: int
    """HTTP status; 0 for :attr:`Fault.RESET` (the connection is cut instead)."""
    body: bytes
    """The body to send; for :attr:`Fault.RESET` the full body, of which half is written."""
    headers: Mapping[str, str]
    """Response headers (``Content-Type``, ``Retry-After`` when set)."""
    body_code: int | None
    """The body's ``code``, or ``None`` when the body is not a JSON envelope."""
    fault: Fault | None
    """The injected fault, if any."""
    delay: float = 0.0
    """Seconds to wait before answering: latency, jitter and :attr:`Fault.SLOW`'s wait."""


def loop_time() -> float:
    """The running loop's clock (so a virtual-clock loop drives the emulator), else monotonic."""
    # Outside a loop (a direct call in a sync test) the monotonic clock is
    # what a default loop's time() is anyway.
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def _kept_story(config: EmulatorConfig, key: str) -> dict[str, Any] | None:
    """The active story ``key``'s first highlight also holds (``keep_active``), or None.

    The newest item of the account's static reel; in churn (watch) mode the
    active reel moves with time, so no story is kept there.
    """
    if not config.highlights.keep_active or config.churn is not None:
        return None
    reel = build_reel(key, config.seed, config.empty_ratio)["data"]
    items = None if reel is None else reel.get("items")
    return items[-1] if items else None


def _envelope(code: int, message: str, request_id: str) -> bytes:
    return msgspec.json.encode(
        {"code": code, "data": None, "message": message, "requestId": request_id}
    )


class Answers:
    """The answer builder of one emulator: its request ids, highlight owners and bodies."""

    def __init__(self, window: QpsWindow) -> None:
        self._window = window
        self._id_rng = random.Random()
        # Which account's tray listed each highlight id, so its items name that owner.
        self._highlight_owners: dict[str, str] = {}
        self.highlights_since = loop_time()
        """When the highlight data started (``grow_every`` counts from here)."""

    def reseed(self, seed: int) -> None:
        """Restart the request ids from ``seed``."""
        self._id_rng = random.Random(f"keyapi-emulator-request-ids:{seed}")

    def request_id(self) -> str:
        """A fresh request id (a UUID4 drawn from the seeded generator)."""
        return str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))

    def success_body(self, config: EmulatorConfig, key: str, path: str = ENDPOINT) -> bytes:
        if path == ENDPOINT:
            if config.churn is not None:  # watch mode: the reel changes with time
                reel = churn_reel(config.churn, config.seed, key)
            else:
                reel = encoded_reel(key, config.seed, config.empty_ratio)
        else:
            reel = encode_data(self._highlights_data(config, key, path))
        request_id = self.request_id().encode()
        return b"".join((_SUCCESS_HEAD, reel, _REQUEST_ID_HEAD, request_id, _SUCCESS_TAIL))

    def _highlights_data(self, config: EmulatorConfig, key: str, path: str) -> dict[str, Any]:
        elapsed = loop_time() - self.highlights_since
        if path == TRAY_PATH:
            for digits in highlight_ids(key, config.seed, config.highlights):
                self._highlight_owners[digits] = key
            kept = _kept_story(config, key)
            return tray_data(key, config.seed, config.highlights, elapsed, kept)
        digits = key.removeprefix(HIGHLIGHT_PREFIX)
        owner = self._highlight_owners.get(digits)
        kept = None if owner is None else _kept_story(config, owner)
        return highlight_stories_data(digits, config.seed, config.highlights, elapsed, owner, kept)

    def billed_fault_body(
        self, config: EmulatorConfig, key: str, fault: Fault, path: str = ENDPOINT
    ) -> bytes:
        """A code-0 body the client cannot use: the hostile answers the API still bills."""
        if fault is Fault.NON_UTF8:
            body = self.success_body(config, key, path)
            # Into a string the client models (the owner's name, else the
            # message): a byte in a skipped field would pass unnoticed.
            if b'"full_name":"' in body:
                return body.replace(b'"full_name":"', b'"full_name":"\xff', 1)
            return body.replace(b'"message":"success"', b'"message":"succ\xffss"', 1)
        request_id = self.request_id()
        if path != ENDPOINT:
            # The highlight answers' versions: items of the wrong type, or none at all.
            drift: dict[str, object] = {"items": {"id": 1}} if fault is Fault.SCHEMA_DRIFT else {}
            if path == TRAY_PATH and fault is not Fault.SCHEMA_DRIFT:
                drift = {"items": "none"}
            return msgspec.json.encode(
                {"code": 0, "message": "success", "data": {"data": drift}, "requestId": request_id}
            )
        reel: dict[str, Any] = build_reel(key, config.seed, config.empty_ratio)["data"] or {}
        if fault is Fault.SCHEMA_DRIFT:
            items = reel.get("items") or [{"media_type": 1}]
            # Ids as numbers, as if the API had changed its schema.
            reel["items"] = [{**item, "id": 1_000 + n} for n, item in enumerate(items)]
            reel["count"] = len(items)
        else:  # Fault.COUNT_WITHOUT_ITEMS
            reel.pop("items", None)
            reel["count"] = ANNOUNCED_COUNT
        return msgspec.json.encode(
            {"code": 0, "message": "success", "data": {"data": reel}, "requestId": request_id}
        )

    def json_error(
        self, code: int, message: str, *, status: int | None = None, fault: Fault | None = None
    ) -> Answer:
        body = _envelope(code, message, self.request_id())
        return Answer(code if status is None else status, body, JSON_HEADERS, code, fault)

    def rate_limited(
        self, config: EmulatorConfig, now: float, *, status: int, fault: Fault | None
    ) -> Answer:
        answer = self.json_error(429, MSG_QPS, status=status, fault=fault)
        if not config.retry_after:
            return answer
        return answer._replace(
            headers={**JSON_HEADERS, hdrs.RETRY_AFTER: str(self._window.retry_after(now))}
        )

    def for_fault(
        self, config: EmulatorConfig, now: float, key: str, path: str, fault: Fault
    ) -> Answer:
        """The answer of an unbilled ``fault`` (an error, a broken body or a reset)."""
        if fault is Fault.SERVER_ERROR_LATIN1:
            body = b"".join(
                (
                    b'{"code":500,"data":null,"message":"',
                    MSG_LATIN1,
                    b'","requestId":"',
                    self.request_id().encode(),
                    b'"}',
                )
            )
            return Answer(500, body, LATIN1_HEADERS, 500, fault)
        if fault is Fault.SERVICE_UNAVAILABLE:
            body = _envelope(503, MSG_UNAVAILABLE, self.request_id())
            return Answer(503, body, UNAVAILABLE_HEADERS, 503, fault)
        if fault is Fault.SERVER_ERROR:
            return self.json_error(500, MSG_SERVER_ERROR, fault=fault)
        if fault is Fault.BAD_GATEWAY_HTML:
            return Answer(502, BAD_GATEWAY_PAGE, HTML_HEADERS, None, fault)
        if fault is Fault.ERROR_CODE_200:
            return self.json_error(500, MSG_SERVER_ERROR, status=200, fault=fault)
        if fault is Fault.RATE_LIMIT_200:
            return self.json_error(429, MSG_QPS, status=200, fault=fault)
        if fault is Fault.RATE_LIMIT:
            return self.rate_limited(config, now, status=429, fault=fault)
        if fault is Fault.EMPTY:
            return Answer(200, b"", JSON_HEADERS, None, fault)
        body = self.success_body(config, key, path)
        if fault is Fault.TRUNCATED:
            return Answer(200, body[: len(body) // 2], JSON_HEADERS, None, fault)
        # Fault.RESET: the handler writes half of this body, then aborts.
        return Answer(0, body, JSON_HEADERS, None, fault)
