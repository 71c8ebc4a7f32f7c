"""A rate gate and a credit budget shared by every process on one API key, through Redis.

keyapi.ai limits requests per second *per key*. Processes that each pace
themselves at ``qps`` send ``N * qps`` together; this module moves the three
pieces of shared state into Redis so that every client configured with the
same key and the same Redis shares them:

* **the rate**: a GCRA with no burst, evaluated in one Lua script per attempt
  on Redis's clock (``TIME``), so the hosts' clocks never matter. Consecutive
  grants are at least ``1 / (qps * (1 - margin))`` seconds apart across all
  processes, hence never more than ``qps`` grants in any one-second window,
  the first second included;
* **the 429 cooldown and the adaptive rate**: a 429 seen by one process pauses
  all of them, and the lowered rate is shared: the script computes it from
  the time of the cut by the local gate's rule
  (:func:`~keyapi_async.engine.gate.recovered_rate`, transcribed to Lua and
  fed the same constants);
* **the credit budget**: reservations are taken atomically against one
  counter; every reservation carries a random token so that a script retried
  after a lost reply is applied once.

Nothing secret reaches Redis: key names are built from a salted hash of the
API key (:func:`fingerprint`) and an optional namespace, values are times and
counts, and every key expires on its own (rate state within seconds, credits a
day after their last use).

When Redis is lost mid-run, sending stops: :meth:`RedisGate.acquire` retries
for up to ``grace`` seconds and then raises
:class:`~keyapi_async._errors.GateUnavailableError`. It never falls back to a
gate of its own, which would silently breach the shared cap.

This is the only module that imports ``redis`` (the ``keyapi-async[redis]``
extra); the client imports it lazily, only when ``redis_url`` is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .._errors import ConfigurationError, GateUnavailableError
from .gate import (
    BETA,
    COLD_START,
    FLOOR,
    HOLD,
    RECOVERY,
    WINDOW,
    GateSnapshot,
    Ticket,
    Verdict,
    is_cold,
    paced_rate,
)
from .validate import check_count

__all__ = [
    "KEY_PREFIX",
    "RedisBudget",
    "RedisGate",
    "SharedState",
    "connect_shared",
    "fingerprint",
    "redis_keys",
    "shown_redis",
]

_log = logging.getLogger("keyapi_async")

T = TypeVar("T")

#: Every key this module writes starts with this.
KEY_PREFIX = "keyapi:"

#: Credits (and their reservations) expire after a day without use.
CREDITS_TTL = 86_400

#: A reservation not settled within this long is taken to belong to a process
#: that died; it is then counted as spent (the request may have been billed),
#: so reaping it can never let the budget be exceeded.
HOLD_LEASE = 3_600

#: How often (seconds) the reserve script looks for abandoned reservations.
REAP_EVERY = 60

#: Redis failures that mean "the shared state cannot be reached right now".
#: Any RedisError counts (a READONLY replica after a failover, a script error):
#: without a verdict from Redis nothing may be sent.
_LOST: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)

_FINGERPRINT_SALT = b"keyapi-async/redis/v1\x00"
_NAMESPACE = re.compile(r"[A-Za-z0-9._-]{1,64}")

# -- Lua ------------------------------------------------------------------------------
#
# Times are seconds (floats) on Redis's clock. Numbers cross into Redis only as
# strings formatted with %.17g: Lua's default conversion keeps 14 digits, which
# at 1.7e9 s is 0.1 ms, too coarse for spacing sends; and a Lua number returned
# to Redis is truncated to an integer, so replies carry floats as strings too.

_LUA_COMMON = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local function fmt(x) return string.format('%.17g', x) end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- The current pacing rate: the ceiling, or the recovery after a cut. A line
-- by line copy of engine/gate.py's recovered_rate, with its constants:
-- ARGV[3] = RECOVERY, ARGV[4] = HOLD. cut_at: time of the cut; w_max: the
-- level it recovers to; cut_to: the rate it cut to.
local function current_rate(rate_key, ceiling, now)
  local st = redis.call('HMGET', rate_key, 'cut_at', 'w_max', 'cut_to')
  local cut_at, w_max, cut_to = tonumber(st[1]), tonumber(st[2]), tonumber(st[3])
  if cut_at == nil or cut_to == nil or ceiling <= 0 then return ceiling, cut_at ~= nil end
  local k, hold = tonumber(ARGV[3]), tonumber(ARGV[4])
  local e = now - cut_at
  local rate
  if e < k then rate = w_max - (w_max - cut_to) * ((k - e) / k) ^ 3
  elseif e < k + hold then rate = w_max
  else rate = w_max + (ceiling - w_max) * ((e - k - hold) / k) ^ 3 end
  if rate >= ceiling then return ceiling, true end
  return rate, false
end
"""

