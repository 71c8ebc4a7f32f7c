"""Exporting an archive: CSV (RFC 4180), JSON Lines and Parquet, one row per story item."""

from __future__ import annotations

import contextlib
import csv
import importlib
import importlib.util
import io
import json
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keyapi_async import ConfigurationError
from keyapi_async.archive import StoryArchive
from keyapi_async.export import EXPORT_COLUMNS, ExportRow, export_rows, write_export
from tests.test_archive import SHA, T0, image_item, make_reel, synthetic_reel, video_item

COLUMNS = [
    "story_id",
    "username",
    "user_id",
    "taken_at",
    "expiring_at",
    "media_type",
    "media_url",
    "width",
    "height",
    "duration",
    "file",
    "bytes",
    "sha256",
    "fetched_at",
    "media_status",
    "highlight_id",
    "highlight_title",
    "highlight_position",
]
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
HOSTILE_URL = 'https://cdn.example/a,b/"quoted"/line\nbreak.jpg'


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[StoryArchive]:
    """An archive holding every media status, a hostile id and awkward characters."""
    path = tmp_path / "archive.sqlite3"
    async with StoryArchive.open(path) as archive:
        reel = make_reel(
            "javan",
            "18527000000000000001",
            image_item("saved", T0 + 1),
            video_item("expired", T0 + 2),
            image_item("failed", T0 + 3),
            image_item("pending", T0 + 4),
            image_item("../../evil", T0 + 5),
            image_item(
                "0042",
                T0 + 6,
                image_versions={"items": [{"url": HOSTILE_URL, "width": 1, "height": 2}]},
            ),
        )
        await archive.record_reel("javan", reel, T0 + 100)
        await archive.record_reel("anna", synthetic_reel("anna"), T0 + 200)
        await archive.record_media("saved", "javan/20260308_200001_saved.jpg", 2048, SHA, "saved")
        await archive.record_media("expired", None, None, None, "expired", "HTTP 403")
        await archive.record_media("failed", None, None, None, "failed", "reset")
        await archive.record_media("pending", "javan/x.jpg", None, None, "pending")
        yield archive


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_columns_are_exactly_the_documented_ones() -> None:
    assert list(EXPORT_COLUMNS) == COLUMNS == list(ExportRow._fields)


async def test_rows_describe_each_story(archive: StoryArchive) -> None:
    rows = export_rows(archive)
    assert isinstance(rows, Iterator)  # streamed, not a list
    by_id = {row.story_id: row for row in rows}
    assert len(by_id) == archive.counts().stories
    saved = by_id["saved"]
    assert saved == ExportRow(
        story_id="saved",
        username="javan",
        user_id="18527000000000000001",
        taken_at=iso(T0 + 1),
        expiring_at=iso(T0 + 1 + 86_400),
        media_type="image",
        media_url="https://cdn.example/a/big.jpg",
        width=1080,
        height=1920,
        duration=None,
        file="javan/20260308_200001_saved.jpg",
        bytes=2048,
        sha256=SHA,
        fetched_at=iso(T0 + 100),
        media_status="saved",
    )
    video = by_id["expired"]
    assert (video.media_type, video.width, video.height, video.duration) == (
        "video",
        720,
        1280,
        7.25,
    )
    statuses = {row.story_id: row.media_status for row in by_id.values() if row.username == "javan"}
    assert statuses == {
        "saved": "saved",
        "expired": "expired",
        "failed": "failed",
        "pending": "pending",
        "../../evil": "not_requested",
        "0042": "not_requested",
    }
    # Only a saved file has a file, size and hash.
    assert all(
        row.file == "" and row.bytes is None and row.sha256 is None
        for row in by_id.values()
        if row.story_id != "saved"
    )
    assert by_id["0042"].media_url == HOSTILE_URL


