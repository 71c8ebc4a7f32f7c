"""Memory: peak RSS while streaming 2k, 10k and 50k targets through ``fetch_many`` to JSONL.

Each size runs in a fresh subprocess (``python -m benchmarks.bench_memory
--child ...``) so that its peak is its own; the emulator runs in another
process with no QPS cap. The peak is the child's ``VmHWM`` (Linux): its
``ru_maxrss`` is recorded too, but Linux carries that figure across
fork + exec, so it never reads below the parent's RSS at spawn time.

Targets come from a generator (the batch reads them lazily) and every result
is appended to a JSONL file as it arrives, as the CLI's ledger does. If memory
is bounded by the concurrency and not by the number of targets, the peak
barely grows with N.

Run alone: ``python -m benchmarks.bench_memory [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._common import ROOT, emulator_args, fake_key, say, server_process, table

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NAME = "memory"
CONCURRENCY = 64
_RESULT_PREFIX = "MEMORY_RESULT="


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_now_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM, the high-water mark of its address space).

    Not ``ru_maxrss`` alone: Linux carries ``ru_maxrss`` over ``fork`` +
    ``execve``, so a child spawned by a large parent reports at least the
    parent's RSS at spawn time. VmHWM starts afresh with the new program.
    """
    return _status_mb("VmHWM")


def _ru_maxrss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _targets(n: int) -> Iterator[str]:
    return (f"mem_{i:07d}" for i in range(n))


async def _child(n: int, base_url: str, key: str, out: Path) -> dict[str, Any]:
    import msgspec

    from keyapi_async import KeyAPIClient

    encoder = msgspec.json.Encoder()
    statuses: dict[str, int] = {}
    stories = 0
    async with KeyAPIClient(key, base_url=base_url, qps=None, concurrency=CONCURRENCY) as client:
        baseline = _rss_now_mb()
        started = time.perf_counter()
        with out.open("wb") as ledger:
            async for result in client.fetch_many(_targets(n)):
                reel = result.stories
                items = reel.items if reel is not None else []
                stories += len(items)
                line = {
                    "target": result.target,
                    "status": result.status,
                    "attempts": result.attempts,
                    "elapsed": round(result.elapsed, 4),
                    "stories": [
                        {"id": item.id, "taken_at": item.taken_at, "url": item.best_media_url}
                        for item in items
                    ],
                    "error": None if result.error is None else str(result.error),
                }
                ledger.write(encoder.encode(line) + b"\n")
                statuses[result.status] = statuses.get(result.status, 0) + 1
            jsonl_bytes = ledger.tell()
        wall = time.perf_counter() - started
    return {
        "targets": n,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _peak_rss_mb(),
        "ru_maxrss_mb": _ru_maxrss_mb(),
        "final_rss_mb": _rss_now_mb(),
        "wall_s": wall,
        "req_per_s": n / wall,
        "stories": stories,
        "jsonl_mb": jsonl_bytes / 1e6,
        "outcomes": statuses,
    }


def _run_child(n: int, base_url: str, key: str, workdir: Path) -> dict[str, Any]:
    out = workdir / f"ledger_{n}.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_memory",
            "--child",
            str(n),
            "--base-url",
            base_url,
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, "BENCH_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out.unlink(missing_ok=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(_RESULT_PREFIX) :])
            return result
    raise RuntimeError(f"memory child for {n} targets failed: {proc.stderr[-2000:]}")