# KEYS: rate hash, cooldown string.
# ARGV: ceiling (paced rate; 0 = no cap), slack (lateness absorbed), recovery, hold,
#       cold (seconds the next slot is held back after this grant; 0 = none).
# Returns {1, sent_at, rate, cooldown_until, now} on a grant,
#         {0, wait_seconds, rate, cooldown_until, now} otherwise.
ACQUIRE_LUA = (
    _LUA_COMMON
    + """
local now = clock()
local ceiling = tonumber(ARGV[1])
local cd = tonumber(redis.call('GET', KEYS[2]) or '0')
local rate, recovered = current_rate(KEYS[1], ceiling, now)
if now < cd then return {0, fmt(cd - now), fmt(rate), fmt(cd), fmt(now)} end
if ceiling <= 0 then return {1, fmt(now), '0', fmt(cd), fmt(now)} end
if recovered then redis.call('HDEL', KEYS[1], 'cut_at', 'w_max', 'cut_to', 'k', 'scale') end
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat > now then return {0, fmt(tat - now), fmt(rate), fmt(cd), fmt(now)} end
local interval = 1 / rate
-- A grant is late by the waiter's sleep and round trip (about a millisecond);
-- restarting the schedule from `now` would lose that much per slot (a third
-- of the rate at 500/s). Up to `slack` of lateness is absorbed instead. From
-- an idle schedule (or one late by more) it restarts at `now`: the slack is
-- no head start, or the second grant of a fresh schedule would follow the
-- first by interval - slack, just when the first is the likeliest to be
-- written late (issue 21).
local slack = math.min(interval, tonumber(ARGV[2]))
local base = tat
if now - tat > slack then base = now end
-- A cold grant (a process's first): its request pays for a new connection
-- and a busy start, so the next slot waits `cold` more, and the late send
-- cannot share a window with a full second of others.
redis.call('HSET', KEYS[1], 'tat', fmt(base + interval + tonumber(ARGV[5])))
-- Keep the state while it matters: the next slot, or a recovery in progress
-- (which can take a while at low rates), plus a few seconds.
local keep = interval + 5
if redis.call('HEXISTS', KEYS[1], 'cut_at') == 1 then keep = keep + 60 end
redis.call('PEXPIRE', KEYS[1], math.ceil(keep * 1000))
return {1, fmt(now), fmt(rate), fmt(cd), fmt(now)}
"""
)

