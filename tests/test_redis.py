"""The shared gate and budget of ``engine.redis_gate``, against a real ``redis-server``.

Every guarantee is checked on a real server started by the fixtures
(``tests/redis_server.py``) on a free loopback port: the rate cap across
gates in one event loop and across real processes, the shared 429 cooldown
and rate cut, the shared credit budget, Redis killed and restarted, Redis
unreachable at start, and what ends up in Redis (no secret, a TTL on every
key). No stand-in Redis, no mocks.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import redis.asyncio as aioredis

from keyapi_async._errors import ConfigurationError, GateUnavailableError
from keyapi_async.engine.budget import hold
from keyapi_async.engine.gate import (
    COLD_START,
    FLOOR,
    HOLD,
    RECOVERY,
    Verdict,
    cut_rate,
    recovered_rate,
)
from keyapi_async.engine.redis_gate import (
    SharedState,
    connect_shared,
    fingerprint,
    redis_keys,
    shown_redis,
)
from tests.redis_server import RedisServer, free_port, redis_binary

QPS = 20
MARGIN = 0.05


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    with RedisServer(binary) as server:
        yield server


async def connect(url: str, key_fingerprint: str, **overrides: Any) -> SharedState:
    """``connect_shared`` with test defaults: qps=20, 8 in flight, no budget, 1 s grace."""
    options: dict[str, Any] = {
        "url": url,
        "namespace": None,
        "key_fingerprint": key_fingerprint,
        "qps": QPS,
        "margin": MARGIN,
        "concurrency": 8,
        "max_credits": None,
        "grace": 1.0,
        "retry_after_cap": 30.0,
    }
    options.update(overrides)
    return await connect_shared(**options)


@pytest.fixture
def fp(api_key: str) -> str:
    return fingerprint(api_key)


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the test server, to look at what the module stored."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most grants in any closed window of ``window`` seconds."""
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1] <= start + window:
            j += 1
        best = max(best, j - i + 1)
    return best


def assert_capped(times: list[float], qps: int = QPS) -> None:
    assert max_in_window(times) <= qps, f"{max_in_window(times)} grants in one second"
    span = max(times) - min(times)
    rate = (len(times) - 1) / span
    assert rate >= 0.85 * qps, f"throughput {rate:.2f}/s below 0.85 x {qps}"


# -- helpers run in child processes (spawned: each has its own event loop) ------------


async def _hammer(
    url: str, key_fingerprint: str, start_at: float, duration: float
) -> tuple[list[float], int]:
    state = await connect(url, key_fingerprint)
    times: list[float] = []
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + duration

        async def worker() -> None:
            while time.monotonic() < deadline:
                ticket = await state.gate.acquire()
                times.append(ticket.sent_at)
                await state.gate.release(ticket, Verdict.ACCEPTED)

        await asyncio.gather(*(worker() for _ in range(8)))
        return times, state.gate.script_calls
    finally:
        await state.aclose()


def hammer_process(
    url: str, key_fingerprint: str, start_at: float, duration: float
) -> tuple[list[float], int]:
    """Acquire and release as fast as the shared gate allows; the grant times (Redis clock)."""
    return asyncio.run(_hammer(url, key_fingerprint, start_at, duration))


async def _spend(
    url: str, key_fingerprint: str, start_at: float, targets: int, seed: int
) -> tuple[int, int, int]:
    state = await connect(url, key_fingerprint, max_credits=200)
    budget = state.budget
    rng = random.Random(seed)
    granted = refused = 0
    queue = list(range(targets))
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))

        async def worker() -> None:
            nonlocal granted, refused
            while queue:
                queue.pop()
                if not await budget.reserve(2):
                    refused += 1
                    continue
                granted += 1
                await asyncio.sleep(rng.uniform(0.0, 0.01))
                # One answer in five is an error: its credits are freed.
                await budget.settle(2, 2 if rng.random() < 0.8 else 0)

        await asyncio.gather(*(worker() for _ in range(8)))
        return budget.spent, granted, refused
    finally:
        await state.aclose()


def spend_process(
    url: str, key_fingerprint: str, start_at: float, targets: int, seed: int
) -> tuple[int, int, int]:
    """Reserve 2 credits a target against one shared max_credits=200: (spent, granted, refused)."""
    return asyncio.run(_spend(url, key_fingerprint, start_at, targets, seed))