def _dedupe_set_mb(n: int) -> float:
    """Memory of a set holding ``n`` rendered target keys (what the batch keeps per target)."""
    import tracemalloc

    tracemalloc.start()
    try:
        keys = {str(name) for name in _targets(n)}
        size = tracemalloc.get_traced_memory()[0]
        del keys
    finally:
        tracemalloc.stop()
    return size / 1e6


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def run(quick: bool = False) -> dict[str, Any]:
    sizes = [500, 1_000, 2_000] if quick else [2_000, 10_000, 50_000]
    key = fake_key()
    say(
        f"memory: peak RSS streaming {', '.join(f'{s:,}' for s in sizes)} targets to JSONL "
        f"(fresh subprocess per size; emulator in another process, no cap; "
        f"concurrency {CONCURRENCY})"
    )
    runs = []
    # --max-log bounds the emulator's own request log (its memory is not measured).
    with (
        server_process(emulator_args(key, "--max-log", "1000"), name="emulator") as base_url,
        tempfile.TemporaryDirectory(prefix="keyapi-bench-") as tmp,
    ):
        for n in sizes:
            result = _run_child(n, base_url, key, Path(tmp))
            ok = result["outcomes"].get("ok", 0) + result["outcomes"].get("empty", 0)
            if ok != n:
                raise RuntimeError(f"{n} targets: only {ok} succeeded: {result['outcomes']}")
            say(
                f"  {n:>7,} targets: peak RSS {result['peak_rss_mb']:.1f} MB (baseline "
                f"{result['baseline_rss_mb']:.1f} MB after imports and client open), "
                f"{result['req_per_s']:,.0f} req/s, {result['stories']:,} stories, "
                f"JSONL {result['jsonl_mb']:.1f} MB"
            )
            runs.append(result)
    xs = [float(r["targets"]) for r in runs]
    peaks = [r["peak_rss_mb"] for r in runs]
    per_10k = _slope(xs, peaks) * 10_000
    span = (peaks[-1] - peaks[0]) / (xs[-1] - xs[0]) * 10_000
    dedupe_mb = _dedupe_set_mb(sizes[-1])
    say(
        f"  growth: {per_10k:.2f} MB per 10k targets (least squares over the sizes); "
        f"{span:.2f} MB per 10k from the smallest to the largest; for scale, the batch's "
        f"dedupe set of {sizes[-1]:,} target keys alone takes {dedupe_mb:.1f} MB"
    )
    return {
        "dedupe_set_mb_largest": dedupe_mb,
        "name": NAME,
        "concurrency": CONCURRENCY,
        "runs": runs,
        "mb_per_10k_targets": per_10k,
        "mb_per_10k_targets_endpoints": span,
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [
            r["targets"],
            r["baseline_rss_mb"],
            r["peak_rss_mb"],
            r["peak_rss_mb"] - r["baseline_rss_mb"],
            r["req_per_s"],
            r["jsonl_mb"],
        ]
        for r in result["runs"]
    ]
    return "\n".join(
        [
            "## Memory",
            "",
            "Peak RSS (VmHWM; `ru_maxrss` is inherited across fork+exec on Linux) of a fresh "
            "process streaming N targets through "
            f"`fetch_many` (concurrency {result['concurrency']}, targets from a generator) "
            "into a JSONL file; emulator in another process, no QPS cap. Baseline = RSS "
            "after imports and opening the client.",
            "",
            table(
                ["targets", "baseline MB", "peak MB", "peak - baseline MB", "req/s", "JSONL MB"],
                rows,
            ),
            "",
            f"Growth: **{result['mb_per_10k_targets']:.2f} MB per 10k targets** (least-squares "
            f"slope of peak RSS; {result['mb_per_10k_targets_endpoints']:.2f} MB per 10k "
            "between the smallest and largest run). For scale: the batch remembers every "
            "distinct target key to drop duplicates, and that set alone takes "
            f"{result.get('dedupe_set_mb_largest', float('nan')):.1f} MB at "
            f"{result['runs'][-1]['targets']:,} keys, against a peak "
            f"{result['runs'][-1]['peak_rss_mb'] - result['runs'][0]['peak_rss_mb']:.1f} MB "
            "above the smallest run's.",
        ]
    )


def plot(ax: Axes, result: dict[str, Any]) -> None:
    from matplotlib.ticker import NullFormatter

    runs = result["runs"]
    xs = [r["targets"] for r in runs]
    ax.plot(xs, [r["peak_rss_mb"] for r in runs], "o-", color="#4C72B0", label="peak RSS")
    ax.plot(
        xs,
        [r["baseline_rss_mb"] for r in runs],
        "s--",
        color="#8C8C8C",
        label="after imports + client open",
    )
    for x, r in zip(xs, runs, strict=True):
        ax.annotate(
            f"{r['peak_rss_mb']:.1f} MB",
            (x, r["peak_rss_mb"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:,}" for x in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, max(r["peak_rss_mb"] for r in runs) * 1.25)
    ax.set_xlabel("targets streamed")
    ax.set_ylabel("MB")
    ax.set_title(f"Memory: {result['mb_per_10k_targets']:+.2f} MB per 10k targets")
    ax.legend(fontsize=8, loc="lower right")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        key = os.environ["BENCH_API_KEY"]
        result = asyncio.run(_child(args.child, args.base_url, key, args.out))
        print(_RESULT_PREFIX + json.dumps(result), flush=True)
        return
    run(args.quick)


if __name__ == "__main__":
    main()
