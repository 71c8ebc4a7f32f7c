"""The account list a watch follows: where it comes from, and how it is read each cycle."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeAlias

from .._errors import InvalidTargetError
from ..engine.targets import parse_target

__all__ = ["AccountsSource", "read_accounts"]

logger = logging.getLogger("keyapi_async.watch")

AccountsSource: TypeAlias = (
    Iterable[str] | Callable[[], Iterable[str]] | Callable[[], Awaitable[Iterable[str]]]
)
"""The accounts to watch: a collection (re-read every cycle, so it may be mutated), or a
function returning one (sync or async), e.g. one that reads a file."""


async def read_accounts(source: AccountsSource) -> list[str]:
    """The normalised targets of ``source``, first occurrence kept; invalid ones logged, skipped.

    Raises whatever reading ``source`` raises (a file being rewritten, say):
    the caller decides whether the old list stands.
    """
    raw: object = source() if callable(source) else source
    if inspect.isawaitable(raw):
        raw = await raw
    targets: list[str] = []
    seen: set[str] = set()
    for text in raw:  # type: ignore[attr-defined]
        try:
            target = str(parse_target(text))
        except InvalidTargetError as exc:
            logger.warning("skipping invalid account %r: %s", text, exc)
            continue
        if target not in seen:
            seen.add(target)
            targets.append(target)
    return targets
