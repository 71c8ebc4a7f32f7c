"""Shared helpers: fake keys, server subprocesses, CPU clocks, medians and tables."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import secrets
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEED_PATH = ROOT / "tests" / "data" / "seed_example.json"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
ENDPOINT = "/v1/instagram/fetch_user_stories"

_URL_PREFIX = "KEYAPI_BASE_URL="
_STARTUP_TIMEOUT = 20.0
_SHUTDOWN_TIMEOUT = 5.0


def fake_key() -> str:
    """An obviously fake API key, made at run time (never a committed literal)."""
    return "sk_test_" + secrets.token_hex(8)


def seed_bytes() -> bytes:
    """The API's documented example response, byte for byte."""
    return SEED_PATH.read_bytes()


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (servers run elsewhere)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def say(text: str = "") -> None:
    """Print a line right away (figures stream to stdout as they are produced)."""
    print(text, flush=True)


@contextlib.contextmanager
def server_process(args: Sequence[str], *, name: str) -> Iterator[str]:
    """Run ``python <args>`` from the repo root; yield the base URL it prints.

    The child must print one ``KEYAPI_BASE_URL=http://127.0.0.1:PORT`` line on
    stdout once it listens. It is stopped with SIGTERM (then SIGKILL) on exit.
    """
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = _read_url(proc, name)
        yield url
    finally:
        _stop(proc)


def _read_url(proc: subprocess.Popen[bytes], name: str) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    pending = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            pending += chunk
            for line in pending.decode(errors="replace").splitlines():
                if line.startswith(_URL_PREFIX):
                    url = line[len(_URL_PREFIX) :].strip()
                    if not url.startswith("http://127.0.0.1:"):
                        raise RuntimeError(f"{name} is not on loopback: {url}")
                    return url
        elif proc.poll() is not None:
            break
    err = b""
    if proc.poll() is not None and proc.stderr is not None:
        err = proc.stderr.read()
    raise RuntimeError(f"{name} did not report its URL: {err.decode(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_SHUTDOWN_TIMEOUT)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def emulator_args(key: str, *extra: str) -> list[str]:
    """Command-line arguments that start the package's emulator on a free loopback port."""
    return ["-m", "keyapi_async.testing", "--port", "0", "--api-key", key, *extra]


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded next to the figures."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str] = {}
    for dist in (
        "keyapi-async",
        "aiohttp",
        "msgspec",
        "aiolimiter",
        "anyio",
        "orjson",
        "pydantic",
        "httpx",
    ):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "missing"
    return {
        "git": _git_state(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "versions": versions,
    }


def _git_state() -> dict[str, object] | None:
    """The commit measured, and whether keyapi_async/ differed from it (read-only git calls)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "keyapi_async"], cwd=ROOT, check=False
        ).returncode
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": head, "keyapi_async_uncommitted_changes": dirty != 0}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned)."""
    aligns = ["---:" if rows and _numeric(rows[0][i]) else "---" for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(aligns) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _numeric(value: object) -> bool:
    if isinstance(value, int | float):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
