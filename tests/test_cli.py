"""End-to-end tests of the ``keyapi-stories`` console script.

Every test runs the real command in a subprocess (``python -m keyapi_async``,
the same ``main`` the ``keyapi-stories`` entry point calls) against an
emulator served by this test process, so the emulator's request log shows
exactly what the CLI sent. ``asyncio.create_subprocess_exec`` keeps this
event loop (and so the emulator) serving while the CLI runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import signal
import struct
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from keyapi_async import parse_target
from keyapi_async.cli import main
from keyapi_async.testing import DEFAULT_TEST_KEY, Emulator, EmulatorConfig, run_emulator

CLI = (sys.executable, "-m", "keyapi_async")
posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
TIMEOUT = 45.0


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYAPI_")}
    env.update(extra)
    return env


async def run_cli(
    *args: str, env: dict[str, str], cwd: Path, limit: float = TIMEOUT, stdin: bytes = b""
) -> Done:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"keyapi-stories {shlex.join(args)} did not end in {limit}s") from None
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def run_command(command: Sequence[str], *, env: dict[str, str], cwd: Path) -> Done:
    """Run a command line exactly as the CLI printed it."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


def summary_rows(stderr: str) -> dict[str, str]:
    """The summary table's rows, from rich's box drawing or the plain layout."""
    rows: dict[str, str] = {}
    for line in stderr.splitlines():
        if "\u2502" in line:
            cells = [cell.strip() for cell in line.strip().strip("\u2502").split("\u2502")]
        else:
            cells = re.split(r"\s{2,}", line.strip())
        if len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def read_ledger(path: Path) -> list[dict[str, Any]]:
    # Every line must be complete JSON: the ledger is valid JSONL at all times
    # between runs.
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def done_targets(lines: Iterable[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(x["target"] for x in lines if x["status"] in ("ok", "empty"))


def emulator_key(target: str) -> str:
    parsed = parse_target(target)
    return f"{parsed.kind}:{parsed.value}"


def assert_secret_absent(secret: str, *outputs: Done, files: Sequence[Path] = ()) -> None:
    for done in outputs:
        assert secret not in done.stdout
        assert secret not in done.stderr
    for path in files:
        if path.exists():
            assert secret not in path.read_text("utf-8")


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


async def eventually(ready: Callable[[], bool], limit: float = 20.0) -> None:
    """Poll ``ready`` until it holds; fail after ``limit`` seconds."""
    deadline = asyncio.get_running_loop().time() + limit
    while not ready():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {limit}s")
        await asyncio.sleep(0.02)


async def wait_for_lines(path: Path, minimum: int, proc: asyncio.subprocess.Process) -> None:
    def ready() -> bool:
        assert proc.returncode is None, "the CLI exited before the interruption"
        return count_lines(path) >= minimum

    await eventually(ready)


@contextlib.asynccontextmanager
async def serve(api_key: str, **config: Any) -> AsyncIterator[Emulator]:
    async with run_emulator(EmulatorConfig(api_keys=frozenset({api_key}), **config)) as emu:
        yield emu


def env_for(emu: Emulator, api_key: str) -> dict[str, str]:
    return base_env(KEYAPI_BASE_URL=emu.base_url, KEYAPI_API_KEY=api_key)


def write_targets(path: Path, names: Iterable[str]) -> Path:
    path.write_text("".join(f"{name}\n" for name in names), "utf-8")
    return path


# -- the command itself ------------------------------------------------------------


def test_entry_point_is_installed() -> None:
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="keyapi-stories")
    assert entry.value == "keyapi_async.cli:main"
    assert entry.load() is main
    assert shutil.which("keyapi-stories", path=os.path.dirname(sys.executable)) is not None


def test_help_documents_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["fetch", "--help"]):
        assert main(argv) == 0
        text = capsys.readouterr().out
        for needle in ("exit status", "\n  0 ", "\n  1 ", "\n  2 ", "\n  3 ", "130", "401", "402"):
            assert needle in text, (argv, needle)
        assert "KEYAPI_API_KEY" in text
    assert main(["fetch", "--qps", "fast"]) == 2
    assert "--qps must be a number" in capsys.readouterr().err


def test_every_command_help_documents_its_exit_statuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The statuses docs/cli.md gives for each command, in the command's own --help.
    expected = {
        "export": ("\n  0 ", "\n  2 "),
        "import-ledger": ("\n  0 ", "\n  1 ", "\n  2 "),
        "emulator": ("\n  0 ", "\n  2 "),
    }
    for command, needles in expected.items():
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "exit status:" in text, command
        for needle in needles:
            assert needle in text, (command, needle)


async def test_help_runs_as_a_module(tmp_path: Path) -> None:
    done = await run_cli("--help", env=base_env(), cwd=tmp_path)
    assert done.code == 0
    assert "exit status" in done.stdout
    assert "fetch" in done.stdout and "demo" in done.stdout and "emulator" in done.stdout


# -- fetch ------------------------------------------------------------------------------

