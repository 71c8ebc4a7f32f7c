"""Export a story archive as CSV, JSON Lines or Parquet: one row per story item.

Usage::

    from keyapi_async.archive import StoryArchive
    from keyapi_async.export import write_export

    with StoryArchive.connect("stories.sqlite3") as archive:
        rows = write_export(archive, "csv", "stories.csv")

Columns, in this order (:data:`EXPORT_COLUMNS`): ``story_id, username,
user_id, taken_at, expiring_at, media_type, media_url, width, height,
duration, file, bytes, sha256, fetched_at, media_status, highlight_id,
highlight_title, highlight_position``.

Design choices:

* **Streaming.** Rows come from :meth:`StoryArchive.iter_stories
  <keyapi_async.archive.StoryArchive.iter_stories>` (one read snapshot,
  fetched in batches) and are written as they come; CSV and JSONL never hold
  the archive in memory, Parquet holds one row group (10,000 rows) at a time.
* **Ids stay strings** in every format (Instagram ids exceed what many JSON
  and spreadsheet consumers hold exactly).
* **Explicit UTC.** CSV and JSONL timestamps are ISO 8601 with a ``Z``
  (``2026-03-10T02:13:01Z``); Parquet columns are ``timestamp[ms, tz=UTC]``.
* **CSV is RFC 4180**: the stdlib writer, CRLF line ends, a header row,
  fields quoted when they hold a comma, quote or line break, UTF-8 without a
  byte-order mark, empty fields for missing values.
* **Highlights**: a story in a highlight (``archive.highlights``) names it in
  the ``highlight_*`` columns, the first highlight when it is in several:
  still one row per story. Empty for a story in none.
* ``file``, ``bytes`` and ``sha256`` describe the saved file, so they are
  empty unless ``media_status`` is ``saved``.
* Writing to a path goes to a temporary file renamed into place at the end:
  an interrupted export never leaves a truncated file under the final name.
* pyarrow is optional (``pip install "keyapi-async[parquet]"``) and imported
  only for Parquet.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Literal, NamedTuple, TextIO, cast

import msgspec

from .archive import StoryArchive, StoryRecord
from .archive.highlights import memberships

__all__ = [
    "EXPORT_COLUMNS",
    "ExportFormat",
    "ExportRow",
    "export_rows",
    "write_export",
]

ExportFormat = Literal["csv", "jsonl", "parquet"]
"""The formats :func:`write_export` writes."""

_FORMATS: Final = ("csv", "jsonl", "parquet")
_PARQUET_ROWS: Final = 10_000
_PARQUET_HINT: Final = 'Parquet export needs pyarrow: pip install "keyapi-async[parquet]"'


class ExportRow(NamedTuple):
    """One exported story item; field order is the column order of every format.

    Timestamps are ISO 8601 UTC strings with a ``Z`` (``None`` when unknown);
    ``file`` is the path relative to the download directory, ``""`` when the
    media is not saved; ``media_status`` is ``saved``, ``expired``,
    ``failed``, ``pending`` or ``not_requested``.
    """

    story_id: str
    username: str | None
    user_id: str | None
    taken_at: str | None
    expiring_at: str | None
    media_type: str
    media_url: str | None
    width: int | None
    height: int | None
    duration: float | None
    file: str
    bytes: int | None
    sha256: str | None
    fetched_at: str | None
    media_status: str
    highlight_id: str | None = None
    highlight_title: str | None = None
    highlight_position: int | None = None


EXPORT_COLUMNS: Final[tuple[str, ...]] = ExportRow._fields
"""The export's column names, in order."""


def _iso(ts: int | None) -> str | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        # A value out of datetime's range (milliseconds where seconds belong)
        # must not abort a whole export.
        return None


#: Story id -> (highlight id, title, position), as :func:`memberships` reads it.
_Members = dict[str, tuple[str, str | None, int]]


def _row(story: StoryRecord, members: _Members | None = None) -> ExportRow:
    media = story.media
    member = None if members is None else members.get(story.story_id)
    saved = media is not None and media.status == "saved"
    return ExportRow(
        story_id=story.story_id,
        username=story.username,
        user_id=story.user_id,
        taken_at=_iso(story.taken_at),
        expiring_at=_iso(story.expiring_at),
        media_type=story.media_type,
        media_url=story.media_url,
        width=story.width,
        height=story.height,
        duration=story.duration,
        file=(media.path or "") if saved and media is not None else "",
        bytes=media.bytes if saved and media is not None else None,
        sha256=media.sha256 if saved and media is not None else None,
        fetched_at=_iso(story.fetched_at),
        media_status=story.media_status,
        highlight_id=None if member is None else member[0],
        highlight_title=None if member is None else member[1],
        highlight_position=None if member is None else member[2],
    )


