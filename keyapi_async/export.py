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

* **Streaming, rows built by SQLite.** One query over :meth:`StoryArchive.snapshot
  <keyapi_async.archive.StoryArchive.snapshot>` (one read snapshot, fetched in
  batches) yields each row as it is written: timestamps formatted, ``file``/``bytes``/
  ``sha256`` blanked unless saved, all in SQL, so Python touches no object per row
  but the cursor's tuple. CSV and JSONL never hold the archive in memory;
  Parquet holds one row group (10,000 rows) at a time, converted column by column.
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
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Literal, NamedTuple, TextIO, cast

import msgspec

from ._errors import ConfigurationError
from .archive import StoryArchive

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
_BATCH: Final = 1000
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


# Within years 1000-9999 SQLite's strftime writes what _iso writes; outside
# them (absurd values) _iso itself is called, so every value reads the same.
_ISO_SAFE: Final = (-30_610_224_000, 253_402_300_799)


def _sql_iso(column: str) -> str:
    low, high = _ISO_SAFE
    return (
        f"CASE WHEN {column} IS NULL THEN NULL WHEN {column} BETWEEN {low} AND {high} "
        f"THEN strftime('%Y-%m-%dT%H:%M:%SZ', {column}, 'unixepoch') ELSE keyapi_iso({column}) END"
    )


def _sql_millis(column: str) -> str:
    return f"{column} * 1000"


# The first highlight holding each story (the lowest highlight id); one index
# look-up per story (highlight_items_story).
_FIRST_HIGHLIGHT: Final = (
    "LEFT JOIN (SELECT i.story_id, i.highlight_id, h.title, i.position "
    "FROM highlight_items AS i LEFT JOIN highlights AS h ON h.id = i.highlight_id "
    "WHERE i.highlight_id = (SELECT min(j.highlight_id) FROM highlight_items AS j "
    "WHERE j.story_id = i.story_id)) AS hl ON hl.story_id = s.story_id "
)


def _select(timestamp: Callable[[str], str], *, highlights: bool) -> str:
    # The rows are built by SQLite, column for column as ExportRow reads
    # them: no Python object per row beyond the cursor's tuple.
    saved = "m.status = 'saved'"
    members = "hl.highlight_id, hl.title, hl.position" if highlights else "NULL, NULL, NULL"
    return (
        "SELECT s.story_id, s.username, s.user_id, "
        f"{timestamp('s.taken_at')}, {timestamp('s.expiring_at')}, s.media_type, s.media_url, "
        f"s.width, s.height, s.duration, CASE WHEN {saved} THEN coalesce(m.path, '') ELSE '' END, "
        f"CASE WHEN {saved} THEN m.bytes END, CASE WHEN {saved} THEN m.sha256 END, "
        f"{timestamp('s.fetched_at')}, coalesce(m.status, 'not_requested'), {members} "
        "FROM stories AS s LEFT JOIN media AS m ON m.story_id = s.story_id "
        f"{_FIRST_HIGHLIGHT if highlights else ''}"
        "ORDER BY s.taken_at, s.story_id"
    )


_SELECTS: Final = {
    (kind, highlights): _select(timestamp, highlights=highlights)
    for kind, timestamp in (("text", _sql_iso), ("parquet", _sql_millis))
    for highlights in (False, True)
}


@contextlib.contextmanager
def _rows(archive: StoryArchive, kind: str) -> Iterator[sqlite3.Cursor]:
    with archive.snapshot() as conn:
        conn.create_function("keyapi_iso", 1, _iso, deterministic=True)
        # An archive never opened with the highlights extension has no such tables.
        highlights = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'highlight_items'"
        ).fetchone()
        cursor = conn.execute(_SELECTS[kind, highlights is not None])
        try:
            yield cursor
        finally:
            cursor.close()


def export_rows(archive: StoryArchive) -> Iterator[ExportRow]:
    """Every story item of ``archive`` as an :class:`ExportRow`, by ``taken_at``, streaming."""
    with _rows(archive, "text") as cursor:
        while batch := cursor.fetchmany(_BATCH):
            yield from map(ExportRow._make, batch)


def _write_csv(archive: StoryArchive, text: TextIO) -> int:
    writer = csv.writer(text, dialect="excel", lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    with _rows(archive, "text") as cursor:
        while batch := cursor.fetchmany(_BATCH):
            writer.writerows(batch)
            count += len(batch)
    return count


def _write_jsonl(archive: StoryArchive, text: TextIO) -> int:
    encoder = msgspec.json.Encoder()
    count = 0
    with _rows(archive, "text") as cursor:
        while batch := cursor.fetchmany(_BATCH):
            lines = [encoder.encode(dict(zip(EXPORT_COLUMNS, row, strict=True))) for row in batch]
            text.write(b"\n".join(lines).decode() + "\n")
            count += len(batch)
    return count


def _pyarrow() -> tuple[Any, Any]:
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise ImportError(_PARQUET_HINT) from exc
    return pa, pq


def _parquet_schema(pa: Any) -> Any:
    # Milliseconds: Parquet has no seconds unit, and a reader should get
    # back exactly the type the schema names.
    timestamp = pa.timestamp("ms", tz="UTC")
    types = dict.fromkeys(EXPORT_COLUMNS, pa.string())
    types.update(taken_at=timestamp, expiring_at=timestamp, fetched_at=timestamp)
    types.update(width=pa.int64(), height=pa.int64(), bytes=pa.int64(), duration=pa.float64())
    types.update(highlight_position=pa.int64())
    return pa.schema([(name, types[name]) for name in EXPORT_COLUMNS])


def _write_parquet(archive: StoryArchive, out: Any) -> int:
    pa, pq = _pyarrow()
    schema = _parquet_schema(pa)
    count = 0
    writer = pq.ParquetWriter(out, schema)
    try:
        with _rows(archive, "parquet") as cursor:
            # One row group per batch, built column by column: the cursor's
            # tuples are transposed in C and each column converted at once.
            while batch := cursor.fetchmany(_PARQUET_ROWS):
                columns = [
                    pa.array(values, type=field.type)
                    for values, field in zip(zip(*batch, strict=True), schema, strict=True)
                ]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                count += len(batch)
    finally:
        writer.close()
    return count


def _write_stream(archive: StoryArchive, fmt: ExportFormat, out: IO[Any]) -> int:
    if fmt == "parquet":
        if isinstance(out, io.TextIOBase):
            raise ConfigurationError("Parquet is binary: pass a binary stream or a path")
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
        raise ConfigurationError(f"format must be one of {', '.join(_FORMATS)}, got {fmt!r}")
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