VALID = [f"user_{n:03d}" for n in range(230)] + [f"id:{5000 + n}" for n in range(20)]
INVALID = ["bad name", "no/slash", "x" * 31, "id:12ab", "@", "emoji_\u2764"]


def mixed_input() -> list[str]:
    """300 lines: every valid target once, then duplicates in other spellings, noise, junk."""
    lines = ["# accounts to watch", ""]
    lines += VALID
    lines += ["@USER_000", "https://www.instagram.com/user_001/", "instagram.com/user_002?igsh=x"]
    lines += ["user_003  # again, with a comment", "ID:5000", "  user_004  ", "\t", "#", ""]
    lines += INVALID + INVALID[:2]
    lines += [f"user_{n:03d}" for n in range(5, 5 + 300 - len(lines))]
    assert len(lines) == 300
    return lines


async def test_fetch_mixed_input_one_line_per_distinct_target(tmp_path: Path, api_key: str) -> None:
    source = write_targets(tmp_path / "targets.txt", mixed_input())
    out = tmp_path / "out.jsonl"
    async with serve(api_key) as emu:
        done = await run_cli(
            "fetch",
            str(source),
            "-o",
            str(out),
            "--qps",
            "0",
            env=env_for(emu, api_key),
            cwd=tmp_path,
        )
        successes = emu.successful_targets()
        sent = {record.target for record in emu.log}
        reel = emu.reel_for("username:user_007")

    assert done.code == 1, done.stderr  # invalid lines make the run "some failed"
    lines = read_ledger(out)
    by_target = {line["target"]: line for line in lines}
    assert len(by_target) == len(lines) == len(VALID) + len(INVALID)
    assert done_targets(lines) == collections.Counter(VALID)
    for text in INVALID:
        line = by_target[text]
        assert line["status"] == "error"
        assert line["attempts"] == 0 and line["stories"] is None
        assert line["error"]["type"] == "InvalidTargetError"
        assert repr(text) in done.stderr
    # Nothing was sent for invalid input, and each valid target exactly once.
    expected = {emulator_key(target) for target in VALID}
    assert sent == expected
    assert set(successes) == expected and set(successes.values()) == {1}
    # The schema: fetched_at in UTC, the full reel re-encoded, no error.
    line = by_target["user_007"]
    assert set(line) == {"target", "status", "fetched_at", "attempts", "stories", "error"}
    assert datetime.fromisoformat(line["fetched_at"]).utcoffset() == timedelta(0)
    assert line["error"] is None and line["attempts"] == 1
    assert reel is not None
    served: list[dict[str, Any]] = reel["items"]  # type: ignore[assignment]
    assert [i["id"] for i in line["stories"]["items"]] == [i["id"] for i in served]
    assert "duplicates" in done.stderr
    assert_secret_absent(api_key, done, files=[out])


async def test_dry_run_counts_and_sends_nothing(tmp_path: Path, api_key: str) -> None:
    source = write_targets(tmp_path / "targets.txt", mixed_input())
    async with serve(api_key) as emu:
        # No key in the environment: a dry run needs none.
        env = base_env(KEYAPI_BASE_URL=emu.base_url)
        done = await run_cli("fetch", str(source), "--dry-run", env=env, cwd=tmp_path)
        clean = await run_cli(
            "fetch", "-", "--dry-run", env=env, cwd=tmp_path, stdin=b"javan\n@javan\nid:1\n"
        )
        assert emu.requests_total == 0
    assert done.code == 1

    def count(label: str, text: str = done.stdout) -> int:
        match = re.search(rf"^{label}:\s+(?:at most )?(\d+)", text, re.MULTILINE)
        assert match is not None, (label, text)
        return int(match.group(1))

    assert count("valid targets") == len(VALID)
    assert count("invalid") == len(INVALID)
    assert count("blank or comment") == 5
    assert count("duplicates") == 300 - len(VALID) - len(INVALID) - 5
    assert count("credit estimate") == 2 * len(VALID)
    assert clean.code == 0
    assert count("valid targets", clean.stdout) == 2
    assert count("duplicates", clean.stdout) == 1


@posix_signals
async def test_sigint_stops_gracefully_then_resume_completes(tmp_path: Path, api_key: str) -> None:
    targets = [f"acct_{n:03d}" for n in range(120)]
    write_targets(tmp_path / "targets.txt", targets)
    out = tmp_path / "out.jsonl"
    async with serve(api_key, latency=0.05) as emu:
        env = env_for(emu, api_key)
        args = ["fetch", "targets.txt", "-o", "out.jsonl", "--qps", "30", "--no-progress"]
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=tmp_path,
        )
        await wait_for_lines(out, 20, proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 20)
        first = Done(proc.returncode or 0, stdout.decode(), stderr.decode())
        assert first.code == 130, first.stderr
        first_lines = read_ledger(out)
        assert len(first_lines) == len(targets)  # every target has an outcome
        assert {line["status"] for line in first_lines} >= {"not_attempted"}

        # The printed command, run as printed, finishes the job. This process
        # was started as `python -m keyapi_async`, so the hint says so.
        (hint,) = [x for x in first.stderr.splitlines() if x.startswith("To resume: ")]
        command = shlex.split(hint.removeprefix("To resume: "))
        assert command[-len(args) - 1 :] == [*args, "--resume"]
        assert command[1:3] == ["-m", "keyapi_async"]
        second = await run_command(command, env=env, cwd=tmp_path)
        successes = emu.successful_targets()

    assert second.code == 0, second.stderr
    lines = read_ledger(out)
    assert done_targets(lines) == collections.Counter(targets)
    assert set(successes.values()) == {1}  # nothing fetched (and paid for) twice
    assert len(successes) == len(targets)
    assert_secret_absent(api_key, first, second, files=[out])


