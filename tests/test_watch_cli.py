"""``keyapi-stories watch`` end to end: a subprocess against a loopback emulator with churn."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from keyapi_async.testing import EmulatorConfig, MediaConfig, run_emulator
from keyapi_async.testing._churn import ChurnConfig, published
from keyapi_async.testing._highlights import TRAY_PATH

ACCOUNTS = 30
LIFETIME = 25.0

pytestmark = pytest.mark.slow

_HOOK = (
    "import json, sys; d = json.load(sys.stdin); "
    "open(sys.argv[1], 'a').write(d['story_id'] + '\\n')"
)


async def _start(args: list[str], key: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "KEYAPI_API_KEY": key}
    env.pop("KEYAPI_BASE_URL", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyapi_async", *args, env=env, stderr=asyncio.subprocess.PIPE
    )


async def _stop(process: asyncio.subprocess.Process) -> tuple[int, float, str]:
    process.send_signal(signal.SIGTERM)
    began = time.monotonic()
    _, err = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode is not None
    return process.returncode, time.monotonic() - began, err.decode()


async def test_watch_30_accounts_every_10s(tmp_path: Path) -> None:
    key = "sk_test_" + secrets.token_hex(16)
    churn = ChurnConfig(every=6.0, lifetime=LIFETIME)
    config = EmulatorConfig(
        api_keys=frozenset({key}), churn=churn, seed=3, media=MediaConfig(enabled=True)
    )
    names = [f"w{n:02d}" for n in range(ACCOUNTS)]
    accounts = tmp_path / "accounts.txt"
    accounts.write_text("\n".join(names) + "\n")
    db, media, hook_out = tmp_path / "w.db", tmp_path / "media", tmp_path / "hook.txt"
    async with run_emulator(config) as emu:
        loop = asyncio.get_running_loop()
        offset = time.time() - loop.time()  # the emulator logs loop time; churn runs on Unix time
        host = emu.base_url.removeprefix("http://")
        args = [
            "watch", str(accounts), "--every", "10s", "--archive", str(db),
            "--download", str(media), "--base-url", emu.base_url, "--media-hosts", host,
            "--qps", "50", "--on-new", f"{sys.executable} -c \"{_HOOK}\" {hook_out}",
        ]  # fmt: skip
        process = await _start(args, key)
        await asyncio.sleep(32)
        code, took, err = await _stop(process)
        assert code == 0, err
        assert took < 3.0
        assert "forecast 518,400 credits/day (30 accounts x 8640 polls/day x 2)" in err

        polls: dict[str, list[float]] = collections.defaultdict(list)
        for record in emu.log:
            if record.status == 200 and record.username is not None:
                polls[record.username].append(record.time + offset)
        counts = {name: len(polls[name]) for name in names}
        assert set(counts.values()) <= {3, 4}, counts

        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT s.story_id, s.account, m.status, m.path, m.bytes FROM stories AS s "
                "LEFT JOIN media AS m USING (story_id)"
            ).fetchall()
            due = dict(conn.execute("SELECT target, next_poll_at FROM watch_accounts"))
        conn.close()
        archived = {row[0] for row in rows}
        assert len(archived) == len(rows)
        for name in names:
            times = polls[name]
            key_ = f"username:{name}"
            surely = published(churn, 3, key_, times[0] - LIFETIME + 1, times[-1] - 1)
            possible = published(churn, 3, key_, times[0] - LIFETIME - 1, times[-1] + 1)
            mine = {row[0] for row in rows if row[1] == name}
            assert {s.story_id for s in surely} <= mine <= {s.story_id for s in possible}
        for _, _, status, path, size in rows:
            assert status == "saved"
            assert (media / path).stat().st_size == size
        assert not list(media.rglob("*.part"))
        hooked = hook_out.read_text().split()
        assert sorted(hooked) == sorted(archived)

        # An immediate restart polls nothing before it is due.
        before = len(emu.log)
        process = await _start(args, key)
        await asyncio.sleep(4)
        code, took, err = await _stop(process)
        assert code == 0, err
        for record in emu.log[before:]:
            assert record.username is not None
            assert record.time + offset >= due[record.username] - 0.05


async def test_status_report(tmp_path: Path) -> None:
    key = "sk_test_" + secrets.token_hex(16)
    config = EmulatorConfig(
        api_keys=frozenset({key}), churn=ChurnConfig(every=2.0, lifetime=30.0), seed=1
    )
    accounts = tmp_path / "a.txt"
    accounts.write_text("alpha\nbeta\n")
    db = tmp_path / "s.db"
    async with run_emulator(config) as emu:
        args = ["watch", str(accounts), "--every", "2s", "--archive", str(db)]
        process = await _start([*args, "--base-url", emu.base_url], key)
        await asyncio.sleep(3)
        code, _, err = await _stop(process)
        assert code == 0, err
    status = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyapi_async", "status", str(db),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await status.communicate()
    text = out.decode()
    assert status.returncode == 0
    assert "alpha" in text and "beta" in text
    assert "credits used in the last 24 h: " in text
    lines = [line.split() for line in text.splitlines() if line.startswith(("alpha", "beta"))]
    assert all(int(parts[-4]) >= 1 for parts in lines)  # polls


async def test_refuses_a_period_of_a_day(tmp_path: Path) -> None:
    accounts = tmp_path / "a.txt"
    accounts.write_text("alpha\n")
    process = await _start(
        ["watch", str(accounts), "--every", "24h", "--archive", str(tmp_path / "x.db")], "sk_x"
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert "stories live 24 h" in err.decode()


async def test_a_bad_key_exits_3(tmp_path: Path) -> None:
    accounts = tmp_path / "a.txt"
    accounts.write_text("alpha\nbeta\n")
    async with run_emulator(EmulatorConfig()) as emu:
        process = await _start(
            ["watch", str(accounts), "--every", "1h", "--archive", str(tmp_path / "x.db"),
             "--base-url", emu.base_url],
            "sk_test_wrong_" + secrets.token_hex(4),
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 3, err
    assert "401" in err.decode()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:  # bound, then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_watch_with_a_bad_media_hosts_variable_exits_2_in_one_line(tmp_path: Path) -> None:
    accounts = tmp_path / "a.txt"
    accounts.write_text("alpha\n")
    env = {**os.environ, "KEYAPI_API_KEY": "sk_test_x", "KEYAPI_MEDIA_HOSTS": "bad host!!"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "keyapi_async", "watch", str(accounts), "--every", "1h",
        "--download", str(tmp_path / "dl"), env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 20)
    text = err.decode()
    assert process.returncode == 2, text
    assert "Traceback" not in text and "KEYAPI_MEDIA_HOSTS" in text
    assert len(text.strip().splitlines()) == 1, text


@pytest.mark.parametrize("command", ["fetch", "watch"])
async def test_a_redis_that_is_not_running_exits_2_naming_it(tmp_path: Path, command: str) -> None:
    accounts = tmp_path / "a.txt"
    accounts.write_text("alpha\n")
    port = _closed_port()
    async with run_emulator(EmulatorConfig()) as emu:
        extra = ["-o", str(tmp_path / "o.jsonl")] if command == "fetch" else ["--every", "1h"]
        process = await _start(
            [command, str(accounts), *extra, "--archive", str(tmp_path / "x.db"),
             "--base-url", emu.base_url, "--redis-url", f"redis://127.0.0.1:{port}/0"],
            "sk_test_" + secrets.token_hex(4),
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), 30)
        assert emu.requests_total == 0
    text = err.decode()
    assert process.returncode == 2, text
    assert "Traceback" not in text and "ConfigurationError" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Redis" in lines[0] and f"127.0.0.1:{port}" in lines[0], text
    assert not (tmp_path / "o.jsonl").exists()  # nothing written either


async def test_watch_polls_highlight_trays_on_their_own_schedule(tmp_path: Path) -> None:
    key = "sk_test_" + secrets.token_hex(16)
    config = EmulatorConfig(api_keys=frozenset({key}), seed=5, media=MediaConfig(enabled=True))
    names = [f"t{n}" for n in range(4)]
    accounts = tmp_path / "accounts.txt"
    accounts.write_text("\n".join(names) + "\n")
    db, media = tmp_path / "t.db", tmp_path / "media"
    async with run_emulator(config) as emu:
        args = [
            "watch", str(accounts), "--every", "20s", "--highlights-every", "4s",
            "--archive", str(db), "--base-url", emu.base_url, "--qps", "50",
            "--download", str(media), "--media-hosts", emu.base_url.removeprefix("http://"),
        ]  # fmt: skip
        process = await _start(args, key)
        await asyncio.sleep(7)
        code, _, err = await _stop(process)
    assert code == 0, err
    assert "highlight trays every 4s: 172,800 credits/day" in err
    trays = collections.Counter(r.username for r in emu.log if r.path == TRAY_PATH)
    assert set(trays) == set(names) and set(trays.values()) <= {1, 2}, trays
    with contextlib.closing(sqlite3.connect(db)) as conn:
        polled = dict(conn.execute("SELECT target, polls FROM watch_trays"))
        accounts_seen = {row[0] for row in conn.execute("SELECT DISTINCT account FROM highlights")}
        kept = conn.execute(
            "SELECT m.path, m.bytes FROM highlight_items AS h JOIN media AS m USING (story_id)"
            " WHERE m.status = 'saved'"
        ).fetchall()
    assert polled == dict(trays)
    with_highlights = {r.username for r in emu.log if r.path == TRAY_PATH and r.status == 200}
    assert accounts_seen <= with_highlights
    assert f"{sum(trays.values())} highlight-tray polls" in err
    # The highlights' items are saved beside the stories, each file at its recorded size.
    assert accounts_seen and kept
    for path, size in kept:
        assert (media / path).stat().st_size == size
    assert any("/highlights/" in path for path, _ in kept)


async def test_an_unparsable_on_new_exits_2_naming_it(tmp_path: Path) -> None:
    # An unclosed quote is a usage error of --on-new, not a traceback.
    accounts = tmp_path / "a.txt"
    accounts.write_text("alpha\n")
    process = await _start(
        ["watch", str(accounts), "--every", "1h", "--archive", str(tmp_path / "x.db"),
         "--on-new", 'notify "unclosed'],
        "sk_test_x",
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 20)
    text = err.decode()
    assert process.returncode == 2, text
    assert "Traceback" not in text and "--on-new" in text and "unclosed" in text
    assert len(text.strip().splitlines()) == 1, text
    assert not (tmp_path / "x.db").exists()


async def test_the_max_credits_budget_spent_stops_the_watch_with_3(tmp_path: Path) -> None:
    # --max-credits is a total: once spent, no poll can ever be sent again, so the
    # watch stops (as for a 402) instead of logging a failed poll forever.
    accounts = tmp_path / "a.txt"
    accounts.write_text("".join(f"acct{n}\n" for n in range(8)))
    key = "sk_test_" + secrets.token_hex(8)
    async with run_emulator(EmulatorConfig(api_keys=frozenset({key}), empty_ratio=0.0)) as emu:
        process = await _start(
            ["watch", str(accounts), "--every", "4s", "--archive", str(tmp_path / "x.db"),
             "--max-credits", "4", "--base-url", emu.base_url, "--qps", "0"],
            key,
        )  # fmt: skip
        _, err = await asyncio.wait_for(process.communicate(), 30)
        sent = emu.requests_total
    text = err.decode()
    assert process.returncode == 3, text
    assert "--max-credits" in text and "Traceback" not in text, text
    assert sent == 2  # 4 credits: two polls, nothing after
