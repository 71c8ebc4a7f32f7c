"""The ledger's line format, in one place: the CLI writes and scans it, the archive imports it.

Line schema (fields always written, in this order)::

    {"target": "javan",                 # normalised target, or the invalid line as given
     "status": "ok",                    # ok | empty | error | not_attempted
     "fetched_at": "2026-03-10T02:13:01.123Z",   # UTC, when the outcome was recorded
     "attempts": 1,                     # requests sent for this target (0: none)
     "stories": {...} | null,           # the decoded reel, re-encoded; set iff ok/empty
     "error": {"type": "ServerError", "status": 500, "code": 500,
               "message": "Internal server error", "request_id": "..."} | null}

It lives in the archive's folder because the archive sits below the CLI
(``keyapi_async/cli/ledger.py`` writes the file) and both must read the same
format: one struct, one decoder.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Final, Literal

import msgspec

from ..models import Reel

__all__ = [
    "DONE_STATUSES",
    "LINE_START",
    "LedgerError",
    "LedgerHead",
    "LedgerLine",
    "Status",
    "decode_head",
    "decode_line",
    "fetched_at_seconds",
    "utc_now",
]

Status = Literal["ok", "empty", "error", "not_attempted"]
"""A line's outcome."""

DONE_STATUSES: Final = frozenset({"ok", "empty"})
"""Statuses of lines whose stories were fetched: ``--resume`` skips them, an import records them."""

LINE_START: Final = b'{"target":'
"""How every written line starts (fields are encoded in declaration order)."""


class LedgerError(msgspec.Struct, frozen=True, kw_only=True):
    """Why a target has no stories: the error's class name and what the API said."""

    type: str
    status: int | None = None
    code: int | None = None
    message: str
    request_id: str | None = None


class LedgerLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the ledger: the single outcome of one target."""

    target: str
    status: Status
    fetched_at: str
    attempts: int = 0
    stories: Reel | None = None
    error: LedgerError | None = None


class _ErrorHead(msgspec.Struct):
    type: str = ""


class LedgerHead(msgspec.Struct):
    """Only what ``--resume`` needs of a line: target, status and the error's type."""

    # msgspec skips ``stories`` without building objects for it, so scanning
    # a large ledger stays cheap.
    target: str
    status: Status
    error: _ErrorHead | None = None


_LINE_DECODER: Final = msgspec.json.Decoder(LedgerLine)
_HEAD_DECODER: Final = msgspec.json.Decoder(LedgerHead)


def decode_line(raw: bytes) -> LedgerLine:
    """One line, decoded; ``msgspec.DecodeError`` (or ValidationError) when it is not one."""
    return _LINE_DECODER.decode(raw)


def decode_head(raw: bytes) -> LedgerHead:
    """The head of one line, decoded; ``msgspec.DecodeError`` when it is not a ledger line."""
    return _HEAD_DECODER.decode(raw)


def utc_now() -> str:
    """The current time as UTC ISO-8601 with milliseconds and a ``Z`` suffix (``fetched_at``)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fetched_at_seconds(text: str) -> int:
    """A line's ``fetched_at`` as integer Unix seconds; ValueError without a UTC offset."""
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("fetched_at has no UTC marker")
    return math.floor(parsed.timestamp())
