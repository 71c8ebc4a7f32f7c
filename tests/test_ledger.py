"""Unit tests of the CLI's JSONL ledger: line schema, torn-line repair, resume state."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import msgspec
import pytest

import keyapi_async
from keyapi_async import (
    InsufficientCreditsError,
    InvalidTargetError,
    NotAttemptedError,
    ServerError,
    StoryResult,
)
from keyapi_async.cli.apikey import Redactor
from keyapi_async.cli.exit import CLIError
from keyapi_async.cli.fetch import resume_command
from keyapi_async.cli.inputs import InvalidLine
from keyapi_async.cli.ledger import (
    LedgerWriter,
    invalid_line,
    not_attempted_line,
    result_line,
    scan_ledger,
)
from keyapi_async.models import Reel, decode_reel, encode


def line(target: str, status: str = "ok") -> bytes:
    record = {
        "target": target,
        "status": status,
        "fetched_at": "2026-03-10T02:13:01.000Z",
        "attempts": 1,
        "stories": {"count": 0, "items": []} if status in ("ok", "empty") else None,
        "error": None if status in ("ok", "empty") else {"type": "ServerError", "message": "x"},
    }
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def encoded(record: object) -> bytes:
    """A line exactly as LedgerWriter writes it, without a file."""
    return msgspec.json.encode(record) + b"\n"


def write(path: Path, *chunks: bytes) -> Path:
    path.write_bytes(b"".join(chunks))
    return path


def test_missing_ledger_is_empty(tmp_path: Path) -> None:
    state = scan_ledger(str(tmp_path / "nope.jsonl"), repair=True)
    assert state.done == set() and state.lines == 0


def test_done_and_invalid_sets(tmp_path: Path) -> None:
    invalid = invalid_line(InvalidLine(3, "bad name", "no spaces"))
    path = write(
        tmp_path / "l.jsonl",
        line("a"),
        line("b", "empty"),
        line("c", "error"),
        line("d", "not_attempted"),
        line("c", "ok"),  # retried by a later --resume
        encoded(invalid),
    )
    state = scan_ledger(str(path), repair=False)
    assert state.done == {"a", "b", "c"}
    assert state.invalid == {"bad name"}
    assert state.lines == 6 and state.torn_bytes == 0


@pytest.mark.parametrize(
    "torn",
    [b'{"target":"z","status":"ok","fetched_at":"2026-', b'{"tar', b"{", b'{"target":"z"}\n'],
)
def test_torn_last_line_is_cut_off_before_appending(tmp_path: Path, torn: bytes) -> None:
    path = write(tmp_path / "l.jsonl", line("a"), line("b"), torn)
    dry = scan_ledger(str(path), repair=False)
    assert dry.torn_bytes == len(torn)
    assert path.read_bytes().endswith(torn)  # no repair without repair=True
    state = scan_ledger(str(path), repair=True)
    assert state.done == {"a", "b"}
    assert path.read_bytes() == line("a") + line("b")
    writer = LedgerWriter(str(path), mode="append", fsync=True)
    writer.write(not_attempted_line("z", "interrupted"))
    writer.close()
    parsed = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["target"] for x in parsed] == ["a", "b", "z"]


def test_last_line_without_newline_gets_one(tmp_path: Path) -> None:
    path = write(tmp_path / "l.jsonl", line("a"), line("b").rstrip(b"\n"))
    state = scan_ledger(str(path), repair=True)
    assert state.done == {"a", "b"}
    assert path.read_bytes() == line("a") + line("b")


def test_bad_line_in_the_middle_names_its_number(tmp_path: Path) -> None:
    path = write(tmp_path / "l.jsonl", line("a"), b'{"target":"b","sta\n', line("c"))
    before = path.read_bytes()
    with pytest.raises(CLIError, match="line 2"):
        scan_ledger(str(path), repair=True)
    assert path.read_bytes() == before


def test_foreign_file_is_never_truncated(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", b"my precious notes\n")
    with pytest.raises(CLIError, match="line 1 is not a keyapi-stories ledger line"):
        scan_ledger(str(path), repair=True)
    assert path.read_bytes() == b"my precious notes\n"


def test_new_mode_refuses_an_existing_file(tmp_path: Path) -> None:
    path = write(tmp_path / "l.jsonl", line("a"))
    with pytest.raises(CLIError, match="--resume"):
        LedgerWriter(str(path), mode="new", fsync=False)
    LedgerWriter(str(path), mode="overwrite", fsync=False).close()
    assert path.read_bytes() == b""


def test_result_lines_schema() -> None:
    reel = decode_reel(b'{"count":1,"items":[{"id":"1","pk":"1"}]}')
    ok = json.loads(encoded(result_line(StoryResult("javan", reel, None, 2, 0.1, 0))))
    assert list(ok) == ["target", "status", "fetched_at", "attempts", "stories", "error"]
    assert ok["status"] == "ok" and ok["attempts"] == 2 and ok["error"] is None
    assert decode_reel(json.dumps(ok["stories"]).encode()) == reel
    assert ok["fetched_at"].endswith("Z")

    empty = json.loads(encoded(result_line(StoryResult("x", Reel(), None, 1, 0, 1))))
    assert empty["status"] == "empty" and empty["stories"] == json.loads(encode(Reel()))

    error = ServerError("Internal server error", status=500, code=500, request_id="r-1")
    failed = json.loads(encoded(result_line(StoryResult("y", None, error, 5, 1, 2))))
    assert failed["status"] == "error" and failed["stories"] is None
    assert failed["error"] == {
        "type": "ServerError",
        "status": 500,
        "code": 500,
        "message": "Internal server error",
        "request_id": "r-1",
    }

    cause = InsufficientCreditsError("apiKey quota is not enough", status=402, code=402)
    skipped = NotAttemptedError("credits exhausted", target="z", cause=cause)
    na = json.loads(encoded(result_line(StoryResult("z", None, skipped, 0, 0, 3))))
    assert na["status"] == "not_attempted" and na["error"]["type"] == "NotAttemptedError"
    assert "credits exhausted" in na["error"]["message"]

    bad = InvalidTargetError("username is empty", value="@")
    inv = json.loads(encoded(result_line(StoryResult("@", None, bad, 0, 0, 4))))
    assert inv["error"]["type"] == "InvalidTargetError" and inv["attempts"] == 0


def test_error_messages_are_redacted() -> None:
    secret = "sk_live_" + "7" * 20
    error = ServerError(f"proxy says: bad header Bearer {secret}", status=502, code=None)
    data = encoded(result_line(StoryResult("y", None, error, 1, 0, 0), Redactor(secret)))
    assert secret.encode() not in data
    assert b"**********" in data
    assert secret not in repr(Redactor(secret))


def test_resume_command_adds_resume_once_and_drops_overwrite() -> None:
    argv0 = "keyapi-stories"  # as a shell passes it when PATH found the script
    assert (
        resume_command(["fetch", "my targets.txt", "-o", "out.jsonl", "--overwrite"], argv0)
        == "keyapi-stories fetch 'my targets.txt' -o out.jsonl --resume"
    )
    assert resume_command(["fetch", "-", "-o", "o", "--resume"], argv0) == (
        "keyapi-stories fetch - -o o --resume"
    )


def test_resume_command_starts_the_way_this_process_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After `python3 -m venv .venv && .venv/bin/pip install ...` the script is
    # not on PATH: the hint must name it by the path it was started with.
    script = tmp_path / ".venv" / "bin" / "keyapi-stories"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", os.defpath)
    args = ["fetch", "t.txt", "-o", "o.jsonl"]
    assert resume_command(args, ".venv/bin/keyapi-stories") == (
        ".venv/bin/keyapi-stories fetch t.txt -o o.jsonl --resume"
    )
    assert resume_command(args, str(script)) == (
        ".venv/bin/keyapi-stories fetch t.txt -o o.jsonl --resume"
    )
    # Once on PATH (an activated venv), the bare name.
    monkeypatch.setenv("PATH", str(script.parent))
    assert resume_command(args, str(script)) == "keyapi-stories fetch t.txt -o o.jsonl --resume"
    # `python -m keyapi_async`: this interpreter, then -m.
    main_py = str(Path(keyapi_async.__file__).parent / "__main__.py")
    command = shlex.split(resume_command(args, main_py))
    assert command[1:] == ["-m", "keyapi_async", *args, "--resume"]
    assert os.path.samefile(command[0], sys.executable)
    # Another program's __main__.py (pytest's, say) is not ours.
    assert resume_command(args, "/somewhere/else/__main__.py").startswith("keyapi-stories ")
