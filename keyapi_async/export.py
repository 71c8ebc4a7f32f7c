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
  but the cursor's tuple. For CSV SQLite builds the whole line, quoted exactly as
  the stdlib ``csv`` writer quotes it (tested byte for byte against it). CSV and
  JSONL never hold the archive in memory; Parquet holds one row group (10,000
  rows) at a time, converted column by column.
* **Ids stay strings** in every format (Instagram ids exceed what many JSON
  and spreadsheet consumers hold exactly).
* **Explicit UTC.** CSV and JSONL timestamps are ISO 8601 with a ``Z``
  (``2026-03-10T02:13:01Z``); Parquet columns are ``timestamp[ms, tz=UTC]``. A
  timestamp outside years 1000-9999 (:data:`TIMESTAMP_RANGE`; e.g. milliseconds
  stored where seconds belong) is written as unknown, an empty field or null, in
  every format rather than aborting the export; pre-1970 dates are written as
  any other.
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
import operator
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Final, Literal, NamedTuple, TextIO, cast

import msgspec

from ._errors import ConfigurationError
from .archive import StoryArchive
from .archive.highlights import has_highlight_tables

__all__ = [
    "EXPORT_COLUMNS",
    "TIMESTAMP_RANGE",
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


# Timestamps are Unix seconds; those within years 1000-9999 are written
# (ISO 8601 in CSV/JSONL, milliseconds in Parquet), any other value (a
# negative year, milliseconds where seconds belong) is written as unknown in
# every format: an empty field, null. Pre-1970 dates are ordinary dates.
TIMESTAMP_RANGE: Final = (-30_610_224_000, 253_402_300_799)
"""The Unix seconds an export writes as a time (1000-01-01T00:00:00Z to 9999-12-31T23:59:59Z)."""


def _in_range(column: str, value: str) -> str:
    low, high = TIMESTAMP_RANGE
    return f"CASE WHEN {column} BETWEEN {low} AND {high} THEN {value} END"


def _sql_iso(column: str) -> str:
    return _in_range(column, f"strftime('%Y-%m-%dT%H:%M:%SZ', {column}, 'unixepoch')")


def _sql_millis(column: str) -> str:
    return _in_range(column, f"{column} * 1000")


# The first highlight holding each story (the lowest highlight id); one index
# look-up per story (highlight_items_story).
_FIRST_HIGHLIGHT: Final = (
    "LEFT JOIN (SELECT i.story_id, i.highlight_id, h.title, i.position "
    "FROM highlight_items AS i LEFT JOIN highlights AS h ON h.id = i.highlight_id "
    "WHERE i.highlight_id = (SELECT min(j.highlight_id) FROM highlight_items AS j "
    "WHERE j.story_id = i.story_id)) AS hl ON hl.story_id = s.story_id "
)

# How a column's value becomes a CSV field: "text" may need quoting, "real"
# is formatted by Python (SQLite's %.15g is not Python's repr), "plain" (ints,
# timestamps, the CHECKed media type and status) never needs quoting.
_Kind = Literal["text", "real", "plain"]


def _columns(timestamp: Callable[[str], str], *, highlights: bool) -> list[tuple[str, _Kind]]:
    # Column for column as ExportRow reads them.
    saved = "m.status = 'saved'"
    members = ("hl.highlight_id", "hl.title", "hl.position") if highlights else ("NULL",) * 3
    return [
        ("s.story_id", "text"),
        ("s.username", "text"),
        ("s.user_id", "text"),
        (timestamp("s.taken_at"), "plain"),
        (timestamp("s.expiring_at"), "plain"),
        ("s.media_type", "plain"),
        ("s.media_url", "text"),
        ("s.width", "plain"),
        ("s.height", "plain"),
        ("s.duration", "real"),
        (f"CASE WHEN {saved} THEN coalesce(m.path, '') ELSE '' END", "text"),
        (f"CASE WHEN {saved} THEN m.bytes END", "plain"),
        (f"CASE WHEN {saved} THEN m.sha256 END", "text"),
        (timestamp("s.fetched_at"), "plain"),
        ("coalesce(m.status, 'not_requested')", "plain"),
        (members[0], "text"),
        (members[1], "text"),
        (members[2], "plain"),
    ]


def _csv_field(value: object) -> str:
    """``value`` as the stdlib ``csv`` writer (excel dialect) writes one field of a row.

    ``None`` is empty, a float is its ``repr``, a string is quoted (its
    quotes doubled) when it holds a comma, a quote, CR or LF. The CSV
    export builds the same fields in SQL (:func:`_csv_sql`); this is the
    rule it is tested against, and the formatter of floats.
    """
    if value is None:
        return ""
    text = repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str) and any(c in text for c in _NEEDS_QUOTES):
        return '"' + text.replace('"', '""') + '"'
    return text


_NEEDS_QUOTES: Final = (",", '"', "\r", "\n")


def _csv_sql(expression: str, kind: _Kind) -> str:
    if kind == "real":
        return f"CASE WHEN {expression} IS NULL THEN '' ELSE keyapi_csv_field({expression}) END"
    if kind == "plain":
        return f"coalesce({expression}, '')"
    special = " OR ".join(
        f"instr({expression}, {c})" for c in ("','", "'\"'", "char(13)", "char(10)")
    )
    quoted = f"""'"' || replace({expression}, '"', '""') || '"'"""
    return f"coalesce(CASE WHEN {special} THEN {quoted} ELSE {expression} END, '')"


def _concat(parts: list[str]) -> str:
    # A balanced tree of ||: SQLite copies the string built so far at each
    # ||, so a flat chain would copy the long media URL once per later field.
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return f"({_concat(parts[:middle])} || {_concat(parts[middle:])})"


def _select(kind: str, *, highlights: bool) -> str:
    # The rows are built by SQLite: no Python object per row beyond the
    # cursor's tuple; for CSV the whole line, quoted as csv.writer quotes it.
    timestamp = _sql_millis if kind == "parquet" else _sql_iso
    columns = _columns(timestamp, highlights=highlights)
    if kind == "csv":
        fields: list[str] = []
        for expression, column_kind in columns:
            fields += [_csv_sql(expression, column_kind), "','"]
        values = _concat([*fields[:-1], "char(13, 10)"])
    else:
        values = ", ".join(expression for expression, _ in columns)
    return (
        f"SELECT {values} FROM stories AS s LEFT JOIN media AS m ON m.story_id = s.story_id "
        f"{_FIRST_HIGHLIGHT if highlights else ''}"
        "ORDER BY s.taken_at, s.story_id"
    )


_SELECTS: Final = {
    (kind, highlights): _select(kind, highlights=highlights)
    for kind in ("text", "csv", "parquet")
    for highlights in (False, True)
}


@contextlib.contextmanager
def _rows(archive: StoryArchive, kind: str) -> Iterator[sqlite3.Cursor]:
    with archive.snapshot() as conn:
        conn.create_function("keyapi_csv_field", 1, _csv_field, deterministic=True)
        # An archive never opened with the highlights extension has no such tables.
        cursor = conn.execute(_SELECTS[kind, has_highlight_tables(conn)])
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
    csv.writer(text, dialect="excel", lineterminator="\r\n").writerow(EXPORT_COLUMNS)
    count = 0
    line = operator.itemgetter(0)
    with _rows(archive, "csv") as cursor:
        # Each row is its CSV line, built by SQLite: csv.writer looked at
        # every character of every field in Python's loop, most of the time
        # of an export.
        while batch := cursor.fetchmany(_BATCH):
            text.write("".join(map(line, batch)))
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
    if not isinstance(out, str | os.PathLike) and not callable(getattr(out, "write", None)):
        raise ConfigurationError(f"out must be a path or a writable stream, got {out!r}")
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