def run_processes(
    count: int, function: Callable[..., Any], url: str, key_fingerprint: str, amount: float
) -> list[Any]:
    """Run ``function(url, key_fingerprint, start_at, amount, index)`` in ``count`` processes."""
    context = multiprocessing.get_context("spawn")
    # Spawned children take a moment to import; all start together at start_at.
    start_at = time.time() + 3.0
    with ProcessPoolExecutor(count, mp_context=context) as pool:
        futures = [
            pool.submit(function, url, key_fingerprint, start_at, amount, i) for i in range(count)
        ]
        return [future.result(timeout=120) for future in futures]


# -- the rate -------------------------------------------------------------------------


@pytest.mark.slow
async def test_cap_across_four_gates_in_one_loop(redis_server: RedisServer, fp: str) -> None:
    states = [await connect(redis_server.url, fp) for _ in range(4)]
    times: list[float] = []
    deadline = time.monotonic() + 3.0

    async def worker(state: SharedState) -> None:
        while time.monotonic() < deadline:
            ticket = await state.gate.acquire()
            times.append(ticket.sent_at)
            await state.gate.release(ticket, Verdict.ACCEPTED)

    try:
        await asyncio.gather(*(worker(s) for s in states for _ in range(5)))
    finally:
        for state in states:
            await state.aclose()
    assert_capped(times)
    # All four took turns: a shared gate, not one process hogging it.
    assert all(s.gate.grants >= 5 for s in states)


def _hammer_with_index(url: str, fp: str, start_at: float, duration: float, _: int) -> Any:
    return hammer_process(url, fp, start_at, duration)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_cap_across_real_processes(redis_server: RedisServer, fp: str, processes: int) -> None:
    results = run_processes(processes, _hammer_with_index, redis_server.url, fp, 3.0)
    times = [t for grants, _ in results for t in grants]
    assert all(len(grants) >= 5 for grants, _ in results), [len(g) for g, _ in results]
    assert_capped(times)
    calls = sum(c for _, c in results)
    # One process asks at a time per process: about `processes` calls per slot.
    assert calls <= len(times) * (processes + 2)


async def test_throttle_pauses_every_gate(redis_server: RedisServer, fp: str) -> None:
    states = [await connect(redis_server.url, fp) for _ in range(4)]
    try:
        first = await states[0].gate.acquire()
        await states[0].gate.release(first, Verdict.THROTTLED, cooldown=0.6, server_said=True)
        assert states[0].gate.snapshot().cooldown_remaining > 0.5
        started = time.monotonic()
        tickets = await asyncio.gather(*(s.gate.acquire() for s in states))
        waited = time.monotonic() - started
        for state, ticket in zip(states, tickets, strict=True):
            # On Redis's clock: the cooldown was set after `first` was granted.
            assert ticket.sent_at >= first.sent_at + 0.6
            await state.gate.release(ticket, Verdict.ACCEPTED)
            # The cut rate is shared: every gate sees it in its next reply
            # (recovering already: RECOVERY seconds back to the ceiling).
            rate = state.gate.snapshot().current_qps
            assert rate is not None and rate < QPS * (1 - MARGIN)
        assert waited >= 0.5
        assert states[0].gate.snapshot().throttles == 1
    finally:
        for state in states:
            await state.aclose()


async def test_throttle_without_retry_after_waits_out_the_window(
    redis_server: RedisServer, fp: str
) -> None:
    state = await connect(redis_server.url, fp)
    try:
        ticket = await state.gate.acquire()
        await state.gate.release(ticket, Verdict.THROTTLED, cooldown=0.0)
        after = await state.gate.acquire()
        await state.gate.release(after, Verdict.ACCEPTED)
        assert after.sent_at >= ticket.sent_at + 1.0 * (1 + MARGIN)
    finally:
        await state.aclose()


