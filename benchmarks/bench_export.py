"""Export and import: `export` and `import-ledger` of keyapi-stories against stdlib scripts.

An archive of accounts x 3 stories (default 30,000 stories; ``--stories
300000`` for the issue's figure; ``--quick`` 3,000) is built once under a
temporary directory from a ledger written for the purpose: every story with
its own signed media URLs, a third of the media recorded as saved, a sixth
expired and a sixth failed. Then, in alternating rounds (the order of the
contenders rotates every round), fresh subprocesses run:

* ``export -f csv`` (the CLI's own code path) against a stdlib script:
  ``sqlite3`` cursor over ``stories LEFT JOIN media`` straight into
  ``csv.writer`` (same columns, no formatting, no order);
* ``export -f parquet`` (compared with our own CSV time: the goal is half);
* ``import-ledger`` of the ledger into an empty archive against a stdlib
  script (``json.loads`` per line, the largest rendition, one ``INSERT`` per
  story, one transaction), with each child's peak RSS (``VmHWM``); a quarter
  of the ledger is imported too, to show that memory does not grow with it.

Each child is a fresh interpreter, so that its peak RSS is its own; its wall
and CPU seconds are taken around the work (start-up and imports excluded; the
modules the command imports lazily, pyarrow among them, are imported first).
Figures are medians over the rounds, with their min-max spread. Run alone:
``python -m benchmarks.bench_export [--quick | --stories N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from benchmarks._common import ROOT, median, say, table

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NAME = "export"
_RESULT_PREFIX = "EXPORT_RESULT="
_STORIES_PER_ACCOUNT = 3

# The contenders: what a user would write with the standard library alone.
STDLIB_CSV = """
import csv, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
cursor = conn.execute(
    "SELECT s.story_id, s.username, s.user_id, s.taken_at, s.expiring_at, s.media_type,"
    " s.media_url, s.width, s.height, s.duration, m.path, m.bytes, m.sha256, s.fetched_at,"
    " m.status FROM stories AS s LEFT JOIN media AS m ON m.story_id = s.story_id")
with open(sys.argv[2], "w", newline="", encoding="utf-8") as out:
    writer = csv.writer(out)
    writer.writerow([column[0] for column in cursor.description])
    writer.writerows(cursor)
"""

STDLIB_IMPORT = """
import json, sqlite3, sys
conn = sqlite3.connect(sys.argv[2], isolation_level=None)
conn.execute("CREATE TABLE IF NOT EXISTS stories (story_id TEXT PRIMARY KEY, account TEXT,"
             " taken_at INTEGER, media_url TEXT, width INTEGER, height INTEGER)")
conn.execute("BEGIN")
with open(sys.argv[1], "rb") as ledger:
    for raw in ledger:
        line = json.loads(raw)
        for item in (line["stories"] or {}).get("items", ()):
            media = item.get("video_versions") or item["image_versions"]["items"]
            best = max(media, key=lambda r: r["width"] * r["height"])
            conn.execute("INSERT OR IGNORE INTO stories VALUES (?, ?, ?, ?, ?, ?)",
                         (item["id"], line["target"], item.get("taken_at"), best["url"],
                          best["width"], best["height"]))