@posix_signals
async def test_grace_expiry_and_second_interrupt(tmp_path: Path, api_key: str) -> None:
    write_targets(tmp_path / "targets.txt", [f"acct_{n:03d}" for n in range(20)])
    async with serve(api_key, latency=30.0) as emu:  # answers never come in time
        env = env_for(emu, api_key)

        async def start(out: str, *extra: str) -> asyncio.subprocess.Process:
            before = emu.requests_total
            proc = await asyncio.create_subprocess_exec(
                *CLI, "fetch", "targets.txt", "-o", out, "--concurrency", "4", *extra,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=env, cwd=tmp_path,
            )  # fmt: skip
            # Four requests in flight: the signal handlers are installed by now.
            await eventually(lambda: emu.requests_total >= before + 4)
            return proc

        # One Ctrl-C: in-flight requests get --grace, then are abandoned; every
        # target still gets a line, and the run ends with 130.
        graceful = await start("grace.jsonl", "--grace", "0.5")
        graceful.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(graceful.communicate(), 10)
        assert graceful.returncode == 130, err.decode()
        assert "--grace of 0.5s expired" in err.decode()
        lines = read_ledger(tmp_path / "grace.jsonl")
        assert len(lines) == 20 and {x["status"] for x in lines} == {"not_attempted"}

        # A second Ctrl-C exits at once, without waiting out a long grace.
        hasty = await start("hasty.jsonl", "--grace", "60")
        hasty.send_signal(signal.SIGINT)
        await asyncio.sleep(0.3)
        hasty.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(hasty.communicate(), 10)
        assert hasty.returncode == 130, err.decode()
        assert "exiting now" in err.decode() and "To resume:" in err.decode()
        read_ledger(tmp_path / "hasty.jsonl")  # whatever is there is whole lines


@posix_signals
async def test_a_quick_second_ctrl_c_still_prints_the_resume_command(
    tmp_path: Path, api_key: str
) -> None:
    # Two Ctrl-C 10 ms apart: the second lands while the run winds down (nothing in
    # flight); it must still end with the resume command, never a bare interrupt.
    write_targets(tmp_path / "targets.txt", [f"acct_{n:03d}" for n in range(60)])
    out = tmp_path / "out.jsonl"
    async with serve(api_key) as emu:
        proc = await asyncio.create_subprocess_exec(
            *CLI, "fetch", "targets.txt", "-o", "out.jsonl", "--qps", "10",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env_for(emu, api_key), cwd=tmp_path,
        )  # fmt: skip
        await wait_for_lines(out, 5, proc)
        proc.send_signal(signal.SIGINT)
        await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "To resume: " in text and "keyapi-stories: interrupted" not in text, text
    read_ledger(out)  # whole lines only


@posix_signals
async def test_kill_9_then_resume_recovers_torn_line(tmp_path: Path, api_key: str) -> None:
    targets = [f"acct_{n:03d}" for n in range(120)]
    write_targets(tmp_path / "targets.txt", targets)
    out = tmp_path / "out.jsonl"
    concurrency = 8
    async with serve(api_key, latency=0.05) as emu:
        env = env_for(emu, api_key)
        args = ["fetch", "targets.txt", "-o", "out.jsonl", "--qps", "30"]
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            "--concurrency",
            str(concurrency),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
        )
        await wait_for_lines(out, 20, proc)
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
        # What a crash in the middle of a write leaves behind.
        with out.open("ab") as handle:
            handle.write(b'{"target":"acct_119","status":"ok","fetched_at":"2026-')
        resumed = await run_cli(*args, "--resume", env=env, cwd=tmp_path)
        successes = emu.successful_targets()

    assert resumed.code == 0, resumed.stderr
    assert "torn final line" in resumed.stderr
    lines = read_ledger(out)  # valid JSONL again: the torn tail was cut off
    assert done_targets(lines) == collections.Counter(targets)
    assert len(successes) == len(targets)
    # Only requests in flight at the kill can have been answered but not
    # recorded, so at most `concurrency` targets were fetched twice.
    assert sum(1 for n in successes.values() if n > 1) <= concurrency
    assert_secret_absent(api_key, resumed, files=[out])