async def test_rate_cut_once_per_burst_and_recovers(
    redis_server: RedisServer, fp: str, raw: aioredis.Redis
) -> None:
    states = [await connect(redis_server.url, fp) for _ in range(3)]
    ceiling = QPS * (1 - MARGIN)
    try:
        tickets = [await s.gate.acquire() for s in states]
        # Three 429s for requests sent before the cut: one signal, one cut.
        for state, ticket in zip(states, tickets, strict=True):
            await state.gate.release(ticket, Verdict.THROTTLED, cooldown=0.2, server_said=True)
        cut = float(await raw.hget(redis_keys(fp, None)["rate"], "w_max") or 0) * 0.7
        assert cut == pytest.approx(ceiling * 0.7)
        first = await states[0].gate.acquire()
        await states[0].gate.release(first, Verdict.ACCEPTED)
        low = states[0].gate.snapshot().current_qps
        # Recovering already (the cooldown and a cold grant have passed).
        assert low is not None and cut <= low < 0.8 * ceiling
        await asyncio.sleep(1.5)
        later = await states[1].gate.acquire()
        await states[1].gate.release(later, Verdict.ACCEPTED)
        high = states[1].gate.snapshot().current_qps
        # Concave recovery: climbing fast at first, still below the ceiling.
        assert high is not None and low < high < ceiling
    finally:
        for state in states:
            await state.aclose()


async def test_rate_never_below_floor(
    redis_server: RedisServer, fp: str, raw: aioredis.Redis
) -> None:
    state = await connect(redis_server.url, fp, qps=1.0, margin=0.0)
    try:
        ticket = await state.gate.acquire()
        # A cut already made to 0.55/s, just before this request was sent.
        await raw.hset(
            redis_keys(fp, None)["rate"],
            mapping={"cut_at": f"{ticket.sent_at - 0.001:.17g}", "w_max": "0.6", "cut_to": "0.55"},
        )
        await state.gate.release(ticket, Verdict.THROTTLED, cooldown=0.0, server_said=True)
        cut_to = await raw.hget(redis_keys(fp, None)["rate"], "cut_to")
        assert float(cut_to or 0) == pytest.approx(FLOOR)
        current = state.gate.snapshot().current_qps
        assert current is not None and current >= FLOOR
    finally:
        await state.aclose()


async def test_no_cap_still_shares_the_cooldown(redis_server: RedisServer, fp: str) -> None:
    states = [await connect(redis_server.url, fp, qps=None) for _ in range(2)]
    try:
        started = time.monotonic()
        for _ in range(50):
            ticket = await states[0].gate.acquire()
            await states[0].gate.release(ticket, Verdict.ACCEPTED)
        assert time.monotonic() - started < 1.0
        assert states[0].gate.snapshot().current_qps is None
        await states[0].gate.release(
            await states[0].gate.acquire(), Verdict.THROTTLED, cooldown=0.4, server_said=True
        )
        started = time.monotonic()
        ticket = await states[1].gate.acquire()
        await states[1].gate.release(ticket, Verdict.ACCEPTED)
        assert time.monotonic() - started >= 0.3
    finally:
        for state in states:
            await state.aclose()


