"""Shared Redis gate: what one script round trip per acquire costs, and the cap it holds.

Figures, against a real ``redis-server`` (started on a free loopback port, or
``--redis-url``):

* **overhead**: one acquire + release with ``qps=None`` (one script call: the
  shared cooldown check) next to a bare ``PING``, sequentially: p50/p95/p99;
* **throughput without a cap**: 4 gates (as 4 processes would) x 16 tasks;
* **at a cap**: 4 gates hammering at ``qps`` = 20, 200 and 500 for a few
  seconds: achieved rate against the paced rate ``qps * (1 - margin)``, the
  most grants in any one-second window (Redis clock), script calls per grant.

Run: ``python -m benchmarks.bench_redis_gate [--quick] [--redis-url URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from typing import Any

import redis.asyncio as aioredis

from keyapi_async.engine.gate import Verdict
from keyapi_async.engine.redis_gate import SharedState, connect_shared, fingerprint

MARGIN = 0.05


async def _connect(url: str, fp: str, qps: float | None) -> SharedState:
    return await connect_shared(
        url=url,
        namespace=None,
        key_fingerprint=fp,
        qps=qps,
        margin=MARGIN,
        concurrency=64,
        max_credits=None,
        grace=2.0,
        retry_after_cap=30.0,
    )


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1] <= start + window:
            j += 1
        best = max(best, j - i + 1)
    return best


async def overhead(url: str, n: int) -> dict[str, float]:
    """Sequential acquire+release (one script call) against a bare PING, in milliseconds."""
    raw = aioredis.Redis.from_url(url)
    state = await _connect(url, fingerprint(secrets.token_hex(16)), None)
    try:
        for _ in range(200):  # warm-up: connections, script cache
            await raw.ping()
            await state.gate.release(await state.gate.acquire(), Verdict.ACCEPTED)
        pings: list[float] = []
        gates: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter()
            await raw.ping()
            t1 = time.perf_counter()
            await state.gate.release(await state.gate.acquire(), Verdict.ACCEPTED)
            t2 = time.perf_counter()
            pings.append((t1 - t0) * 1e3)
            gates.append((t2 - t1) * 1e3)
    finally:
        await state.aclose()
        await raw.aclose()
    return {
        "ping_p50_ms": statistics.median(pings),
        "gate_p50_ms": statistics.median(gates),
        "gate_p95_ms": _pct(gates, 0.95),
        "gate_p99_ms": _pct(gates, 0.99),
        "gate_mean_ms": statistics.fmean(gates),
    }


async def uncapped(url: str, seconds: float) -> dict[str, float]:
    """Aggregate acquires per second, 4 gates x 16 tasks, no rate cap (cooldown check only)."""
    fp = fingerprint(secrets.token_hex(16))
    states = [await _connect(url, fp, None) for _ in range(4)]
    count = 0
    deadline = time.monotonic() + seconds

    async def worker(state: SharedState) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await state.gate.release(await state.gate.acquire(), Verdict.ACCEPTED)
            count += 1

    try:
        await asyncio.gather(*(worker(s) for s in states for _ in range(16)))
    finally:
        for state in states:
            await state.aclose()
    return {"acquires_per_s": count / seconds}


async def capped(url: str, qps: float, seconds: float) -> dict[str, Any]:
    """4 gates x 16 tasks at ``qps``: achieved rate, worst window, script calls per grant."""
    fp = fingerprint(secrets.token_hex(16))
    states = [await _connect(url, fp, qps) for _ in range(4)]
    times: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(state: SharedState) -> None:
        while time.monotonic() < deadline:
            ticket = await state.gate.acquire()
            times.append(ticket.sent_at)
            await state.gate.release(ticket, Verdict.ACCEPTED)

    try:
        await asyncio.gather(*(worker(s) for s in states for _ in range(16)))
    finally:
        for state in states:
            await state.aclose()
    span = max(times) - min(times)
    paced = qps * (1 - MARGIN)
    achieved = (len(times) - 1) / span
    return {
        "qps": qps,
        "paced": paced,
        "achieved": achieved,
        "achieved_vs_paced": achieved / paced,
        "max_in_1s": _max_in_window(times),
        "calls_per_grant": sum(s.gate.script_calls for s in states) / len(times),
    }


async def run(url: str, quick: bool) -> None:
    """Print every figure."""
    n, seconds = (500, 1.5) if quick else (5000, 4.0)
    o = await overhead(url, n)
    print(
        f"overhead ({n} sequential acquire+release, qps=None): "
        f"p50 {o['gate_p50_ms']:.3f} ms, p95 {o['gate_p95_ms']:.3f} ms, "
        f"p99 {o['gate_p99_ms']:.3f} ms, mean {o['gate_mean_ms']:.3f} ms "
        f"(bare PING p50 {o['ping_p50_ms']:.3f} ms)"
    )
    u = await uncapped(url, seconds)
    print(f"uncapped, 4 gates x 16 tasks: {u['acquires_per_s']:.0f} acquires/s")
    for qps in (20.0, 200.0, 500.0):
        c = await capped(url, qps, seconds)
        print(
            f"qps={qps:g}, 4 gates x 16 tasks: {c['achieved']:.1f}/s achieved "
            f"({c['achieved_vs_paced']:.1%} of paced {c['paced']:.1f}/s), "
            f"max {c['max_in_1s']} in any 1 s, {c['calls_per_grant']:.2f} script calls/grant"
        )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, start a loopback redis-server unless given a URL, print figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small N, short runs")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    args = parser.parse_args(argv)
    if args.redis_url:
        asyncio.run(run(args.redis_url, args.quick))
        return
    # The test helper: a throwaway server on a free loopback port, no persistence.
    from tests.redis_server import RedisServer, redis_binary

    binary = redis_binary()
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    with RedisServer(binary) as server:
        asyncio.run(run(server.url, args.quick))


if __name__ == "__main__":
    main()
