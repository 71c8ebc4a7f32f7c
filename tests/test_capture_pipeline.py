"""The one capture pipeline (keyapi_async.capture.MediaRecorder) over loopback, on a real archive.

``fetch --download``, the highlights pass and ``watch`` all save media through
it, so its rules are tested once here, at the source: claimed ``pending``
before the first byte, a file the archive records is skipped and not written
again, a file found on disk without a record is recorded with its hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from keyapi_async.archive import ArchiveError, StoryArchive
from keyapi_async.capture import DownloadTasks, MediaRecorder
from keyapi_async.media import MediaDiskFullError, MediaDownloader, MediaOutcome, MediaStatus
from keyapi_async.models import Reel, StoryItem
from keyapi_async.testing import Emulator

from .test_media import FAST, fetch_reels, loopback, media_emulator


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _record(archive: StoryArchive, reels: list[tuple[str, Reel]]) -> None:
    for target, reel in reels:
        await archive.record_reel(target, reel, 1.0)


Items = list[tuple[str, Reel, StoryItem]]


async def _capture(
    archive: StoryArchive, emu: Emulator, dest: Path, items: Items
) -> list[MediaOutcome]:
    """Claim, then download through the pipeline, one item after another."""
    async with MediaDownloader(dest, allowed_hosts=loopback(emu), **FAST) as dl:
        recorder = MediaRecorder(archive, dl)
        await recorder.claim(i for _, _, i in items)
        return [await recorder.download(i, target=t, owner=r.user) for t, r, i in items]


async def test_claimed_then_saved_then_skipped_without_a_second_write(tmp_path: Path) -> None:
    async with media_emulator() as (emu, cdn):
        reels = await fetch_reels(emu, ["ann", "bob"])
        items = [(t, r, i) for t, r in reels for i in r.items]
        assert items, "the emulator gave no stories"
        async with StoryArchive.open(tmp_path / "a.sqlite3") as archive:
            await _record(archive, reels)
            dest = tmp_path / "dl"
            async with MediaDownloader(dest, allowed_hosts=loopback(emu), **FAST) as dl:
                recorder = MediaRecorder(archive, dl)
                await recorder.claim(i for _, _, i in items)
                claimed = await archive.media_records(i.id for _, _, i in items)
                assert {r.status for r in claimed.values()} == {"pending"}
                assert len(claimed) == len({i.id for _, _, i in items})
                first = [await recorder.download(i, target=t, owner=r.user) for t, r, i in items]
            assert {o.status for o in first} == {MediaStatus.SAVED}
            saved = await archive.media_records(o.story_id for o in first)
            for outcome in first:
                record = saved[outcome.story_id]
                assert outcome.path is not None
                assert record.status == "saved" and record.sha256 == sha(outcome.path)
                assert record.path == outcome.relative_path
            # Backdate the records: a rewrite would show as a new saved_at.
            for outcome in first:
                await archive.record_media(
                    outcome.story_id,
                    outcome.relative_path,
                    outcome.size,
                    outcome.sha256,
                    "saved",
                    at=1_000.0,
                )
            requests = len(cdn.log)
            second = await _capture(archive, emu, dest, items)
            assert {o.status for o in second} == {MediaStatus.SKIPPED}
            assert len(cdn.log) == requests
            after = await archive.media_records(o.story_id for o in second)
            assert {r.saved_at for r in after.values()} == {1_000}
            assert {r.status for r in after.values()} == {"saved"}
            # A recorded file that lost its bytes is downloaded again, and recorded anew.
            victim = first[0]
            assert victim.path is not None
            victim.path.write_bytes(b"x")
            third = await _capture(archive, emu, dest, items)
            assert [o.status for o in third].count(MediaStatus.SAVED) == 1
            again = (await archive.media_records([victim.story_id]))[victim.story_id]
            assert again.saved_at != 1_000 and again.sha256 == sha(victim.path)
            assert again.bytes == victim.size


async def test_a_file_on_disk_without_a_record_is_recorded_with_its_hash(tmp_path: Path) -> None:
    async with media_emulator() as (emu, cdn):
        reels = await fetch_reels(emu, ["cid"])
        items = [(t, r, i) for t, r in reels for i in r.items]
        dest = tmp_path / "dl"
        # An earlier run without this archive left the files.
        async with MediaDownloader(dest, allowed_hosts=loopback(emu), **FAST) as dl:
            earlier = [await dl.download_item(i, target=t, owner=r.user) for t, r, i in items]
        assert {o.status for o in earlier} == {MediaStatus.SAVED}
        requests = len(cdn.log)
        async with StoryArchive.open(tmp_path / "a.sqlite3") as archive:
            await _record(archive, reels)
            found = await _capture(archive, emu, dest, items)
            assert {o.status for o in found} == {MediaStatus.SKIPPED}
            assert len(cdn.log) == requests
            records = await archive.media_records(o.story_id for o in found)
            for before in earlier:
                record = records[before.story_id]
                assert record.status == "saved"
                assert record.sha256 == before.sha256
                assert record.path == before.relative_path


async def test_failures_are_recorded_with_their_reason(tmp_path: Path) -> None:
    async with media_emulator() as (emu, _):
        reels = await fetch_reels(emu, ["dan"])
        items = [(t, r, i) for t, r in reels for i in r.items]
        async with StoryArchive.open(tmp_path / "a.sqlite3") as archive:
            await _record(archive, reels)
            # No host allowed: every URL is refused before a byte is sent.
            async with MediaDownloader(tmp_path / "dl", allowed_hosts=(), **FAST) as dl:
                recorder = MediaRecorder(archive, dl)
                await recorder.claim(i for _, _, i in items)
                outcomes = [await recorder.download(i, target=t) for t, _, i in items]
            assert {o.status for o in outcomes} == {MediaStatus.REJECTED}
            records = await archive.media_records(o.story_id for o in outcomes)
            assert {r.status for r in records.values()} == {"failed"}
            assert all(r.reason for r in records.values())


async def test_one_rule_stops_a_runs_downloads_on_a_full_disk_or_an_archive_failure() -> None:
    halts: list[str] = []
    tasks = DownloadTasks(halts.append)

    async def fine() -> str:
        return "ok"

    async def full() -> None:
        raise MediaDiskFullError("no space left on device", story_id="1", outcomes=[])

    async def broken() -> None:
        raise ArchiveError("archive locked", path="a.sqlite3")

    good = tasks.spawn(fine())
    tasks.spawn(full())
    tasks.spawn(full())
    await tasks.drain()
    assert good.result() == "ok"
    assert tasks.stopped == "disk full" and tasks.disk_full is not None
    assert halts == ["disk full"]  # once, whatever the number of failures
    tasks.spawn(broken())
    await tasks.drain()
    assert isinstance(tasks.error, ArchiveError)
    assert tasks.stopped == "disk full" and halts == ["disk full"]  # the first reason stays