async def test_in_flight_places_are_local(redis_server: RedisServer, fp: str) -> None:
    state = await connect(redis_server.url, fp, qps=None, concurrency=2)
    try:
        held = [await state.gate.acquire() for _ in range(2)]
        third = asyncio.create_task(state.gate.acquire())
        await asyncio.sleep(0.1)
        assert not third.done()
        await state.gate.release(held[0], Verdict.NO_ANSWER)
        ticket = await asyncio.wait_for(third, 2)
        await state.gate.release(ticket, Verdict.UNUSED)
        await state.gate.release(held[1], Verdict.ACCEPTED)
        # Cancelled while waiting: its place is given back.
        waiter = asyncio.create_task(state.gate.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        tickets = [await state.gate.acquire() for _ in range(2)]
        for ticket in tickets:
            await state.gate.release(ticket, Verdict.ACCEPTED)
    finally:
        await state.aclose()


# -- the budget -----------------------------------------------------------------------


def _spend_with_index(url: str, fp: str, start_at: float, targets: float, index: int) -> Any:
    return spend_process(url, fp, start_at, int(targets), index)


@pytest.mark.slow
async def test_budget_shared_by_four_processes(
    redis_server: RedisServer, fp: str, raw: aioredis.Redis
) -> None:
    results = await asyncio.to_thread(
        run_processes, 4, _spend_with_index, redis_server.url, fp, 150
    )
    spent = sum(r[0] for r in results)
    assert spent <= 200
    # Refusals only once the budget was (nearly) used up by everyone.
    assert spent >= 200 - 2 * 8 * 4
    # Every target has exactly one outcome in its process.
    assert all(granted + refused == 150 for _, granted, refused in results)
    stored: dict[Any, Any] = await raw.hgetall(redis_keys(fp, None)["credits"])
    assert int(stored[b"spent"]) == spent
    assert int(stored[b"reserved"]) == 0
    assert not [f for f in stored if f.startswith(b"h:")]


async def test_budget_reservations_are_freed_on_cancellation(
    redis_server: RedisServer, fp: str, raw: aioredis.Redis
) -> None:
    state = await connect(redis_server.url, fp, max_credits=10)
    credits = redis_keys(fp, None)["credits"]
    entered = asyncio.Event()

    async def request() -> None:
        async with hold(state.budget, 2) as h:
            assert h.granted
            entered.set()
            await asyncio.sleep(10)

    try:
        tasks = [asyncio.create_task(request()) for _ in range(5)]
        await entered.wait()
        await asyncio.sleep(0.1)
        assert int(await raw.hget(credits, "reserved") or 0) == 10
        assert not await state.budget.reserve(2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert int(await raw.hget(credits, "reserved") or 0) == 0
        # A reserve cancelled while its script runs is given back too.
        pending = asyncio.create_task(state.budget.reserve(2))
        await asyncio.sleep(0)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        # Its script still ran; what it reserved is given back in the background.
        for _ in range(200):
            if not int(await raw.hget(credits, "reserved") or 0):
                break
            await asyncio.sleep(0.01)
        assert await state.budget.reserve(10)
        await state.budget.settle(10, 4)
        assert state.budget.spent == 4
    finally:
        await state.aclose()
    stored = await raw.hgetall(credits)
    assert int(stored[b"reserved"]) == 0
    assert int(stored[b"spent"]) == 4


async def test_new_namespace_starts_a_fresh_budget(redis_server: RedisServer, fp: str) -> None:
    first = await connect(redis_server.url, fp, namespace="june", max_credits=4)
    second = await connect(redis_server.url, fp, namespace="july", max_credits=4)
    try:
        assert await first.budget.reserve(4)
        await first.budget.settle(4, 4)
        assert not await first.budget.reserve(2)
        assert await second.budget.reserve(4)
        await second.budget.settle(4, 0)
        assert first.budget.shared_spent == 4
        assert second.budget.shared_spent == 0
    finally:
        await first.aclose()
        await second.aclose()


async def test_no_budget_needs_no_redis(redis_server: RedisServer, fp: str) -> None:
    state = await connect(redis_server.url, fp, max_credits=None)
    try:
        redis_server.kill()
        assert await state.budget.reserve(2)
        await state.budget.settle(2, 2)
        assert state.budget.spent == 2
        assert state.budget.limit is None
    finally:
        await state.aclose()


# -- faults ---------------------------------------------------------------------------


async def test_redis_killed_mid_run_stops_sending(redis_server: RedisServer, fp: str) -> None:
    state = await connect(redis_server.url, fp, grace=1.0, max_credits=100)
    grants: list[float] = []
    errors: list[float] = []

    async def worker() -> None:
        while True:
            try:
                ticket = await state.gate.acquire()
            except GateUnavailableError:
                errors.append(time.monotonic())
                return
            grants.append(time.monotonic())
            await state.gate.release(ticket, Verdict.ACCEPTED)

    try:
        workers = [asyncio.create_task(worker()) for _ in range(4)]
        await asyncio.sleep(0.5)
        assert grants
        assert await state.budget.reserve(2)
        # A request in flight when Redis dies; its answer (a 429) comes after.
        in_flight = await state.gate.acquire()
        await asyncio.to_thread(redis_server.kill)
        killed = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*workers), 10)
        # Nothing granted without Redis, and every waiter gave up after the grace.
        assert all(t <= killed + 0.05 for t in grants)
        assert len(errors) == 4
        assert min(errors) - killed >= 0.9
        assert max(errors) - killed <= 2.5
        with pytest.raises(GateUnavailableError, match=r"Redis at 127\.0\.0\.1:\d+"):
            await state.gate.acquire()
        # Past the grace, a new request fails at once rather than waiting again.
        started = time.monotonic()
        with pytest.raises(GateUnavailableError):
            await state.budget.reserve(2)
        assert time.monotonic() - started < 0.5
        # Reports that cannot reach Redis never raise: kept for later.
        await state.budget.settle(2, 0)
        await state.gate.release(in_flight, Verdict.THROTTLED, cooldown=0.3, server_said=True)

        await asyncio.to_thread(redis_server.start)
        # Restarted (empty): a new acquire works on the same connection pool,
        # after the 429 seen during the outage has been reported and waited.
        ticket = await asyncio.wait_for(state.gate.acquire(), 5)
        await state.gate.release(ticket, Verdict.ACCEPTED)
        assert state.gate.snapshot().throttles == 1
        assert await state.budget.reserve(2)
        await state.budget.settle(2, 2)
    finally:
        await state.aclose()