async def test_402_mid_run_exits_3_and_keeps_results(tmp_path: Path, api_key: str) -> None:
    targets = [f"acct_{n:03d}" for n in range(80)]
    write_targets(tmp_path / "targets.txt", targets)
    out = tmp_path / "out.jsonl"
    async with serve(api_key, credits=60) as emu:  # 30 successes' worth
        env = env_for(emu, api_key)
        args = ["fetch", "targets.txt", "-o", "out.jsonl", "--qps", "0"]
        first = await run_cli(*args, env=env, cwd=tmp_path)
        lines = read_ledger(out)
        emu.credits_remaining = 1000  # the user tops up
        second = await run_cli(*args, "--resume", env=env, cwd=tmp_path)
        successes = emu.successful_targets()

    assert first.code == 3, first.stderr
    assert "402" in first.stderr and "credits" in first.stderr
    assert len(lines) == len(targets)
    assert sum(done_targets(lines).values()) == 30
    statuses = collections.Counter(line["status"] for line in lines)
    assert statuses["not_attempted"] > 0
    errors = {line["error"]["type"] for line in lines if line["status"] == "error"}
    assert errors == {"InsufficientCreditsError"}
    assert second.code == 0, second.stderr
    assert done_targets(read_ledger(out)) == collections.Counter(targets)
    assert set(successes.values()) == {1}
    assert_secret_absent(api_key, first, second, files=[out])


async def test_bad_key_exits_3_and_no_key_exits_2(tmp_path: Path, api_key: str) -> None:
    write_targets(tmp_path / "targets.txt", [f"acct_{n:03d}" for n in range(40)])
    wrong = "sk_live_" + "9" * 24
    async with serve(api_key) as emu:
        bad = await run_cli(
            "fetch",
            "targets.txt",
            "-o",
            "bad.jsonl",
            env=base_env(KEYAPI_BASE_URL=emu.base_url, KEYAPI_API_KEY=wrong),
            cwd=tmp_path,
        )
        sent_with_bad_key = emu.requests_total
        missing = await run_cli(
            "fetch",
            "targets.txt",
            "-o",
            "none.jsonl",
            env=base_env(KEYAPI_BASE_URL=emu.base_url),
            cwd=tmp_path,
        )
        assert emu.requests_total == sent_with_bad_key
    assert bad.code == 3, bad.stderr
    assert "401" in bad.stderr and "KEYAPI_API_KEY" in bad.stderr
    lines = read_ledger(tmp_path / "bad.jsonl")
    assert len(lines) == 40 and not done_targets(lines)
    assert sent_with_bad_key <= 16  # stopped after the first answers, not 40 tries
    assert_secret_absent(wrong, bad, files=[tmp_path / "bad.jsonl"])
    assert missing.code == 2
    assert "KEYAPI_API_KEY" in missing.stderr
    assert not (tmp_path / "none.jsonl").exists()


async def test_resume_twice_costs_nothing_the_second_time(tmp_path: Path, api_key: str) -> None:
    write_targets(tmp_path / "targets.txt", [f"acct_{n:03d}" for n in range(40)])
    out = tmp_path / "out.jsonl"
    async with serve(api_key) as emu:
        env = env_for(emu, api_key)
        args = ["fetch", "targets.txt", "-o", "out.jsonl", "--qps", "0", "--resume"]
        first = await run_cli(*args, env=env, cwd=tmp_path)  # no OUT yet: a fresh run
        before = (emu.requests_total, emu.credits_spent, out.read_bytes())
        second = await run_cli(*args, env=env, cwd=tmp_path)
        after = (emu.requests_total, emu.credits_spent, out.read_bytes())
    assert first.code == 0 and second.code == 0, (first.stderr, second.stderr)
    assert before == after
    assert "40 targets already done" in second.stderr


async def test_quiet_resume_line_counts_every_target(tmp_path: Path, api_key: str) -> None:
    # "N already done of T targets": T is every distinct target, not only those sent now.
    write_targets(tmp_path / "targets.txt", [f"acct_{n:03d}" for n in range(30)])
    async with serve(api_key) as emu:
        env = env_for(emu, api_key)
        args = ["fetch", "targets.txt", "-o", "out.jsonl", "--qps", "0", "-q"]
        first = await run_cli(*args, "--max-credits", "20", env=env, cwd=tmp_path)
        second = await run_cli(*args, "--resume", env=env, cwd=tmp_path)
    assert first.code == 1 and second.code == 0, (first.stderr, second.stderr)
    (line,) = second.stderr.splitlines()
    match = re.fullmatch(
        r"keyapi-stories: done: (\d+) ok, (\d+) empty, 0 failed, 10 already done of (\d+) "
        r"targets; 20 requests, .*",
        line,
    )
    assert match is not None, line
    ok, empty, total = map(int, match.groups())
    assert ok + empty == 20 and total == 30, line


