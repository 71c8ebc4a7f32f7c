"""Throughput: the full client against the bare stack it is built on, and naive clients.

N requests, no QPS cap, 64 in flight, against ``benchmarks._static_server``
(a separate process on 127.0.0.1 answering every request with the seed
example body, pre-serialised). Contenders, each run once per round in a
rotating order, in this one process:

* ``KeyAPIClient.fetch_many``: the full client (qps=None, concurrency=64):
  target normalisation and dedupe, the rate gate, retries, typed results;
* ``aiohttp + msgspec (bare)``: 64 workers on one aiohttp session decoding the
  envelope with the same ``keyapi_async.engine.sansio.decode_envelope``: the floor
  for this stack, what the client would cost with no features at all;
* ``aiohttp + json.loads``: the same loop with the naive decode;
* ``httpx + json``: ``httpx.AsyncClient`` (64 connections) and ``json.loads``.
  httpx is run with N/10 requests per round: at 64 in flight its connection
  pool spends milliseconds of CPU per request (httpcore's
  ``_assign_requests_to_connections`` scans every connection for every queued
  request, encode/httpcore#1035), so a full N would take minutes. Its
  per-request figures are steady-state and comparable.

Client CPU is ``getrusage(RUSAGE_SELF)`` user+sys over the run (the server is
another process, so it is excluded). Efficiency is bare CPU per request
divided by the client's: 1.0 means the client adds nothing.

Run alone: ``python -m benchmarks.bench_throughput [--quick] [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx

from benchmarks._common import ENDPOINT, cpu_seconds, fake_key, median, say, table
from benchmarks._common import server_process as _server_process
from keyapi_async import KeyAPIClient
from keyapi_async.engine.sansio import decode_envelope

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NAME = "throughput"
CLIENT = "KeyAPIClient.fetch_many"
BARE = "aiohttp + msgspec (bare)"
NAIVE = "aiohttp + json.loads"
HTTPX = "httpx + json"
CONCURRENCY = 64
TARGET_EFFICIENCY = 0.85

Runner = Callable[[str, str, int], Awaitable[int]]


def usernames(n: int, tag: str = "u") -> list[str]:
    return [f"bench_{tag}{i:07d}" for i in range(n)]


async def run_client(base_url: str, key: str, n: int) -> int:
    ok = 0
    async with KeyAPIClient(
        key, base_url=base_url, qps=None, concurrency=CONCURRENCY, timeout=30.0
    ) as client:
        async for result in client.fetch_many(usernames(n)):
            if result.error is None:
                ok += 1
    return ok


def _urls(base_url: str, n: int) -> Iterator[str]:
    endpoint = f"{base_url}{ENDPOINT}?username="
    return (endpoint + name for name in usernames(n))


async def run_bare(base_url: str, key: str, n: int) -> int:
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    urls = _urls(base_url, n)
    ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for url in urls:
            async with session.get(url, headers=headers) as response:
                body = await response.read()
                if response.status == 200 and decode_envelope(body).code == 0:
                    ok += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return ok


async def run_naive(base_url: str, key: str, n: int) -> int:
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    urls = _urls(base_url, n)
    ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for url in urls:
            async with session.get(url, headers=headers) as response:
                data = json.loads(await response.read())
                if response.status == 200 and data["code"] == 0:
                    ok += 1

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return ok


async def run_httpx(base_url: str, key: str, n: int) -> int:
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    urls = _urls(base_url, n)
    ok = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal ok
        for url in urls:
            response = await client.get(url, headers=headers)
            data = json.loads(response.content)
            if response.status_code == 200 and data["code"] == 0:
                ok += 1

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(CONCURRENCY)))
    return ok


CONTENDERS: dict[str, Runner] = {
    CLIENT: run_client,
    BARE: run_bare,
    NAIVE: run_naive,
    HTTPX: run_httpx,
}


async def measure(runner: Runner, base_url: str, key: str, n: int) -> tuple[float, float]:
    """Run one contender once; return (wall seconds, client CPU seconds)."""
    gc.collect()
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    ok = await runner(base_url, key, n)
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    if ok != n:
        raise RuntimeError(f"{runner.__name__}: {ok} of {n} requests succeeded")
    return wall, cpu


def requests_for(name: str, n: int) -> int:
    """Requests per run for a contender (httpx gets N/10, see the module docstring)."""
    return max(50, n // 10) if name == HTTPX else n


async def _bench(base_url: str, key: str, n: int, rounds: int, warmup: int) -> dict[str, Any]:
    names = list(CONTENDERS)
    for name in names:
        await measure(CONTENDERS[name], base_url, key, min(warmup, requests_for(name, n)))
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            count = requests_for(name, n)
            wall, cpu = await measure(CONTENDERS[name], base_url, key, count)
            walls[name].append(wall)
            cpus[name].append(cpu)
            say(
                f"  round {round_no + 1}/{rounds} {name:<26} {count / wall:>7,.0f} req/s "
                f"{cpu / count * 1000:>6.3f} CPU s/1k"
            )
    return {"walls": walls, "cpus": cpus}


def summarise(n: int, rounds: int, raw: dict[str, Any]) -> dict[str, Any]:
    walls: dict[str, list[float]] = raw["walls"]
    cpus: dict[str, list[float]] = raw["cpus"]
    bare_rps = n / median(walls[BARE])
    bare_cpu = median(cpus[BARE]) / n * 1000
    rows: list[dict[str, Any]] = []
    for name in walls:
        count = requests_for(name, n)
        rps = count / median(walls[name])
        cpu_1k = median(cpus[name]) / count * 1000
        rows.append(
            {
                "contender": name,
                "requests_per_run": count,
                "req_per_s": rps,
                "cpu_s_per_1k": cpu_1k,
                "req_per_s_vs_bare": rps / bare_rps,
                "cpu_vs_bare": cpu_1k / bare_cpu,
                "efficiency": bare_cpu / cpu_1k,
                "rounds_wall_s": walls[name],
                "rounds_cpu_s": cpus[name],
            }
        )
    client = next(r for r in rows if r["contender"] == CLIENT)
    # Paired per-round ratios: both contenders ran back to back in each round,
    # so their ratio is less exposed to slow drifts in machine load.
    paired_eff = [b / c for b, c in zip(cpus[BARE], cpus[CLIENT], strict=True)]
    paired_rps = [b / c for b, c in zip(walls[BARE], walls[CLIENT], strict=True)]
    meets = client["efficiency"] >= TARGET_EFFICIENCY and (
        client["req_per_s_vs_bare"] >= TARGET_EFFICIENCY
    )
    return {
        "name": NAME,
        "requests": n,
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "server": "benchmarks._static_server (separate process, pre-built seed body)",
        "rows": rows,
        "target": TARGET_EFFICIENCY,
        "client_efficiency": client["efficiency"],
        "client_req_per_s_vs_bare": client["req_per_s_vs_bare"],
        "paired_efficiency_median": median(paired_eff),
        "paired_req_per_s_ratio_median": median(paired_rps),
        "meets_target": meets,
    }


def run(quick: bool = False, requests: int | None = None) -> dict[str, Any]:
    n = requests if requests is not None else (500 if quick else 5_000)
    rounds = 2 if quick else 7
    key = fake_key()
    args = ["-m", "benchmarks._static_server", "--api-key", key]
    say(f"throughput: {n:,} requests x {rounds} rounds, {CONCURRENCY} in flight, no QPS cap")
    with _server_process(args, name="static server") as base_url:
        raw = asyncio.run(_bench(base_url, key, n, rounds, warmup=min(n, 500)))
    result = summarise(n, rounds, raw)
    for row in result["rows"]:
        say(
            f"  {row['contender']:<26} {row['req_per_s']:>7,.0f} req/s "
            f"({row['req_per_s_vs_bare']:.2f}x bare)  {row['cpu_s_per_1k']:.3f} CPU s/1k "
            f"(efficiency {row['efficiency']:.2f})"
        )
    verdict = "MEETS" if result["meets_target"] else "MISSES"
    say(
        f"  target (>= {TARGET_EFFICIENCY} of bare, CPU and req/s): {verdict}: efficiency "
        f"{result['client_efficiency']:.3f} (paired {result['paired_efficiency_median']:.3f}), "
        f"req/s {result['client_req_per_s_vs_bare']:.3f}x "
        f"(paired {result['paired_req_per_s_ratio_median']:.3f})"
    )
    return result


def markdown(result: dict[str, Any]) -> str:
    verdict = "meets" if result["meets_target"] else "**misses**"
    rows = [
        [
            r["contender"],
            r["req_per_s"],
            r["req_per_s_vs_bare"],
            f"{r['cpu_s_per_1k']:.3f}",
            r["efficiency"],
        ]
        for r in result["rows"]
    ]
    return "\n".join(
        [
            "## Throughput",
            "",
            f"{result['requests']:,} requests per run, {result['concurrency']} in flight, no "
            f"QPS cap, median of {result['rounds']} alternating rounds; server: "
            f"{result['server']}. Client CPU = user+sys of the client process only. "
            "Efficiency = bare CPU per request / contender CPU per request.",
            "",
            table(["contender", "req/s", "x bare req/s", "CPU s / 1k req", "efficiency"], rows),
            "",
            "httpx runs N/10 requests per round: at 64 in flight its connection pool "
            "(httpcore's `_assign_requests_to_connections`, encode/httpcore#1035) costs "
            "milliseconds of CPU per request; its per-request figures are steady-state.",
            "",
            f"Target: the full client at ≥ {result['target']} of the bare loop's CPU "
            f"efficiency and req/s: {verdict} (efficiency {result['client_efficiency']:.2f}, "
            f"req/s {result['client_req_per_s_vs_bare']:.2f}x bare; per-round paired medians "
            f"{result['paired_efficiency_median']:.2f} and "
            f"{result['paired_req_per_s_ratio_median']:.2f}).",
        ]
    )


def plot(ax: Axes, result: dict[str, Any]) -> None:
    rows = result["rows"]
    names = [r["contender"].replace(" (bare)", "\n(bare)").replace(" + ", " +\n") for r in rows]
    rps = [r["req_per_s"] for r in rows]
    colors = ["#4C72B0" if r["contender"] == CLIENT else "#8C8C8C" for r in rows]
    bars = ax.bar(range(len(rows)), rps, color=colors)
    for bar, row in zip(bars, rows, strict=True):
        ax.annotate(
            f"{row['req_per_s']:,.0f} req/s\n{row['cpu_s_per_1k']:.2f} CPU s/1k",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, fontsize=7)
    ax.set_ylabel("requests / s")
    ax.set_ylim(0, max(rps) * 1.2)
    ax.set_title(
        f"Throughput, {result['concurrency']} in flight "
        f"(efficiency {result['client_efficiency']:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_throughput")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=None)
    args = parser.parse_args()
    run(args.quick, args.requests)


if __name__ == "__main__":
    main()
