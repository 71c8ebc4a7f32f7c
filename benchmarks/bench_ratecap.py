"""Rate cap: does the client stay under the server's QPS window, and how close to ideal is it?

N targets against the emulator capped at Q requests per sliding one-second
window, twice: the client configured at the cap (``qps=Q``), and configured
3x over it (``qps=3Q``), where only 429s and the adaptive rate can hold it
back. Reported per scenario: wall time against the ideal N/Q, the most
requests the server saw in any one-second window (all arrivals, and accepted
ones only), the 429s and the outcome counts.

The emulator runs in this process (``run_emulator``), not in a subprocess as
in the other benchmarks: its request log (``max_in_window``, ``count``) is
only inspectable in-process. At a few dozen requests per second the shared
event loop is not a bottleneck.

Run alone: ``python -m benchmarks.bench_ratecap [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING, Any

from benchmarks._common import fake_key, say, table
from keyapi_async import KeyAPIClient
from keyapi_async.testing import EmulatorConfig, run_emulator

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NAME = "ratecap"
CONCURRENCY = 16
LATENCY = 0.05  # seconds the emulator waits before each answer (a nearby API)


async def _scenario(label: str, n: int, cap: float, client_qps: float) -> dict[str, Any]:
    key = fake_key()
    config = EmulatorConfig(api_keys=frozenset({key}), qps=cap, latency=LATENCY)
    statuses: dict[str, int] = {}
    async with run_emulator(config) as emu:
        started = time.perf_counter()
        async with KeyAPIClient(
            key, base_url=emu.base_url, qps=client_qps, concurrency=CONCURRENCY
        ) as client:
            async for outcome in client.fetch_many(f"ratecap_{i:06d}" for i in range(n)):
                statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
            stats = client.stats
        wall = time.perf_counter() - started
        accepted_times = [r.time for r in emu.log if r.status != 429]
        result: dict[str, Any] = {
            "scenario": label,
            "targets": n,
            "server_cap_qps": cap,
            "client_qps": client_qps,
            "wall_s": wall,
            "ideal_s": n / cap,
            "wall_vs_ideal": wall / (n / cap),
            "max_in_1s_window": emu.max_in_window(1.0),
            "max_accepted_in_1s_window": _max_in_window(accepted_times, 1.0),
            "server_requests": emu.count(),
            "server_429s": emu.count(status=429),
            "client_requests_sent": stats.requests_sent,
            "client_retries": stats.retries,
            "outcomes": statuses,
            "within_cap": _max_in_window(accepted_times, 1.0) <= cap,
        }
    return result


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best = 0
    lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _line(r: dict[str, Any]) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
    return (
        f"  {r['scenario']}: {r['targets']} targets in {r['wall_s']:.2f} s "
        f"(ideal {r['ideal_s']:.2f} s, {r['wall_vs_ideal']:.3f}x); server saw max "
        f"{r['max_in_1s_window']} req in any 1 s window ({r['max_accepted_in_1s_window']} "
        f"accepted; cap {r['server_cap_qps']:g}); {r['server_429s']} x 429 of "
        f"{r['server_requests']} requests; outcomes: {outcomes}"
    )


async def _bench(n: int, cap: float) -> list[dict[str, Any]]:
    scenarios = [
        (f"client qps={cap:g} (at the cap)", cap),
        (f"client qps={3 * cap:g} (3x over the cap)", 3 * cap),
    ]
    results = []
    for label, client_qps in scenarios:
        result = await _scenario(label, n, cap, client_qps)
        say(_line(result))
        results.append(result)
    return results


def run(quick: bool = False) -> dict[str, Any]:
    n, cap = (60, 20.0) if quick else (300, 20.0)
    say(
        f"ratecap: {n} targets, emulator capped at {cap:g}/s (in-process emulator, so its "
        f"request log can be read; {LATENCY * 1000:.0f} ms latency), concurrency {CONCURRENCY}"
    )
    scenarios = asyncio.run(_bench(n, cap))
    return {
        "name": NAME,
        "targets": n,
        "cap": cap,
        "latency_s": LATENCY,
        "concurrency": CONCURRENCY,
        "note": "emulator in-process (run_emulator) to read max_in_window() and count(status=429)",
        "scenarios": scenarios,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [
            s["scenario"],
            s["wall_s"],
            s["ideal_s"],
            s["wall_vs_ideal"],
            s["max_in_1s_window"],
            s["max_accepted_in_1s_window"],
            s["server_429s"],
            ", ".join(f"{k} {v}" for k, v in sorted(s["outcomes"].items())),
        ]
        for s in result["scenarios"]
    ]
    return "\n".join(
        [
            "## Rate cap",
            "",
            f"{result['targets']} targets against the emulator capped at {result['cap']:g} "
            f"requests per sliding 1 s window ({result['latency_s'] * 1000:.0f} ms latency), "
            f"client concurrency {result['concurrency']}. The emulator runs in-process here so "
            "its request log can be read (max requests in any 1 s window, 429 count).",
            "",
            table(
                [
                    "scenario",
                    "wall s",
                    "ideal s",
                    "x ideal",
                    "max req / 1 s",
                    "max accepted / 1 s",
                    "429s",
                    "outcomes",
                ],
                rows,
            ),
        ]
    )


def plot(ax: Axes, result: dict[str, Any]) -> None:
    scenarios = result["scenarios"]
    cap = result["cap"]
    labels = [s["scenario"].replace(" (", "\n(") for s in scenarios]
    xs = list(range(len(scenarios)))
    ax.bar(
        [x - 0.2 for x in xs],
        [s["max_in_1s_window"] for s in scenarios],
        0.4,
        label="max requests in any 1 s (all)",
        color="#DD8452",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [s["max_accepted_in_1s_window"] for s in scenarios],
        0.4,
        label="max accepted in any 1 s",
        color="#4C72B0",
    )
    ax.axhline(cap, color="#C44E52", linestyle="--", linewidth=1, label=f"server cap {cap:g}/s")
    top = max(s["max_in_1s_window"] for s in scenarios)
    for x, s in zip(xs, scenarios, strict=True):
        ax.annotate(
            f"wall {s['wall_s']:.1f} s (ideal {s['ideal_s']:.0f} s)\n{s['server_429s']} x 429",
            (x, max(s["max_in_1s_window"], cap)),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylim(0, top * 1.75)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("requests per 1 s window")
    ax.set_title(f"Rate cap: {result['targets']} targets, server cap {cap:g}/s")
    ax.legend(fontsize=7, loc="upper center", ncol=3)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_ratecap")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    run(args.quick)


if __name__ == "__main__":
    main()
