"""The JSONL ledger: one line per target outcome, appended as results arrive.

The line format (its schema, the struct, the decoders) lives in
:mod:`keyapi_async.archive.ledger_line`, shared with the archive's ledger
import; this module writes lines and scans them.

Durability: each line is handed to the kernel with a single ``os.write`` on
an ``O_APPEND`` descriptor (no user-space buffer to lose), so a crash or
``kill -9`` loses at most the line being written; ``--fsync`` adds an
``fsync`` per line for power loss. On ``--resume`` a torn final line is cut
off before appending, so the file stays valid JSONL; an unreadable line
anywhere else is an error naming its line number, because silently skipping
it could re-spend credits on (or lose) that target.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from .._errors import KeyAPIError
from ..archive.ledger_line import (
    DONE_STATUSES,
    LINE_START,
    LedgerError,
    LedgerLine,
    decode_head,
    utc_now,
)
from ..engine.batch import StoryResult
from .exit import CLIError
from .inputs import InvalidLine

__all__ = [
    "DONE_STATUSES",
    "LedgerError",
    "LedgerLine",
    "LedgerState",
    "LedgerWriter",
    "invalid_line",
    "not_attempted_line",
    "result_line",
    "scan_ledger",
    "utc_now",
]

INVALID_TYPE = "InvalidTargetError"


def _unchanged(text: str) -> str:
    return text


def error_fields(error: KeyAPIError, redact: Callable[[str], str] = _unchanged) -> LedgerError:
    """Describe an error for the ledger (``message`` without the target suffix)."""
    status = getattr(error, "status", None)
    code = getattr(error, "code", None)
    request_id = getattr(error, "request_id", None)
    return LedgerError(
        type=type(error).__name__,
        status=status if isinstance(status, int) else None,
        code=code if isinstance(code, int) else None,
        message=redact(error.message),
        request_id=request_id if isinstance(request_id, str) else None,
    )


def result_line(result: StoryResult, redact: Callable[[str], str] = _unchanged) -> LedgerLine:
    """The ledger line of one batch result (``redact`` masks secrets in messages)."""
    return LedgerLine(
        target=result.target,
        status=result.status,
        fetched_at=utc_now(),
        attempts=result.attempts,
        stories=result.stories if result.error is None else None,
        error=error_fields(result.error, redact) if result.error is not None else None,
    )


def invalid_line(invalid: InvalidLine) -> LedgerLine:
    """The ledger line of an input line that is not a valid target (nothing was sent)."""
    return LedgerLine(
        target=invalid.text,
        status="error",
        fetched_at=utc_now(),
        attempts=0,
        stories=None,
        error=LedgerError(type=INVALID_TYPE, message=invalid.reason),
    )


def not_attempted_line(target: str, reason: str) -> LedgerLine:
    """The ledger line of a target the run never got to (e.g. cancelled after Ctrl-C)."""
    return LedgerLine(
        target=target,
        status="not_attempted",
        fetched_at=utc_now(),
        attempts=0,
        stories=None,
        error=LedgerError(type="NotAttemptedError", message=f"not attempted: {reason}"),
    )


@dataclass(slots=True)
class LedgerState:
    """What an existing ledger already holds, as ``--resume`` needs it."""

    done: set[str] = field(default_factory=set)
    """Targets with an ``ok`` or ``empty`` line: never fetched again."""
    invalid: set[str] = field(default_factory=set)
    """Input lines already recorded as invalid: not written again."""
    lines: int = 0
    """Complete, readable lines."""
    torn_bytes: int = 0
    """Size of the torn final line that was (or would be) cut off."""


def scan_ledger(path: str, *, repair: bool) -> LedgerState:
    """Read the ledger at ``path`` (a missing file is an empty ledger).

    With ``repair``, a torn final line is truncated away and a final line
    lacking its newline gets one, so appending yields valid JSONL. Raises
    :class:`CLIError` for an unreadable line that is not the last one, or a
    file that is not a ledger.
    """
    state = LedgerState()
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after the scan
    except FileNotFoundError:
        return state
    except OSError as exc:
        raise CLIError(f"cannot read ledger {path!r}: {exc.strerror or exc}") from None
    offset = 0
    bad: tuple[int, int, bytes] | None = None  # (line number, offset, raw) of a bad line
    last_newline = True
    with handle:
        for number, raw in enumerate(handle, start=1):
            if bad is not None:
                raise CLIError(
                    f"ledger {path!r} line {bad[0]} is not a valid ledger line; "
                    "fix or remove it, then run again"
                )
            start, offset = offset, offset + len(raw)
            last_newline = raw.endswith(b"\n")
            if not raw.strip():
                continue
            try:
                head = decode_head(raw)
            except msgspec.DecodeError:  # ValidationError is a subclass
                bad = (number, start, raw)
                continue
            state.lines += 1
            if head.status in DONE_STATUSES:
                state.done.add(head.target)
            elif head.error is not None and head.error.type == INVALID_TYPE:
                state.invalid.add(head.target)
    if bad is not None:
        number, start, raw = bad
        stripped = raw.rstrip(b"\r\n")
        if not (stripped.startswith(LINE_START) or LINE_START.startswith(stripped)):
            raise CLIError(
                f"{path!r} line {number} is not a keyapi-stories ledger line; "
                "refusing to append to it (choose another -o)"
            )
        state.torn_bytes = len(raw)
        if repair:
            os.truncate(path, start)
    elif not last_newline and repair:
        with open(path, "ab") as tail:
            tail.write(b"\n")
    return state


class LedgerWriter:
    """Appends :class:`LedgerLine` objects to a file, one ``os.write`` per line.

    ``mode`` is ``"new"`` (the file must not exist), ``"append"`` or
    ``"overwrite"``.
    """

    def __init__(self, path: str, *, mode: Literal["new", "append", "overwrite"], fsync: bool):
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0)
        if mode == "new":
            # O_EXCL closes the gap between the "OUT exists?" check and the open.
            flags |= os.O_EXCL
        elif mode == "overwrite":
            flags |= os.O_TRUNC
        try:
            self._fd: int | None = os.open(path, flags, 0o666)
        except FileExistsError:
            raise CLIError(
                f"{path!r} already exists: add --resume to continue it, "
                "or --overwrite to start it over"
            ) from None
        except OSError as exc:
            raise CLIError(f"cannot open {path!r} for writing: {exc.strerror or exc}") from None
        self.path = path
        self._fsync = fsync
        self._encoder = msgspec.json.Encoder()
        self._buffer = bytearray()
        self.written = 0

    def write(self, line: LedgerLine) -> None:
        """Encode and append one line; it is in the kernel when this returns."""
        fd = self._fd
        if fd is None:
            raise ValueError("ledger is closed")
        buffer = self._buffer
        self._encoder.encode_into(line, buffer)
        buffer.extend(b"\n")
        view = memoryview(buffer)
        try:
            while view:
                # A regular file takes the whole line in one call in practice;
                # the loop covers short writes (signals, quotas) all the same.
                count = os.write(fd, view)
                view = view[count:]
        finally:
            view.release()
        if self._fsync:
            os.fsync(fd)
        self.written += 1

    def sync(self) -> None:
        """Flush the file to stable storage (called before a hard exit)."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the file; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
