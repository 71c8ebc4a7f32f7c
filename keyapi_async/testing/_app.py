"""The emulator's state (:class:`Emulator`) and its aiohttp.web request handler."""

from __future__ import annotations

import asyncio
import bisect
import collections
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from aiohttp import hdrs, web

from .._errors import ConfigurationError
from ._answers import (
    HIGHLIGHT_PREFIX,
    JSON_HEADERS,
    MISSING_PREFIX,
    MSG_BAD_HIGHLIGHT,
    MSG_BAD_KEY,
    MSG_BAD_USER_ID,
    MSG_BOTH_HANDLES,
    MSG_FORBIDDEN,
    MSG_NO_HANDLE,
    MSG_NO_HIGHLIGHT,
    MSG_NO_KEY,
    MSG_NOT_FOUND,
    MSG_QUOTA,
    Answer,
    Answers,
    loop_time,
)
from ._config import BILLED_FAULTS, ENDPOINT, EmulatorConfig, Fault
from ._data import build_reel, split_target_key, target_key
from ._faults import FaultPicker
from ._highlights import (
    HIGHLIGHT_STORIES_PATH,
    TRAY_PATH,
)
from ._media import install_media
from ._window import QpsWindow

__all__ = ["ENDPOINT", "Answer", "Emulator", "RequestRecord"]

"""The only path the emulator serves (``GET``)."""

CREDITS_PER_SUCCESS: Final = 2


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
            return None if digits is None else HIGHLIGHT_PREFIX + digits
        if (self.username is None) == (self.user_id is None):
            return None
        return target_key(self.username, self.user_id)


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
    digits = value.removeprefix(HIGHLIGHT_PREFIX)
    return digits if digits.isascii() and digits.isdigit() else None


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
            raise ConfigurationError(f"max_log must be None or an int >= 1, got {max_log!r}")
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
        self._faults: FaultPicker[Fault] = FaultPicker()
        self._window = QpsWindow()
        self._answers = Answers(self._window)
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
        self._window.configure(new.qps)
        self._faults.set_rates(Fault, new.fault_rates)
        if previous is None or previous.seed != new.seed:
            self._faults.reseed(f"keyapi-emulator-faults:{new.seed}")
            self._answers.reseed(new.seed)
            self._latency_rng = random.Random(f"keyapi-emulator-latency:{new.seed}")
        if previous is None or previous.credits != new.credits:
            self.credits_remaining = new.credits
        if previous is None or previous.fault_script != new.fault_script:
            self._faults.restart_scripts()
        if previous is None or previous.highlights != new.highlights:
            self._answers.highlights_since = loop_time()  # grow_every counts from here

    # -- inspection helpers ---------------------------------------------------------

    def records_for(self, key: str) -> list[RequestRecord]:
        """Return the logged requests for one target key, e.g. ``"username:javan"``.

        A highlight key (``"highlight:ID"``) gives that highlight's requests;
        an account's key gives its stories and tray requests.
        """
        if key.startswith(HIGHLIGHT_PREFIX):
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
            raise ConfigurationError(f"window must be > 0, got {window!r}")
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
        response = web.StreamResponse(status=200, headers=JSON_HEADERS)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        transport = request.transport
        if transport is not None:
            transport.abort()
        # aiohttp's write_eof on the aborted transport raises ConnectionError,
        # which the server treats as a client disconnect (no traceback logged).
        return response

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
        now = loop_time()
        self._seq += 1
        self.requests_total += 1
        username = query.get("username") or None
        user_id = query.get("user_id") or None
        highlight_id = query.get("highlight_id") or None
        token = _bearer_token(authorization)
        forbidden = token is not None and token in config.forbidden_keys
        authorized = token is not None and (forbidden or token in config.api_keys)
        if token is None:
            answer = self._answers.json_error(401, MSG_NO_KEY)
        elif not authorized:
            answer = self._answers.json_error(401, MSG_BAD_KEY)
        elif forbidden:
            answer = self._answers.json_error(403, MSG_FORBIDDEN)
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
        if username is not None and username.startswith(MISSING_PREFIX):
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
                return self._answers.json_error(400, MSG_NO_HIGHLIGHT)
            digits = _highlight_digits(highlight_id)
            if digits is None:
                return self._answers.json_error(400, MSG_BAD_HIGHLIGHT)
            key = HIGHLIGHT_PREFIX + digits
        elif username is None and user_id is None:
            return self._answers.json_error(400, MSG_NO_HANDLE)
        elif username is not None and user_id is not None:
            return self._answers.json_error(400, MSG_BOTH_HANDLES)
        elif user_id is not None and not (user_id.isascii() and user_id.isdigit()):
            return self._answers.json_error(400, MSG_BAD_USER_ID)
        else:
            key = f"username:{username}" if username is not None else f"user_id:{user_id}"

        if not self._window.admit(now):
            return self._answers.rate_limited(config, now, status=429, fault=None)

        if self.credits_remaining is not None and self.credits_remaining < CREDITS_PER_SUCCESS:
            return self._answers.json_error(402, MSG_QUOTA)

        if self._is_missing(config, key, username):
            return self._answers.json_error(404, MSG_NOT_FOUND)

        fault = self._faults.pick(config.fault_script.get(key), key)
        if fault is None or fault in BILLED_FAULTS:
            if self.credits_remaining is not None:
                self.credits_remaining -= CREDITS_PER_SUCCESS
            self.credits_spent += CREDITS_PER_SUCCESS
            if fault is None or fault is Fault.SLOW:
                self._successes["tray:" + key if path == TRAY_PATH else key] += 1
                body = self._answers.success_body(config, key, path)
                return Answer(200, body, JSON_HEADERS, 0, fault)
            body = self._answers.billed_fault_body(config, key, fault, path)
            return Answer(200, body, JSON_HEADERS, 0, fault)
        return self._answers.for_fault(config, now, key, path, fault)
