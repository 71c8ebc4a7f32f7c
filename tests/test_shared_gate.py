"""Issue 11's acceptance, end to end: real processes, one key, one real Redis, the real emulator.

Every test runs the emulator (:func:`keyapi_async.testing.run_emulator`) in
the test's event loop on 127.0.0.1 and a real ``redis-server``
(``tests/redis_server.py``) on a free loopback port. Each "process" is a real
child Python (``python -W error -c ...`` running :func:`child_main`) with its
own :class:`~keyapi_async.KeyAPIClient` and its own distinct targets: it
opens the client (connecting to Redis), says ``ready``, waits for ``go`` so
that all of them start together, runs one ``fetch_many`` and prints every
outcome as JSON. The API key reaches the children through the environment,
never the command line.

Times: the emulator logs arrivals on the test loop's clock, which is
``time.monotonic()``, the same clock across the processes of one machine; so
the kill time of Redis and the log compare directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from keyapi_async import ConfigurationError, KeyAPIClient
from keyapi_async.engine.redis_gate import KEY_PREFIX, fingerprint
from keyapi_async.engine.sansio import Request
from keyapi_async.engine.transport import AiohttpTransport, RawResponse
from keyapi_async.testing import Emulator, EmulatorConfig, Fault, RequestRecord, run_emulator
from tests.redis_server import RedisServer, free_port, redis_binary

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 4
QPS = 20
LATENCY = 0.05
#: A request granted just before an event (a 429 reported, Redis killed) may
#: still reach the emulator after it: the HTTP hop and a busy child loop.
IN_FLIGHT = 0.1
#: Bound on a child's whole life (spawn, batch, exit).
CHILD_TIMEOUT = 120.0

_CHILD_CODE = "from tests.test_shared_gate import child_main; child_main()"


# -- the child process ----------------------------------------------------------------


def child_main() -> None:
    """Entry point of a child: read the spec (one JSON line), run the batch, print JSON."""
    spec = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(_child(spec))), flush=True)


class SlowStart:
    """A transport whose first send blocks the loop ``stall`` seconds before it goes out.

    What a process starting up does to its first request (a new connection,
    first-use code paths, a loop busy starting its workers): measured at
    5-25 ms on a loaded machine, made longer and certain here (issue 21).
    """

    def __init__(self, stall: float, timeout: float) -> None:
        self._inner = AiohttpTransport(timeout=timeout, connect_timeout=timeout)
        self._stall = stall

    async def send(self, request: Request, *, target: str | None = None) -> RawResponse:
        if self._stall:
            stall, self._stall = self._stall, 0.0
            time.sleep(stall)  # noqa: ASYNC251 - the point: the whole loop is held up
        return await self._inner.send(request, target=target)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _child(spec: dict[str, Any]) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    options = dict(spec["options"])
    stall = options.pop("stall_first", 0.0)
    transport = None if not stall else SlowStart(stall, options.get("timeout", 10.0))
    if transport is not None:
        options["transport"] = transport
    try:
        return await _batch(spec, options, results)
    finally:
        if transport is not None:
            await transport.aclose()


async def _batch(
    spec: dict[str, Any], options: dict[str, Any], results: list[dict[str, Any]]
) -> dict[str, Any]:
    # The key comes from KEYAPI_API_KEY, set by the parent.
    async with KeyAPIClient(**options) as client:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # "go"
        started = time.monotonic()
        async with client.fetch_many(spec["targets"]) as batch:
            async for r in batch:
                reason = getattr(r.error, "reason", None)
                results.append(
                    {
                        "target": r.target,
                        "status": r.status,
                        "error": None if r.error is None else type(r.error).__name__,
                        "message": None if r.error is None else str(r.error),
                        "reason": reason,
                        "attempts": r.attempts,
                    }
                )
        stopped = batch.stopped_reason
        stats = client.stats
    return {
        "results": results,
        "stopped_reason": None if stopped is None else stopped.reason,
        "requests_sent": stats.requests_sent,
        "rate_limited": stats.rate_limited,
        "started": started,
        "ended": time.monotonic(),
    }


# -- the parent's side ----------------------------------------------------------------


def _child_env(api_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYAPI_")}
    env["KEYAPI_API_KEY"] = api_key
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """One child process running one batch; :meth:`finish` returns its report."""

    def __init__(self, proc: asyncio.subprocess.Process, targets: Sequence[str]) -> None:
        self.proc = proc
        self.targets = list(targets)
        self.report: dict[str, Any] = {}
        self.stderr = ""

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), CHILD_TIMEOUT)
        if line.strip() != b"ready":
            _, err = await self.proc.communicate()
            raise AssertionError(f"child did not start: {line!r}\n{err.decode(errors='replace')}")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def finish(self) -> dict[str, Any]:
        out, err = await asyncio.wait_for(self.proc.communicate(), CHILD_TIMEOUT)
        self.stderr = err.decode(errors="replace")
        assert self.proc.returncode == 0, f"child failed ({self.proc.returncode}):\n{self.stderr}"
        for bad in ("Traceback", "Exception ignored", "Unclosed", "Warning:"):
            assert bad not in self.stderr, self.stderr
        self.report = json.loads(out.decode().strip().splitlines()[-1])
        return self.report

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


@asynccontextmanager
async def children(
    api_key: str, batches: Sequence[Sequence[str]], **options: Any
) -> AsyncIterator[list[Child]]:
    """Spawn one child per batch of targets with ``options`` for its client; all ready."""
    spawned: list[Child] = []
    try:
        for targets in batches:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-W",
                "error",
                "-c",
                _CHILD_CODE,
                cwd=ROOT,
                env=_child_env(api_key),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            child = Child(proc, targets)
            spawned.append(child)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"options": options, "targets": list(targets)}).encode())
            proc.stdin.write(b"\n")
            await proc.stdin.drain()
        await asyncio.gather(*(c.ready() for c in spawned))
        yield spawned
    finally:
        for child in spawned:
            await child.kill()


async def run_all(kids: list[Child]) -> list[dict[str, Any]]:
    """Start every child at once and collect the reports."""
    for child in kids:
        child.go()
    return list(await asyncio.gather(*(c.finish() for c in kids)))


def names(process: int, count: int, prefix: str = "p") -> list[str]:
    """Distinct usernames of one process."""
    return [f"{prefix}{process}_user{n:03d}" for n in range(count)]


def owner(record: RequestRecord) -> int:
    """Which process sent a logged request (from its username ``p<N>_...``)."""
    assert record.username is not None
    return int(record.username[1 : record.username.index("_")])


def assert_one_outcome_each(kid: Child, allowed: set[str]) -> Counter[str]:
    """Every target of the child has exactly one result, with a status in ``allowed``."""
    got = Counter(r["target"] for r in kid.report["results"])
    assert set(got) == set(kid.targets), "results for other targets, or targets missing"
    assert all(n == 1 for n in got.values()), [t for t, n in got.items() if n != 1]
    statuses = Counter(r["status"] for r in kid.report["results"])
    assert set(statuses) <= allowed, statuses
    return statuses


def wall(log: list[RequestRecord]) -> float:
    return log[-1].time - log[0].time


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    binary = redis_binary()
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    with RedisServer(binary) as server:
        yield server


@asynccontextmanager
async def emulator_for(api_key: str, **config: Any) -> AsyncIterator[Emulator]:
    cfg = EmulatorConfig(api_keys=frozenset({api_key}), latency=LATENCY, **config)
    async with run_emulator(cfg, host="127.0.0.1") as emu:
        yield emu


def client_options(emu: Emulator, server: RedisServer, **overrides: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "base_url": emu.base_url,
        "qps": QPS,
        "redis_url": server.url,
        "backoff_base": 0.05,
        "backoff_cap": 0.5,
        "timeout": 10.0,
    }
    options.update(overrides)
    return options


def _b(value: bytes | str | None) -> bytes:
    """Bytes of a reply (this client never decodes, the stubs allow both)."""
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode()


async def redis_contents(url: str) -> dict[str, tuple[int, list[bytes]]]:
    """Every key in Redis: its PTTL and the raw bytes of its fields and values."""
    client = aioredis.Redis.from_url(url)
    try:
        found: dict[str, tuple[int, list[bytes]]] = {}
        async for raw_key in client.scan_iter(count=100):
            key = _b(raw_key).decode()
            kind = _b(await client.type(raw_key)).decode()
            parts: list[bytes] = []
            if kind == "hash":
                for field, value in (await client.hgetall(raw_key)).items():
                    parts += [_b(field), _b(value)]
            elif kind == "string":
                parts.append(_b(await client.get(raw_key)))
            else:
                parts.append(kind.encode())  # no other type is expected
            found[key] = (await client.pttl(raw_key), parts)
        return found
    finally:
        await client.aclose()


def assert_nothing_secret(contents: dict[str, tuple[int, list[bytes]]], api_key: str) -> None:
    """No key name or stored byte holds the API key (or its plain hash); every key expires."""
    plain = hashlib.sha256(api_key.encode()).hexdigest()
    secret_forms = [api_key.encode(), plain.encode(), plain[:24].encode()]
    prefix = f"{KEY_PREFIX}{{{fingerprint(api_key)}}}"
    for key, (pttl, parts) in contents.items():
        assert key.startswith(prefix), key
        assert api_key not in key and plain[:24] not in key
        blob = b"\x00".join([key.encode(), *parts])
        for form in secret_forms:
            assert form not in blob, f"{key} holds the key"
        assert pttl > 0, f"{key} has no TTL ({pttl})"


# -- 1. the rate across four processes ------------------------------------------------


@pytest.mark.slow
async def test_four_processes_share_the_cap(redis_server: RedisServer, api_key: str) -> None:
    per_process = 150
    async with emulator_for(api_key, qps=QPS) as emu:
        batches = [names(p, per_process) for p in range(PROCESSES)]
        async with children(api_key, batches, **client_options(emu, redis_server)) as kids:
            await run_all(kids)
        log = list(emu.log)
        total = PROCESSES * per_process
        span = wall(log)
        print(
            f"\n4x{per_process} shared: wall {span:.2f} s (ideal {total / QPS:.1f} s, "
            f"ratio {span / (total / QPS):.3f}), max in 1 s {emu.max_in_window()}, "
            f"429s {emu.count(status=429)}, {(len(log) - 1) / span:.2f} req/s"
        )
        assert emu.count(status=429) == 0
        assert emu.max_in_window() <= QPS
        assert emu.requests_total == total  # one request per target: nothing retried
        # Issue 11 asks for <= 1.15 x 600/20 = 34.5 s; the bound here leaves
        # room for a loaded CI machine, the figure is printed above.
        assert span <= 1.3 * total / QPS
        for kid in kids:
            assert_one_outcome_each(kid, {"ok", "empty"})
            assert kid.report["rate_limited"] == 0
        # Shared, not hogged: every process sent throughout the run.
        by_process = Counter(owner(r) for r in log)
        assert all(by_process[p] == per_process for p in range(PROCESSES))
        first_half = Counter(owner(r) for r in log if r.time < log[0].time + span / 2)
        assert all(first_half[p] >= per_process // 4 for p in range(PROCESSES)), first_half
        assert_nothing_secret(await redis_contents(redis_server.url), api_key)


# -- 1b. the first second, processes started together (issue 21) ---------------------

#: Start-together runs in the default suite (the benchmark makes 20 of plain starts).
START_REPEATS = 3
START_TARGETS = 12
#: Each child's first send holds its loop this long: longer than the 39 ms of
#: lateness the margin and slack covered before the cold start got room.
START_STALL = 0.06


async def test_processes_started_together_hold_the_cap_from_the_first_second(
    redis_server: RedisServer, api_key: str
) -> None:
    seen = []
    for _ in range(START_REPEATS):
        async with emulator_for(api_key, qps=QPS) as emu:
            batches = [names(p, START_TARGETS) for p in range(PROCESSES)]
            options = client_options(emu, redis_server, stall_first=START_STALL)
            async with children(api_key, batches, **options) as kids:
                await run_all(kids)
            seen.append((emu.max_in_window(), emu.count(status=429), emu.requests_total))
            for kid in kids:
                assert_one_outcome_each(kid, {"ok", "empty"})
    print(f"\n{START_REPEATS} starts together (max in 1 s, 429s, sends): {seen}")
    total = PROCESSES * START_TARGETS
    assert all(most <= QPS for most, _, _ in seen), seen
    assert all(throttled == 0 for _, throttled, _ in seen), seen
    assert all(sent == total for _, _, sent in seen), seen  # one request per target


# -- 2. a 429 seen by one process pauses them all -------------------------------------


@pytest.mark.slow
async def test_429_in_one_process_pauses_every_process(
    redis_server: RedisServer, api_key: str
) -> None:
    per_process = 40
    batches = [names(p, per_process) for p in range(PROCESSES)]
    throttled = batches[0][12]
    script = {f"username:{throttled}": [Fault.RATE_LIMIT]}
    async with emulator_for(api_key, qps=QPS, fault_script=script) as emu:
        async with children(api_key, batches, **client_options(emu, redis_server)) as kids:
            await run_all(kids)
        log = list(emu.log)
    rejected = [r for r in log if r.status == 429]
    assert len(rejected) == 1 and rejected[0].username == throttled
    t429 = rejected[0].time
    # The injected 429 says Retry-After: 1, and the 429 reaches its process
    # LATENCY after it was logged: from then on, one second of silence.
    in_flight = [r for r in log if t429 < r.time <= t429 + LATENCY + IN_FLIGHT]
    during = [r for r in log if t429 + LATENCY + IN_FLIGHT < r.time < t429 + 1.0]
    after = [r for r in log if r.time >= t429 + 1.0]
    next_send = {p: min(r.time for r in after if owner(r) == p) - t429 for p in range(PROCESSES)}
    print(
        f"\n429 at t={t429 - log[0].time:.2f} s: {len(in_flight)} arrivals in flight, "
        f"{len(during)} during the cooldown, next send per process after "
        + ", ".join(f"p{p} +{d:.3f} s" for p, d in next_send.items())
    )
    assert during == [], [(owner(r), round(r.time - t429, 3)) for r in during]
    # Requests granted before the 429 was reported: at most a turn or two.
    assert len(in_flight) <= 2
    # Every process had work left, and each one's next send waited.
    assert all(d >= 1.0 for d in next_send.values())
    for kid in kids:
        assert_one_outcome_each(kid, {"ok", "empty"})
    # The throttled target was retried after the cooldown and succeeded.
    retried = [r for r in kids[0].report["results"] if r["target"] == throttled]
    assert retried[0]["attempts"] == 2


# -- 3. one credit budget for all -----------------------------------------------------


@pytest.mark.slow
async def test_max_credits_is_one_budget_for_all(redis_server: RedisServer, api_key: str) -> None:
    per_process = 150
    qps = 50
    batches = [names(p, per_process) for p in range(PROCESSES)]
    async with emulator_for(api_key, qps=qps) as emu:
        options = client_options(emu, redis_server, qps=qps, max_credits=200)
        async with children(api_key, batches, **options) as kids:
            await run_all(kids)
        spent = emu.credits_spent
        sent = emu.requests_total
        throttled = emu.count(status=429)
    fetched = 0
    for kid in kids:
        statuses = assert_one_outcome_each(kid, {"ok", "empty", "not_attempted"})
        fetched += statuses["ok"] + statuses["empty"]
        for r in kid.report["results"]:
            if r["status"] == "not_attempted":
                assert r["reason"] == "credit budget reached", r
        assert kid.report["stopped_reason"] == "credit budget reached"
    print(
        f"\nmax_credits=200 over 4x{per_process}: {spent} credits spent, {sent} requests, "
        f"{fetched} fetched, per process " + ", ".join(str(k.report["requests_sent"]) for k in kids)
    )
    assert spent <= 200
    # Nothing failed, so the whole budget was used: 100 billed requests of 2
    # credits. A 429 (unbilled, retried) can still happen when the machine is
    # loaded: the emulator shares this process's loop, whose stalls bunch
    # arrivals; the cap itself is test_four_processes_share_the_cap's subject.
    assert spent == 200 and sent - throttled == 100 and fetched == 100
    assert_nothing_secret(await redis_contents(redis_server.url), api_key)


# -- 4. Redis killed mid-batch --------------------------------------------------------


@pytest.mark.slow
async def test_redis_killed_mid_batch_stops_sending(
    redis_server: RedisServer, api_key: str
) -> None:
    per_process = 150
    grace = 2.0
    batches = [names(p, per_process) for p in range(PROCESSES)]
    async with emulator_for(api_key, qps=QPS) as emu:
        options = client_options(emu, redis_server, redis_grace=grace)
        loop = asyncio.get_running_loop()
        async with children(api_key, batches, **options) as kids:
            for kid in kids:
                kid.go()
            await asyncio.sleep(3.0)
            killed_at = loop.time()
            redis_server.kill()
            reports = await asyncio.gather(*(k.finish() for k in kids))
        log = list(emu.log)
        late = [r.time - killed_at for r in log if r.time > killed_at]
        ended = max(r["ended"] for r in reports) - killed_at
        print(
            f"\nRedis killed {killed_at - log[0].time:.2f} s in: {len(log)} requests before, "
            f"{len(late)} arrived after the kill (last +{max(late, default=0.0):.3f} s), "
            f"batches ended {ended:.2f} s after it"
        )
        # Only those already granted (in flight) may arrive after the kill.
        assert all(d <= IN_FLIGHT for d in late), late
        fetched = 0
        for kid in kids:
            statuses = assert_one_outcome_each(kid, {"ok", "empty", "not_attempted"})
            fetched += statuses["ok"] + statuses["empty"]
            assert statuses["not_attempted"] > 0
            for r in kid.report["results"]:
                if r["status"] == "not_attempted":
                    assert "Redis at 127.0.0.1" in r["reason"], r
                    assert api_key not in r["message"]
            assert "Redis at 127.0.0.1" in kid.report["stopped_reason"]
            assert api_key not in kid.stderr
        # Every request sent has its target's outcome, and nothing else was sent.
        assert fetched == emu.requests_total
        # The batches gave up after the grace, not at once and not much later.
        assert grace - 0.5 <= ended <= grace + 3.0

        # Restarted on the same port (empty: no persistence), a new client runs.
        redis_server.start()
        again = [names(0, 20, prefix="again")]
        before = emu.requests_total
        async with children(api_key, again, **options) as kids:
            (report,) = await run_all(kids)
        assert_one_outcome_each(kids[0], {"ok", "empty"})
        assert emu.requests_total == before + 20
        assert report["stopped_reason"] is None


@pytest.mark.slow
async def test_redis_back_within_grace_carries_on(redis_server: RedisServer, api_key: str) -> None:
    per_process = 40
    outage = 1.0
    batches = [names(p, per_process) for p in range(PROCESSES)]
    async with emulator_for(api_key, qps=QPS) as emu:
        options = client_options(emu, redis_server, redis_grace=5.0)
        loop = asyncio.get_running_loop()
        async with children(api_key, batches, **options) as kids:
            for kid in kids:
                kid.go()
            await asyncio.sleep(2.0)
            killed_at = loop.time()
            redis_server.kill()
            await asyncio.sleep(outage)
            redis_server.start()
            back_at = loop.time()
            await asyncio.gather(*(k.finish() for k in kids))
        log = list(emu.log)
    silent = [r.time - killed_at for r in log if killed_at + IN_FLIGHT < r.time < back_at]
    resumed = min(r.time for r in log if r.time > killed_at + IN_FLIGHT) - back_at
    print(f"\nRedis down {back_at - killed_at:.2f} s: sending resumed {resumed:.3f} s after")
    assert silent == []
    for kid in kids:
        assert_one_outcome_each(kid, {"ok", "empty"})
    assert emu.requests_total == PROCESSES * per_process
    # A restarted Redis has forgotten the schedule, not the cap: still capped.
    assert emu.count(status=429) == 0


# -- 5. Redis unreachable at start ----------------------------------------------------


async def test_redis_unreachable_at_open_raises_before_any_request(api_key: str) -> None:
    port = free_port()  # nothing listens there
    async with emulator_for(api_key, qps=QPS) as emu:
        client = KeyAPIClient(
            api_key, base_url=emu.base_url, qps=QPS, redis_url=f"redis://127.0.0.1:{port}/0"
        )
        with pytest.raises(ConfigurationError) as caught:
            async with client:
                pytest.fail("the client opened without Redis")
        assert emu.requests_total == 0
    message = str(caught.value)
    assert f"127.0.0.1:{port}/0" in message
    assert api_key not in message and api_key not in repr(caught.value)


# -- 6. nothing secret in Redis, everything expires -----------------------------------


async def test_redis_holds_nothing_secret_and_everything_expires(
    redis_server: RedisServer, api_key: str
) -> None:
    batches = [names(p, 15) for p in range(2)]
    # A 429 (the cooldown key) and a budget (the credits key) besides the rate.
    script = {f"username:{batches[1][3]}": [Fault.RATE_LIMIT]}
    async with emulator_for(api_key, qps=QPS, fault_script=script) as emu:
        options = client_options(
            emu, redis_server, max_credits=1000, redis_namespace="acceptance-6"
        )
        async with children(api_key, batches, **options) as kids:
            await run_all(kids)
        assert emu.count(status=429) == 1
    contents = await redis_contents(redis_server.url)
    suffixes = {key.rsplit(":", 1)[1] for key in contents}
    assert {"rate", "credits"} <= suffixes <= {"rate", "cooldown", "credits"}
    assert all(":acceptance-6:" in key for key in contents)
    assert_nothing_secret(contents, api_key)
    for kid in kids:
        assert_one_outcome_each(kid, {"ok", "empty"})
        assert api_key not in kid.stderr
