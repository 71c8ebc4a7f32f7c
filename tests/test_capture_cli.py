"""End-to-end tests of ``fetch --download/--archive``, ``export`` and ``import-ledger`` (issue 9).

As in ``tests/test_cli.py``, the real command runs in a subprocess against an
emulator served by this test process (media CDN included), over loopback, so
the emulator's and the CDN's logs show exactly what the CLI sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import importlib
import io
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from keyapi_async.archive import StoryArchive, StoryRecord
from keyapi_async.export import EXPORT_COLUMNS
from keyapi_async.testing import Emulator, EmulatorConfig, MediaConfig, MediaFault, run_emulator
from keyapi_async.testing._media import MediaCDN, media_cdn
from tests._proxy import ConnectProxy
from tests.test_cli import (
    CLI,
    Done,
    base_env,
    read_ledger,
    run_cli,
    summary_rows,
    write_targets,
)

ENDPOINT = "/v1/instagram/fetch_user_stories"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and paths")


def media_emulator_config(api_key: str, **media: Any) -> EmulatorConfig:
    return EmulatorConfig(
        api_keys=frozenset({api_key}),
        empty_ratio=0.0,
        media=MediaConfig(enabled=True, **media),
    )


@contextlib.asynccontextmanager
async def media_emulator(
    api_key: str, *, empty_ratio: float = 0.0, **media: Any
) -> AsyncIterator[tuple[Emulator, MediaCDN]]:
    config = EmulatorConfig(
        api_keys=frozenset({api_key}),
        empty_ratio=empty_ratio,
        media=MediaConfig(enabled=True, **media),
    )
    async with run_emulator(config) as emu:
        yield emu, media_cdn(emu)


def cdn_host(emu: Emulator) -> str:
    return emu.base_url.removeprefix("http://")


def env_with(emu: Emulator, api_key: str, **extra: str) -> dict[str, str]:
    return base_env(KEYAPI_BASE_URL=emu.base_url, KEYAPI_API_KEY=api_key, **extra)


def archived(db: Path) -> list[StoryRecord]:
    with StoryArchive.connect(db, readonly=True) as archive:
        return archive.stories()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def media_files(root: Path) -> list[Path]:
    """Files below a download directory other than the archive's own."""
    return [p for p in files_under(root) if not p.name.startswith("archive.sqlite3")]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def media_requests(cdn: MediaCDN) -> int:
    """Media answers that carried bytes (200 and 206, cut-off ones included)."""
    return sum(1 for r in cdn.log if r.status in (200, 206, 0))


def assert_no_key_sent_to_cdn(cdn: MediaCDN, api_key: str) -> None:
    for record in cdn.log:
        assert not record.has_credentials, record
        assert all(api_key not in value for _, value in record.headers)
        assert api_key not in record.path and api_key not in json.dumps(dict(record.query))


def assert_saved_files_match(root: Path, stories: list[StoryRecord], cdn: MediaCDN) -> None:
    """Every saved story's file has the CDN's bytes; nothing else and no .part is below root."""
    expected: dict[Path, str] = {}
    for story in stories:
        assert story.media is not None, story.story_id
        if story.media.status == "saved":
            assert story.media.path is not None and story.media_url is not None
            path = root / story.media.path
            expected[path] = cdn.expected_sha256(story.media_url)
            assert story.media.sha256 == expected[path]
            assert story.media.bytes == path.stat().st_size
    found = media_files(root)
    assert not [p for p in found if p.name.endswith(".part")]
    assert set(found) == set(expected)
    for path, digest in expected.items():
        assert sha(path) == digest, path


async def fetch(tmp_path: Path, env: dict[str, str], *args: str, limit: float = 45.0) -> Done:
    return await run_cli("fetch", *args, env=env, cwd=tmp_path, limit=limit)


# -- the happy path, a second run, export ---------------------------------------------------