# KEYS: rate hash, cooldown string.
# ARGV: ceiling (0 = no cap), cooldown seconds, recovery, hold, beta, floor,
#       sent_at of the throttled request (Redis clock), minimum until (0 = none).
# Returns {rate, cooldown_until, now}.
THROTTLE_LUA = (
    _LUA_COMMON
    + """
local now = clock()
local ceiling = tonumber(ARGV[1])
local until_ = math.max(now + tonumber(ARGV[2]), tonumber(ARGV[8]))
local cd = tonumber(redis.call('GET', KEYS[2]) or '0')
if until_ > cd then
  cd = until_
  redis.call('SET', KEYS[2], fmt(cd), 'PX', math.ceil((cd - now) * 1000) + 1000)
end
local rate = current_rate(KEYS[1], ceiling, now)
if ceiling <= 0 then return {'0', fmt(cd), fmt(now)} end
-- Only a 429 for a request sent after the last cut lowers the rate again:
-- the others were paced at the old rate (a burst of 429s from N processes
-- is one signal, not N).
local last_cut = tonumber(redis.call('HGET', KEYS[1], 'cut_at') or '0')
local sent_at = tonumber(ARGV[7])
if sent_at > last_cut then
  -- engine/gate.py's cut_rate with nothing learned: ARGV[5] = BETA, ARGV[6] = FLOOR.
  local beta, floor_ = tonumber(ARGV[5]), tonumber(ARGV[6])
  local w_max = math.max(floor_, rate)
  local new = math.max(floor_, math.min(rate * beta, w_max))
  redis.call('HSET', KEYS[1], 'cut_at', fmt(now), 'w_max', fmt(w_max), 'cut_to', fmt(new))
  rate = new
end
local ttl = math.max(redis.call('PTTL', KEYS[1]), 0)
redis.call('PEXPIRE', KEYS[1], math.max(ttl, 65000))
return {fmt(rate), fmt(cd), fmt(now)}
"""
)

# KEYS: credits hash. ARGV: token, credits, limit, lease, ttl, reap_every.
# Fields: spent, reserved, h:<token> = "<credits>:<lease expiry>", reap_at.
# Returns {granted (1/0), spent, reserved}.
RESERVE_LUA = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1])
local k = KEYS[1]
local reap_at = tonumber(redis.call('HGET', k, 'reap_at') or '0')
if now >= reap_at then
  -- Reservations of dead processes: counted as spent, never freed, because
  -- their requests may have been billed.
  local all = redis.call('HGETALL', k)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'h:' then
      local amount, expiry = string.match(all[i + 1], '^(%d+):(%d+)$')
      if amount and tonumber(expiry) < now then
        redis.call('HDEL', k, all[i])
        redis.call('HINCRBY', k, 'reserved', -tonumber(amount))
        redis.call('HINCRBY', k, 'spent', tonumber(amount))
      end
    end
  end
  redis.call('HSET', k, 'reap_at', now + tonumber(ARGV[6]))
end
redis.call('EXPIRE', k, tonumber(ARGV[5]))
local spent = tonumber(redis.call('HGET', k, 'spent') or '0')
local reserved = tonumber(redis.call('HGET', k, 'reserved') or '0')
local field = 'h:' .. ARGV[1]
if redis.call('HEXISTS', k, field) == 1 then return {1, spent, reserved} end
local credits = tonumber(ARGV[2])
if spent + reserved + credits > tonumber(ARGV[3]) then return {0, spent, reserved} end
redis.call('HINCRBY', k, 'reserved', credits)
redis.call('HSET', k, field, credits .. ':' .. (now + tonumber(ARGV[4])))
return {1, spent, reserved + credits}
"""

# KEYS: credits hash. ARGV: token ('' = a charge with no reservation), spent, ttl.
# Returns {applied (1/0), spent, reserved}.
SETTLE_LUA = """
local k = KEYS[1]
local applied = 0
local field = 'h:' .. ARGV[1]
if ARGV[1] == '' then
  redis.call('HINCRBY', k, 'spent', tonumber(ARGV[2]))
  applied = 1
else
  local held = redis.call('HGET', k, field)
  if held then
    local amount = tonumber(string.match(held, '^(%d+):'))
    redis.call('HDEL', k, field)
    redis.call('HINCRBY', k, 'reserved', -amount)
    redis.call('HINCRBY', k, 'spent', tonumber(ARGV[2]))
    applied = 1
  end