async def test_quiet_names_why_a_run_stopped_early(tmp_path: Path, api_key: str) -> None:
    # -q prints "a stop's reason": an unreachable API and the --max-credits budget
    # end a run early as much as a 402 does.
    import socket

    with socket.socket() as probe:  # bound, then closed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    write_targets(tmp_path / "targets.txt", [f"acct_{n:03d}" for n in range(12)])
    args = ["fetch", "targets.txt", "--qps", "0", "-q", "--retries", "0"]
    down = await run_cli(
        *args, "-o", "down.jsonl", "--base-url", closed, "--concurrency", "1",
        env=base_env(KEYAPI_API_KEY=api_key), cwd=tmp_path,
    )  # fmt: skip
    async with serve(api_key) as emu:
        budget = await run_cli(
            *args, "-o", "budget.jsonl", "--max-credits", "6", env=env_for(emu, api_key),
            cwd=tmp_path,
        )  # fmt: skip
    assert down.code == 1 and budget.code == 1, (down.stderr, budget.stderr)
    (line,) = down.stderr.splitlines()
    assert line.startswith(f"keyapi-stories: stopped (API unreachable at {closed}): "), line
    (line,) = budget.stderr.splitlines()
    assert line.startswith("keyapi-stories: stopped (credit budget reached): "), line
    assert ", 9 not attempted of 12 targets; 3 requests, 6 credits" in line, line


async def test_a_huge_invalid_line_is_shown_shortened(tmp_path: Path) -> None:
    # A binary file given by mistake: each "line" can be kilobytes of noise.
    noise = "x!" * 5000
    (tmp_path / "targets.txt").write_text(f"javan\n{noise}\n", "utf-8")
    done = await run_cli("fetch", "targets.txt", "--dry-run", env=base_env(), cwd=tmp_path)
    assert done.code == 1, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("invalid target on line 2")]
    assert len(line) < 250 and "10000 characters" in line, line


async def test_existing_out_needs_resume_or_overwrite(tmp_path: Path, api_key: str) -> None:
    write_targets(tmp_path / "targets.txt", ["javan"])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    async with serve(api_key) as emu:
        env = env_for(emu, api_key)
        refused = await run_cli("fetch", "targets.txt", "-o", "out.jsonl", env=env, cwd=tmp_path)
        assert out.read_text() == "precious\n"
        foreign = await run_cli(
            "fetch", "targets.txt", "-o", "out.jsonl", "--resume", env=env, cwd=tmp_path
        )
        assert out.read_text() == "precious\n"  # not a ledger: never truncated
        replaced = await run_cli(
            "fetch", "targets.txt", "-o", "out.jsonl", "--overwrite", env=env, cwd=tmp_path
        )
    assert refused.code == 2 and "--resume" in refused.stderr and "--overwrite" in refused.stderr
    assert foreign.code == 2 and "line 1" in foreign.stderr
    assert replaced.code == 0
    assert [line["target"] for line in read_ledger(out)] == ["javan"]


async def test_without_rich_plain_progress_and_summary(tmp_path: Path, api_key: str) -> None:
    write_targets(tmp_path / "targets.txt", [f"acct_{n:03d}" for n in range(30)])
    no_rich = (
        "import sys; sys.modules['rich'] = None; "
        "from keyapi_async.cli import main; sys.exit(main())"
    )
    async with serve(api_key, latency=0.02) as emu:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            no_rich,
            "fetch",
            "targets.txt",
            "-o",
            "out.jsonl",
            "--qps",
            "40",
            "--progress",
            "--progress-interval",
            "0.2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env_for(emu, api_key),
            cwd=tmp_path,
        )
        _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    stderr = err.decode()
    assert proc.returncode == 0, stderr
    assert "req/s" in stderr and "30/30" in stderr  # plain progress lines
    assert "keyapi-stories summary" in stderr and "credits spent" in stderr
    assert "\u2502" not in stderr  # no rich table borders
    assert len(read_ledger(tmp_path / "out.jsonl")) == 30


@posix_signals
async def test_progress_bar_on_a_terminal(tmp_path: Path, api_key: str) -> None:
    fcntl = pytest.importorskip("fcntl")
    termios = pytest.importorskip("termios")
    write_targets(tmp_path / "targets.txt", [f"acct_{n:03d}" for n in range(30)])
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))

    def drain() -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO once the child's side is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        async with serve(api_key, latency=0.02) as emu:
            env = env_for(emu, api_key) | {"TERM": "xterm-256color"}
            proc = await asyncio.create_subprocess_exec(
                *CLI,
                "fetch",
                "targets.txt",
                "-o",
                "out.jsonl",
                "--qps",
                "40",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=slave,
                env=env,
                cwd=tmp_path,
            )
            os.close(slave)
            slave = -1
            reading = asyncio.create_task(asyncio.to_thread(drain))
            code = await asyncio.wait_for(proc.wait(), TIMEOUT)
            screen = (await asyncio.wait_for(reading, 10)).decode("utf-8", "replace")
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert code == 0, screen
    assert "\x1b[" in screen  # drawn with terminal control sequences
    assert "30/30" in screen and "req/s" in screen and "ETA" in screen
    assert "keyapi-stories summary" in screen
    assert api_key not in screen


# -- demo and emulator -------------------------------------------------------------