async def test_unreachable_at_start_is_a_configuration_error(fp: str) -> None:
    port = free_port()
    password = "hunter2" + secrets.token_hex(4)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as info:
        await connect(url, fp)
    assert time.monotonic() - started < 3.0
    text = str(info.value) + repr(info.value)
    assert f"127.0.0.1:{port}" in text
    assert password not in text
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or password not in repr(info.value.__context__)


async def test_bad_settings_are_configuration_errors(fp: str) -> None:
    with pytest.raises(ConfigurationError, match="redis_namespace"):
        await connect("redis://127.0.0.1:1/0", fp, namespace="has space")
    with pytest.raises(ConfigurationError, match="fingerprint"):
        await connect("redis://127.0.0.1:1/0", "sk_test_not_a_hash")


def test_shown_redis_never_shows_the_password() -> None:
    assert shown_redis("redis://user:pw@example.test:6380/2") == "example.test:6380/2"
    assert shown_redis("rediss://:pw@example.test") == "example.test:6379"
    assert shown_redis("unix:///run/redis.sock") == "unix:/run/redis.sock"


# -- what is stored -------------------------------------------------------------------


async def test_redis_holds_no_secret_and_everything_expires(
    redis_server: RedisServer, api_key: str, raw: aioredis.Redis
) -> None:
    state = await connect(
        redis_server.url, fingerprint(api_key), namespace="nightly", max_credits=50
    )
    try:
        ticket = await state.gate.acquire()
        await state.gate.release(ticket, Verdict.THROTTLED, cooldown=0.2, server_said=True)
        ticket = await state.gate.acquire()
        await state.gate.release(ticket, Verdict.ACCEPTED)
        assert await state.budget.reserve(2)
        await state.budget.settle(2, 2)
        assert await state.budget.reserve(2)  # left open on purpose
        keys = [key async for key in raw.scan_iter(count=1000)]
        assert len(keys) == 3
        pieces = {api_key[i : i + 6].encode() for i in range(len(api_key) - 5)}
        for key in keys:
            assert key.startswith(b"keyapi:{")
            assert b":nightly:" in key
            ttl = await raw.pttl(key)
            assert ttl > 0, key
            kind = await raw.type(key)
            values = (
                [await raw.get(key) or b""]
                if kind == b"string"
                else [item for pair in (await raw.hgetall(key)).items() for item in pair]
            )
            for blob in [key, *values]:
                assert not [p for p in pieces if p in blob], (key, blob)
        credits_ttl = await raw.ttl(redis_keys(fingerprint(api_key), "nightly")["credits"])
        assert 86_000 < credits_ttl <= 86_400
        rate_ttl = await raw.ttl(redis_keys(fingerprint(api_key), "nightly")["rate"])
        assert rate_ttl <= 70
        await state.budget.settle(2, 0)
    finally:
        await state.aclose()


def test_fingerprint_is_salted_and_stable(api_key: str) -> None:
    import hashlib

    assert fingerprint(api_key) == fingerprint(api_key)
    assert fingerprint(api_key) != fingerprint(api_key + "x")
    assert fingerprint(api_key) not in hashlib.sha256(api_key.encode()).hexdigest()
    assert len(fingerprint(api_key)) == 24


async def test_acquire_overhead_is_one_round_trip(redis_server: RedisServer, fp: str) -> None:
    state = await connect(redis_server.url, fp, qps=None)
    try:
        for _ in range(20):
            await state.gate.release(await state.gate.acquire(), Verdict.ACCEPTED)
        calls = state.gate.script_calls
        started = time.perf_counter()
        for _ in range(200):
            await state.gate.release(await state.gate.acquire(), Verdict.ACCEPTED)
        per_acquire = (time.perf_counter() - started) / 200
        assert state.gate.script_calls - calls == 200
        # Loopback: well under a millisecond; generous for a loaded CI box.
        assert per_acquire < 0.02
    finally:
        await state.aclose()


# -- the first second (issue 21) ------------------------------------------------------


