"""The emulator's state (:class:`Emulator`) and its aiohttp.web request handler."""

from __future__ import annotations

import asyncio
import bisect
import collections
import math
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgspec
from aiohttp import hdrs, web

from ._churn import churn_reel
from ._config import BILLED_FAULTS, ENDPOINT, EmulatorConfig, Fault
from ._data import build_reel, encoded_reel, split_target_key, target_key
from ._highlights import (
    HIGHLIGHT_STORIES_PATH,
    TRAY_PATH,
    highlight_ids,
    highlight_stories_data,
    tray_data,
)
from ._highlights import encode as encode_data
from ._media import install_media

__all__ = ["ENDPOINT", "Answer", "Emulator", "RequestRecord"]

"""The only path the emulator serves (``GET``)."""

CREDITS_PER_SUCCESS: Final = 2

_MSG_NO_KEY: Final = "apiKey is null"
_MSG_BAD_KEY: Final = "apiKey is invalid"
_MSG_NO_HANDLE: Final = "Missing required parameter: handle"
_MSG_BOTH_HANDLES: Final = "Only one of username or user_id may be given"
_MSG_BAD_USER_ID: Final = "Invalid parameter: user_id"
_MSG_NO_HIGHLIGHT: Final = "Missing required parameter: highlight_id"
_MSG_BAD_HIGHLIGHT: Final = "Invalid parameter: highlight_id"
_HIGHLIGHT_PREFIX: Final = "highlight:"
_MSG_QPS: Final = "qps limit exceeded"
_MSG_QUOTA: Final = "apiKey quota is not enough"
_MSG_SERVER_ERROR: Final = "Internal server error"
_MSG_FORBIDDEN: Final = "apiKey has no permission for this endpoint"
_MSG_NOT_FOUND: Final = "user not found"
_MSG_UNAVAILABLE: Final = "Service temporarily unavailable"
# What a proxy in front of the API might say, sent as Latin-1 bytes.
_MSG_LATIN1: Final = "Erreur interne du serveur : délai dépassé, réessayez".encode("latin-1")
_MISSING_PREFIX: Final = "missing_"
_UNAVAILABLE_RETRY_AFTER: Final = "2"
_ANNOUNCED_COUNT: Final = 3

_JSON: Final = "application/json"
_JSON_HEADERS: Final[Mapping[str, str]] = {hdrs.CONTENT_TYPE: _JSON}
_HTML_HEADERS: Final[Mapping[str, str]] = {hdrs.CONTENT_TYPE: "text/html"}
_LATIN1_HEADERS: Final[Mapping[str, str]] = {
    hdrs.CONTENT_TYPE: "application/json; charset=iso-8859-1"
}
_UNAVAILABLE_HEADERS: Final[Mapping[str, str]] = {
    hdrs.CONTENT_TYPE: _JSON,
    hdrs.RETRY_AFTER: _UNAVAILABLE_RETRY_AFTER,
}
_BAD_GATEWAY_PAGE: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)

# The success envelope is assembled around the cached reel bytes so that a
# cache hit costs one join instead of re-encoding ~10-40 KB of JSON.
_SUCCESS_HEAD: Final = b'{"code":0,"message":"success","data":'
_REQUEST_ID_HEAD: Final = b',"requestId":"'
_SUCCESS_TAIL: Final = b'"}'


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the emulator saw it (the API key is deliberately not kept)."""

    seq: int
    """Arrival number, starting at 1."""
    time: float
    """The running event loop's ``time()`` when the request arrived.

    On a default loop that is ``time.monotonic()``; on a virtual-clock loop it
    is the virtual time, so timing assertions hold however fast the test runs.
    """
    username: str | None
    """The ``username`` query parameter, if given (non-empty)."""
    user_id: str | None
    """The ``user_id`` query parameter, if given (non-empty)."""
    status: int
    """HTTP status of the answer; 0 for :attr:`Fault.RESET` (no complete answer)."""
    body_code: int | None
    """The JSON body's ``code``, or ``None`` when the body is not a JSON envelope."""
    fault: Fault | None
    """The injected fault, if any."""
    authorized: bool
    """Whether the request carried an accepted API key (a forbidden key counts: it got 403)."""
    path: str = ENDPOINT
    """The API path asked for: stories, a highlight tray or a highlight's stories."""
    highlight_id: str | None = None
    """The ``highlight_id`` query parameter as sent (``fetch_highlight_stories``)."""

    @property
    def target(self) -> str | None:
        """The target key (``"username:NAME"`` / ``"user_id:ID"`` / ``"highlight:ID"``), or ``None`` unless exactly one was given."""  # noqa: E501
        if self.path == HIGHLIGHT_STORIES_PATH:
            digits = _highlight_digits(self.highlight_id)
            return None if digits is None else _HIGHLIGHT_PREFIX + digits
        if (self.username is None) == (self.user_id is None):
            return None
        return target_key(self.username, self.user_id)


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


