"""Retry policy as pure arithmetic: given an attempt and its error, wait how long, or stop.

Full-jitter exponential backoff, a server's ``Retry-After`` capped at
``retry_after_cap``, and a billed ``ResponseDecodeError`` never retried: a
complete answer the API charged for is final (retrying buys the same bytes).
Rationale: docs/decisions.md (Rate, concurrency, time), docs/rate-limits.md#retries.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import APIStatusError, KeyAPIError, ResponseDecodeError


def backoff_delay(attempt: int, *, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**(attempt-1))]``, ``attempt`` 1-based."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    # Clamp the exponent so huge attempt numbers cannot overflow a float.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return rand() * ceiling


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry transient failures (``max_attempts`` counts every send).

    Validated by :class:`~._config.ClientConfig`, its only maker.
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 20.0
    retry_after_cap: float = 60.0

    def delay_for(
        self, attempt: int, error: KeyAPIError, *, rand: Callable[[], float] = random.random
    ) -> float | None:
        """Seconds to wait after send number ``attempt`` failed, or ``None`` to stop.

        A billed ``ResponseDecodeError`` stops at once: the answer was complete
        and paid for, so a retry would buy the same bytes again. An unbilled
        one (empty, cut off, not the API's JSON) is retried like a transport
        failure.
        """
        if not error.retryable or attempt >= self.max_attempts:
            return None
        if isinstance(error, ResponseDecodeError) and error.billed:
            return None
        return self.wait_for(attempt, error, rand=rand)

    def wait_for(
        self, attempt: int, error: KeyAPIError, *, rand: Callable[[], float] = random.random
    ) -> float:
        """The capped ``Retry-After`` of a retryable status error, else backoff.

        Retries left or not: the rate gate also uses it as the cooldown after a 429.
        """
        if isinstance(error, APIStatusError) and error.retryable and error.retry_after is not None:
            return min(error.retry_after, self.retry_after_cap)
        return backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_cap, rand=rand)