async def test_csv_round_trip(archive: StoryArchive, tmp_path: Path) -> None:
    out = tmp_path / "stories.csv"
    count = write_export(archive, "csv", out)
    assert count == archive.counts().stories
    data = out.read_bytes()
    assert data.startswith(b"story_id,username,user_id,taken_at,")
    assert data.endswith(b"\r\n")
    # Every record ends in CRLF; the one LF inside a quoted field stays bare.
    assert data.count(b"\r\n") == count + 1 and data.count(b"\n") == count + 2
    with out.open(newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    assert table[0] == COLUMNS
    assert len(table) == count + 1
    expected = [[("" if v is None else str(v)) for v in row] for row in export_rows(archive)]
    assert table[1:] == expected
    by_id = {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in table[1:]}
    assert by_id["0042"]["media_url"] == HOSTILE_URL  # quoted comma, quote and line break
    assert by_id["../../evil"]["story_id"] == "../../evil"
    assert by_id["saved"]["user_id"] == "18527000000000000001"
    assert all(row[3].endswith("Z") and row[13].endswith("Z") for row in table[1:])
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # noqa: ASYNC240


async def test_csv_opens_in_pandas(archive: StoryArchive, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas", reason="pandas is not installed (optional check)")
    out = tmp_path / "stories.csv"
    write_export(archive, "csv", out)
    frame = pd.read_csv(out, dtype={"story_id": str, "user_id": str}, keep_default_na=False)
    assert list(frame.columns) == COLUMNS
    assert len(frame) == archive.counts().stories
    assert "0042" in set(frame["story_id"]) and "18527000000000000001" in set(frame["user_id"])
    taken = pd.to_datetime(frame["taken_at"], utc=True)
    assert str(taken.dt.tz) == "UTC"


async def test_jsonl(archive: StoryArchive) -> None:
    buffer = io.BytesIO()
    count = write_export(archive, "jsonl", buffer)
    assert not buffer.closed
    lines = buffer.getvalue().decode().splitlines()
    assert len(lines) == count == archive.counts().stories
    records = [json.loads(line) for line in lines]
    assert all(list(record) == COLUMNS for record in records)
    saved = next(r for r in records if r["story_id"] == "saved")
    assert saved["user_id"] == "18527000000000000001" and isinstance(saved["user_id"], str)
    assert (saved["bytes"], saved["width"], saved["duration"]) == (2048, 1080, None)
    assert saved["taken_at"] == iso(T0 + 1) and saved["fetched_at"].endswith("Z")
    assert {r["story_id"] for r in records} >= {"0042", "../../evil"}


async def test_text_streams_and_bad_arguments(archive: StoryArchive) -> None:
    text = io.StringIO(newline="")
    assert write_export(archive, "csv", text) == archive.counts().stories
    assert text.getvalue().splitlines()[0] == ",".join(COLUMNS)
    with pytest.raises(ConfigurationError, match=r"format must be one of .* got 'xlsx'"):
        write_export(archive, "xlsx", io.BytesIO())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="writable stream, got 42"):
        write_export(archive, "csv", 42)  # type: ignore[arg-type]
    if HAS_PYARROW:
        with pytest.raises(ConfigurationError, match="binary"):
            write_export(archive, "parquet", io.StringIO())


@pytest.mark.skipif(
    not HAS_PYARROW, reason='pyarrow is not installed (pip install "keyapi-async[parquet]")'
)
async def test_parquet(archive: StoryArchive, tmp_path: Path) -> None:
    pa = importlib.import_module("pyarrow")
    pq = importlib.import_module("pyarrow.parquet")

    out = tmp_path / "stories.parquet"
    count = write_export(archive, "parquet", out)
    table = pq.read_table(out)
    assert table.num_rows == count == archive.counts().stories
    assert table.column_names == COLUMNS
    assert table.schema.field("story_id").type == pa.string()
    assert table.schema.field("user_id").type == pa.string()
    assert table.schema.field("taken_at").type == pa.timestamp("ms", tz="UTC")
    rows = {row["story_id"]: row for row in table.to_pylist()}
    saved = rows["saved"]
    assert saved["taken_at"] == datetime.fromtimestamp(T0 + 1, UTC)
    assert (saved["bytes"], saved["sha256"], saved["media_status"]) == (2048, SHA, "saved")
    assert rows["0042"]["media_url"] == HOSTILE_URL and rows["0042"]["file"] == ""


def _export_cli(*args: str, stdout: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "keyapi_async", "export", *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(
    not HAS_PYARROW, reason='pyarrow is not installed (pip install "keyapi-async[parquet]")'
)
async def test_parquet_to_a_pipe_is_the_file_export(archive: StoryArchive, tmp_path: Path) -> None:
    pq = importlib.import_module("pyarrow.parquet")
    out = tmp_path / "stories.parquet"
    write_export(archive, "parquet", out)
    piped = _export_cli(str(archive.path), "-f", "parquet", stdout=subprocess.PIPE)
    assert piped.returncode == 0, piped.stderr
    assert pq.read_table(io.BytesIO(piped.stdout)).equals(pq.read_table(out))


def test_parquet_is_never_written_to_a_terminal(tmp_path: Path) -> None:
    path = tmp_path / "archive.sqlite3"
    StoryArchive.connect(path).close()
    leader, follower = pty.openpty()
    try:
        refused = _export_cli(str(path), "-f", "parquet", stdout=follower)
        os.set_blocking(leader, False)
        with contextlib.suppress(BlockingIOError):
            assert os.read(leader, 1024) == b""  # nothing reached the terminal
    finally:
        os.close(follower)
        os.close(leader)
    assert refused.returncode == 2
    assert b"give -o FILE or pipe stdout" in refused.stderr


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path) -> None:
    archive = tmp_path / "archive.sqlite3"
    StoryArchive.connect(archive).close()
    script = (
        "import sys; sys.modules['pyarrow'] = None\n"  # makes `import pyarrow` fail
        "from keyapi_async.archive import StoryArchive\n"
        "from keyapi_async.export import write_export\n"
        "with StoryArchive.connect(sys.argv[1], readonly=True) as a:\n"
        "    try:\n"
        "        write_export(a, 'parquet', sys.argv[2])\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    out = tmp_path / "never.parquet"
    result = subprocess.run(
        [sys.executable, "-c", script, str(archive), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert 'pip install "keyapi-async[parquet]"' in result.stdout
    assert not out.exists()


def test_readonly_export_of_an_empty_archive(tmp_path: Path) -> None:
    path = tmp_path / "archive.sqlite3"
    StoryArchive.connect(path).close()
    with StoryArchive.connect(path, readonly=True) as archive:
        buffer = io.BytesIO()
        assert write_export(archive, "csv", buffer) == 0
    assert buffer.getvalue() == (",".join(COLUMNS) + "\r\n").encode()


HOSTILE_TEXT = [
    "plain",
    "a,b",
    'say "hi"',
    "cr\rinside",
    "lf\ninside",
    "crlf\r\n",
    "nul\x00byte",
    " padded ",
    "tab\there",
    "é ünïcødé 🎉",
    "",
]
TRICKY_FLOATS = [0.1 + 0.2, 1e16, 1e-05, 7.0, 2.5, 123456789.123456789]


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[StoryArchive]:
    """Every awkward string in every text column, and floats whose repr is not %.15g."""
    path = tmp_path / "hostile.sqlite3"
    async with StoryArchive.open(path) as archive:
        for n, text in enumerate(HOSTILE_TEXT):
            item = video_item(f"id{n}{text}", T0 + n, tag=f"t{n}{text}")
            item["video_duration"] = TRICKY_FLOATS[n % len(TRICKY_FLOATS)]
            reel = make_reel(f"user{text}", f"uid{text}", item)
            await archive.record_reel(f"target{n}", reel, T0 + 100)
            if n % 2 == 0:
                await archive.record_media(
                    f"id{n}{text}", f"dir{n}/{text or 'x'}.mp4", 10 + n, SHA, "saved"
                )
        yield archive


async def test_csv_is_byte_for_byte_what_csv_writer_writes(hostile: StoryArchive) -> None:
    # The CSV lines are built in SQL; the stdlib writer over export_rows is
    # the reference they must equal, byte for byte.
    ours = io.BytesIO()
    count = write_export(hostile, "csv", ours)
    reference = io.StringIO(newline="")
    writer = csv.writer(reference, dialect="excel", lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    writer.writerows(export_rows(hostile))
    assert count == len(HOSTILE_TEXT)
    assert ours.getvalue() == reference.getvalue().encode("utf-8")
    # And it reads back to the same values.
    table = list(csv.reader(io.StringIO(ours.getvalue().decode(), newline="")))
    expected = [[("" if v is None else str(v)) for v in row] for row in export_rows(hostile)]
    assert table[1:] == expected
    assert {row[9] for row in table[1:]} == {repr(f) for f in TRICKY_FLOATS}


def test_csv_field_is_the_stdlib_rule() -> None:
    from keyapi_async.export import _csv_field

    values: list[object] = [*HOSTILE_TEXT, *TRICKY_FLOATS, None, 0, -5, 10**20]
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    assert ",".join(_csv_field(v) for v in values) + "\r\n" == buffer.getvalue()


BOUNDS = {
    "negative": (-1, "1969-12-31T23:59:59Z"),
    "year 1000": (-30_610_224_000, "1000-01-01T00:00:00Z"),
    "year 999": (-30_610_224_001, None),
    "year 9999": (253_402_300_799, "9999-12-31T23:59:59Z"),
    "year 10000": (253_402_300_800, None),
    "milliseconds": (1_773_000_000_000, None),
}


async def test_timestamps_outside_years_1000_to_9999_are_unknown_in_every_format(
    tmp_path: Path,
) -> None:
    from keyapi_async.export import TIMESTAMP_RANGE

    assert (BOUNDS["year 1000"][0], BOUNDS["year 9999"][0]) == TIMESTAMP_RANGE
    path = tmp_path / "times.sqlite3"
    async with StoryArchive.open(path) as archive:
        items = [image_item(name, taken_at) for name, (taken_at, _) in BOUNDS.items()]
        await archive.record_reel("javan", make_reel("javan", "1", *items), T0)
        rows = {row.story_id: row for row in export_rows(archive)}
        assert {name: rows[name].taken_at for name in BOUNDS} == {
            name: text for name, (_, text) in BOUNDS.items()
        }
        out = io.BytesIO()
        write_export(archive, "csv", out)
        table = list(csv.DictReader(io.StringIO(out.getvalue().decode(), newline="")))
        assert {r["story_id"]: r["taken_at"] for r in table} == {
            name: text or "" for name, (_, text) in BOUNDS.items()
        }
        lines = io.BytesIO()
        write_export(archive, "jsonl", lines)
        records = [json.loads(line) for line in lines.getvalue().splitlines()]
        assert {r["story_id"]: r["taken_at"] for r in records} == {
            name: text for name, (_, text) in BOUNDS.items()
        }
        if HAS_PYARROW:
            pq = importlib.import_module("pyarrow.parquet")
            write_export(archive, "parquet", tmp_path / "times.parquet")
            parquet = pq.read_table(tmp_path / "times.parquet").to_pylist()
            got = {r["story_id"]: r["taken_at"] for r in parquet}
            assert got == {
                name: None if text is None else datetime.fromtimestamp(ts, UTC)
                for name, (ts, text) in BOUNDS.items()
            }