@pytest.mark.slow
async def test_download_100_accounts_then_a_second_run_downloads_nothing(
    tmp_path: Path, api_key: str
) -> None:
    names = [f"acct_{n:03d}" for n in range(100)]
    targets = write_targets(tmp_path / "targets.txt", names)
    dest = tmp_path / "media"
    db = dest / "archive.sqlite3"
    async with media_emulator(api_key) as (emu, cdn):
        env = env_with(emu, api_key, KEYAPI_MEDIA_HOSTS=cdn_host(emu))
        first = await fetch(
            tmp_path, env, str(targets), "-o", "run1.jsonl", "--download", str(dest), "--qps", "0"
        )
        assert first.code == 0, first.stderr
        stories = archived(db)
        ledger = read_ledger(tmp_path / "run1.jsonl")
        ids = {item["id"] for line in ledger for item in (line["stories"] or {}).get("items", [])}
        assert len(ids) == len(stories) >= 100
        assert {s.media_type for s in stories} == {"image", "video"}
        assert all(s.media_status == "saved" for s in stories)
        assert_saved_files_match(dest, stories, cdn)
        first_bytes = sum(s.media.bytes or 0 for s in stories if s.media is not None)
        rows = summary_rows(first.stderr)
        assert rows["media files saved"] == str(len(stories))
        assert rows["bytes downloaded"].endswith(f"({first_bytes})")
        assert rows["failed downloads"] == "0" and rows["expired links"] == "0"

        served = media_requests(cdn)
        # The second run: the env var is gone, the option lists the host instead.
        env2 = env_with(emu, api_key)
        second = await fetch(
            tmp_path,
            env2,
            str(targets),
            "-o",
            "run2.jsonl",
            "--download",
            str(dest),
            "--media-hosts",
            cdn_host(emu),
            "--qps",
            "0",
            "-q",
        )
        assert second.code == 0, second.stderr
        assert media_requests(cdn) == served  # 0 bytes downloaded
        assert "files 0 (0 B)" in second.stderr and f"{len(stories)} already saved" in second.stderr
        assert len(archived(db)) == len(stories)  # 0 rows added
        assert_no_key_sent_to_cdn(cdn, api_key)

    with StoryArchive.connect(db, readonly=True) as archive:
        runs = archive.runs()
    assert [r.kind for r in runs] == ["fetch", "fetch"]
    assert runs[0].counts["media_saved"] == len(stories)
    assert runs[1].counts["media_saved"] == 0 and runs[1].counts["new_stories"] == 0
    for path in (tmp_path / "run1.jsonl", tmp_path / "run2.jsonl", db):
        assert api_key.encode() not in path.read_bytes()
    for done in (first, second):
        assert api_key not in done.stdout + done.stderr

    # export: CSV to stdout (the default), with the exact columns
    exported = await run_cli("export", str(db), env=base_env(), cwd=tmp_path)
    assert exported.code == 0, exported.stderr
    table = list(csv.reader(io.StringIO(exported.stdout, newline="")))
    assert tuple(table[0]) == EXPORT_COLUMNS
    assert len(table) - 1 == len(ids)
    by_id = {row[0]: dict(zip(table[0], row, strict=True)) for row in table[1:]}
    assert {r["media_status"] for r in by_id.values()} == {"saved"}
    assert all(r["taken_at"].endswith("Z") and (dest / r["file"]).is_file() for r in by_id.values())
    out = tmp_path / "stories.csv"
    done = await run_cli("export", str(db), "-o", str(out), env=base_env(), cwd=tmp_path)
    assert done.code == 0 and out.read_text("utf-8").replace(
        "\r\n", "\n"
    ) == exported.stdout.replace("\r\n", "\n")
    with contextlib.suppress(ImportError):
        pandas = importlib.import_module("pandas")
        frame = pandas.read_csv(out, dtype={"story_id": str, "user_id": str})
        assert list(frame.columns) == list(EXPORT_COLUMNS) and len(frame) == len(ids)
    jsonl = await run_cli("export", str(db), "-f", "jsonl", env=base_env(), cwd=tmp_path)
    assert jsonl.code == 0 and len(jsonl.stdout.splitlines()) == len(ids)
    with contextlib.suppress(ImportError):
        pq = importlib.import_module("pyarrow.parquet")
        parquet = tmp_path / "stories.parquet"
        done = await run_cli(
            "export", str(db), "-f", "parquet", "-o", str(parquet), env=base_env(), cwd=tmp_path
        )
        assert done.code == 0, done.stderr
        read = pq.read_table(parquet)
        assert read.column_names == list(EXPORT_COLUMNS) and read.num_rows == len(ids)
        assert set(read.column("story_id").to_pylist()) == ids