conn.execute("COMMIT")
"""


# -- building the archive --------------------------------------------------------


def write_ledger(path: Path, accounts: int) -> None:
    """A ledger of ``accounts`` ``ok`` lines, 3 distinct stories each (from synthetic templates)."""
    from keyapi_async.cli.ledger import LedgerLine
    from keyapi_async.models import Reel, StoryItem, User, decode_reel
    from keyapi_async.testing._data import build_reel

    templates: list[StoryItem] = []
    for n in range(40):
        data = build_reel(f"username:template{n}", empty_ratio=0.0)["data"]
        templates.extend(decode_reel(msgspec.json.encode(data)).items)
    encoder = msgspec.json.Encoder()
    with path.open("wb") as out:
        for account in range(accounts):
            name = f"user{account:06d}"
            owner = User(id=str(10_000_000 + account), username=name)
            items = tuple(
                msgspec.structs.replace(
                    templates[(account * _STORIES_PER_ACCOUNT + k) % len(templates)],
                    id=f"{3_000_000_000_000 + account * _STORIES_PER_ACCOUNT + k}",
                    pk=None,
                    user=owner,
                    owner=owner,
                )
                for k in range(_STORIES_PER_ACCOUNT)
            )
            reel = Reel(count=len(items), items=items)
            line = LedgerLine(
                target=name,
                status="ok",
                fetched_at="2026-03-10T02:13:01.123Z",
                attempts=1,
                stories=reel,
                error=None,
            )
            # Every story gets its own signed URLs, as on the CDN (the
            # templates' would repeat, which flatters Parquet's dictionaries).
            out.write(encoder.encode(line).replace(b"oh=00_", b"oh=00_%d_" % account) + b"\n")


def _mark_saved(db: Path) -> None:
    """Record media as a download run would: a third saved, a sixth expired, a sixth failed."""
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO media (story_id, status, path, bytes, sha256, saved_at, updated_at)"
            " SELECT story_id, 'saved', account || '/' || story_id || '.jpg', 123456,"
            " printf('%064x', rowid), fetched_at, fetched_at FROM stories WHERE rowid % 3 = 0"
        )
        conn.execute(
            "INSERT INTO media (story_id, status, updated_at, failures, reason)"
            " SELECT story_id, CASE rowid % 6 WHEN 1 THEN 'expired' ELSE 'failed' END,"
            " fetched_at, 1, CASE rowid % 6 WHEN 1 THEN 'HTTP 403' ELSE 'connection reset' END"
            " FROM stories WHERE rowid % 6 IN (1, 4)"
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


# -- one timed operation in a fresh process ---------------------------------------


def _peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(kind: str, source: str, target: str) -> dict[str, Any]:
    baseline = _peak_rss_mb()
    import_seconds = 0.0
    if kind.startswith("stdlib"):
        script = STDLIB_CSV if kind == "stdlib-csv" else STDLIB_IMPORT
        code = compile(script, kind, "exec")
        sys.argv = [kind, source, target]
        cpu, started = _cpu_seconds(), time.perf_counter()
        exec(code, {"__name__": "__main__"})
    else:
        from keyapi_async.cli import main

        # What the command imports lazily, imported before the clock starts
        # as the stdlib scripts' modules are (pyarrow alone takes ~0.4 s).
        imported = time.perf_counter()
        importlib.import_module("keyapi_async.cli.export")
        if kind == "parquet":
            importlib.import_module("pyarrow.parquet")
        import_seconds = time.perf_counter() - imported
        if kind == "import":
            argv = ["import-ledger", source, "--archive", target]
        else:
            argv = ["export", source, "-f", kind, "-o", target]
        cpu, started = _cpu_seconds(), time.perf_counter()
        status = main(argv)
        if status != 0:
            raise SystemExit(f"keyapi-stories {' '.join(argv)} exited {status}")
    return {
        "seconds": time.perf_counter() - started,
        "import_seconds": import_seconds,
        "cpu_seconds": _cpu_seconds() - cpu,
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": baseline,
    }


def _spawn(kind: str, source: Path, target: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_export",
            "--child",
            kind,
            str(source),
            str(target),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(_RESULT_PREFIX) :])
            return result
    raise RuntimeError(f"{kind} child failed ({proc.returncode}): {proc.stderr[-2000:]}")


def _fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm", ".tmp"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path


# -- the benchmark -------------------------------------------------------------------


DEFAULT_STORIES = 30_000
QUICK_STORIES = 3_000


def run(
    quick: bool = False, stories: int | None = None, rounds: int | None = None
) -> dict[str, Any]:
    """Build an archive of ``stories`` (rounded to accounts x 3) and time every contender."""
    total = stories if stories is not None else (QUICK_STORIES if quick else DEFAULT_STORIES)
    accounts = max(4, total // _STORIES_PER_ACCOUNT)
    rounds = rounds if rounds is not None else (2 if quick else 5)
    workdir = Path(tempfile.mkdtemp(prefix="keyapi-bench-export-"))
    try:
        return _run_in(workdir, accounts, rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _spread(values: list[float]) -> list[float]:
    return [min(values), max(values)]


def _run_in(workdir: Path, accounts: int, rounds: int) -> dict[str, Any]:
    ledger, db = workdir / "ledger.jsonl", workdir / "archive.sqlite3"
    quarter = workdir / "quarter.jsonl"
    say(f"building a ledger of {accounts:,} accounts x {_STORIES_PER_ACCOUNT} stories ...")
    write_ledger(ledger, accounts)
    write_ledger(quarter, accounts // 4)
    built = _spawn("import", ledger, db)
    _mark_saved(db)
    stories = accounts * _STORIES_PER_ACCOUNT
    say(
        f"archive built ({stories:,} stories, {db.stat().st_size / 1e6:.0f} MB; "
        f"ledger {ledger.stat().st_size / 1e6:.0f} MB)"
    )
    jobs = {
        "csv": lambda: _spawn("csv", db, _fresh(workdir / "out.csv")),
        "stdlib-csv": lambda: _spawn("stdlib-csv", db, _fresh(workdir / "stdlib.csv")),
        "parquet": lambda: _spawn("parquet", db, _fresh(workdir / "out.parquet")),
        "import": lambda: _spawn("import", ledger, _fresh(workdir / "imported.sqlite3")),
        "stdlib-import": lambda: _spawn(
            "stdlib-import", ledger, _fresh(workdir / "stdlib.sqlite3")
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in jobs}
    cpu: dict[str, list[float]] = {name: [] for name in jobs}
    peaks: list[float] = []
    order = list(jobs)
    for number in range(rounds):
        shift = number % len(order)
        for name in order[shift:] + order[:shift]:
            result = jobs[name]()
            times[name].append(result["seconds"])
            cpu[name].append(result["cpu_seconds"])
            if name == "import":
                peaks.append(result["peak_rss_mb"])
            say(
                f"  round {number + 1} {name:14} {result['seconds']:6.2f} s "
                f"(cpu {result['cpu_seconds']:.2f} s)"
            )
    quarter_peak = _spawn("import", quarter, _fresh(workdir / "quarter.sqlite3"))["peak_rss_mb"]
    med = {name: median(values) for name, values in times.items()}
    # Ratios per round (the contenders of one round ran side by side) and
    # their spread; the headline is the ratio of the medians.
    csv_ratios = [a / b for a, b in zip(times["csv"], times["stdlib-csv"], strict=True)]
    parquet_ratios = [a / b for a, b in zip(times["parquet"], times["csv"], strict=True)]
    import_rates = [stories / t for t in times["import"]]
    result = {
        "accounts": accounts,
        "stories": stories,
        "rounds": rounds,
        "build_import_s": built["seconds"],
        "median_s": med,
        "median_cpu_s": {name: median(values) for name, values in cpu.items()},
        "spread_s": {name: _spread(values) for name, values in times.items()},
        "times_s": times,
        "cpu_s": cpu,
        "csv_vs_stdlib": med["csv"] / med["stdlib-csv"],
        "csv_vs_stdlib_spread": _spread(csv_ratios),
        "parquet_vs_csv": med["parquet"] / med["csv"],
        "parquet_vs_csv_spread": _spread(parquet_ratios),
        "parquet_vs_stdlib_csv": med["parquet"] / med["stdlib-csv"],
        "import_stories_per_s": stories / med["import"],
        "import_stories_per_s_spread": _spread(import_rates),
        "stdlib_import_stories_per_s": stories / med["stdlib-import"],
        "import_vs_stdlib": med["import"] / med["stdlib-import"],
        "import_peak_rss_mb": max(peaks),
        "import_peak_rss_quarter_mb": quarter_peak,
    }
    say(
        f"csv {med['csv']:.2f} s vs stdlib {med['stdlib-csv']:.2f} s: "
        f"{result['csv_vs_stdlib']:.2f}x (per round {_range(csv_ratios)}); parquet "
        f"{med['parquet']:.2f} s = {result['parquet_vs_csv']:.2f}x our csv "
        f"({_range(parquet_ratios)}); import {result['import_stories_per_s']:,.0f} stories/s "
        f"({min(import_rates):,.0f}-{max(import_rates):,.0f}; "
        f"{result['import_vs_stdlib']:.2f}x the stdlib script's time), peak RSS "
        f"{result['import_peak_rss_mb']:.0f} MB ({result['import_peak_rss_quarter_mb']:.0f} MB "
        "for a quarter of the ledger)"
    )
    return result


def _range(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def markdown(result: dict[str, Any]) -> str:
    med, spread = result["median_s"], result["spread_s"]

    def cell(name: str) -> str:
        low, high = spread[name]
        return f"{med[name]:.2f} ({low:.2f}-{high:.2f})"

    rows = [
        ["export -f csv", cell("csv"), cell("stdlib-csv"), f"{result['csv_vs_stdlib']:.2f}"],
        [
            "export -f parquet",
            cell("parquet"),
            cell("stdlib-csv"),
            f"{result['parquet_vs_stdlib_csv']:.2f}",
        ],
        [
            "import-ledger",
            cell("import"),
            cell("stdlib-import"),
            f"{result['import_vs_stdlib']:.2f}",
        ],
    ]
    csv_low, csv_high = result["csv_vs_stdlib_spread"]
    pq_low, pq_high = result["parquet_vs_csv_spread"]
    rate_low, rate_high = result["import_stories_per_s_spread"]
    return "\n".join(
        [
            "## Export and import",
            "",
            f"An archive of {result['stories']:,} stories ({result['accounts']:,} accounts x 3), "
            f"medians of {result['rounds']} alternating rounds (min-max in brackets), each run "
            "in a fresh process (time measured around the work). The contenders are ten-line "
            "stdlib scripts: a `sqlite3` cursor over `stories LEFT JOIN media` into "
            "`csv.writer`, and `json.loads` per ledger line into one `INSERT` per story.",
            "",
            table(["operation", "keyapi_async s", "stdlib script s", "ratio"], rows),
            "",
            f"CSV takes **{result['csv_vs_stdlib']:.2f}x** the stdlib script's time (per round "
            f"{csv_low:.2f}-{csv_high:.2f}x); Parquet **{result['parquet_vs_csv']:.2f}x** our "
            f"CSV time ({pq_low:.2f}-{pq_high:.2f}x); import-ledger records "
            f"**{result['import_stories_per_s']:,.0f} stories/s** ({rate_low:,.0f}-"
            f"{rate_high:,.0f}; stdlib script {result['stdlib_import_stories_per_s']:,.0f}/s) "
            f"with a peak RSS of {result['import_peak_rss_mb']:.0f} MB "
            f"({result['import_peak_rss_quarter_mb']:.0f} MB for a quarter of the ledger).",
        ]
    )


def plot(ax: Axes, result: dict[str, Any]) -> None:
    med = result["median_s"]
    labels = ["csv", "parquet", "import"]
    ours = [med["csv"], med["parquet"], med["import"]]
    stdlib = [med["stdlib-csv"], med["stdlib-csv"], med["stdlib-import"]]
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], ours, width=0.4, label="keyapi_async", color="#4C72B0")
    ax.bar([x + 0.2 for x in xs], stdlib, width=0.4, label="stdlib script", color="#8C8C8C")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels)
    ax.set_ylabel("seconds")
    ax.set_title(f"Export/import of {result['stories']:,} stories")
    ax.legend(fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_export")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--stories", type=int, default=None, help="archive size (default 30000)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5)")
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        result = _child(*args.child)
        print(_RESULT_PREFIX + json.dumps(result), flush=True)
        return
    run(args.quick, args.stories, args.rounds)


if __name__ == "__main__":
    main()