end
redis.call('EXPIRE', k, tonumber(ARGV[3]))
local spent = tonumber(redis.call('HGET', k, 'spent') or '0')
local reserved = tonumber(redis.call('HGET', k, 'reserved') or '0')
return {applied, spent, reserved}
"""


# -- names ----------------------------------------------------------------------------


def fingerprint(api_key: str) -> str:
    """A salted SHA-256 of ``api_key``, truncated to 24 hex digits, for Redis key names.

    Salted so that the name is not the plain hash of the key found elsewhere;
    96 bits keep two keys from sharing a gate by accident and say nothing
    usable about a high-entropy key.
    """
    return hashlib.sha256(_FINGERPRINT_SALT + api_key.encode("utf-8")).hexdigest()[:24]


def redis_keys(key_fingerprint: str, namespace: str | None) -> dict[str, str]:
    """The Redis key names of one API key (and namespace): ``rate``, ``cooldown``, ``credits``.

    The fingerprint is wrapped in braces, a Redis Cluster hash tag: every key
    of one API key lands in one slot, as a multi-key script requires.
    """
    if not re.fullmatch(r"[0-9a-f]{8,64}", key_fingerprint):
        raise ConfigurationError("key_fingerprint must be 8-64 lowercase hex digits")
    if namespace is not None and not _NAMESPACE.fullmatch(namespace):
        raise ConfigurationError(
            f"redis_namespace must be 1-64 of letters, digits, '.', '_', '-', got {namespace!r}"
        )
    base = f"{KEY_PREFIX}{{{key_fingerprint}}}" + ("" if namespace is None else f":{namespace}")
    return {name: f"{base}:{name}" for name in ("rate", "cooldown", "credits")}


def shown_redis(url: str) -> str:
    """Where ``url`` points (``host:port/db`` or the socket path), never its password."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "an invalid Redis URL"
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    where = f"{host or 'localhost'}:{port or 6379}"
    db = parts.path.strip("/")
    return f"{where}/{db}" if db else where