# -- faults, kill -9, a full disk ---------------------------------------------------------


async def test_media_faults_end_saved_expired_or_failed_never_partial(
    tmp_path: Path, api_key: str
) -> None:
    rates = {MediaFault.TRUNCATED: 0.10, MediaFault.RESET: 0.05, MediaFault.EXPIRED: 0.02}
    targets = write_targets(tmp_path / "t.txt", [f"f{n:02d}" for n in range(40)])
    dest = tmp_path / "dl"
    async with media_emulator(api_key, fault_rates=rates) as (emu, cdn):
        env = env_with(emu, api_key)
        done = await fetch(
            tmp_path, env, str(targets), "-o", "out.jsonl", "--download", str(dest),
            "--media-hosts", cdn_host(emu), "--qps", "0",
        )  # fmt: skip
        stories = archived(dest / "archive.sqlite3")
        assert cdn.count(fault=MediaFault.TRUNCATED) and cdn.count(fault=MediaFault.RESET)
        statuses = {s.media_status for s in stories}
        assert statuses <= {"saved", "expired", "failed"}
        for story in stories:
            assert story.media is not None
            if story.media.status != "saved":
                assert story.media.reason, story
        # Files at final names are complete; a .part may only belong to a failed item.
        saved = [s for s in stories if s.media_status == "saved"]
        for story in saved:
            assert story.media is not None and story.media.path and story.media_url
            assert sha(dest / story.media.path) == cdn.expected_sha256(story.media_url)
        finals = [p for p in media_files(dest) if not p.name.endswith(".part")]
        assert len(finals) == len(saved)
        expected_code = 0 if statuses == {"saved"} else 1
        assert done.code == expected_code, done.stderr
        assert_no_key_sent_to_cdn(cdn, api_key)


async def wait_until(ready: Callable[[], bool], proc: asyncio.subprocess.Process) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while not ready():
        assert proc.returncode is None, "the CLI ended too early"
        assert asyncio.get_running_loop().time() < deadline, "condition not met in 30 s"
        await asyncio.sleep(0.01)


