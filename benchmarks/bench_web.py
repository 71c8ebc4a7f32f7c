"""The gallery over a large archive: server time of every kind of page (goal: < 300 ms each).

One archive of 300,000 stories is built once under a temporary directory
through the archive's own schema (``StoryArchive``) with one bulk insert:
one big account of 100,000 stories (the timeline worst case), 200 accounts
of 1,000, every story's media recorded (four in five saved), the watch
tables of a watch over all 201 accounts, and 500 highlights. Then the
gallery (``keyapi_async.web``, the code ``keyapi-stories serve`` runs) is
served on 127.0.0.1 and every page kind is asked ``ROUNDS`` times in turn;
the figure is the app's own time from its ``Server-Timing`` header (queries
and template, not the network), median and worst. Run alone:
``python -m benchmarks.bench_web [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._common import median, say, table

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NAME = "web"
GOAL_MS = 300.0
_DAY = 86_400
_T0 = 1_780_000_000


def build(db: Path, big: int, accounts: int, per_account: int) -> dict[str, str]:
    """The archive (real schema, bulk rows); returns ids the pages need."""
    import sqlite3

    from keyapi_async.archive import StoryArchive
    from keyapi_async.archive.highlights import HIGHLIGHTS_SCHEMA
    from keyapi_async.watch import WATCH_SCHEMA

    with StoryArchive.connect(db, extensions=[WATCH_SCHEMA, HIGHLIGHTS_SCHEMA]):
        pass  # the schema, exactly as the library writes it
    names = ["big", *(f"user{n:04d}" for n in range(accounts))]
    sizes = [big, *([per_account] * accounts)]
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO accounts (target, user_id, username, first_seen_at, last_seen_at)"
        " VALUES (?, ?, ?, ?, ?)",
        [(n, str(1000 + i), n, _T0, _T0 + i) for i, n in enumerate(names)],
    )

    def stories() -> Any:
        sid = 3_000_000_000_000
        for name, size in zip(names, sizes, strict=True):
            for k in range(size):
                sid += 1
                taken = _T0 - k * 900  # one every 15 min, going back in time
                kind = "video" if k % 3 == 0 else "image"
                yield (str(sid), name, name, taken, taken + _DAY, kind, 1080, 1920, taken)

    conn.executemany(
        "INSERT INTO stories (story_id, account, username, taken_at, expiring_at, media_type,"
        " width, height, first_seen_at, fetched_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ((*row[:8], row[8], row[8]) for row in stories()),
    )
    conn.execute(
        "INSERT INTO media (story_id, status, path, bytes, sha256, saved_at, updated_at, reason)"
        " SELECT story_id, CASE WHEN rowid % 5 = 0 THEN 'expired' ELSE 'saved' END,"
        " CASE WHEN rowid % 5 = 0 THEN NULL ELSE account || '/' || story_id || '.jpg' END,"
        " 50000 + rowid % 1000, NULL, taken_at, taken_at,"
        " CASE WHEN rowid % 5 = 0 THEN 'HTTP 403' END FROM stories"
    )
    conn.executemany(
        "INSERT INTO watch_accounts (target, added_at, next_poll_at, last_poll_at, polls,"
        " last_status, last_error) VALUES (?, ?, ?, ?, 40, ?, ?)",
        [
            (n, _T0, _T0 + 600 + i, _T0 + i, "error" if i % 50 == 0 else "ok",
             "HTTP 500" if i % 50 == 0 else None)
            for i, n in enumerate(names)
        ],
    )  # fmt: skip
    conn.executemany(
        "INSERT INTO watch_credits (at, target, credits) VALUES (?, ?, 2)",
        [(time.time() - i * 30, names[i % len(names)]) for i in range(2_000)],
    )
    conn.executemany(
        "INSERT INTO watch_settings (name, value) VALUES (?, ?)",
        [("every", "900.0"), ("max_credits_per_day", "20000")],
    )
    conn.executemany(
        "INSERT INTO highlights (id, account, title, created_at, first_seen_at, last_seen_at)"
        " VALUES (?, ?, ?, ?, 0, 0)",
        [(str(17_900_000 + h), names[h % len(names)], f"album {h}", _T0 - h) for h in range(500)],
    )
    conn.execute(
        "INSERT INTO highlight_items (highlight_id, story_id, position)"
        " SELECT h.id, s.story_id, s.rowid FROM highlights AS h"
        " JOIN stories AS s ON s.account = h.account"
        " AND s.rowid % 500 = CAST(h.id AS INTEGER) % 500"
    )
    conn.execute("COMMIT")
    ids = {
        "story": conn.execute("SELECT story_id FROM stories WHERE account = 'big' LIMIT 1 OFFSET ?",
                              (big // 2,)).fetchone()[0],
        "saved": conn.execute("SELECT story_id FROM media WHERE status = 'saved' LIMIT 1")
        .fetchone()[0],
        "deep": conn.execute(
            "SELECT taken_at || '.' || rowid FROM stories WHERE account = 'big'"
            " ORDER BY taken_at LIMIT 1 OFFSET 30"
        ).fetchone()[0],
        "seq": str(conn.execute("SELECT max(rowid) - 150 FROM stories").fetchone()[0]),
        "album": conn.execute("SELECT id FROM highlights WHERE account = 'big' LIMIT 1")
        .fetchone()[0],
    }  # fmt: skip
    saved_path = conn.execute(
        "SELECT path FROM media WHERE story_id = ?", (ids["saved"],)
    ).fetchone()[0]
    conn.close()
    file = db.parent / saved_path
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(b"\xff\xd8" + bytes(50_000) + b"\xff\xd9")
    return ids


def pages(ids: dict[str, str]) -> dict[str, str]:
    from datetime import UTC, datetime

    day = datetime.fromtimestamp(_T0 - 200 * _DAY, tz=UTC).date().isoformat()
    return {
        "accounts": "/",
        "accounts by stories": "/?sort=stories",
        "accounts search": "/?q=user01",
        "timeline (100k account)": "/a/big",
        "timeline, videos": "/a/big?kind=video",
        "timeline, one day": f"/a/big?from={day}&to={day}",
        "timeline, last page": f"/a/big?after={ids['deep']}",
        "story player": f"/s/{ids['story']}",
        "new since last visit": f"/new?after={ids['seq']}",
        "highlight album": f"/h/{ids['album']}",
        "status": "/status",
        "metrics": "/metrics",
        "media file": f"/media/{ids['saved']}",
        "healthz": "/healthz",
        "readyz": "/readyz",
    }


async def measure(root: Path, urls: dict[str, str], rounds: int) -> dict[str, list[float]]:
    import aiohttp

    from keyapi_async.web import GalleryConfig, running_gallery

    config = GalleryConfig(archive=root / "archive.sqlite3", media_root=root)
    times: dict[str, list[float]] = {name: [] for name in urls}
    async with running_gallery(config, "127.0.0.1", 0) as base, aiohttp.ClientSession() as http:
        for _ in range(rounds):
            for name, path in urls.items():
                async with http.get(base + path) as response:
                    await response.read()
                    assert response.status == 200, (name, response.status)
                    timing = response.headers["Server-Timing"]
                    times[name].append(float(timing.split("dur=", 1)[1]))
    return times


def run(quick: bool = False) -> dict[str, Any]:
    big, accounts, per = (10_000, 20, 1_000) if quick else (100_000, 200, 1_000)
    rounds = 5 if quick else 15
    workdir = Path(tempfile.mkdtemp(prefix="keyapi-bench-web-"))
    try:
        db = workdir / "archive.sqlite3"
        started = time.perf_counter()
        ids = build(db, big, accounts, per)
        stories = big + accounts * per
        say(f"archive of {stories:,} stories built in {time.perf_counter() - started:.0f} s")
        times = asyncio.run(measure(workdir, pages(ids), rounds))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "stories": stories,
        "rounds": rounds,
        "median_ms": {k: median(v) for k, v in times.items()},
        "max_ms": {k: max(v) for k, v in times.items()},
        "goal_ms": GOAL_MS,
    }
    say(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [name, result["median_ms"][name], result["max_ms"][name]] for name in result["median_ms"]
    ]
    worst = max(result["max_ms"].values())
    return "\n".join(
        [
            "## Gallery pages (keyapi-stories serve)",
            "",
            f"An archive of {result['stories']:,} stories (one account of 100,000), each page "
            f"asked {result['rounds']} times; the app's own time (`Server-Timing`: queries and "
            "template) in milliseconds.",
            "",
            table(["page", "median ms", "worst ms"], rows),
            "",
            f"Worst of all: **{worst:.0f} ms** (goal: under {result['goal_ms']:.0f} ms).",
        ]
    )


def plot(ax: Axes, result: dict[str, Any]) -> None:
    names = list(result["median_ms"])
    ax.barh(names, [result["median_ms"][n] for n in names], color="#4C72B0", label="median")
    ax.axvline(result["goal_ms"], color="#C44E52", linestyle="--", label="goal")
    ax.set_xlabel("ms (server time)")
    ax.set_title(f"Gallery pages over {result['stories']:,} stories")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_web")
    parser.add_argument("--quick", action="store_true")
    run(parser.parse_args().quick)


if __name__ == "__main__":
    main()
