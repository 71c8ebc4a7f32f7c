"""The one validator of numbers and counts, and the parts that must call it."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import pytest

from keyapi_async import ClientConfig, ConfigurationError
from keyapi_async.engine.validate import check_count, check_number, count_option, number_option
from keyapi_async.testing import ChurnConfig, EmulatorConfig, MediaConfig


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1, True, "1", None])
def test_a_bad_number_is_named_with_its_value(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^timeout must be a") as caught:
        check_number(bad, "timeout")
    assert repr(bad) in str(caught.value)
    assert isinstance(caught.value, ValueError)  # except ValueError keeps working


def test_zero_is_allowed_unless_positive() -> None:
    assert check_number(0, "backoff") == 0.0
    with pytest.raises(ConfigurationError, match=r"timeout must be a finite number > 0, got 0"):
        check_number(0, "timeout", positive=True)
    assert check_number(2, "qps", positive=True) == 2.0


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "2", math.nan])
def test_a_bad_count_is_named_with_its_value(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"^workers must be an int >= 1, got {bad!r}"):
        check_count(bad, "workers", minimum=1)
    assert check_count(1, "workers", minimum=1) == 1


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: ClientConfig.create("sk_test_x", timeout=math.nan), "timeout"),
        (lambda: ClientConfig.create("sk_test_x", backoff_base=math.inf), "backoff_base"),
        (lambda: EmulatorConfig(latency=math.nan), "latency"),
        (lambda: EmulatorConfig(credits=-1), "credits"),
        (lambda: MediaConfig(url_ttl=math.inf), "media.url_ttl"),
        (lambda: MediaConfig(chunk_size=0), "media.chunk_size"),
        (lambda: ChurnConfig(every=math.nan), "churn.every"),
    ],
)
def test_every_part_calls_the_one_validator(make: object, name: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{name} must be a"):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--latency", "inf"], "--latency must be a finite number >= 0, got inf"),
        (["--qps", "0"], "--qps must be a finite number > 0, got 0.0"),
        (["--port", "80.5"], "--port must be an int >= 0, got '80.5'"),
        (["--max-log", "0"], "--max-log must be an int >= 1, got 0"),
    ],
)
def test_the_emulators_command_line_checks_numbers_by_the_one_rule(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from keyapi_async.testing.__main__ import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_the_option_converters_word_errors_as_the_validator_does() -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        number_option("--grace")("nan")
    with pytest.raises(ConfigurationError) as direct:
        check_number(math.nan, "--grace")
    assert str(caught.value) == str(direct.value)
    assert number_option("--grace")("2.5") == 2.5
    assert count_option("--retries", minimum=0)("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match=r"--retries must be an int >= 0, got 'x'"):
        count_option("--retries")("x")


@pytest.mark.parametrize(
    "build",
    [
        lambda: EmulatorConfig(empty_ratio=2.0),
        lambda: EmulatorConfig(api_keys=frozenset()),
        lambda: EmulatorConfig(missing_accounts="username:x"),  # type: ignore[arg-type]
        lambda: EmulatorConfig(seed=True),
    ],
)
def test_the_emulators_configs_raise_configuration_errors(build: Callable[[], object]) -> None:
    # The one rule for bad arguments holds in the emulator too (docs/errors.md).
    with pytest.raises(ConfigurationError):
        build()