@posix_only
@pytest.mark.slow
async def test_kill_9_mid_download_then_rerun_completes_every_file(
    tmp_path: Path, api_key: str
) -> None:
    targets = write_targets(tmp_path / "t.txt", [f"k{n:02d}" for n in range(30)])
    dest = tmp_path / "dl"
    # Every body trickles, so the kill lands while files are half written.
    slow: dict[str, Any] = {
        "fault_rates": {MediaFault.SLOW: 1.0},
        "slow_chunk": 2048,
        "slow_delay": 0.01,
    }
    async with media_emulator(api_key, **slow) as (emu, cdn):
        env = env_with(emu, api_key)
        args = ["fetch", str(targets), "-o", "out.jsonl", "--download", str(dest)]
        args += ["--media-hosts", cdn_host(emu), "--qps", "0", "--media-concurrency", "4"]
        proc = await asyncio.create_subprocess_exec(
            *CLI, *args, env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_until(
                lambda: (
                    len([p for p in media_files(dest) if not p.name.endswith(".part")]) >= 3
                    and any(p.name.endswith(".part") for p in media_files(dest))
                ),
                proc,
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        assert any(p.name.endswith(".part") for p in media_files(dest))
        pending = [s for s in archived(dest / "archive.sqlite3") if s.media_status == "pending"]
        assert pending
        emu.config = media_emulator_config(api_key)  # fast again
        done = await run_cli(*args, "--resume", env=env, cwd=tmp_path)
        assert done.code == 0, done.stderr
        stories = archived(dest / "archive.sqlite3")
        assert all(s.media_status == "saved" for s in stories), (
            [(s.story_id, s.media) for s in stories if s.media_status != "saved"],
            done.stderr,
        )
        assert_saved_files_match(dest, stories, cdn)
        # Some files were resumed with Range rather than started over.
        assert any(r.range_start for r in cdn.log)


SITE_HOOK = """
import errno, os
import keyapi_async.media.files as media

_real = media.write_all
_written = [0]

def _filling(handle, chunk):
    # Simulates a disk that fills up after the budget, until the flag file goes.
    flag = os.environ["KEYAPI_TEST_DISK_FLAG"]
    budget = int(os.environ["KEYAPI_TEST_DISK_BYTES"])
    if os.path.exists(flag) and _written[0] + len(chunk) > budget:
        raise OSError(errno.ENOSPC, "No space left on device")
    _written[0] += len(chunk)
    _real(handle, chunk)

media.write_all = _filling
"""


async def test_disk_full_stops_sending_keeps_files_complete_and_next_run_completes(
    tmp_path: Path, api_key: str
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITE_HOOK, "utf-8")
    flag = tmp_path / "disk-is-full"
    flag.touch()
    names = [f"d{n:02d}" for n in range(60)]
    targets = write_targets(tmp_path / "t.txt", names)
    dest = tmp_path / "dl"
    async with media_emulator(api_key) as (emu, cdn):
        env = env_with(
            emu,
            api_key,
            PYTHONPATH=os.pathsep.join([str(hook), str(Path(__file__).parent.parent)]),
            KEYAPI_TEST_DISK_FLAG=str(flag),
            KEYAPI_TEST_DISK_BYTES="400000",
        )
        args = ["fetch", str(targets), "-o", "out.jsonl", "--download", str(dest)]
        args += ["--media-hosts", cdn_host(emu), "--qps", "20"]
        first = await run_cli(*args, env=env, cwd=tmp_path)
        assert first.code == 1, first.stderr
        assert "disk full" in first.stderr
        assert emu.requests_total < len(names)  # stopped sending
        ledger = read_ledger(tmp_path / "out.jsonl")
        assert len(ledger) == len(names)
        assert any(line["status"] == "not_attempted" for line in ledger)
        stories = archived(dest / "archive.sqlite3")
        assert any(s.media_status == "pending" for s in stories)
        for story in stories:  # nothing partial under a final name
            if story.media_status == "saved":
                assert story.media is not None and story.media.path and story.media_url
                assert sha(dest / story.media.path) == cdn.expected_sha256(story.media_url)
        saved = {s.story_id for s in stories if s.media_status == "saved"}
        finals = [p for p in media_files(dest) if not p.name.endswith(".part")]
        assert len(finals) == len(saved)

        flag.unlink()  # space freed
        second = await run_cli(*args, "--resume", env=env, cwd=tmp_path)
        assert second.code == 0, second.stderr
        stories = archived(dest / "archive.sqlite3")
        assert all(s.media_status == "saved" for s in stories)
        assert_saved_files_match(dest, stories, cdn)
        assert {
            x["target"] for x in read_ledger(tmp_path / "out.jsonl") if x["status"] == "ok"
        } == set(names)


# -- a bad environment: exit 2 before any request -----------------------------------------


async def test_unusable_directory_or_archive_exits_2_before_any_request(
    tmp_path: Path, api_key: str
) -> None:
    targets = write_targets(tmp_path / "t.txt", ["alpha", "beta"])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory", "utf-8")
    not_db = tmp_path / "not.sqlite3"
    not_db.write_bytes(b"this is not a SQLite database, just text" * 100)
    locked = tmp_path / "locked.sqlite3"
    async with media_emulator(api_key) as (emu, _):
        env = env_with(emu, api_key)
        cases = [
            ["--download", str(blocker / "sub")],  # DIR cannot be created
            ["--archive", str(not_db)],  # not an archive
            ["--download", str(tmp_path / "ok"), "--name-template", "{nope}.{ext}"],
            ["--archive", str(tmp_path / "no-such-dir" / "a.sqlite3")],
        ]
        if hasattr(os, "geteuid") and os.geteuid() != 0:  # root writes anywhere
            readonly = tmp_path / "ro"
            readonly.mkdir(mode=0o500)
            cases.append(["--download", str(readonly)])
        for number, extra in enumerate(cases):
            ledger = tmp_path / f"out{number}.jsonl"
            done = await fetch(tmp_path, env, str(targets), "-o", str(ledger), *extra)
            assert done.code == 2, (extra, done.stderr)
            assert "error:" in done.stderr and "Traceback" not in done.stderr
            assert not ledger.exists(), extra
        # Locked by another writer: waits the archive's busy timeout, then exit 2.
        StoryArchive.connect(locked).close()
        holder = sqlite3.connect(locked)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            done = await fetch(
                tmp_path,
                env,
                str(targets),
                "-o",
                str(tmp_path / "l.jsonl"),
                "--archive",
                str(locked),
            )
        finally:
            holder.rollback()
            holder.close()
        assert done.code == 2 and "locked" in done.stderr, done.stderr
        assert emu.requests_total == 0


# -- hostile answers -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def trap_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback server that must never be contacted (it is off the allowlist)."""
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(str(request.rel_url))
        return web.Response(body=b"\xff\xd8 stolen")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", hits
    finally:
        await runner.cleanup()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def hostile_emulator(api_key: str, trap: str) -> AsyncIterator[tuple[Emulator, MediaCDN]]:
    """The emulator, except that ``mallory``'s reel is rewritten into hostile items."""
    config = EmulatorConfig(
        api_keys=frozenset({api_key}),
        empty_ratio=0.0,
        media=MediaConfig(
            enabled=True,
            offsite_base=trap,
            fault_script={"redirected": [MediaFault.REDIRECT_OFFSITE]},
        ),
    )
    emu = Emulator(config)
    cdn = media_cdn(emu)

    def item(story_id: str, url: str) -> dict[str, Any]:
        return {
            "id": story_id,
            "media_type": 1,
            "taken_at": 1_773_000_000,
            "user": {"username": "../../owner", "id": "1"},
            "image_versions": {"items": [{"url": url, "width": 1080, "height": 1920}]},
        }

    @web.middleware
    async def hostile(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if (
            request.path == ENDPOINT
            and request.query.get("username") == "mallory"
            and isinstance(response, web.Response)
            and response.status == 200
            and isinstance(response.body, bytes)
        ):
            envelope = json.loads(response.body)
            items = [
                item("../../evil", cdn.url_for("../../evil", "jpg", 1080, 1920)),
                item("foreign", f"{trap}/foreign.jpg"),
                item("elsewhere", "https://media.attacker.invalid/x.jpg"),
                item("plainhttp", "http://scontent.cdninstagram.com/v/x.jpg"),
                item("redirected", cdn.url_for("redirected", "jpg", 1080, 1920)),
            ]
            envelope["data"]["data"] = {"count": len(items), "items": items}
            response.body = json.dumps(envelope).encode()
        return response

    app = emu.make_app()
    # Outermost, so it rewrites the answer after the CDN signed its URLs.
    app.middlewares.insert(0, hostile)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        emu.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield emu, cdn
    finally:
        await runner.cleanup()


async def test_hostile_answers_stay_inside_dir_and_on_the_allowlist(
    tmp_path: Path, api_key: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "dl"
    targets = write_targets(work / "t.txt", ["mallory"])
    async with trap_server() as (trap, hits), hostile_emulator(api_key, trap) as (emu, cdn):
        env = env_with(emu, api_key)
        done = await fetch(
            work, env, str(targets), "-o", "out.jsonl", "--download", str(dest),
            "--media-hosts", cdn_host(emu), "--qps", "0",
        )  # fmt: skip
        assert done.code == 1, done.stderr  # some media failed
        assert hits == []  # nothing sent off the allowlist
        assert_no_key_sent_to_cdn(cdn, api_key)
        stories = {s.story_id: s for s in archived(dest / "archive.sqlite3")}
    assert set(stories) == {"../../evil", "foreign", "elsewhere", "plainhttp", "redirected"}
    evil = stories["../../evil"]
    assert evil.media is not None and evil.media.status == "saved" and evil.media.path
    saved = (dest / evil.media.path).resolve()
    assert saved.is_relative_to(dest.resolve()) and saved.is_file()
    for name in ("foreign", "elsewhere", "plainhttp", "redirected"):
        media = stories[name].media
        assert media is not None and media.status == "failed" and media.reason, name
    assert "redirect" in (stories["redirected"].media.reason or "")  # type: ignore[union-attr]
    # Nothing was written anywhere but DIR, the ledger and the input.
    outside = [p for p in files_under(tmp_path) if not p.is_relative_to(dest)]
    assert sorted(p.name for p in outside) == ["out.jsonl", "t.txt"]


# -- --refresh-expired ---------------------------------------------------------------------


async def test_refresh_expired_refetches_the_account_once(tmp_path: Path, api_key: str) -> None:
    async with media_emulator(api_key) as (emu, cdn):
        first_ids = {}
        for name in ("stale_a", "stale_b"):
            reel = emu.reel_for(f"username:{name}")
            assert reel is not None
            first_ids[name] = str(reel["items"][0]["id"])  # type: ignore[index]
        emu.config = media_emulator_config(
            api_key, fault_script={sid: [MediaFault.EXPIRED] for sid in first_ids.values()}
        )
        env = env_with(emu, api_key)
        common = ["--media-hosts", cdn_host(emu), "--qps", "0"]
        # Without the option: the item stays expired, with the reason, exit 1.
        plain = write_targets(tmp_path / "a.txt", ["stale_a"])
        done = await fetch(tmp_path, env, str(plain), "-o", "a.jsonl", "--download", "dl", *common)
        assert done.code == 1, done.stderr
        story = {s.story_id: s for s in archived(tmp_path / "dl" / "archive.sqlite3")}[
            first_ids["stale_a"]
        ]
        assert story.media is not None and story.media.status == "expired"
        assert "403" in (story.media.reason or "")
        assert len(emu.records_for("username:stale_a")) == 1
        # With it: one more fetch of that account (2 credits), then the file is saved.
        refresh = write_targets(tmp_path / "b.txt", ["stale_b"])
        done = await fetch(
            tmp_path, env, str(refresh), "-o", "b.jsonl", "--download", "dl2",
            "--refresh-expired", "--max-credits", "4", *common,
        )  # fmt: skip
        assert done.code == 0, done.stderr
        assert len(emu.records_for("username:stale_b")) == 2
        stories = archived(tmp_path / "dl2" / "archive.sqlite3")
        assert all(s.media_status == "saved" for s in stories)
        assert_saved_files_match(tmp_path / "dl2", stories, cdn)
        assert summary_rows(done.stderr)["accounts re-fetched"] == "1"
        assert summary_rows(done.stderr)["credits spent"] == "4"


# -- --archive alone, import-ledger, pass-through options ------------------------------------


async def test_archive_without_download_and_import_ledger(tmp_path: Path, api_key: str) -> None:
    targets = write_targets(tmp_path / "t.txt", [f"i{n}" for n in range(12)])
    async with media_emulator(api_key, empty_ratio=0.3) as (emu, cdn):
        env = env_with(emu, api_key)
        done = await fetch(tmp_path, env, str(targets), "-o", "a.jsonl", "--archive", "a.sqlite3")
        assert done.code == 0, done.stderr
        assert "new to the archive" in done.stderr and "media files saved" not in done.stderr
        plain = await fetch(tmp_path, env, str(targets), "-o", "plain.jsonl")
        assert plain.code == 0, plain.stderr
        assert cdn.log == []  # no --download: no media request at all
    stories = archived(tmp_path / "a.sqlite3")
    assert stories and {s.media_status for s in stories} == {"not_requested"}

    imported = await run_cli(
        "import-ledger", "plain.jsonl", "--archive", "b.sqlite3", env=base_env(), cwd=tmp_path
    )
    assert imported.code == 0, imported.stderr
    assert f"{len(stories)} new" in imported.stderr
    again = await run_cli(
        "import-ledger", "plain.jsonl", "--archive", "b.sqlite3", env=base_env(), cwd=tmp_path
    )
    assert again.code == 0 and " 0 new" in again.stderr
    assert {s.story_id for s in archived(tmp_path / "b.sqlite3")} == {s.story_id for s in stories}
    missing = await run_cli("export", "nope.sqlite3", env=base_env(), cwd=tmp_path)
    assert missing.code == 2 and "no archive" in missing.stderr


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("fetch", ["--name-template", "{username}/{story_id}"]),
        ("fetch", ["--highlight-template", "{username}/{story_id}"]),
        ("fetch", ["--media-hosts", "127.0.0.1"]),
        ("fetch", ["--max-media-bytes", "1000"]),
        ("fetch", ["--media-concurrency", "3"]),
        ("fetch", ["--refresh-expired"]),
        ("watch", ["--media-concurrency", "3"]),
    ],
)
async def test_a_media_option_without_download_is_refused_before_sending(
    tmp_path: Path, api_key: str, command: str, option: list[str]
) -> None:
    targets = write_targets(tmp_path / "t.txt", ["m1", "m2"])
    extra = ["-o", "out.jsonl"] if command == "fetch" else ["--every", "20s"]
    async with media_emulator(api_key) as (emu, cdn):
        done = await run_cli(
            command, str(targets), *extra, "--archive", "a.sqlite3", *option,
            env=env_with(emu, api_key), cwd=tmp_path,
        )  # fmt: skip
        assert emu.requests_total == 0 and cdn.log == []
    assert done.code == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == f"keyapi-stories: error: {option[0]} needs --download DIR " + (
        "(nothing is downloaded without it)"
    )
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "a.sqlite3").exists()


async def test_a_bad_media_hosts_option_is_named(tmp_path: Path, api_key: str) -> None:
    targets = write_targets(tmp_path / "t.txt", ["m1"])
    async with media_emulator(api_key) as (emu, _):
        done = await fetch(
            tmp_path, env_with(emu, api_key), str(targets), "-o", "out.jsonl",
            "--download", "dl", "--media-hosts", "ok.example,bad host!!",
        )  # fmt: skip
        assert emu.requests_total == 0
    assert done.code == 2
    assert done.stderr.strip() == (
        "keyapi-stories: error: --media-hosts: not a media host entry: 'bad host!!'"
    )


async def test_proxy_and_redis_options_reach_the_client(tmp_path: Path, api_key: str) -> None:
    targets = write_targets(tmp_path / "t.txt", ["p1", "p2"])
    async with media_emulator(api_key) as (emu, cdn), ConnectProxy() as proxy:
        env = env_with(emu, api_key)
        done = await fetch(
            tmp_path, env, str(targets), "-o", "p.jsonl", "--proxy", proxy.url,
            "--download", "dl", "--media-hosts", cdn_host(emu),
        )  # fmt: skip
        assert done.code == 0, done.stderr
        # The API went through the proxy; the media did not (its own session).
        assert len(proxy.forwarded) == 2 and all(ENDPOINT in line for line in proxy.forwarded)
        assert cdn.log and all("/media/" not in line for line in proxy.forwarded)
        bad = await fetch(
            tmp_path, env, str(targets), "-o", "r.jsonl",
            "--redis-url", "redis://127.0.0.1:1/0", "--redis-namespace", "no spaces allowed",
        )  # fmt: skip
        assert bad.code == 2 and "redis_namespace" in bad.stderr, bad.stderr
        assert emu.requests_total == 2