async def test_a_fresh_schedule_gives_no_head_start_and_a_cold_grant_leaves_room(
    redis_server: RedisServer, fp: str
) -> None:
    # Two processes on one key: each one's first grant is cold (its request
    # opens a connection), the second process's second is not.
    first, second = [await connect(redis_server.url, fp) for _ in range(2)]
    try:
        times = []
        for state in (first, second, second):
            ticket = await state.gate.acquire()
            times.append(ticket.sent_at)
            await state.gate.release(ticket, Verdict.ACCEPTED)
        interval = 1 / (QPS * (1 - MARGIN))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # A whole interval plus COLD_START after each cold grant: the slack is
        # no head start from a fresh schedule (it was 13 ms), and is absorbed
        # only from a grant itself late by up to the slack (the second one).
        slack = 0.25 * MARGIN / (1 - MARGIN)
        assert gaps[0] >= interval + COLD_START - 1e-4, gaps
        assert gaps[1] >= interval + COLD_START - slack - 1e-4, gaps
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_grant_that_reaches_its_task_late_is_forfeit_and_asked_again_cold(
    redis_server: RedisServer, fp: str
) -> None:
    state = await connect(redis_server.url, fp)
    gate = state.gate
    try:
        warm = await gate.acquire()  # the cold first grant
        await gate.release(warm, Verdict.ACCEPTED)
        script = state.acquire_script
        stalls = [0.05]  # the next reply reaches the task 50 ms late (a busy loop)

        async def stalled(**kwargs: Any) -> Any:
            reply = await script(**kwargs)
            if stalls and int(reply[0]):  # a grant, not "wait"
                time.sleep(stalls.pop())  # noqa: ASYNC251 - blocks the loop, as a busy start does
            return reply

        state.acquire_script = stalled  # type: ignore[assignment]
        late = await gate.acquire()
        await gate.release(late, Verdict.ACCEPTED)
        after = await gate.acquire()
        await gate.release(after, Verdict.ACCEPTED)
        assert gate.stale_grants == 1 and gate.grants == 3
        # The re-asked grant was cold: the one after it waited COLD_START more.
        interval, slack = 1 / (QPS * (1 - MARGIN)), 0.25 * MARGIN / (1 - MARGIN)
        assert after.sent_at - late.sent_at >= interval + COLD_START - slack - 1e-4
    finally:
        await state.aclose()


# -- one recovery rule (issue 22) -----------------------------------------------------


async def test_the_redis_gate_recovers_by_the_one_rule(
    redis_server: RedisServer, fp: str, raw: aioredis.Redis
) -> None:
    # The script's rate, read at Redis's own `now` in its replies, against
    # engine/gate.py's recovered_rate: the cut is moved into the past so that
    # every phase (recovery, hold, probe, back at the ceiling) is sampled
    # without waiting for it.
    state = await connect(redis_server.url, fp)
    ceiling = QPS * (1 - MARGIN)
    rate_key = redis_keys(fp, None)["rate"]
    try:
        ticket = await state.gate.acquire()
        await state.gate.release(ticket, Verdict.THROTTLED, cooldown=0.0, server_said=True)
        stored = await raw.hmget(rate_key, ["w_max", "cut_to"])
        w_max, cut_to = (float(v or 0) for v in stored)
        assert (cut_to, w_max) == pytest.approx(cut_rate(ceiling, None))
        args = [f"{ceiling:.17g}", "0", RECOVERY, HOLD, "0"]
        for elapsed in (0.3, 1.0, 3.0, RECOVERY - 0.2, RECOVERY + 1.0, RECOVERY + HOLD + 1.5):
            before = await state.acquire_script(keys=state.gate._keys, args=args)
            cut_at = float(before[4]) - elapsed
            await raw.hset(rate_key, "cut_at", f"{cut_at:.17g}")
            reply = await state.acquire_script(keys=state.gate._keys, args=args)
            rate, now = float(reply[2]), float(reply[4])
            expected = min(ceiling, recovered_rate(now - cut_at, cut_to, w_max, ceiling))
            assert rate == pytest.approx(expected, rel=1e-9), elapsed
        # Past the probe: back at the ceiling, and the cut is forgotten.
        (now_raw,) = (await state.acquire_script(keys=state.gate._keys, args=args))[4:5]
        await raw.hset(rate_key, "cut_at", f"{float(now_raw) - 2 * RECOVERY - HOLD:.17g}")
        reply = await state.acquire_script(keys=state.gate._keys, args=args)
        assert float(reply[2]) == pytest.approx(ceiling)
        assert await raw.hget(rate_key, "cut_to") is None
    finally:
        await state.aclose()
