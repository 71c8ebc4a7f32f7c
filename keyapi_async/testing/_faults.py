"""Which fault a request gets: its target's script first, else a seeded random draw.

One rule for the API's faults (:class:`~keyapi_async.testing.Fault`) and the
CDN's (:class:`~keyapi_async.testing.MediaFault`).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Generic, TypeVar

__all__ = ["FaultPicker"]

F = TypeVar("F", bound=Enum)


class FaultPicker(Generic[F]):
    """The fault draws of one emulator part (deterministic for a seed and an arrival order)."""

    __slots__ = ("_choices", "_positions", "_rng", "_thresholds")

    def __init__(self) -> None:
        self._thresholds: list[float] = []
        self._choices: list[F] = []
        self._positions: dict[str, int] = {}
        self._rng = random.Random()

    def set_rates(self, kinds: Iterable[F], rates: Mapping[F, float]) -> None:
        """Draw from ``rates``; ``kinds`` (the enum, in order) fixes the draw's layout."""
        # Cumulative thresholds in enum order, so one uniform draw picks a fault
        # independently of the mapping's insertion order.
        self._thresholds, self._choices = [], []
        total = 0.0
        for fault in kinds:
            rate = rates.get(fault, 0.0)
            if rate > 0:
                total += rate
                self._thresholds.append(total)
                self._choices.append(fault)

    def reseed(self, seed: str) -> None:
        """Restart the random draws from ``seed``."""
        self._rng = random.Random(seed)

    def restart_scripts(self) -> None:
        """Start every target's script from its first fault again."""
        self._positions.clear()

    def pick(self, script: Sequence[F] | None, key: str) -> F | None:
        """The fault of ``key``'s next request: the next of its ``script``, else a draw."""
        scripted: F | None = None
        if script is not None:
            position = self._positions.get(key, 0)
            self._positions[key] = position + 1
            if position < len(script):
                scripted = script[position]
        drawn: F | None = None
        if self._thresholds:
            # Draw even when a script decides, so the random sequence seen by
            # other targets does not depend on which targets are scripted.
            index = bisect.bisect_right(self._thresholds, self._rng.random())
            if index < len(self._choices):
                drawn = self._choices[index]
        return scripted if scripted is not None else drawn
