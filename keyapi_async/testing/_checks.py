"""Validation shared by the emulator's configs (:class:`EmulatorConfig`, :class:`MediaConfig`)."""

from __future__ import annotations

import enum
import types
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from .._errors import ConfigurationError
from ..engine.validate import check_number

__all__ = ["coerce", "fault_rates", "fault_script"]

_E = TypeVar("_E", bound=enum.Enum)

# Probabilities are summed as floats, so allow for rounding (e.g. 0.1 + 0.2 + 0.7).
_RATE_SUM_TOLERANCE = 1e-9


def coerce(kind: type[_E], value: object, field_name: str, what: str = "fault") -> _E:
    """``value`` (a member or its value) as a member of ``kind``, or a ValueError naming it."""
    try:
        return kind(value)
    except ValueError:
        names = ", ".join(str(member.value) for member in kind)
        raise ConfigurationError(
            f"{field_name}: unknown {what} {value!r} (expected one of {names})"
        ) from None


def fault_rates(
    kind: type[_E], rates: object, field_name: str, what: str = "fault"
) -> Mapping[_E, float]:
    """A read-only ``{fault: probability}``: each in [0, 1], summing to at most 1."""
    if not isinstance(rates, Mapping):
        raise ConfigurationError(
            f"{field_name} must be a mapping of {kind.__name__} to probability"
        )
    checked: dict[_E, float] = {}
    for raw, rate in rates.items():
        fault = coerce(kind, raw, field_name, what)
        check_number(rate, f"{field_name}[{fault.value}]")
        if rate > 1:
            raise ConfigurationError(f"{field_name}[{fault.value}] must be <= 1, got {rate!r}")
        checked[fault] = float(rate)
    if sum(checked.values()) > 1 + _RATE_SUM_TOLERANCE:
        raise ConfigurationError(f"{field_name} must sum to <= 1, got {sum(checked.values())!r}")
    return types.MappingProxyType(checked)


def fault_script(
    kind: type[_E],
    script: object,
    field_name: str,
    check_key: Callable[[object], str],
    what: str = "fault",
) -> Mapping[str, tuple[_E, ...]]:
    """A read-only ``{key: (fault, ...)}``; ``check_key`` validates (and returns) each key."""
    if not isinstance(script, Mapping):
        raise ConfigurationError(f"{field_name} must be a mapping of keys to faults")
    checked: dict[str, tuple[_E, ...]] = {}
    for key, faults in script.items():
        name = check_key(key)
        if isinstance(faults, str | kind) or not isinstance(faults, Sequence):
            raise ConfigurationError(f"{field_name}[{key!r}] must be a sequence of faults")
        checked[name] = tuple(coerce(kind, f, f"{field_name}[{key!r}]", what) for f in faults)
    return types.MappingProxyType(checked)
