"""Story churn for the emulator: stories appear and expire as time passes.

Without churn an account's reel is a fixed function of its key and the seed.
With a :class:`ChurnConfig` in ``EmulatorConfig.churn`` every account
publishes a new story about every ``every`` seconds and each one is served
for ``lifetime`` seconds, so a watch process has something new to find on
every poll and something to miss if it polls too rarely.

Everything is a pure function of ``(seed, target key, time)``: a test can
ask :func:`published` for every story an account published in any span and
compare it with what was captured. Story ``n`` of an account is published
at ``floor(n * every + phase + jitter_n)``, where ``phase`` (in ``[0,
every)``) spreads accounts over the period and ``jitter_n`` (in ``[0,
every / 2)``) keeps the pace from being a metronome; both come from a hash,
never from ``hash()`` or a shared RNG.

The time is the emulator's clock: Unix time (``time.time()``) by default,
or ``epoch + loop.time()`` when :attr:`ChurnConfig.epoch` is set, so a
virtual-clock event loop drives the churn as it drives everything else.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgspec

from .._errors import ConfigurationError
from ..engine.validate import check_number
from ._data import build_reel, make_item

__all__ = [
    "ChurnConfig",
    "PublishedStory",
    "active_stories",
    "churn_now",
    "churn_reel",
    "published",
]

_JITTER_SHARE: Final = 0.5


@dataclass(frozen=True, kw_only=True)
class ChurnConfig:
    """How fast stories come and go (the ``churn`` field of ``EmulatorConfig``)."""

    every: float = 3 * 3600.0
    """Seconds between an account's stories, on average (default: one every 3 hours)."""

    lifetime: float = 86_400.0
    """Seconds a story stays in the account's reel after it is published (Instagram: 24 h)."""

    epoch: float | None = None
    """``None``: the churn runs on Unix time. A number: on ``epoch + loop.time()``, the
    running event loop's clock, so a virtual-clock test drives it (days in milliseconds)."""

    def __post_init__(self) -> None:
        """Validate the fields."""
        for name in ("every", "lifetime"):
            check_number(getattr(self, name), f"churn.{name}", positive=True)
        if self.epoch is not None and (
            isinstance(self.epoch, bool)
            or not isinstance(self.epoch, int | float)
            or not math.isfinite(self.epoch)
        ):
            raise ConfigurationError(f"churn.epoch must be None or a number, got {self.epoch!r}")


class PublishedStory(NamedTuple):
    """One story churn published: its id and when (Unix seconds)."""

    story_id: str
    taken_at: int


def _unit(*parts: str) -> float:
    data = "\x00".join(parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") / 2**64


def _story_id(seed: int, key: str, n: int) -> str:
    data = f"churn\x00{seed}\x00{key}\x00{n}".encode()
    # 19 digits like Instagram's media ids; distinct ids for distinct
    # (key, n) short of a 64-bit hash collision.
    return str(
        10**18 + int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % (9 * 10**18)
    )


def _taken_at(churn: ChurnConfig, seed: int, key: str, phase: float, n: int) -> int:
    jitter = _unit("churn-jitter", str(seed), key, str(n)) * churn.every * _JITTER_SHARE
    return math.floor(n * churn.every + phase + jitter)


def _phase(churn: ChurnConfig, seed: int, key: str) -> float:
    return _unit("churn-phase", str(seed), key) * churn.every


def published(
    churn: ChurnConfig, seed: int, key: str, start: float, end: float
) -> list[PublishedStory]:
    """Every story ``key`` publishes with ``start <= taken_at <= end``, oldest first."""
    phase = _phase(churn, seed, key)
    first = math.floor((start - phase - churn.every * _JITTER_SHARE) / churn.every) - 1
    last = math.floor((end - phase) / churn.every) + 1
    found = []
    for n in range(max(first, 0), last + 1):
        taken = _taken_at(churn, seed, key, phase, n)
        if start <= taken <= end:
            found.append(PublishedStory(_story_id(seed, key, n), taken))
    return found


def active_stories(churn: ChurnConfig, seed: int, key: str, now: float) -> list[PublishedStory]:
    """The stories of ``key`` in its reel at ``now``: published, not yet expired."""
    # taken_at is whole seconds: a story published at 10 is served from 10.0 on.
    return [
        s
        for s in published(churn, seed, key, now - churn.lifetime, now)
        if s.taken_at + churn.lifetime > now
    ]


def churn_now(churn: ChurnConfig) -> float:
    """The churn's time now: Unix time, or ``epoch + loop.time()`` (see :class:`ChurnConfig`)."""
    if churn.epoch is None:
        return time.time()
    try:
        return churn.epoch + asyncio.get_running_loop().time()
    except RuntimeError:
        return churn.epoch + time.monotonic()


def churn_reel(churn: ChurnConfig, seed: int, key: str, now: float | None = None) -> bytes:
    """The encoded ``data`` field (``{"data": reel}``) for ``key`` at ``now`` under churn."""
    at = churn_now(churn) if now is None else now
    base: dict[str, Any] = build_reel(key, seed, empty_ratio=0.0)
    reel = base["data"]
    owner = reel["additional_data"]["user"]
    items = []
    for story in active_stories(churn, seed, key, at):
        rng = random.Random(f"churn-item:{seed}:{story.story_id}")
        item = make_item(rng, story.taken_at, owner)
        item["id"] = story.story_id
        item["expiring_at"] = math.floor(story.taken_at + churn.lifetime)
        items.append(item)
    reel["items"] = items
    reel["count"] = len(items)
    latest = items[-1]["taken_at"] if items else math.floor(at)
    reel["additional_data"]["latest_reel_media"] = latest
    reel["additional_data"]["expiring_at"] = math.floor(latest + churn.lifetime)
    return msgspec.json.encode(base, order="sorted")