def _scrub(text: str, url: str) -> str:
    """``text`` with the URL's password (if any) blanked, for messages built from redis-py's."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


def _f(value: Any) -> float:
    """A number from a script reply (bytes, as the scripts send floats as strings)."""
    return float(value.decode("ascii") if isinstance(value, bytes) else value)


# -- the gate -------------------------------------------------------------------------


class RedisGate:
    """The :class:`~keyapi_async.engine.gate.Gate` of every process on one key, kept in Redis.

    :meth:`acquire` takes a local in-flight place first (so that a task
    waiting for its turn holds no shared slot), then asks Redis for a turn, one
    script call per attempt, and sleeps as long as Redis says before asking
    again. Only one task per process asks at a time: the others queue behind
    it locally, so that a process with hundreds of workers does not wake
    hundreds of script calls for every slot.

    ``sent_at`` on the tickets is on Redis's clock (seconds since the epoch).
    """

    def __init__(
        self,
        state: SharedState,
        *,
        qps: float | None,
        margin: float,
        concurrency: int,
        retry_after_cap: float,
    ) -> None:
        self._state = state
        # 0 stands for "no cap" in the scripts.
        self._ceiling = paced_rate(qps, margin) or 0.0
        self._margin = margin
        # Lateness the schedule absorbs (see ACQUIRE_LUA): consecutive grants
        # may then be as close as interval - slack, so qps + 1 grants span at
        # least 1/(1 - margin) - slack seconds. A quarter of the margin keeps
        # that above one second with three quarters of the margin left for
        # the network; with no margin the GCRA is strict.
        self._slack = 0.25 * margin / (1 - margin) if 0 < margin < 1 else 0.0
        # A grant that reaches its task later than this after it was asked
        # for (a loop busy at start-up, a stalled process) would be written
        # later than the schedule absorbs: it is forfeit and asked for again,
        # cold (see _wait_turn).
        self._stale_after = max(self._slack, 0.005)
        self._last_grant: float | None = None  # local clock
        #: Grants forfeit because they reached their task too late.
        self.stale_grants = 0
        self._retry_after_cap = retry_after_cap
        self._inflight = asyncio.Semaphore(concurrency)
        self._turn = asyncio.Lock()
        self._clock = asyncio.get_running_loop().time
        self._keys = [state.keys["rate"], state.keys["cooldown"]]
        # Last known values, for snapshot() (no I/O there).
        self._rate: float | None = None if qps is None else self._ceiling
        self._cooldown_until = -math.inf  # on the local clock
        #: 429s reported by this process.
        self.throttles = 0
        #: Turns granted to this process, and script calls made to get them.
        self.grants = 0
        self.script_calls = 0
        # A 429 that could not be reported to Redis yet: (cooldown end on the
        # local clock, sent_at on Redis's clock). It is reported first thing
        # once Redis answers again, and pauses this process meanwhile.
        self._pending_throttle: tuple[float, float] | None = None

    @property
    def idle(self) -> bool:
        """Never: every turn is a round trip to Redis, which a stopping batch may cut short."""
        return False

    async def acquire(self) -> Ticket:
        """Wait for an in-flight place and a shared turn; ``sent_at`` is on Redis's clock.

        Raises :class:`~keyapi_async._errors.GateUnavailableError` when Redis
        has not answered for ``grace`` seconds.
        """
        await self._inflight.acquire()
        try:
            async with self._turn:
                return await self._wait_turn()
        except BaseException:
            self._inflight.release()
            raise

    async def _wait_turn(self) -> Ticket:
        state = self._state
        clock = self._clock
        cold = is_cold(self._last_grant, clock())
        while True:
            now = clock()
            if now < self._cooldown_until:
                # Known locally already (this process's own 429, or the shared
                # cooldown seen in an earlier reply): no need to ask Redis.
                await asyncio.sleep(self._cooldown_until - now)
            if self._pending_throttle is not None:
                local_until, sent_at = self._pending_throttle
                remaining = max(0.0, local_until - clock())
                await state.call(partial(self._throttle, remaining, sent_at, 0.0))
                self._pending_throttle = None
            args: list[str | float] = [
                _fmt(self._ceiling),
                _fmt(self._slack),
                RECOVERY,
                HOLD,
                _fmt(COLD_START if cold else 0.0),
            ]
            asked = clock()
            self.script_calls += 1
            reply = await state.call(partial(state.acquire_script, keys=self._keys, args=args))
            granted, value = int(reply[0]), _f(reply[1])
            now = clock()
            self._learn(asked, _f(reply[2]), _f(reply[3]), _f(reply[4]))
            if not granted:
                await asyncio.sleep(value)
                continue
            if now - asked > self._stale_after and not cold:
                # Granted on Redis's clock up to `now - asked` ago: its send
                # would crowd the grants after it. The slot is left unused
                # and the next one asked for cold, which keeps room after it
                # for a send that is late again.
                self.stale_grants += 1
                cold = True
                continue
            self.grants += 1
            self._last_grant = now
            return Ticket(sent_at=value)

    def _learn(self, asked: float, rate: float, cooldown_until: float, now: float) -> None:
        """Keep the shared rate and cooldown of a reply for snapshot() and local waits."""
        if self._ceiling > 0:
            self._rate = rate
        if cooldown_until > now:
            # Redis's clock mapped onto ours through the moment we asked:
            # early by the round trip at most, so a local wait never ends late.
            self._cooldown_until = max(self._cooldown_until, asked + cooldown_until - now)

    async def release(
        self,
        ticket: Ticket,
        verdict: Verdict,
        *,
        cooldown: float = 0.0,
        server_said: bool = False,
    ) -> None:
        """Free the in-flight place; a 429 (``THROTTLED``) pauses and slows every process.

        Anything but ``THROTTLED`` costs no Redis round trip. ``cooldown`` is
        capped at ``retry_after_cap``. Without ``server_said`` the pause lasts
        at least until the throttled request's one-second window has passed
        (plus the margin): until then the server's window is still full and
        any request would be rejected again.
        """
        # First, so that no failure below can leak the place.
        self._inflight.release()
        if verdict is not Verdict.THROTTLED:
            return
        self.throttles += 1
        cooldown = min(max(0.0, cooldown), self._retry_after_cap)
        self._cooldown_until = max(self._cooldown_until, self._clock() + cooldown)
        minimum = 0.0 if server_said else ticket.sent_at + WINDOW * (1 + self._margin)
        try:
            await self._state.call(
                lambda: self._throttle(cooldown, ticket.sent_at, minimum), grace=0.0
            )
        except GateUnavailableError:
            # Reported once Redis is back (no turn can be granted before).
            self._pending_throttle = (self._cooldown_until, ticket.sent_at)

    async def _throttle(self, cooldown: float, sent_at: float, minimum: float) -> None:
        asked = self._clock()
        reply = await self._state.throttle_script(
            keys=self._keys,
            args=[
                _fmt(self._ceiling),
                _fmt(cooldown),
                RECOVERY,
                HOLD,
                BETA,
                FLOOR,
                _fmt(sent_at),
                _fmt(minimum),
            ],
        )
        self._learn(asked, _f(reply[0]), _f(reply[1]), _f(reply[2]))

    def snapshot(self) -> GateSnapshot:
        """The last known shared rate and cooldown, and this process's 429 count (no I/O)."""
        return GateSnapshot(
            current_qps=self._rate,
            cooldown_remaining=max(0.0, self._cooldown_until - self._clock()),
            throttles=self.throttles,
        )

    async def aclose(self) -> None:
        """Nothing of its own to release: :meth:`SharedState.aclose` closes the connection."""