async def test_demo_works_without_key_or_network(tmp_path: Path) -> None:
    # Poisoned settings prove the demo ignores them.
    env = base_env(KEYAPI_API_KEY="sk_live_must_not_be_used", KEYAPI_BASE_URL="http://192.0.2.1:9")
    done = await run_cli("demo", "--accounts", "60", env=env, cwd=tmp_path)
    assert done.code == 0, done.stderr
    assert "keyapi-stories summary" in done.stderr
    assert "Ledger:" in done.stdout and "keyapi-demo.jsonl" in done.stdout
    lines = read_ledger(tmp_path / "keyapi-demo.jsonl")
    assert len(lines) == 60
    assert {line["status"] for line in lines} <= {"ok", "empty"}
    assert "sk_live_must_not_be_used" not in done.stdout + done.stderr


@posix_signals
async def test_emulator_command_serves_until_interrupted(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "emulator",
        "--qps",
        "5",
        "--credits",
        "10",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=base_env(),
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert first.startswith("KEYAPI_BASE_URL=http://127.0.0.1:")
        base_url = first.strip().split("=", 1)[1]
        async with aiohttp.ClientSession() as session:
            url = f"{base_url}/v1/instagram/fetch_user_stories"
            headers = {"Authorization": f"Bearer {DEFAULT_TEST_KEY}"}
            async with session.get(url, params={"username": "javan"}, headers=headers) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert rest == b""  # stdout: the one line a script captures
    # stderr: the line to paste into another shell, with the emulator's fake key.
    assert f"export KEYAPI_BASE_URL={base_url} KEYAPI_API_KEY={DEFAULT_TEST_KEY}" in err.decode()
    assert "1 requests" in err.decode()


# -- Ctrl-C accounting, -q/-v, 403/404, printed commands, one emulator command line -----

_FRAME = re.compile(
    r"(\d+)/(\d+) \(ok (\d+), empty (\d+), failed (\d+)(?:, not attempted (\d+))?\)"
)


async def timed_lines(proc: asyncio.subprocess.Process) -> list[tuple[float, str, str]]:
    """Every output line with the loop time it arrived at, until both pipes close."""
    loop = asyncio.get_running_loop()
    lines: list[tuple[float, str, str]] = []

    async def pump(stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while raw := await stream.readline():
            lines.append((loop.time(), name, raw.decode().rstrip("\n")))

    await asyncio.wait_for(
        asyncio.gather(pump(proc.stdout, "out"), pump(proc.stderr, "err")), TIMEOUT
    )
    return lines


@posix_signals
async def test_ctrl_c_numbers_agree_with_ledger_and_exit_is_prompt(
    tmp_path: Path, api_key: str
) -> None:
    targets = [f"acct_{n:04d}" for n in range(600)]
    write_targets(tmp_path / "targets.txt", targets)
    out = tmp_path / "out.jsonl"
    loop = asyncio.get_running_loop()
    async with serve(api_key, latency=0.2) as emu:
        # --qps 10 with the derived concurrency: many workers queue at the
        # rate gate, which is what used to keep a stopped run idling.
        proc = await asyncio.create_subprocess_exec(
            *CLI, "fetch", "targets.txt", "-o", "out.jsonl", "--qps", "10",
            "--progress", "--progress-interval", "0.05",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env_for(emu, api_key), cwd=tmp_path,
        )  # fmt: skip
        reading = asyncio.create_task(timed_lines(proc))
        await wait_for_lines(out, 15, proc)
        proc.send_signal(signal.SIGINT)
        signalled = loop.time()
        lines = await reading
        await asyncio.wait_for(proc.wait(), 10)
        exited = loop.time()
        sent = emu.requests_total
        billed = emu.credits_spent

    assert proc.returncode == 130
    stderr = "\n".join(text for _, name, text in lines if name == "err")
    ledger = read_ledger(out)
    assert sorted(x["target"] for x in ledger) == targets  # one line each
    status = collections.Counter(x["status"] for x in ledger)
    attempted = status["ok"] + status["empty"] + status["error"]
    assert 0 < attempted < len(targets) and status["not_attempted"] > 0

    # The summary says what the ledger says.
    rows = summary_rows(stderr)
    assert rows["attempted this run"] == f"{attempted} of {len(targets)}"
    assert rows["ok (stories)"] == str(status["ok"])
    assert rows["empty (no stories)"] == str(status["empty"])
    assert rows["failed"] == str(status["error"])
    assert rows["not attempted"] == str(status["not_attempted"])
    assert rows["not attempted: interrupted"] == str(status["not_attempted"])
    attempts = sum(x["attempts"] for x in ledger)
    assert rows["requests sent"] == f"{attempts} (0 retries)" and attempts == sent
    assert rows["credits spent"] == str(billed)

    # So does the last progress frame, which never jumped to 100%.
    frames = [m for _, _, text in lines if (m := _FRAME.search(text))]
    done, total, ok, empty, failed, skipped = (int(g or 0) for g in frames[-1].groups())
    assert (done, total) == (attempted, len(targets))
    assert (ok, empty, failed, skipped) == (
        status["ok"], status["empty"], status["error"], status["not_attempted"]
    )  # fmt: skip
    assert all(int(m.group(1)) < len(targets) for m in frames)

    # Prompt: answers in flight take 0.2 s; nothing else is waited for.
    last_line = max(at for at, _, _ in lines)
    assert exited - signalled < 2.0, exited - signalled
    assert exited - last_line < 0.8, exited - last_line


async def test_quiet_and_verbose(tmp_path: Path, api_key: str) -> None:
    write_targets(tmp_path / "targets.txt", [f"acct_{n:03d}" for n in range(20)] + ["bad name"])
    wrong = "sk_live_" + "8" * 24
    async with serve(api_key) as emu:
        env = env_for(emu, api_key)
        quiet = await run_cli(
            "fetch", "targets.txt", "-o", "q.jsonl", "--qps", "0", "-q", "--progress",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        verbose = await run_cli(
            "fetch", "targets.txt", "-o", "v.jsonl", "-v",
            env=base_env(KEYAPI_BASE_URL=emu.base_url, KEYAPI_API_KEY=wrong), cwd=tmp_path,
        )  # fmt: skip
        both = await run_cli(
            "fetch", "targets.txt", "-o", "b.jsonl", "-q", "-v", env=env, cwd=tmp_path
        )
    assert quiet.code == 1, quiet.stderr
    # Only errors (the invalid line) and the one-line summary.
    invalid, summary = quiet.stderr.splitlines()
    assert "'bad name'" in invalid
    assert re.fullmatch(
        r"keyapi-stories: done: (\d+) ok, (\d+) empty, 0 failed, 1 invalid lines of 20 targets; "
        r"20 requests, (\d+) credits, [\d.]+s; ledger q\.jsonl",
        summary,
    ), summary
    assert quiet.stdout == ""
    # -v: the library's own log lines, never the key.
    assert verbose.code == 3, verbose.stderr
    assert "INFO keyapi_async: batch stopped" in verbose.stderr
    assert_secret_absent(wrong, verbose, files=[tmp_path / "v.jsonl"])
    assert both.code == 2 and "not allowed with" in both.stderr


async def test_403_stops_the_run_and_404_is_per_target(tmp_path: Path, api_key: str) -> None:
    names = [f"acct_{n:03d}" for n in range(30)]
    write_targets(tmp_path / "targets.txt", names)
    forbidden = "sk_test_" + "f" * 24
    missing = {"acct_003", "acct_017"}
    config = {"missing_accounts": frozenset(f"username:{name}" for name in missing)}
    async with serve(api_key, forbidden_keys=frozenset({forbidden}), **config) as emu:
        found = await run_cli(
            "fetch", "targets.txt", "-o", "found.jsonl", "--qps", "0",
            env=env_for(emu, api_key), cwd=tmp_path,
        )  # fmt: skip
        denied = await run_cli(
            "fetch", "targets.txt", "-o", "denied.jsonl", "--qps", "0",
            env=env_for(emu, forbidden), cwd=tmp_path,
        )  # fmt: skip
    # 404: an error for that target only; the rest are fetched.
    assert found.code == 1, found.stderr
    lines = read_ledger(tmp_path / "found.jsonl")
    errors = {x["target"]: x["error"] for x in lines if x["status"] == "error"}
    assert set(errors) == missing
    assert {(e["type"], e["status"]) for e in errors.values()} == {("NotFoundError", 404)}
    assert summary_rows(found.stderr)["error: NotFoundError"] == "2"
    assert sum(done_targets(lines).values()) == len(names) - len(missing)
    # 403: the key may not call the endpoint; the run stops like on a 401.
    assert denied.code == 3, denied.stderr
    lines = read_ledger(tmp_path / "denied.jsonl")
    assert len(lines) == len(names) and not done_targets(lines)
    types = collections.Counter(x["error"]["type"] for x in lines)
    assert set(types) <= {"PermissionDeniedError", "NotAttemptedError"}
    assert types["PermissionDeniedError"] >= 1
    assert "403" in denied.stderr
    assert_secret_absent(forbidden, denied, files=[tmp_path / "denied.jsonl"])


async def test_demo_hint_runs_as_pasted_when_not_on_path(tmp_path: Path, api_key: str) -> None:
    # What the README's first command leaves: the script in .venv/bin, which
    # is not on PATH.
    script = shutil.which("keyapi-stories", path=os.path.dirname(sys.executable))
    assert script is not None
    env = base_env(PATH=os.defpath)
    proc = await asyncio.create_subprocess_exec(
        script, "demo", "--accounts", "5", "--no-progress",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err.decode()
    (hint,) = [x for x in out.decode().splitlines() if x.startswith("Next: ")]
    command = hint.partition("  then  ")[2]
    assert shlex.split(command)[0] == script
    # Pasted into a shell as printed, it works.
    write_targets(tmp_path / "targets.txt", ["javan", "@natgeo"])
    async with serve(api_key) as emu:
        shell = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env | {"KEYAPI_BASE_URL": emu.base_url, "KEYAPI_API_KEY": api_key}, cwd=tmp_path,
        )  # fmt: skip
        _, err = await asyncio.wait_for(shell.communicate(), TIMEOUT)
    assert shell.returncode == 0, err.decode()
    assert len(read_ledger(tmp_path / "stories.jsonl")) == 2


async def test_demo_quiet_prints_one_line(tmp_path: Path) -> None:
    done = await run_cli("demo", "--accounts", "8", "-q", env=base_env(), cwd=tmp_path)
    assert done.code == 0, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("keyapi-stories: done: ") and "of 8 targets" in line


async def test_demo_refuses_an_existing_output_naming_its_own_option(tmp_path: Path) -> None:
    # demo has --overwrite but no --resume: the refusal must not advise one it lacks.
    (tmp_path / "mine.jsonl").write_text("keep me\n")
    done = await run_cli(
        "demo", "--accounts", "3", "-o", "mine.jsonl", env=base_env(), cwd=tmp_path
    )
    assert done.code == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert "'mine.jsonl' already exists" in line and "--overwrite" in line, line
    assert "--resume" not in line
    assert (tmp_path / "mine.jsonl").read_text() == "keep me\n"


async def test_demo_downloads_media_and_reports_files_and_bytes(tmp_path: Path) -> None:
    dest = tmp_path / "media"
    done = await run_cli(
        "demo", "--accounts", "10", "--download", str(dest), "--no-progress",
        env=base_env(), cwd=tmp_path,
    )  # fmt: skip
    assert done.code == 0, done.stderr
    rows = summary_rows(done.stderr)
    saved = int(rows["media files saved"])
    assert saved > 0 and rows["failed downloads"] == "0" and rows["bytes downloaded"] != "0 B (0)"
    files = [p for p in dest.rglob("*") if p.is_file() and not p.name.startswith("archive.")]
    assert not [p for p in files if p.name.endswith(".part")]
    # The stories run's files; the highlights pass saves its own below */highlights/.
    highlight_files = [p for p in files if "highlights" in p.relative_to(dest).parts[1:2]]
    assert len(files) - len(highlight_files) == saved
    assert (dest / "archive.sqlite3").is_file()
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("highlights: ")]
    items = re.search(r"media: (\d+) saved", line)
    covers = re.search(r"covers: (\d+) saved", line)
    assert items is not None and covers is not None and highlight_files
    assert int(items.group(1)) + int(covers.group(1)) == len(highlight_files)
    # Without --download the files go to a temporary directory, removed at the end.
    quiet = await run_cli("demo", "--accounts", "4", "-q", env=base_env(), cwd=tmp_path)
    assert quiet.code == 0 and "files " in quiet.stderr


EMULATOR_SPELLINGS = {
    "keyapi-stories emulator": (*CLI, "emulator"),
    "python -m keyapi_async.testing": (sys.executable, "-m", "keyapi_async.testing"),
}


@posix_signals
async def test_both_emulator_commands_take_the_same_flags_and_print_the_same(
    tmp_path: Path,
) -> None:
    flags = [
        "--port", "0", "--qps", "50", "--credits", "100", "--seed", "3", "--latency", "0",
        "--fault-rate", "server_error=0.5", "--fault-rate", "rate_limit=0,reset=0",
        "--faults", "slow=0", "--allow-non-loopback", "--empty-ratio", "0.1",
        "--slow-seconds", "1", "--max-log", "10", "--no-retry-after",
    ]  # fmt: skip
    seen: dict[str, tuple[str, str]] = {}
    for name, spelling in EMULATOR_SPELLINGS.items():
        proc = await asyncio.create_subprocess_exec(
            *spelling, *flags,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=base_env(), cwd=tmp_path,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            first = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
            assert first.startswith("KEYAPI_BASE_URL=http://127.0.0.1:"), name
            base_url = first.strip().partition("=")[2]
            proc.send_signal(signal.SIGINT)
            rest, err = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()
        stdout = (first + rest.decode()).replace(base_url, "URL")
        seen[name] = (stdout, err.decode().replace(base_url, "URL").replace(name, "PROG"))
    cli, module = seen.values()
    assert cli == module
    stdout, stderr = cli
    assert stdout == "KEYAPI_BASE_URL=URL\n"
    assert "faults: server_error=0.5, rate_limit=0, reset=0, slow=0" in stderr
    assert "--faults is deprecated; use --fault-rate" in stderr
    assert f"export KEYAPI_BASE_URL=URL KEYAPI_API_KEY={DEFAULT_TEST_KEY}" in stderr


@pytest.mark.parametrize("name", list(EMULATOR_SPELLINGS))
async def test_emulator_refuses_non_loopback_and_names_the_flag(tmp_path: Path, name: str) -> None:
    spelling = EMULATOR_SPELLINGS[name]
    # Refused before anything binds, so no address but loopback is touched.
    proc = await asyncio.create_subprocess_exec(
        *spelling, "--host", "192.0.2.1", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=base_env(), cwd=tmp_path,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 2
    assert out == b""
    assert "--allow-non-loopback" in err.decode() and "192.0.2.1" in err.decode()
    helped = await asyncio.create_subprocess_exec(
        *spelling, "--help", stdout=asyncio.subprocess.PIPE, env=base_env(), cwd=tmp_path
    )
    text, _ = await asyncio.wait_for(helped.communicate(), 15)
    assert "--allow-non-loopback" in text.decode() and "--fault-rate" in text.decode()
