"""Shared gate end to end: 4 real processes on one key, with Redis and without.

Issue 11's scenario: 4 processes x 150 distinct targets on one API key,
against the emulator capped at 20 requests per sliding one-second window
(50 ms latency), each process a real ``KeyAPIClient(qps=20)`` in its own
Python:

* **shared**: every client with ``redis_url`` (one ``redis-server`` on a free
  loopback port): the four together stay under the key's cap;
* **alone**: no ``redis_url``: each process paces itself at 20/s, so the key
  sees 80/s offered and lives in 429s.

Per scenario: wall time from the first to the last request the emulator saw
(against the ideal 600/20), the 429s, the most requests in any 1 s window,
the request rate, and the outcomes. The per-send Redis overhead is measured
twice: inside the shared run, each acquire script's round trip as its
processes saw it (p50/p95) and script calls per send; and end to end, one
process fetching sequentially with no cap (``qps=None``, zero latency), with
and without ``redis_url``: the difference per request is what the shared gate
adds to a send.

The emulator runs in this process (``run_emulator``) so that its request log
can be read; the clients run in child processes (``python -c``), started
together once all have connected. The fake API key reaches them through the
environment.

Started together (issue 21): 20 runs of 4 fresh processes x 40 targets
started at once, plain and with each process's first send held 60 ms (a slow
start-up, made certain); per run the most arrivals in any 1 s window, the
429s and the sends, against one per target.

Run alone: ``python -m benchmarks.bench_shared_gate [--quick] [--starts-only]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from benchmarks._common import ROOT, fake_key, say, table
from keyapi_async import KeyAPIClient
from keyapi_async.testing import EmulatorConfig, run_emulator

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NAME = "shared_gate"
PROCESSES = 4
QPS = 20.0
LATENCY = 0.05
CHILD_TIMEOUT = 300.0
#: Fewer workers than targets, so that workers come back to the local gate
#: between requests (see the note in markdown()).
CYCLING = 16
_CHILD_CODE = "from benchmarks.bench_shared_gate import child_main; child_main()"


# -- the child process ----------------------------------------------------------------


def child_main() -> None:
    """A child: read its spec (one JSON line), run one batch, print a JSON report."""
    spec = json.loads(sys.stdin.readline())
    print(json.dumps(asyncio.run(_child(spec))), flush=True)


async def _child(spec: dict[str, Any]) -> dict[str, Any]:
    options = dict(spec["options"])
    stall = options.pop("stall_first", 0.0)
    if not stall:
        return await _batch(spec, options)
    from tests.test_shared_gate import SlowStart

    transport = SlowStart(stall, options.get("timeout", 10.0))
    try:
        return await _batch(spec, {**options, "transport": transport})
    finally:
        await transport.aclose()


async def _batch(spec: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    rtts: list[float] = []
    statuses: Counter[str] = Counter()
    async with KeyAPIClient(**options) as client:
        gate = client._require_open().gate
        state = getattr(gate, "_state", None)
        if state is not None:
            # Time each acquire script call (the one round trip per turn).
            script = state.acquire_script

            async def timed(**kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await script(**kwargs)
                finally:
                    rtts.append(time.perf_counter() - t0)

            state.acquire_script = timed
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # "go"
        async with client.fetch_many(spec["targets"]) as batch:
            async for result in batch:
                statuses[result.status] += 1
        stats = client.stats
    return {
        "statuses": dict(statuses),
        "requests_sent": stats.requests_sent,
        "rate_limited": stats.rate_limited,
        "grants": getattr(gate, "grants", None),
        "stale_grants": getattr(gate, "stale_grants", None),
        "script_calls": getattr(gate, "script_calls", None),
        "rtts": rtts,
    }


async def _run_children(key: str, options: dict[str, Any], batches: list[list[str]]) -> list[Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYAPI_")}
    env.update(KEYAPI_API_KEY=key, NO_PROXY="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    procs: list[asyncio.subprocess.Process] = []
    try:
        for targets in batches:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CHILD_CODE,
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            procs.append(proc)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"options": options, "targets": targets}).encode() + b"\n")
            await proc.stdin.drain()
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), CHILD_TIMEOUT)
            if line.strip() != b"ready":
                _, err = await proc.communicate()
                raise RuntimeError(f"child did not start: {err.decode(errors='replace')[-2000:]}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        done = await asyncio.gather(
            *(asyncio.wait_for(p.communicate(), CHILD_TIMEOUT) for p in procs)
        )
        reports = []
        for proc, (out, err) in zip(procs, done, strict=True):
            if proc.returncode != 0:
                raise RuntimeError(f"child failed: {err.decode(errors='replace')[-2000:]}")
            reports.append(json.loads(out.decode().strip().splitlines()[-1]))
        return reports
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _scenario(
    label: str, per_process: int, redis_url: str | None, **extra: Any
) -> dict[str, Any]:
    key = fake_key()
    config = EmulatorConfig(api_keys=frozenset({key}), qps=QPS, latency=LATENCY)
    async with run_emulator(config, host="127.0.0.1") as emu:
        options: dict[str, Any] = {"base_url": emu.base_url, "qps": QPS, "timeout": 10.0}
        options.update(extra)
        if redis_url is not None:
            options["redis_url"] = redis_url
        batches = [[f"p{p}_user{n:04d}" for n in range(per_process)] for p in range(PROCESSES)]
        reports = await _run_children(key, options, batches)
        times = [r.time for r in emu.log]
        wall = times[-1] - times[0]
        total = PROCESSES * per_process
        outcomes: Counter[str] = Counter()
        for report in reports:
            outcomes.update(report["statuses"])
        result: dict[str, Any] = {
            "scenario": label,
            "targets": total,
            "wall_s": wall,
            "ideal_s": total / QPS,
            "wall_vs_ideal": wall / (total / QPS),
            "requests": emu.requests_total,
            "server_429s": emu.count(status=429),
            "max_in_1s_window": emu.max_in_window(),
            "requests_per_s": (len(times) - 1) / wall,
            "accepted_per_s": (emu.requests_total - emu.count(status=429)) / wall,
            "outcomes": dict(outcomes),
        }
        rtts = [t for report in reports for t in report["rtts"]]
        if rtts:
            grants = sum(r["grants"] or 0 for r in reports)
            result["redis_rtt_p50_ms"] = statistics.median(rtts) * 1e3
            result["redis_rtt_p95_ms"] = _pct(rtts, 0.95) * 1e3
            result["script_calls_per_send"] = sum(r["script_calls"] or 0 for r in reports) / grants
        return result


async def _sequential(n: int, redis_url: str | None) -> list[float]:
    """Per-request seconds of ``n`` sequential fetches, no cap, zero latency."""
    key = fake_key()
    config = EmulatorConfig(api_keys=frozenset({key}))
    async with run_emulator(config, host="127.0.0.1") as emu:
        options: dict[str, Any] = {"base_url": emu.base_url, "qps": None}
        if redis_url is not None:
            options["redis_url"] = redis_url
        async with KeyAPIClient(key, **options) as client:
            for n_ in range(50):  # warm-up: connections, script cache
                await client.fetch_user_stories(username=f"warm{n_}")
            spent: list[float] = []
            for n_ in range(n):
                t0 = time.perf_counter()
                await client.fetch_user_stories(username=f"seq{n_:05d}")
                spent.append(time.perf_counter() - t0)
            return spent


async def _overhead(n: int, redis_url: str, rounds: int) -> dict[str, float]:
    """Median per-request time with and without the shared gate, alternating rounds."""
    local: list[float] = []
    shared: list[float] = []
    for _ in range(rounds):
        local.append(statistics.median(await _sequential(n, None)))
        shared.append(statistics.median(await _sequential(n, redis_url)))
    a, b = statistics.median(local), statistics.median(shared)
    return {"local_ms": a * 1e3, "shared_ms": b * 1e3, "added_ms": (b - a) * 1e3}


async def _starts(redis_url: str, runs: int, per_process: int, stall: float) -> dict[str, Any]:
    """``runs`` starts of 4 fresh processes together; per run max per 1 s, 429s, sends."""
    rows = []
    for run_ in range(runs):
        key = fake_key()
        config = EmulatorConfig(api_keys=frozenset({key}), qps=QPS, latency=LATENCY)
        async with run_emulator(config, host="127.0.0.1") as emu:
            options: dict[str, Any] = {
                "base_url": emu.base_url,
                "qps": QPS,
                "timeout": 10.0,
                "redis_url": redis_url,
                "stall_first": stall,
            }
            batches = [[f"p{p}_user{n:04d}" for n in range(per_process)] for p in range(PROCESSES)]
            reports = await _run_children(key, options, batches)
            row = {
                "max_in_1s_window": emu.max_in_window(),
                "server_429s": emu.count(status=429),
                "sends": emu.requests_total,
                "targets": PROCESSES * per_process,
                "stale_grants": sum(r["stale_grants"] or 0 for r in reports),
            }
        say(
            f"  start {run_ + 1:2d}/{runs}: max {row['max_in_1s_window']} in 1 s, "
            f"{row['server_429s']} x 429, {row['sends']} sends for {row['targets']} targets, "
            f"{row['stale_grants']} stale grants forfeit"
        )
        rows.append(row)
    over = sum(1 for r in rows if r["max_in_1s_window"] > QPS)
    summary = {
        "stall_s": stall,
        "per_process": per_process,
        "runs": rows,
        "runs_over_cap": over,
        "max_in_1s_window": max(r["max_in_1s_window"] for r in rows),
        "server_429s": sum(r["server_429s"] for r in rows),
        "extra_sends": sum(r["sends"] - r["targets"] for r in rows),
    }
    say(
        f"starts together, first send held {stall * 1000:.0f} ms: {over}/{runs} runs over "
        f"{QPS:g} in a window (max {summary['max_in_1s_window']}), "
        f"{summary['server_429s']} x 429, {summary['extra_sends']} extra sends"
    )
    return summary


async def _bench(
    redis_url: str,
    per_process: int,
    n: int,
    rounds: int,
    starts: int,
    start_targets: int,
    only_starts: bool,
) -> dict[str, Any]:
    together = [await _starts(redis_url, starts, start_targets, stall) for stall in (0.0, 0.06)]
    if only_starts:
        return {"scenarios": [], "overhead": {}, "starts": together}
    scenarios = []
    for label, url, extra in (
        ("shared gate (redis_url)", redis_url, {}),
        ("each process alone", None, {}),
        ("each process alone, concurrency=16", None, {"concurrency": CYCLING}),
    ):
        s = await _scenario(label, per_process, url, **extra)
        say(_line(s))
        scenarios.append(s)
    overhead = await _overhead(n, redis_url, rounds)
    say(
        f"per-send overhead, sequential fetches, qps=None: {overhead['local_ms']:.3f} ms alone, "
        f"{overhead['shared_ms']:.3f} ms with the shared gate (+{overhead['added_ms']:.3f} ms)"
    )
    return {"scenarios": scenarios, "overhead": overhead, "starts": together}


def _line(s: dict[str, Any]) -> str:
    text = (
        f"{s['scenario']}: wall {s['wall_s']:.2f} s (x{s['wall_vs_ideal']:.3f} ideal), "
        f"{s['server_429s']} x 429, max {s['max_in_1s_window']} in 1 s, "
        f"{s['requests_per_s']:.1f} req/s ({s['accepted_per_s']:.1f} accepted/s), "
        f"outcomes {dict(sorted(s['outcomes'].items()))}"
    )
    if "redis_rtt_p50_ms" in s:
        text += (
            f"; acquire script p50 {s['redis_rtt_p50_ms']:.2f} ms, "
            f"p95 {s['redis_rtt_p95_ms']:.2f} ms, {s['script_calls_per_send']:.2f} calls/send"
        )
    return text


def run(
    quick: bool = False, redis_url: str | None = None, only_starts: bool = False
) -> dict[str, Any]:
    """Run the starts, both scenarios and the overhead figure; start a redis-server if needed."""
    per_process, n, rounds = (30, 200, 1) if quick else (150, 1000, 3)
    starts, start_targets = (3, 12) if quick else (20, 40)
    say(
        f"shared_gate: {PROCESSES} processes x {per_process} targets, one key, emulator capped "
        f"at {QPS:g}/s ({LATENCY * 1000:.0f} ms latency), each client qps={QPS:g}"
    )
    if redis_url is not None:
        figures = asyncio.run(
            _bench(redis_url, per_process, n, rounds, starts, start_targets, only_starts)
        )
    else:
        # The test helper: a throwaway server on a free loopback port, no persistence.
        from tests.redis_server import RedisServer, redis_binary

        binary = redis_binary()
        if binary is None:
            raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
        with RedisServer(binary) as server:
            figures = asyncio.run(
                _bench(server.url, per_process, n, rounds, starts, start_targets, only_starts)
            )
    return {
        "name": NAME,
        "processes": PROCESSES,
        "per_process": per_process,
        "cap": QPS,
        "latency_s": LATENCY,
        "sequential_n": n,
        **figures,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [
            s["scenario"],
            s["wall_s"],
            s["ideal_s"],
            s["wall_vs_ideal"],
            s["server_429s"],
            s["max_in_1s_window"],
            s["requests_per_s"],
            s["accepted_per_s"],
            ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items())),
        ]
        for s in result["scenarios"]
    ]
    shared = result["scenarios"][0]
    o = result["overhead"]
    starts = [
        f"- first send of each process held {s['stall_s'] * 1000:.0f} ms: "
        f"{s['runs_over_cap']}/{len(s['runs'])} runs over {result['cap']:g} in a window "
        f"(max {s['max_in_1s_window']}), {s['server_429s']} x 429, {s['extra_sends']} sends "
        f"beyond one per target"
        for s in result.get("starts", [])
    ]
    return "\n".join(
        [
            "## Shared gate (several processes, one key)",
            "",
            f"{result['processes']} processes x {result['per_process']} targets on one key, "
            f"emulator capped at {result['cap']:g} requests per sliding 1 s window "
            f"({result['latency_s'] * 1000:.0f} ms latency), each process a "
            f"`KeyAPIClient(qps={result['cap']:g})`, with and without `redis_url`. Wall is "
            "first to last request seen by the emulator.",
            "",
            "Without Redis, each process's own gate learns a rate from its 429s (what "
            "the server accepted of its sends in the window), paces at about its share, "
            "then probes back up toward its own qps: the processes keep throttling each "
            "other, every round of probing costing 429s, pauses and retries. The adaptive "
            "gate keeps that to tens of 429s rather than hundreds, but only the shared "
            "gate removes them and fills the cap.",
            "",
            table(
                [
                    "scenario",
                    "wall s",
                    "ideal s",
                    "x ideal",
                    "429s",
                    "max req / 1 s",
                    "req/s",
                    "accepted/s",
                    "outcomes",
                ],
                rows,
            ),
            "",
            f"Per-send Redis overhead: the acquire script's round trip in the shared run "
            f"p50 {shared.get('redis_rtt_p50_ms', 0):.2f} ms, p95 "
            f"{shared.get('redis_rtt_p95_ms', 0):.2f} ms, "
            f"{shared.get('script_calls_per_send', 0):.2f} script calls per send; sequential "
            f"fetches with no cap ({result['sequential_n']} per round, median of rounds): "
            f"{o['local_ms']:.3f} ms per request alone, {o['shared_ms']:.3f} ms with the "
            f"shared gate (+{o['added_ms']:.3f} ms).",
            "",
            f"Started together (issue 21): {result['processes']} fresh processes with "
            "`redis_url`, started at once, each run a new emulator counting arrivals in "
            "its strict window:",
            "",
            *starts,
        ]
    )


def plot(ax: Axes, result: dict[str, Any]) -> None:
    scenarios = result["scenarios"]
    cap = result["cap"]
    xs = list(range(len(scenarios)))
    ax.bar(
        xs,
        [s["max_in_1s_window"] for s in scenarios],
        0.5,
        color=["#4C72B0", "#DD8452", "#C44E52"][: len(scenarios)],
        label="max requests in any 1 s",
    )
    ax.axhline(cap, color="#C44E52", linestyle="--", linewidth=1, label=f"key cap {cap:g}/s")
    for x, s in zip(xs, scenarios, strict=True):
        ax.annotate(
            f"wall {s['wall_s']:.1f} s (ideal {s['ideal_s']:.0f} s)\n{s['server_429s']} x 429",
            (x, s["max_in_1s_window"]),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylim(0, max(s["max_in_1s_window"] for s in scenarios) * 1.5)
    ax.set_xticks(xs)
    ax.set_xticklabels([s["scenario"] for s in scenarios], fontsize=8)
    ax.set_ylabel("requests per 1 s window")
    ax.set_title(
        f"Shared gate: {result['processes']} processes x {result['per_process']}, each qps={cap:g}"
    )
    ax.legend(fontsize=7, loc="upper left")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_shared_gate")
    parser.add_argument("--quick", action="store_true", help="small N: a smoke test")
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument(
        "--starts-only", action="store_true", help="only the start-together runs (issue 21)"
    )
    args = parser.parse_args()
    result = run(args.quick, args.redis_url, args.starts_only)
    if not args.starts_only:
        say()
        say(markdown(result))


if __name__ == "__main__":
    main()
