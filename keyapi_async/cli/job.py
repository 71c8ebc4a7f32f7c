"""A fetch run's job: the ledger checked and opened, what to send, and the ``--dry-run`` report."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..engine.batch import estimate_credits
from .exit import CLIError, ExitCode
from .inputs import InputPlan, InvalidLine
from .ledger import (
    LedgerState,
    LedgerWriter,
    scan_ledger,
)

__all__ = ["Job", "dry_run_report", "list_invalid", "prepare_job"]

#: How many invalid lines are listed on stderr before "... and N more".
_MAX_LISTED_INVALID = 20
#: How much of an invalid line is shown (the ledger keeps all of it).
_MAX_SHOWN_CHARS = 80


@dataclass(slots=True)
class Job:
    """A prepared run: what to fetch, what to skip, and the open ledger."""

    plan: InputPlan
    output: str
    writer: LedgerWriter
    pending: list[str]
    """Targets to send, in input order (the plan minus those done in OUT)."""
    new_invalid: list[InvalidLine]
    """Invalid lines not yet recorded in OUT."""
    already_done: int = 0
    torn_bytes: int = 0


def prepare_job(plan: InputPlan, output: str, *, resume: bool, overwrite: bool, fsync: bool) -> Job:
    """Check OUT, read it back when resuming (cutting a torn tail) and open it for appending."""
    if os.path.isdir(output):
        raise CLIError(f"{output!r} is a directory; -o needs a file path")
    if not resume and not overwrite and os.path.lexists(output):
        raise CLIError(
            f"{output!r} already exists: add --resume to continue it, "
            "or --overwrite to start it over"
        )
    state = scan_ledger(output, repair=True) if resume else LedgerState()
    mode: Literal["new", "append", "overwrite"] = (
        "append" if resume else "overwrite" if overwrite else "new"
    )
    writer = LedgerWriter(output, mode=mode, fsync=fsync)
    return _job(plan, output, writer, state)


def _job(plan: InputPlan, output: str, writer: LedgerWriter, state: LedgerState) -> Job:
    pending = [t for t in plan.targets if t not in state.done]
    return Job(
        plan=plan,
        output=output,
        writer=writer,
        pending=pending,
        new_invalid=[line for line in plan.invalid if line.text not in state.invalid],
        already_done=len(plan.targets) - len(pending),
        torn_bytes=state.torn_bytes,
    )


def _shown(text: str) -> str:
    """``text`` quoted for a note, cut to its start when long (a binary file's "lines")."""
    if len(text) <= _MAX_SHOWN_CHARS:
        return repr(text)
    return f"{text[:_MAX_SHOWN_CHARS]!r}... ({len(text)} characters)"


def list_invalid(plan: InputPlan, note: Callable[[str], None]) -> None:
    """Show the plan's invalid lines through ``note`` (the first few, then a count)."""
    for line in plan.invalid[:_MAX_LISTED_INVALID]:
        note(f"invalid target on line {line.line_number}: {_shown(line.text)} ({line.reason})")
    hidden = len(plan.invalid) - _MAX_LISTED_INVALID
    if hidden > 0:
        note(f"... and {hidden} more invalid lines")


def dry_run_report(
    plan: InputPlan, state: LedgerState | None, max_credits: int | None
) -> tuple[str, int]:
    """The ``--dry-run`` report (for stdout) and its exit status; invalid lines go to stderr."""
    list_invalid(plan, lambda text: print(text, file=sys.stderr))
    done = state.done if state is not None else set()
    pending = [t for t in plan.targets if t not in done]
    estimate = estimate_credits(pending)
    rows = [
        ("lines read", plan.lines),
        ("valid targets", len(plan.targets)),
        ("invalid", len(plan.invalid)),
        ("duplicates", plan.duplicates),
        ("blank or comment", plan.skipped),
    ]
    if state is not None:
        rows.append(("already done in OUT", len(plan.targets) - len(pending)))
    rows.append(("to fetch", len(pending)))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label + ':':<{width + 1}} {value}" for label, value in rows]
    lines.append(
        f"{'credit estimate:':<{width + 1}} at most {estimate} "
        "(2 per target; failed requests are free)"
    )
    if max_credits is not None and estimate > max_credits:
        lines.append(
            f"note: --max-credits {max_credits} covers {max_credits // 2} of {len(pending)} "
            "targets; the rest would be not_attempted"
        )
    return "\n".join(lines), ExitCode.FAILED if plan.invalid else ExitCode.OK