def export_rows(archive: StoryArchive) -> Iterator[ExportRow]:
    """Every story item of ``archive`` as an :class:`ExportRow`, by ``taken_at``, streaming."""
    members = archive.read(memberships)
    for story in archive.iter_stories():
        yield _row(story, members)


def _write_csv(archive: StoryArchive, text: TextIO) -> int:
    writer = csv.writer(text, dialect="excel", lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for row in export_rows(archive):
        writer.writerow(row)
        count += 1
    return count


def _write_jsonl(archive: StoryArchive, text: TextIO) -> int:
    encoder = msgspec.json.Encoder()
    count = 0
    for row in export_rows(archive):
        text.write(encoder.encode(row._asdict()).decode())
        text.write("\n")
        count += 1
    return count


def _millis(ts: int | None) -> int | None:
    return None if ts is None else ts * 1000


def _pyarrow() -> tuple[Any, Any]:
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise ImportError(_PARQUET_HINT) from exc
    return pa, pq


def _write_parquet(archive: StoryArchive, out: Any) -> int:
    pa, pq = _pyarrow()
    # Milliseconds: Parquet has no seconds unit, and a reader should get
    # back exactly the type the schema names.
    timestamp = pa.timestamp("ms", tz="UTC")
    types = {
        "story_id": pa.string(),
        "username": pa.string(),
        "user_id": pa.string(),
        "taken_at": timestamp,
        "expiring_at": timestamp,
        "media_type": pa.string(),
        "media_url": pa.string(),
        "width": pa.int64(),
        "height": pa.int64(),
        "duration": pa.float64(),
        "file": pa.string(),
        "bytes": pa.int64(),
        "sha256": pa.string(),
        "fetched_at": timestamp,
        "media_status": pa.string(),
        "highlight_id": pa.string(),
        "highlight_title": pa.string(),
        "highlight_position": pa.int64(),
    }
    schema = pa.schema([(name, types[name]) for name in EXPORT_COLUMNS])
    columns: dict[str, list[Any]] = {name: [] for name in EXPORT_COLUMNS}
    count = 0

    def flush(writer: Any) -> None:
        writer.write_table(pa.Table.from_pydict(columns, schema=schema))
        for values in columns.values():
            values.clear()

    members = archive.read(memberships)
    writer = pq.ParquetWriter(out, schema)
    try:
        for story in archive.iter_stories():
            # Typed timestamps (seconds since the epoch) rather than the ISO
            # strings of ExportRow: Parquet readers load them as UTC datetimes.
            row = _row(story, members)._asdict()
            row.update(
                taken_at=_millis(story.taken_at),
                expiring_at=_millis(story.expiring_at),
                fetched_at=_millis(story.fetched_at),
            )
            for name in EXPORT_COLUMNS:
                columns[name].append(row[name])
            count += 1
            if len(columns["story_id"]) >= _PARQUET_ROWS:
                flush(writer)
        flush(writer)
    finally:
        writer.close()
    return count


def _write_stream(archive: StoryArchive, fmt: ExportFormat, out: IO[Any]) -> int:
    if fmt == "parquet":
        if isinstance(out, io.TextIOBase):
            raise ValueError("Parquet is binary: pass a binary stream or a path")
        return _write_parquet(archive, out)
    write = _write_csv if fmt == "csv" else _write_jsonl
    if isinstance(out, io.TextIOBase):
        # The caller's text stream: it should have been opened with
        # newline="" or CSV's \r\n may be translated.
        return write(archive, cast(TextIO, out))
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=True)
    try:
        count = write(archive, text)
        text.flush()
    finally:
        # Leave the caller's binary stream open.
        text.detach()
    return count


def write_export(
    archive: StoryArchive,
    fmt: ExportFormat,
    out: IO[bytes] | IO[str] | str | os.PathLike[str],
) -> int:
    """Write every story item of ``archive`` to ``out`` in ``fmt``; return the row count.

    ``out`` is a path (written to a temporary file in the same directory,
    renamed into place when complete), a binary stream (e.g.
    ``sys.stdout.buffer``) or, for CSV and JSONL, a text stream opened with
    ``newline=""``. Streams are flushed but not closed. Parquet raises
    ``ImportError`` naming ``pip install "keyapi-async[parquet]"`` when
    pyarrow is missing, before anything is written.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"format must be one of {', '.join(_FORMATS)}, not {fmt!r}")
    if fmt == "parquet":
        _pyarrow()
    if not isinstance(out, str | os.PathLike):
        count = _write_stream(archive, fmt, out)
        out.flush()
        return count
    target = Path(os.fspath(out))
    # Not tempfile.mkstemp: its 0600 mode would stay on the export.
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as handle:
            count = _write_stream(archive, fmt, handle)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return count
