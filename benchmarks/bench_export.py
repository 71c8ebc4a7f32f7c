"""Export and import: `export` and `import-ledger` of keyapi-stories against stdlib scripts.

One archive of 100,000 accounts x 3 stories (300,000 rows; a third of the
media recorded as saved) is built once under a temporary directory from a
ledger written for the purpose. Then, in alternating rounds (the order of
the contenders rotates), fresh subprocesses run:

* ``export -f csv`` against a stdlib script: ``sqlite3`` cursor over
  ``stories LEFT JOIN media`` straight into ``csv.writer`` (no formatting);
* ``export -f parquet`` (compared with our own CSV time: the goal is half);
* ``import-ledger`` of the 100,000-line ledger into an empty archive against
  a stdlib script (``json.loads`` per line, the largest rendition, one
  ``INSERT`` per story, one transaction), with each child's peak RSS
  (``VmHWM``) for a quarter and for all of the ledger, to show that memory
  does not grow with the ledger.

Times are taken inside each child around the work (interpreter start-up
and imports excluded). Run alone: ``python -m benchmarks.bench_export [--quick]``.
"""

from __future__ import annotations

import argparse
import json
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
    from keyapi_async.models import Reel, User, decode_reel
    from keyapi_async.testing._data import build_reel

    templates = []
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
            out.write(encoder.encode(line) + b"\n")


def _mark_saved(db: Path) -> None:
    """Record every third story's media as saved, as a download run would."""
    import sqlite3

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO media (story_id, status, path, bytes, sha256, saved_at, updated_at)"
            " SELECT story_id, 'saved', account || '/' || story_id || '.jpg', 123456,"
            " printf('%064x', rowid), fetched_at, fetched_at FROM stories WHERE rowid % 3 = 0"
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


def _child(kind: str, source: str, target: str) -> dict[str, Any]:
    baseline = _peak_rss_mb()
    if kind.startswith("stdlib"):
        script = STDLIB_CSV if kind == "stdlib-csv" else STDLIB_IMPORT
        code = compile(script, kind, "exec")
        sys.argv = [kind, source, target]
        started = time.perf_counter()
        exec(code, {"__name__": "__main__"})
    else:
        from keyapi_async.cli import main

        if kind == "import":
            argv = ["import-ledger", source, "--archive", target]
        else:
            argv = ["export", source, "-f", kind, "-o", target]
        started = time.perf_counter()
        status = main(argv)
        if status != 0:
            raise SystemExit(f"keyapi-stories {' '.join(argv)} exited {status}")
    return {
        "seconds": time.perf_counter() - started,
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


def run(quick: bool = False) -> dict[str, Any]:
    accounts = 3_000 if quick else 100_000
    rounds = 2 if quick else 3
    workdir = Path(tempfile.mkdtemp(prefix="keyapi-bench-export-"))
    try:
        return _run_in(workdir, accounts, rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_in(workdir: Path, accounts: int, rounds: int) -> dict[str, Any]:
    ledger, db = workdir / "ledger.jsonl", workdir / "archive.sqlite3"
    quarter = workdir / "quarter.jsonl"
    say(f"building a ledger of {accounts:,} accounts x {_STORIES_PER_ACCOUNT} stories ...")
    write_ledger(ledger, accounts)
    write_ledger(quarter, accounts // 4)
    built = _spawn("import", ledger, db)
    _mark_saved(db)
    stories = accounts * _STORIES_PER_ACCOUNT
    say(f"archive built ({stories:,} stories, {db.stat().st_size / 1e6:.0f} MB)")
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
    peaks: list[float] = []
    order = list(jobs)
    for number in range(rounds):
        shift = number % len(order)
        for name in order[shift:] + order[:shift]:
            result = jobs[name]()
            times[name].append(result["seconds"])
            if name == "import":
                peaks.append(result["peak_rss_mb"])
            say(f"  round {number + 1} {name:14} {result['seconds']:6.2f} s")
    quarter_peak = _spawn("import", quarter, _fresh(workdir / "quarter.sqlite3"))["peak_rss_mb"]
    med = {name: median(values) for name, values in times.items()}
    result = {
        "accounts": accounts,
        "stories": stories,
        "rounds": rounds,
        "build_import_s": built["seconds"],
        "median_s": med,
        "times_s": times,
        "csv_vs_stdlib": med["csv"] / med["stdlib-csv"],
        "parquet_vs_csv": med["parquet"] / med["csv"],
        "parquet_vs_stdlib_csv": med["parquet"] / med["stdlib-csv"],
        "import_stories_per_s": stories / med["import"],
        "stdlib_import_stories_per_s": stories / med["stdlib-import"],
        "import_vs_stdlib": med["import"] / med["stdlib-import"],
        "import_peak_rss_mb": max(peaks),
        "import_peak_rss_quarter_mb": quarter_peak,
    }
    say(
        f"csv {med['csv']:.2f} s vs stdlib {med['stdlib-csv']:.2f} s: "
        f"{result['csv_vs_stdlib']:.2f}x; parquet {med['parquet']:.2f} s = "
        f"{result['parquet_vs_csv']:.2f}x our csv; import {result['import_stories_per_s']:,.0f} "
        f"stories/s ({result['import_vs_stdlib']:.2f}x the stdlib script's time), peak RSS "
        f"{result['import_peak_rss_mb']:.0f} MB ({result['import_peak_rss_quarter_mb']:.0f} MB "
        "for a quarter of the ledger)"
    )
    return result


def markdown(result: dict[str, Any]) -> str:
    med = result["median_s"]
    rows = [
        ["export -f csv", med["csv"], med["stdlib-csv"], result["csv_vs_stdlib"]],
        ["export -f parquet", med["parquet"], med["stdlib-csv"], result["parquet_vs_stdlib_csv"]],
        ["import-ledger", med["import"], med["stdlib-import"], result["import_vs_stdlib"]],
    ]
    return "\n".join(
        [
            "## Export and import",
            "",
            f"An archive of {result['stories']:,} stories ({result['accounts']:,} accounts x 3), "
            f"medians of {result['rounds']} alternating rounds, each run in a fresh process "
            "(time measured around the work). The contenders are ten-line stdlib scripts: "
            "a `sqlite3` cursor over `stories LEFT JOIN media` into `csv.writer`, and "
            "`json.loads` per ledger line into one `INSERT` per story.",
            "",
            table(["operation", "keyapi_async s", "stdlib script s", "ratio"], rows),
            "",
            f"Parquet takes **{result['parquet_vs_csv']:.2f}x** our CSV time; import-ledger "
            f"records **{result['import_stories_per_s']:,.0f} stories/s** (stdlib script "
            f"{result['stdlib_import_stories_per_s']:,.0f}/s) with a peak RSS of "
            f"{result['import_peak_rss_mb']:.0f} MB ({result['import_peak_rss_quarter_mb']:.0f} MB "
            "for a quarter of the ledger).",
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
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        result = _child(*args.child)
        print(_RESULT_PREFIX + json.dumps(result), flush=True)
        return
    run(args.quick)


if __name__ == "__main__":
    main()