def _fmt(value: float) -> str:
    return f"{value:.17g}"


# -- the budget -----------------------------------------------------------------------


class RedisBudget:
    """The :class:`~keyapi_async.engine.budget.Budget` of every process on one key, kept in Redis.

    ``limit`` is this process's ``max_credits``, checked against the shared
    counter: spent plus reserved by every process. Each reservation is a
    random token in Redis, so that a script retried after a lost reply is
    applied once; a settle that cannot reach Redis is kept and sent again
    with the next call (or at close).
    """

    def __init__(self, state: SharedState, *, max_credits: int | None) -> None:
        self._state = state
        self._limit = max_credits
        self._keys = [state.keys["credits"]]
        self._spent = 0
        # Tokens of this process's open reservations, by amount: reservations
        # of one amount are interchangeable, so settle(amount, ...) may end any.
        self._holds: dict[int, list[str]] = {}
        self._pending: list[tuple[str, int]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Last known shared totals (all processes), without I/O.
        self.shared_spent = 0
        self.shared_reserved = 0

    @property
    def limit(self) -> int | None:
        """The most credits all processes together may spend; ``None``: no limit."""
        return self._limit

    @property
    def spent(self) -> int:
        """Credits charged by this process."""
        return self._spent

    async def reserve(self, credits: int) -> bool:
        """Atomically reserve ``credits`` unless spent + reserved (everyone's) would pass the limit.

        Raises :class:`~keyapi_async._errors.GateUnavailableError` when Redis
        has not answered for ``grace`` seconds.
        """
        if self._limit is None or credits <= 0:
            return True
        await self._flush()
        token = secrets.token_hex(8)
        # Shielded: if the caller is cancelled while the script runs, the
        # script still completes, and a reservation it made is given back.
        task = asyncio.ensure_future(self._reserve(token, credits, self._limit))
        try:
            granted = await asyncio.shield(task)
        except asyncio.CancelledError:
            self._keep(task)
            task.add_done_callback(partial(self._abandoned, token))
            raise
        except GateUnavailableError:
            # A call that timed out may have reserved all the same: free it
            # once Redis answers (a no-op for a token Redis never saw).
            self._pending.append((token, 0))
            raise
        if granted:
            self._holds.setdefault(credits, []).append(token)
        return granted

    def _abandoned(self, token: str, task: asyncio.Task[bool]) -> None:
        """Give back what the reserve of a cancelled caller got (called when its script ends)."""
        if task.cancelled() or task.exception() is not None:
            self._pending.append((token, 0))
        elif task.result():
            self._keep(asyncio.ensure_future(self._settle(token, 0)))

    async def _reserve(self, token: str, credits: int, limit: int) -> bool:
        state = self._state
        reply = await state.call(
            lambda: state.reserve_script(
                keys=self._keys,
                args=[token, credits, limit, HOLD_LEASE, CREDITS_TTL, REAP_EVERY],
            )
        )
        self.shared_spent, self.shared_reserved = int(reply[1]), int(reply[2])
        return bool(int(reply[0]))

    async def settle(self, reserved: int, spent: int) -> None:
        """End a reservation of ``reserved``: charge ``spent`` of it, free the rest.

        Never raises for Redis: an unreachable Redis keeps the settlement to
        send later (until then the credits stay reserved, which can only
        under-spend the budget).
        """
        self._spent += spent
        if self._limit is None:
            return
        tokens = self._holds.get(reserved)
        if reserved > 0 and not tokens:
            raise RuntimeError(f"settle({reserved}, {spent}) without a matching reserve")
        token = tokens.pop() if tokens else ""
        if reserved <= 0 and spent <= 0:
            return
        # Shielded: once the reservation is given up locally it must reach
        # Redis, even if the caller is cancelled meanwhile.
        task = asyncio.ensure_future(self._settle(token, spent))
        self._keep(task)
        await asyncio.shield(task)
        await self._flush()

    async def _settle(self, token: str, spent: int) -> bool:
        """Apply one settlement; keep it in the pending list when Redis is away."""
        state = self._state
        try:
            reply = await state.call(
                partial(state.settle_script, keys=self._keys, args=[token, spent, CREDITS_TTL]),
                grace=0.0,
            )
        except GateUnavailableError:
            self._pending.append((token, spent))
            _log.debug("%d credit settlements kept until Redis answers", len(self._pending))
            return False
        self.shared_spent, self.shared_reserved = int(reply[1]), int(reply[2])
        return True

    async def _flush(self) -> None:
        """Send the settlements kept while Redis was away (each taken off the list once)."""
        while self._pending:
            if not await self._settle(*self._pending.pop(0)):
                return

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # An exception nobody reads would be logged as "never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def aclose(self) -> None:
        """Send what is still pending (best effort: the shared key expires on its own)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._limit is not None:
            await self._flush()


# -- the connection -------------------------------------------------------------------


class SharedState:
    """One Redis connection pool and the :attr:`gate` and :attr:`budget` built on it.

    Built by :func:`connect_shared`; close with :meth:`aclose`.
    """

    gate: RedisGate
    budget: RedisBudget

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        url: str,
        keys: dict[str, str],
        grace: float,
    ) -> None:
        self._client = client
        self._url = url
        self.keys = keys
        self.grace = grace
        #: Bound on one call (connecting included): shorter than the grace, so
        #: that a silent server, not only a refused connection, is noticed
        #: within it.
        self.timeout = min(2.0, max(0.25, grace))
        #: Where Redis is, for messages (no password).
        self.where = shown_redis(url)
        self._clock = asyncio.get_running_loop().time
        # When Redis stopped answering (local clock); None while it answers.
        # Shared by the gate and the budget: once the grace has run out,
        # every call fails on its first error instead of waiting it again.
        self._lost_since: float | None = None
        self._closed = False
        self.acquire_script = client.register_script(ACQUIRE_LUA)
        self.throttle_script = client.register_script(THROTTLE_LUA)
        self.reserve_script = client.register_script(RESERVE_LUA)
        self.settle_script = client.register_script(SETTLE_LUA)

    async def call(self, do: Callable[[], Awaitable[T]], *, grace: float | None = None) -> T:
        """Run ``do`` (one script call), retrying while Redis is away for up to the grace.

        Raises :class:`~keyapi_async._errors.GateUnavailableError` past it.
        ``grace=0`` tries once (and fails at once when Redis is already known
        to be away).
        """
        grace = self.grace if grace is None else grace
        backoff = 0.05
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    result = await do()
            except _LOST as exc:
                now = self._clock()
                if self._lost_since is None:
                    self._lost_since = now
                    _log.warning("Redis at %s lost: %s", self.where, type(exc).__name__)
                # The grace runs from the first failure, across calls: once
                # it is over, later calls fail on their first error.
                deadline = self._lost_since + grace
                if now >= deadline:
                    reason = _scrub(str(exc), self._url) or type(exc).__name__
                    raise GateUnavailableError(
                        f"the shared rate gate in Redis at {self.where} has not answered "
                        f"for {now - self._lost_since:.1f} s ({reason}); nothing is sent "
                        f"without it"
                    ) from None
                await asyncio.sleep(min(backoff, deadline - now))
                backoff = min(backoff * 2, 0.5)
                continue
            if self._lost_since is not None:
                _log.warning("Redis at %s is back", self.where)
                self._lost_since = None
            return result

    async def aclose(self) -> None:
        """Flush pending settlements and close the connection pool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.budget.aclose()
            await self.gate.aclose()
        finally:
            await self._client.aclose()


async def connect_shared(
    *,
    url: str,
    namespace: str | None,
    key_fingerprint: str,
    qps: float | None,
    margin: float,
    concurrency: int,
    max_credits: int | None,
    grace: float,
    retry_after_cap: float,
) -> SharedState:
    """Connect to Redis and build the shared gate and budget of one API key.

    ``key_fingerprint`` is :func:`fingerprint` of the API key (the key itself
    never reaches this module). Raises
    :class:`~keyapi_async._errors.ConfigurationError`, naming the server but
    never its password, when Redis cannot be reached or refuses the scripts:
    before any API request is sent.

    ``retry_after_cap`` bounds the cooldown one 429 may impose on everyone
    (the fetcher's policy already caps it; this guards the shared state
    against a peer with a different setting).
    """
    keys = redis_keys(key_fingerprint, namespace)
    check_count(concurrency, "concurrency", minimum=1)
    client = _redis_client(url)
    state = SharedState(client, url=url, keys=keys, grace=grace)
    await _check_server(state, client, url)
    state.gate = RedisGate(
        state,
        qps=qps,
        margin=margin,
        concurrency=concurrency,
        retry_after_cap=retry_after_cap,
    )
    state.budget = RedisBudget(state, max_credits=max_credits)
    return state


def _redis_client(url: str) -> aioredis.Redis:
    """A redis-py client for ``url`` (not connected yet); a bad URL is a ConfigurationError."""
    # No timeouts inside redis-py: with socket_timeout set, redis-py 8.1
    # swallows the cancellation of a task waiting for a reply (the call
    # completes, so a cancelled acquire would be granted a turn). Every call
    # is bounded by asyncio.timeout in SharedState.call instead, which
    # cancels cleanly (redis-py drops the connection of a cancelled read, so
    # a late reply never reaches the next command). No retries inside
    # redis-py either: SharedState.call retries with the grace in view.
    try:
        client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=None,
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
        )
    except (ValueError, redis.exceptions.RedisError) as exc:
        raise ConfigurationError(
            f"invalid redis_url for {shown_redis(url)}: {_scrub(str(exc), url)}"
        ) from None
    return client


async def _check_server(state: SharedState, client: aioredis.Redis, url: str) -> None:
    """Reach the server and load the scripts, or close the client and raise ConfigurationError."""
    try:
        async with asyncio.timeout(state.timeout):
            await client.ping()
            # Load the scripts now: a server that refuses them (no Lua, an ACL
            # without EVAL) must fail here, not at the first request.
            for script in (
                state.acquire_script,
                state.throttle_script,
                state.reserve_script,
                state.settle_script,
            ):
                await client.script_load(script.script)
    except _LOST as exc:
        await client.aclose()
        raise ConfigurationError(
            f"cannot use Redis at {shown_redis(url)} for the shared rate gate: "
            f"{_scrub(str(exc), url) or type(exc).__name__}"
        ) from None