def _loop_time() -> float:
    # The running loop's clock, so a virtual-clock loop drives the QPS window
    # and the log; outside a loop (a direct call in a sync test) the monotonic
    # clock, which is what a default loop's time() is anyway.
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def _bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _highlight_digits(value: str | None) -> str | None:
    if value is None:
        return None
    digits = value.removeprefix(_HIGHLIGHT_PREFIX)
    return digits if digits.isascii() and digits.isdigit() else None


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


class Emulator:
    """A running emulator's configuration, state and request log.

    Obtain one from :func:`~keyapi_async.testing.run_emulator` (which also sets
    :attr:`base_url`), or build one yourself and mount :meth:`make_app` in your
    own aiohttp server.

    Each ``GET /v1/instagram/fetch_user_stories`` request goes through these
    steps, and the first one that answers wins:

    1. it is logged (:attr:`log`) and counted;
    2. authentication: 401 ``"apiKey is null"`` without a ``Bearer`` token,
       401 ``"apiKey is invalid"`` for a token in neither ``config.api_keys``
       nor ``config.forbidden_keys``, 403 ``"apiKey has no permission for this
       endpoint"`` for one in ``config.forbidden_keys``;
    3. parameters: 400 without ``username``/``user_id``, with both, or with a
       non-numeric ``user_id``;
    4. the QPS window: 429 if ``config.qps`` requests were accepted in the
       last second (a 429 does not enter the window; every later step does);
    5. credits: 402 when fewer than 2 remain;
    6. missing accounts: 404 ``"user not found"`` for a target in
       ``config.missing_accounts`` or a username starting with ``missing_``
       (free, and no fault applies);
    7. faults: the target's next scripted fault, otherwise a random fault per
       ``config.fault_rates``. Faulted requests therefore still count in the
       QPS window; those whose body says code 0 (:data:`BILLED_FAULTS`:
       :attr:`Fault.SLOW`, which ends in a normal success, and the hostile
       :attr:`Fault.NON_UTF8`, :attr:`Fault.SCHEMA_DRIFT`,
       :attr:`Fault.COUNT_WITHOUT_ITEMS`) cost 2 credits like a success, the
       others nothing;
    8. success: the synthetic reel, costing 2 credits.

    All decisions are taken on arrival by :meth:`decide`, the one code path
    shared by the aiohttp handler and the in-memory
    :class:`~keyapi_async.testing.EmulatorTransport`; ``config.latency`` (plus
    up to ``config.latency_jitter``, plus ``config.slow_seconds`` for
    :attr:`Fault.SLOW`) is waited afterwards, just before the answer is
    written. Times are the running event loop's (``loop.time()``), so a
    virtual-clock loop drives the QPS window, the latency and the log.

    Assigning :attr:`config` takes effect from the next request. A new
    ``credits`` value resets :attr:`credits_remaining`, a new ``fault_script``
    restarts every target's script, and a new ``seed`` reseeds the random
    faults, the latency jitter and request ids; the QPS window keeps its history.
    """

    base_url: str
    """``http://HOST:PORT`` of the listening server ("" until served by :func:`run_emulator`)."""
    log: list[RequestRecord]
    """Every request in arrival order (bounded to ``max_log`` records if set)."""
    max_log: int | None
    """Upper bound on ``len(log)``; the oldest records are dropped in batches."""
    credits_remaining: int | None
    """Credits left (``None``: unlimited); may be assigned to top up."""
    credits_spent: int
    """Credits charged so far (2 per code-0 answer)."""
    requests_total: int
    """Number of requests received, independent of ``max_log``."""

    def __init__(self, config: EmulatorConfig | None = None, *, max_log: int | None = None) -> None:
        if max_log is not None and (isinstance(max_log, bool) or max_log < 1):
            raise ValueError(f"max_log must be None or an int >= 1, got {max_log!r}")
        self.base_url = ""
        self.log = []
        self.max_log = max_log
        self.credits_spent = 0
        self.requests_total = 0
        self._seq = 0
        self._outcomes: collections.Counter[tuple[int, int | None, Fault | None]] = (
            collections.Counter()
        )
        self._successes: collections.Counter[str] = collections.Counter()
        self._script_positions: dict[str, int] = {}
        self._accepted: collections.deque[float] = collections.deque()
        # Which account's tray listed each highlight id, so its items name that owner.
        self._highlight_owners: dict[str, str] = {}
        self._highlights_since = _loop_time()
        self._config = config if config is not None else EmulatorConfig()
        self._configure(self._config, previous=None)

    # -- configuration --------------------------------------------------------------

    @property
    def config(self) -> EmulatorConfig:
        """The active configuration; assign a new one to change behaviour."""
        return self._config

    @config.setter
    def config(self, new: EmulatorConfig) -> None:
        if not isinstance(new, EmulatorConfig):
            raise TypeError(f"config must be an EmulatorConfig, got {type(new).__name__}")
        previous, self._config = self._config, new
        self._configure(new, previous)

    def _configure(self, new: EmulatorConfig, previous: EmulatorConfig | None) -> None:
        if new.qps is None:
            self._qps_cap: int | None = None
            self._qps_window = 1.0
        elif new.qps >= 1:
            self._qps_cap, self._qps_window = math.floor(new.qps), 1.0
        else:
            self._qps_cap, self._qps_window = 1, 1.0 / new.qps
        # Cumulative thresholds in enum order, so one uniform draw picks a fault
        # independently of the mapping's insertion order.
        self._fault_thresholds: list[float] = []
        self._fault_choices: list[Fault] = []
        total = 0.0
        for fault in Fault:
            rate = new.fault_rates.get(fault, 0.0)
            if rate > 0:
                total += rate
                self._fault_thresholds.append(total)
                self._fault_choices.append(fault)
        if previous is None or previous.seed != new.seed:
            self._fault_rng = random.Random(f"keyapi-emulator-faults:{new.seed}")
            self._id_rng = random.Random(f"keyapi-emulator-request-ids:{new.seed}")
            self._latency_rng = random.Random(f"keyapi-emulator-latency:{new.seed}")
        if previous is None or previous.credits != new.credits:
            self.credits_remaining = new.credits
        if previous is None or previous.fault_script != new.fault_script:
            self._script_positions.clear()
        if previous is None or previous.highlights != new.highlights:
            self._highlights_since = _loop_time()  # grow_every counts from here

    # -- inspection helpers ---------------------------------------------------------

    def records_for(self, key: str) -> list[RequestRecord]:
        """Return the logged requests for one target key, e.g. ``"username:javan"``.

        A highlight key (``"highlight:ID"``) gives that highlight's requests;
        an account's key gives its stories and tray requests.
        """
        if key.startswith(_HIGHLIGHT_PREFIX):
            return [r for r in self.log if r.target == key]
        kind, value = split_target_key(key)
        if kind == "username":
            return [r for r in self.log if r.username == value and r.user_id is None]
        return [r for r in self.log if r.user_id == value and r.username is None]

    def successful_targets(self) -> collections.Counter[str]:
        """Return target key -> number of HTTP 200 / code 0 answers (a copy; unaffected by ``max_log``).

        Stories answers count under the account's key (``"username:javan"``),
        tray answers under ``"tray:"`` + that key, highlight stories under
        ``"highlight:ID"``.
        """  # noqa: E501
        return collections.Counter(self._successes)

    def max_in_window(self, window: float = 1.0) -> int:
        """Return the most arrivals (rejected ones included) in any window ``[t, t + window)`` of the log."""  # noqa: E501
        if window <= 0:
            raise ValueError(f"window must be > 0, got {window!r}")
        times = [r.time for r in self.log]
        best = 0
        for i, start in enumerate(times):
            best = max(best, bisect.bisect_left(times, start + window, lo=i) - i)
        return best

    def count(
        self,
        *,
        status: int | None = None,
        body_code: int | None = None,
        fault: Fault | None = None,
    ) -> int:
        """Count requests matching every given filter (``None`` = any value).

        ``count()`` is the number of requests; ``count(status=200, body_code=0)``
        the number of code-0 answers (successes, plus billed hostile faults such
        as :attr:`Fault.SCHEMA_DRIFT`, which ``fault=`` tells apart);
        ``count(fault=Fault.RESET)`` the resets. Counts
        are kept separately from :attr:`log`, so ``max_log`` does not affect them.
        """
        return sum(
            n
            for (s, c, f), n in self._outcomes.items()
            if (status is None or s == status)
            and (body_code is None or c == body_code)
            and (fault is None or f is fault)
        )

    def reel_for(self, key: str) -> dict[str, object] | None:
        """Return the decoded ``data.data`` a successful answer for ``key`` carries (``None`` if absent).

        Handy for asserting that a client parsed the emulator's body correctly.
        """  # noqa: E501
        split_target_key(key)
        reel = build_reel(key, self._config.seed, self._config.empty_ratio)["data"]
        return None if reel is None else dict(reel)

    def make_app(self) -> web.Application:
        """Return an :class:`aiohttp.web.Application` serving this emulator."""
        app = web.Application()
        # HEAD would run the full pipeline (and spend credits) for no body.
        for path in (ENDPOINT, TRAY_PATH, HIGHLIGHT_STORIES_PATH):
            app.router.add_get(path, self._handle, allow_head=False)
        install_media(app, self)  # /media/... and signed media URLs in answers
        return app

    # -- request handling -----------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        answer = self.decide(
            request.query, request.headers.get(hdrs.AUTHORIZATION), path=request.path
        )
        if answer.delay > 0:
            await asyncio.sleep(answer.delay)
        if answer.fault is Fault.RESET:
            return await self._send_reset(request, answer.body)
        return web.Response(body=answer.body, status=answer.status, headers=answer.headers)

    @staticmethod
    async def _send_reset(request: web.Request, body: bytes) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=_JSON_HEADERS)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        transport = request.transport
        if transport is not None:
            transport.abort()
        # aiohttp's write_eof on the aborted transport raises ConnectionError,
        # which the server treats as a client disconnect (no traceback logged).
        return response

    def _request_id(self) -> str:
        return str(uuid.UUID(int=self._id_rng.getrandbits(128), version=4))

    def decide(
        self, query: Mapping[str, str], authorization: str | None, *, path: str = ENDPOINT
    ) -> Answer:
        """Decide, log and count the answer to one request; nothing is awaited.

        ``query`` is the request's query parameters (``username``/``user_id``,
        or ``highlight_id`` on the highlight stories ``path``; the first value
        of a repeated one), ``authorization`` its ``Authorization`` header;
        every path shares the keys, the QPS window, the credits and the faults.
        The caller waits :attr:`Answer.delay` and then sends the answer (or,
        for :attr:`Fault.RESET`, cuts the connection).
        """
        config = self._config
        now = _loop_time()
        self._seq += 1
        self.requests_total += 1
        username = query.get("username") or None
        user_id = query.get("user_id") or None
        highlight_id = query.get("highlight_id") or None
        token = _bearer_token(authorization)
        forbidden = token is not None and token in config.forbidden_keys
        authorized = token is not None and (forbidden or token in config.api_keys)
        if token is None:
            answer = self._json_error(401, _MSG_NO_KEY)
        elif not authorized:
            answer = self._json_error(401, _MSG_BAD_KEY)
        elif forbidden:
            answer = self._json_error(403, _MSG_FORBIDDEN)
        else:
            answer = self._decide_authorized(config, now, username, user_id, path, highlight_id)
        delay = config.latency
        if config.latency_jitter > 0:
            delay += self._latency_rng.uniform(0.0, config.latency_jitter)
        if answer.fault is Fault.SLOW:
            delay += config.slow_seconds
        if delay > 0:
            answer = answer._replace(delay=delay)

        record = RequestRecord(
            seq=self._seq,
            time=now,
            username=username,
            user_id=user_id,
            status=answer.status,
            body_code=answer.body_code,
            fault=answer.fault,
            authorized=authorized,
            path=path,
            highlight_id=highlight_id,
        )
        self._append(record)
        self._outcomes[answer.status, answer.body_code, answer.fault] += 1
        return answer

    def _is_missing(self, config: EmulatorConfig, key: str, username: str | None) -> bool:
        if username is not None and username.startswith(_MISSING_PREFIX):
            return True
        return key in config.missing_accounts

    def _append(self, record: RequestRecord) -> None:
        log = self.log
        log.append(record)
        max_log = self.max_log
        if max_log is not None and len(log) > max_log:
            # Dropping a batch at a time keeps trimming amortised O(1) per request.
            del log[: len(log) - max_log + max_log // 8]

    def _decide_authorized(
        self,
        config: EmulatorConfig,
        now: float,
        username: str | None,
        user_id: str | None,
        path: str,
        highlight_id: str | None,
    ) -> Answer:
        if path == HIGHLIGHT_STORIES_PATH:
            if highlight_id is None:
                return self._json_error(400, _MSG_NO_HIGHLIGHT)
            digits = _highlight_digits(highlight_id)
            if digits is None:
                return self._json_error(400, _MSG_BAD_HIGHLIGHT)
            key = _HIGHLIGHT_PREFIX + digits
        elif username is None and user_id is None:
            return self._json_error(400, _MSG_NO_HANDLE)
        elif username is not None and user_id is not None:
            return self._json_error(400, _MSG_BOTH_HANDLES)
        elif user_id is not None and not (user_id.isascii() and user_id.isdigit()):
            return self._json_error(400, _MSG_BAD_USER_ID)
        else:
            key = f"username:{username}" if username is not None else f"user_id:{user_id}"

        cap = self._qps_cap
        if cap is not None:
            accepted = self._accepted
            horizon = now - self._qps_window
            while accepted and accepted[0] <= horizon:
                accepted.popleft()
            if len(accepted) >= cap:
                return self._rate_limited(config, now, status=429, fault=None)
            accepted.append(now)

        if self.credits_remaining is not None and self.credits_remaining < CREDITS_PER_SUCCESS:
            return self._json_error(402, _MSG_QUOTA)

        if self._is_missing(config, key, username):
            return self._json_error(404, _MSG_NOT_FOUND)

        fault = self._pick_fault(config, key)
        if fault is None or fault in BILLED_FAULTS:
            if self.credits_remaining is not None:
                self.credits_remaining -= CREDITS_PER_SUCCESS
            self.credits_spent += CREDITS_PER_SUCCESS
            if fault is None or fault is Fault.SLOW:
                self._successes["tray:" + key if path == TRAY_PATH else key] += 1
                body = self._success_body(config, key, path)
                return Answer(200, body, _JSON_HEADERS, 0, fault)
            body = self._billed_fault_body(config, key, fault, path)
            return Answer(200, body, _JSON_HEADERS, 0, fault)
        if fault is Fault.SERVER_ERROR_LATIN1:
            body = b"".join(
                (
                    b'{"code":500,"data":null,"message":"',
                    _MSG_LATIN1,
                    b'","requestId":"',
                    self._request_id().encode(),
                    b'"}',
                )
            )
            return Answer(500, body, _LATIN1_HEADERS, 500, fault)
        if fault is Fault.SERVICE_UNAVAILABLE:
            body = _envelope(503, _MSG_UNAVAILABLE, self._request_id())
            return Answer(503, body, _UNAVAILABLE_HEADERS, 503, fault)
        if fault is Fault.SERVER_ERROR:
            return self._json_error(500, _MSG_SERVER_ERROR, fault=fault)
        if fault is Fault.BAD_GATEWAY_HTML:
            return Answer(502, _BAD_GATEWAY_PAGE, _HTML_HEADERS, None, fault)
        if fault is Fault.ERROR_CODE_200:
            return self._json_error(500, _MSG_SERVER_ERROR, status=200, fault=fault)
        if fault is Fault.RATE_LIMIT_200:
            return self._json_error(429, _MSG_QPS, status=200, fault=fault)
        if fault is Fault.RATE_LIMIT:
            return self._rate_limited(config, now, status=429, fault=fault)
        if fault is Fault.EMPTY:
            return Answer(200, b"", _JSON_HEADERS, None, fault)
        body = self._success_body(config, key, path)
        if fault is Fault.TRUNCATED:
            return Answer(200, body[: len(body) // 2], _JSON_HEADERS, None, fault)
        # Fault.RESET: the handler writes half of this body, then aborts.
        return Answer(0, body, _JSON_HEADERS, None, fault)

    def _pick_fault(self, config: EmulatorConfig, key: str) -> Fault | None:
        scripted: Fault | None = None
        script = config.fault_script.get(key)
        if script is not None:
            position = self._script_positions.get(key, 0)
            self._script_positions[key] = position + 1
            if position < len(script):
                scripted = script[position]
        drawn: Fault | None = None
        if self._fault_thresholds:
            # Draw even when a script decides, so the random sequence seen by
            # other targets does not depend on which targets are scripted.
            index = bisect.bisect_right(self._fault_thresholds, self._fault_rng.random())
            if index < len(self._fault_choices):
                drawn = self._fault_choices[index]
        return scripted if scripted is not None else drawn

    def _success_body(self, config: EmulatorConfig, key: str, path: str = ENDPOINT) -> bytes:
        if path == ENDPOINT:
            if config.churn is not None:  # watch mode: the reel changes with time
                reel = churn_reel(config.churn, config.seed, key)
            else:
                reel = encoded_reel(key, config.seed, config.empty_ratio)
        else:
            reel = encode_data(self._highlights_data(config, key, path))
        request_id = self._request_id().encode()
        return b"".join((_SUCCESS_HEAD, reel, _REQUEST_ID_HEAD, request_id, _SUCCESS_TAIL))

    def _highlights_data(self, config: EmulatorConfig, key: str, path: str) -> dict[str, Any]:
        elapsed = _loop_time() - self._highlights_since
        if path == TRAY_PATH:
            for digits in highlight_ids(key, config.seed, config.highlights):
                self._highlight_owners[digits] = key
            kept = _kept_story(config, key)
            return tray_data(key, config.seed, config.highlights, elapsed, kept)
        digits = key.removeprefix(_HIGHLIGHT_PREFIX)
        owner = self._highlight_owners.get(digits)
        kept = None if owner is None else _kept_story(config, owner)
        return highlight_stories_data(digits, config.seed, config.highlights, elapsed, owner, kept)

    def _billed_fault_body(
        self, config: EmulatorConfig, key: str, fault: Fault, path: str = ENDPOINT
    ) -> bytes:
        """A code-0 body the client cannot use: the hostile answers the API still bills."""
        if fault is Fault.NON_UTF8:
            body = self._success_body(config, key, path)
            # Into a string the client models (the owner's name, else the
            # message): a byte in a skipped field would pass unnoticed.
            if b'"full_name":"' in body:
                return body.replace(b'"full_name":"', b'"full_name":"\xff', 1)
            return body.replace(b'"message":"success"', b'"message":"succ\xffss"', 1)
        request_id = self._request_id()
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
            reel["count"] = _ANNOUNCED_COUNT
        return msgspec.json.encode(
            {"code": 0, "message": "success", "data": {"data": reel}, "requestId": request_id}
        )

    def _json_error(
        self, code: int, message: str, *, status: int | None = None, fault: Fault | None = None
    ) -> Answer:
        body = _envelope(code, message, self._request_id())
        return Answer(code if status is None else status, body, _JSON_HEADERS, code, fault)

    def _rate_limited(
        self, config: EmulatorConfig, now: float, *, status: int, fault: Fault | None
    ) -> Answer:
        answer = self._json_error(429, _MSG_QPS, status=status, fault=fault)
        if not config.retry_after:
            return answer
        return answer._replace(
            headers={**_JSON_HEADERS, hdrs.RETRY_AFTER: str(self._retry_after_seconds(now))}
        )

    def _retry_after_seconds(self, now: float) -> int:
        cap, accepted = self._qps_cap, self._accepted
        if cap is None or len(accepted) < cap:
            return 1
        # The window frees a slot when the entry `cap` places from the end expires.
        frees_at = accepted[len(accepted) - cap] + self._qps_window
        return max(1, math.ceil(frees_at - now))
