"""Unit tests of reading target lines: normalisation, comments, dedupe, invalid lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyapi_async.cli.exit import CLIError
from keyapi_async.cli.inputs import parse_lines, read_input


def test_accepted_spellings_normalise_and_dedupe() -> None:
    plan = parse_lines(
        [
            "# header",
            "",
            "Javan",
            "@javan",
            "https://www.instagram.com/javan/?igsh=abc",
            "instagram.com/other.user/",
            "id:18527",
            "ID:18527",
            "  spaced_out  ",
            "with_comment  # a friend",
            "\t",
        ]
    )
    assert plan.targets == ["javan", "other.user", "id:18527", "spaced_out", "with_comment"]
    assert plan.duplicates == 3
    assert plan.skipped == 3
    assert plan.lines == 11
    assert plan.invalid == []


def test_invalid_lines_are_reported_once_with_line_numbers() -> None:
    plan = parse_lines(["ok", "bad name", "id:12x", "bad name", "@"])
    assert plan.targets == ["ok"]
    assert [(x.line_number, x.text) for x in plan.invalid] == [
        (2, "bad name"),
        (3, "id:12x"),
        (5, "@"),
    ]
    assert all(x.reason for x in plan.invalid)
    assert plan.duplicates == 1


def test_user_ids_mode() -> None:
    plan = parse_lines(["18527", "id:42", "javan"], user_ids=True)
    assert plan.targets == ["id:18527", "id:42"]
    assert [x.text for x in plan.invalid] == ["javan"]


def test_read_input_handles_bom_and_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbfjavan\nbad\xffname\n")
    plan = read_input(str(path))
    assert plan.targets == ["javan"]
    assert len(plan.invalid) == 1


def test_unreadable_input_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(CLIError, match="cannot read input") as info:
        read_input(str(tmp_path / "missing.txt"))
    assert info.value.code == 2


def test_story_urls_are_targets_and_foreign_urls_are_not() -> None:
    plan = parse_lines(
        [
            "https://www.instagram.com/stories/javan/3312345678901234567/?igsh=MWQ1",
            "javan",
            "instagram.com/stories/other.user/1/",
            "https://example.com/javan",
        ]
    )
    assert plan.targets == ["javan", "other.user"]
    assert plan.duplicates == 1
    (invalid,) = plan.invalid
    assert (invalid.text, invalid.reason) == ("https://example.com/javan", "not an Instagram URL")


def test_number_options_use_the_one_validator() -> None:
    import argparse

    from keyapi_async.cli.watch import parse_duration
    from keyapi_async.engine.validate import count_option, number_option

    # The validator's own wording (engine/validate.py), naming the option.
    with pytest.raises(argparse.ArgumentTypeError, match=r"--qps must be a finite number >= 0"):
        number_option("--qps")("nan")
    with pytest.raises(argparse.ArgumentTypeError, match=r"--timeout must be a finite number > 0"):
        number_option("--timeout", positive=True)("0")
    with pytest.raises(argparse.ArgumentTypeError, match=r"--retries must be an int >= 0, got 'x'"):
        count_option("--retries")("x")
    with pytest.raises(argparse.ArgumentTypeError, match=r"'0s' must be a finite number > 0"):
        parse_duration("0s")
    assert number_option("--qps")("2.5") == 2.5
    assert count_option("--retries")("3") == 3
    assert parse_duration("15m") == 900.0


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--qps", "nan", "--qps must be a finite number >= 0, got nan"),
        ("--timeout", "0", "--timeout must be a finite number > 0, got 0.0"),
        ("--retries", "x", "--retries must be an int >= 0, got 'x'"),
    ],
)
def test_the_fetch_parser_words_bad_numbers_by_the_validator(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from keyapi_async.cli.args import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["fetch", "t.txt", "-o", "o.jsonl", option, value])
    assert message in capsys.readouterr().err
