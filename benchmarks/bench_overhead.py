"""Overhead per request: ``fetch_many`` against a bare aiohttp loop decoding the same models.

What the client's features (target normalisation and dedupe, the gate, the
budget hold, retries, typed results, the result stream) cost per request on
realistic bodies: 0 to 3 story items, 11.8 KB on average
(:func:`benchmarks._static_server.realistic_bodies`), served pre-built by
``benchmarks._static_server --realistic`` in a separate process on 127.0.0.1
(so that its CPU is not counted), the body for a request chosen by its query
string, so both contenders get exactly the same bodies.

* ``fetch_many``: ``KeyAPIClient(qps=None, concurrency=64)`` and
  ``async with client.fetch_many(names) as batch: async for result in batch``;
* ``bare``: 64 workers on one aiohttp session (``TCPConnector(limit=64)``),
  each ``GET`` read whole and decoded with the client's own envelope decoder
  (``keyapi_async.engine.sansio.decode_envelope``) into the same public
  :class:`~keyapi_async.models.Reel` (``envelope.reel.to_reel()``): the floor
  for this stack, the client with no features.

Both send the same N requests with 64 in flight, opening their session per
run, in this one process, in alternating rounds (A B, B A, A B, ...) after a
warm-up run each. CPU per request is the :func:`time.process_time` delta of
a run divided by N; efficiency is ``bare CPU per request / fetch_many CPU per
request`` (1.0: the client adds nothing; the goal is 0.85, the stretch 0.95).
Reported as the ratio of the medians and as the median of the per-round
ratios (each round's two runs are back to back, so their ratio is the less
exposed to drifts in the load of a shared machine).

One such comparison is a *run*. A run's figure moves with the state of its
process (address layout, hash seeds, what else the machine does), so the
headline is the median over several independent runs, each in a fresh
interpreter (``--runs``, default 5), with their spread (lowest and highest
run); the figures of the run at the median are the ones tabled.

``--profile`` runs ``fetch_many`` once more under :mod:`cProfile` and prints
its top entries (tottime), with those of ``keyapi_async`` listed apart.

Run alone: ``python -m benchmarks.bench_overhead [--quick] [--requests N] [--runs K] [--profile]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from benchmarks._common import ENDPOINT, fake_key, median, say, server_process, table
from benchmarks._static_server import realistic_bodies
from keyapi_async import KeyAPIClient
from keyapi_async.engine.sansio import decode_envelope
from keyapi_async.models import Reel

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NAME = "overhead"
CLIENT = "fetch_many"
BARE = "bare aiohttp + envelope decode"
CONCURRENCY = 64
GOAL = 0.85
STRETCH = 0.95
RUNS = 5

#: A run returns (successful requests, story items decoded): both contenders
#: must report the same figures, which shows they got and typed the same bodies.
Runner = Callable[[str, str, int], Awaitable[tuple[int, int]]]


def usernames(n: int) -> list[str]:
    return [f"bench_o{i:07d}" for i in range(n)]


async def run_client(base_url: str, key: str, n: int) -> tuple[int, int]:
    ok = items = 0
    async with (
        KeyAPIClient(
            key, base_url=base_url, qps=None, concurrency=CONCURRENCY, timeout=30.0
        ) as client,
        client.fetch_many(usernames(n)) as batch,
    ):
        async for result in batch:
            if result.stories is not None:
                ok += 1
                items += len(result.stories.items)
    return ok, items


_EMPTY = Reel()


async def run_bare(base_url: str, key: str, n: int) -> tuple[int, int]:
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    endpoint = f"{base_url}{ENDPOINT}?username="
    urls: Iterator[str] = (endpoint + name for name in usernames(n))
    ok = items = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok, items
        for url in urls:
            async with session.get(url, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    continue
                envelope = decode_envelope(body)
                if envelope.code != 0:
                    continue
                wire = envelope.reel
                reel = _EMPTY if wire is None else wire.to_reel()
                ok += 1
                items += len(reel.items)

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return ok, items


CONTENDERS: dict[str, Runner] = {CLIENT: run_client, BARE: run_bare}


async def measure(
    runner: Runner, base_url: str, key: str, n: int
) -> tuple[float, float, float, int]:
    """Run one contender once: (wall s, CPU s, of which kernel s, story items decoded)."""
    gc.collect()
    cpu0, sys0, wall0 = time.process_time(), os.times().system, time.perf_counter()
    ok, items = await runner(base_url, key, n)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    kernel = os.times().system - sys0
    if ok != n:
        raise RuntimeError(f"{runner.__name__}: {ok} of {n} requests succeeded")
    return wall, cpu, kernel, items


async def _bench(base_url: str, key: str, n: int, rounds: int, warmup: int) -> dict[str, Any]:
    names = list(CONTENDERS)
    for name in names:
        await measure(CONTENDERS[name], base_url, key, warmup)
    walls: dict[str, list[float]] = {name: [] for name in names}
    cpus: dict[str, list[float]] = {name: [] for name in names}
    kernels: dict[str, list[float]] = {name: [] for name in names}
    decoded: dict[str, set[int]] = {name: set() for name in names}
    for round_no in range(rounds):
        order = names if round_no % 2 == 0 else names[::-1]
        for name in order:
            wall, cpu, kernel, items = await measure(CONTENDERS[name], base_url, key, n)
            walls[name].append(wall)
            cpus[name].append(cpu)
            kernels[name].append(kernel)
            decoded[name].add(items)
            say(
                f"  round {round_no + 1}/{rounds} {name:<28} {n / wall:>6,.0f} req/s "
                f"{cpu / n * 1e6:>6.1f} µs CPU/req ({kernel / n * 1e6:.1f} kernel)"
            )
    if len({frozenset(s) for s in decoded.values()}) != 1:
        raise RuntimeError(f"the contenders decoded different bodies: {decoded}")
    return {"walls": walls, "cpus": cpus, "kernels": kernels, "items": decoded[CLIENT].pop()}


def summarise(n: int, rounds: int, raw: dict[str, Any]) -> dict[str, Any]:
    walls: dict[str, list[float]] = raw["walls"]
    cpus: dict[str, list[float]] = raw["cpus"]
    kernels: dict[str, list[float]] = raw["kernels"]
    bodies = realistic_bodies()
    user = {name: [c - k for c, k in zip(cpus[name], kernels[name], strict=True)] for name in cpus}
    rows = [
        {
            "contender": name,
            "req_per_s": n / median(walls[name]),
            "cpu_us_per_req": median(cpus[name]) / n * 1e6,
            "user_us_per_req": median(user[name]) / n * 1e6,
            "kernel_us_per_req": median(kernels[name]) / n * 1e6,
            "rounds_wall_s": walls[name],
            "rounds_cpu_s": cpus[name],
            "rounds_kernel_s": kernels[name],
        }
        for name in walls
    ]
    client, bare = rows[0], rows[1]
    paired_eff = [b / c for b, c in zip(cpus[BARE], cpus[CLIENT], strict=True)]
    paired_user = [b / c for b, c in zip(user[BARE], user[CLIENT], strict=True)]
    paired_rps = [b / c for b, c in zip(walls[BARE], walls[CLIENT], strict=True)]
    efficiency = bare["cpu_us_per_req"] / client["cpu_us_per_req"]
    return {
        "name": NAME,
        "requests": n,
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "server": "benchmarks._static_server --realistic (separate process)",
        "bodies": {
            "count": len(bodies),
            "items": "0-3",
            "min_bytes": min(len(b) for b in bodies),
            "mean_bytes": statistics.mean(len(b) for b in bodies),
            "max_bytes": max(len(b) for b in bodies),
            "items_decoded_per_run": raw["items"],
        },
        "rows": rows,
        "goal": GOAL,
        "stretch": STRETCH,
        "efficiency": efficiency,
        "extra_cpu_us_per_req": client["cpu_us_per_req"] - bare["cpu_us_per_req"],
        "paired_efficiency": paired_eff,
        "paired_efficiency_median": median(paired_eff),
        "paired_user_efficiency_median": median(paired_user),
        "req_per_s_vs_bare": client["req_per_s"] / bare["req_per_s"],
        "paired_req_per_s_ratio_median": median(paired_rps),
        "meets_goal": median(paired_eff) >= GOAL,
        "meets_stretch": median(paired_eff) >= STRETCH,
    }


async def _profiled(base_url: str, key: str, n: int) -> str:
    await run_client(base_url, key, min(n, 500))  # warm
    gc.collect()
    profiler = cProfile.Profile()
    profiler.enable()
    await run_client(base_url, key, n)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("tottime").print_stats("keyapi_async", 25)
    stats.sort_stats("cumulative").print_stats("keyapi_async", 25)
    return out.getvalue()


def run(
    quick: bool = False,
    requests: int | None = None,
    profile: bool = False,
    runs: int | None = None,
) -> dict[str, Any]:
    """The median of ``runs`` independent runs, each in its own interpreter, and their spread."""
    runs = runs if runs is not None else (2 if quick else RUNS)
    if runs == 1:
        return run_once(quick, requests, profile)
    results: list[dict[str, Any]] = []
    for number in range(runs):
        say(f"overhead: independent run {number + 1}/{runs} (a fresh interpreter)")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run.json"
            argv = [sys.executable, "-m", "benchmarks.bench_overhead", "--runs", "1"]
            argv += ["--json", str(out)] + (["--quick"] if quick else [])
            argv += [] if requests is None else ["--requests", str(requests)]
            subprocess.run(argv, check=True)
            results.append(json.loads(out.read_text()))
    figures = [r["paired_efficiency_median"] for r in results]
    at_median = sorted(results, key=lambda r: r["paired_efficiency_median"])[len(results) // 2]
    result = dict(at_median)
    result.update(
        runs=len(results),
        runs_efficiency=figures,
        runs_efficiency_median=median(figures),
        runs_efficiency_min=min(figures),
        runs_efficiency_max=max(figures),
        meets_goal=median(figures) >= GOAL,
        meets_stretch=median(figures) >= STRETCH,
    )
    say(
        f"  efficiency over {len(results)} independent runs: median "
        f"{result['runs_efficiency_median']:.3f}, spread {min(figures):.3f}-{max(figures):.3f} "
        f"({', '.join(f'{x:.3f}' for x in figures)}); goal {GOAL}: "
        f"{'MET' if result['meets_goal'] else 'MISSED'}"
    )
    if profile:
        run_once(quick, requests, profile=True)
    return result


def run_once(
    quick: bool = False, requests: int | None = None, profile: bool = False
) -> dict[str, Any]:
    """One run: alternating rounds of both contenders against one server process."""
    n = requests if requests is not None else (500 if quick else 5_000)
    rounds = 2 if quick else 11
    key = fake_key()
    args = ["-m", "benchmarks._static_server", "--api-key", key, "--realistic"]
    say(
        f"overhead: {n:,} requests x {rounds} rounds per contender, {CONCURRENCY} in flight, "
        "no QPS cap, realistic bodies (0-3 items)"
    )
    with server_process(args, name="static server") as base_url:
        raw = asyncio.run(_bench(base_url, key, n, rounds, warmup=min(n, 500)))
        report = asyncio.run(_profiled(base_url, key, n)) if profile else None
    result = summarise(n, rounds, raw)
    for row in result["rows"]:
        say(
            f"  {row['contender']:<28} {row['req_per_s']:>6,.0f} req/s "
            f"{row['cpu_us_per_req']:6.1f} µs CPU/req (user {row['user_us_per_req']:.1f}, "
            f"kernel {row['kernel_us_per_req']:.1f})"
        )
    say(
        f"  efficiency (bare CPU/req / fetch_many CPU/req): {result['efficiency']:.3f} "
        f"(per-round pairs: median {result['paired_efficiency_median']:.3f}, "
        f"{', '.join(f'{x:.2f}' for x in result['paired_efficiency'])}); goal {GOAL}: "
        f"{'MET' if result['meets_goal'] else 'MISSED'}, stretch {STRETCH}: "
        f"{'MET' if result['meets_stretch'] else 'missed'}; user CPU only: "
        f"{result['paired_user_efficiency_median']:.3f}"
    )
    if report is not None:
        say(report)
    return result


def markdown(result: dict[str, Any]) -> str:
    bodies = result["bodies"]
    rows = [
        [
            r["contender"],
            r["req_per_s"],
            f"{r['cpu_us_per_req']:.1f}",
            f"{r['user_us_per_req']:.1f}",
            f"{r['kernel_us_per_req']:.1f}",
        ]
        for r in result["rows"]
    ]
    verdict = "meets" if result["meets_goal"] else "**misses**"
    runs = result.get("runs", 1)
    headline = result.get("runs_efficiency_median", result["paired_efficiency_median"])
    spread = (
        f" over {runs} independent runs (each a fresh interpreter; spread "
        f"{result['runs_efficiency_min']:.2f}-{result['runs_efficiency_max']:.2f}: "
        + ", ".join(f"{x:.2f}" for x in result["runs_efficiency"])
        + "); the table is the run at the median"
        if runs > 1
        else ""
    )
    stretch = "meets" if result["meets_stretch"] else "misses"
    pairs = ", ".join(f"{x:.2f}" for x in result["paired_efficiency"])
    return "\n".join(
        [
            "## Overhead per request",
            "",
            f"{result['requests']:,} requests per run, {result['concurrency']} in flight, no "
            f"QPS cap, {result['rounds']} alternating rounds per contender (A B, B A, ...), in "
            f"one process; server: {result['server']}, {bodies['count']} realistic bodies of "
            f"{bodies['items']} items ({bodies['min_bytes']:,}-{bodies['max_bytes']:,} bytes, "
            f"{bodies['mean_bytes'] / 1000:.1f} KB on average). The bare loop decodes with the "
            "client's own envelope decoder into the same `Reel`. CPU = `time.process_time()` "
            "of this process per request (median of the rounds).",
            "",
            table(["contender", "req/s", "µs CPU / req", "of which user", "of which kernel"], rows),
            "",
            f"Efficiency (bare CPU per request / `fetch_many` CPU per request): "
            f"**{headline:.2f}**{spread}. In that run: "
            f"{result['paired_efficiency_median']:.2f} as the median of the per-round "
            f"ratios ({pairs}); {result['efficiency']:.2f} as the ratio of the medians; the "
            f"client costs {result['extra_cpu_us_per_req']:.1f} µs more per request. "
            f"Goal ≥ {result['goal']}: {verdict}; stretch ≥ {result['stretch']}: {stretch}. "
            f"req/s {result['paired_req_per_s_ratio_median']:.2f}x bare (paired median). "
            "User-space CPU only (the library's own work; kernel time is mostly loopback "
            f"send/recv): {result['paired_user_efficiency_median']:.2f}.",
        ]
    )


def plot(ax: Axes, result: dict[str, Any]) -> None:
    rows = result["rows"]
    cpu = [r["cpu_us_per_req"] for r in rows]
    colors = ["#4C72B0" if r["contender"] == CLIENT else "#8C8C8C" for r in rows]
    bars = ax.bar(range(len(rows)), cpu, color=colors)
    for bar, row in zip(bars, rows, strict=True):
        ax.annotate(
            f"{row['cpu_us_per_req']:.0f} µs/req\n{row['req_per_s']:,.0f} req/s",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["contender"] for r in rows], fontsize=8)
    ax.set_ylabel("CPU µs per request")
    ax.set_ylim(0, max(cpu) * 1.3)
    ax.set_title(
        f"Overhead, realistic bodies: efficiency "
        f"{result.get('runs_efficiency_median', result['paired_efficiency_median']):.2f} "
        f"(goal {result['goal']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_overhead")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument(
        "--profile", action="store_true", help="also profile one fetch_many run (cProfile)"
    )
    parser.add_argument("--runs", type=int, default=None, help=f"independent runs (default {RUNS})")
    parser.add_argument("--json", type=Path, default=None, help="write the result here as JSON")
    args = parser.parse_args()
    result = run(args.quick, args.requests, args.profile, args.runs)
    if args.json is not None:
        args.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
