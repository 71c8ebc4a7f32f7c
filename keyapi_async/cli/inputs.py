"""Reading the target list: one target per line, validated and deduplicated (pure).

Accepted lines: a username, an ``@handle``, a profile URL, ``id:<digits>``
(or bare digits with ``--user-ids``). Blank lines and lines starting with
``#`` are skipped, and so is an inline comment after whitespace
(``javan  # a friend``): usernames cannot contain spaces or ``#``, so this
never cuts a real target short, while a URL fragment (``.../javan/#x``) has
no space before its ``#`` and survives.

The whole plan is kept in memory as the normalised strings (tens of bytes a
target): the progress bar needs the total up front, and ``--resume`` needs
to subtract what is already done before anything is sent.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._errors import InvalidTargetError
from ..engine.targets import Target, parse_target
from .exit import CLIError

__all__ = ["InputPlan", "InvalidLine", "parse_lines", "read_input"]

_INLINE_COMMENT = re.compile(r"\s#")


@dataclass(frozen=True, slots=True)
class InvalidLine:
    """One distinct input line that is not a valid target."""

    line_number: int
    """1-based line number of its first occurrence."""
    text: str
    """The line as given, stripped of whitespace and any inline comment."""
    reason: str
    """Why it was rejected (the :class:`~keyapi_async.InvalidTargetError` message)."""


@dataclass(slots=True)
class InputPlan:
    """What an input file asks for, after validation and deduplication."""

    targets: list[str] = field(default_factory=list)
    """Distinct valid targets, normalised (``javan``, ``id:18527``), in input order."""
    invalid: list[InvalidLine] = field(default_factory=list)
    """Distinct invalid lines, in input order."""
    duplicates: int = 0
    """Lines that repeat an earlier target (valid or invalid) after normalisation."""
    skipped: int = 0
    """Blank and comment lines."""
    lines: int = 0
    """Lines read in total."""


def _clean(line: str) -> str:
    text = _INLINE_COMMENT.split(line, maxsplit=1)[0]
    return text.strip()


def _parse(text: str, user_ids: bool) -> Target:
    if user_ids and text[:3].lower() != "id:":
        return Target.user_id(text)
    return parse_target(text)


def parse_lines(lines: Iterable[str], *, user_ids: bool = False) -> InputPlan:
    """Validate and deduplicate target lines (``user_ids``: bare lines are numeric ids)."""
    plan = InputPlan()
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        plan.lines = number
        text = _clean(line)
        if not text or text.startswith("#"):
            plan.skipped += 1
            continue
        try:
            key = str(_parse(text, user_ids))
        except InvalidTargetError as error:
            # Invalid lines are deduplicated on their text, so a typo repeated
            # a thousand times is reported (and written) once.
            key = text
            if key not in seen:
                plan.invalid.append(InvalidLine(number, text, error.message))
                seen.add(key)
                continue
        else:
            if key not in seen:
                plan.targets.append(key)
                seen.add(key)
                continue
        plan.duplicates += 1
    return plan


def read_input(path: str, *, user_ids: bool = False) -> InputPlan:
    """Read and plan the targets of ``path`` (``-`` for stdin); CLIError if unreadable."""
    # utf-8-sig drops the byte-order mark spreadsheet exports put first, which
    # would otherwise make the first target invalid; undecodable bytes become
    # U+FFFD and so an invalid line, instead of aborting the whole run.
    if path == "-":
        if sys.stdin is None:
            raise CLIError("no input: stdin is closed; give a FILE")
        stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="replace")
        try:
            return parse_lines(stream, user_ids=user_ids)
        finally:
            stream.detach()
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            return parse_lines(handle, user_ids=user_ids)
    except OSError as exc:
        raise CLIError(f"cannot read input {path!r}: {exc.strerror or exc}") from None
