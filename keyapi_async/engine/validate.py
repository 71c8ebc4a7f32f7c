"""The one validator of numbers and counts in settings, for every part of the package.

Every constructor and function that takes a number from a user (the client's
options, the media downloader, watch, the archive, the emulator's configs,
the command line's converters) calls these, so that one rule and one wording
holds everywhere: a bool is not a number, NaN and infinity are not finite, and
the message names the setting and shows the value given.

Bad arguments raise :class:`~keyapi_async.ConfigurationError`, which is also a
``ValueError`` (the rule: docs/errors.md#bad-arguments).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .._errors import ConfigurationError

__all__ = ["check_count", "check_number", "count_option", "number_option"]


def check_number(value: object, name: str, *, positive: bool = False) -> float:
    """``value`` as a float: finite and >= 0 (> 0 with ``positive``); else a ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigurationError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_count(value: object, name: str, *, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum`` (a bool is not an int); else a ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def number_option(name: str, *, positive: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: the option's text as a float, by :func:`check_number`'s rule."""

    def convert(text: str) -> float:
        try:
            value: object = float(text)
        except ValueError:
            value = text  # not a number: the validator says so, naming the option
        try:
            return check_number(value, name, positive=positive)
        except ConfigurationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def count_option(name: str, *, minimum: int = 0) -> Callable[[str], int]:
    """An argparse ``type``: the option's text as an int, by :func:`check_count`'s rule."""

    def convert(text: str) -> int:
        try:
            value: object = int(text)
        except ValueError:
            value = text
        try:
            return check_count(value, name, minimum=minimum)
        except ConfigurationError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert
