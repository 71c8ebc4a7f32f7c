"""Retry policy as pure arithmetic: given an attempt and its error, wait how long, or stop.

Backoff is exponential with *full jitter* (AWS architecture blog, "Exponential
Backoff And Jitter"): the delay is uniform in ``[0, min(cap, base * 2**(n-1))]``.
Full jitter spreads a crowd of retrying workers out instead of letting them
return in lockstep and trip the rate limit together again.

A server's ``Retry-After`` wins over backoff for every retryable status (a
429, a 503 ...; RFC 9110 section 10.2.3), capped at ``retry_after_cap`` so a
hostile or buggy header cannot park a batch for hours.

A *billed* :class:`~keyapi_async.ResponseDecodeError` (a 200 whose body said
``code: 0`` but could not be typed, e.g. schema drift) is retried at most once
in total: the API charged for that answer, every retry is paid again, and an
answer the client cannot read is likely to come back the same way. One retry
covers a transient glitch; more would only buy the same bytes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ._errors import APIStatusError, KeyAPIError, ResponseDecodeError

__all__ = ["RetryPolicy", "backoff_delay"]


def backoff_delay(attempt: int, *, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based).

    ``rand`` returns a float in ``[0, 1)``; inject a fixed one to test.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    # Clamp the exponent so huge attempt numbers cannot overflow a float.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 60))
    return rand() * ceiling


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry transient failures.

    ``max_attempts`` counts every send, so 1 means no retries.
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 20.0
    retry_after_cap: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("backoff_base", "backoff_cap", "retry_after_cap"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")

    def delay_for(
        self, attempt: int, error: KeyAPIError, *, rand: Callable[[], float] = random.random
    ) -> float | None:
        """Seconds to wait before the next try after ``attempt`` failed, or ``None`` to stop.

        ``attempt`` is the 1-based number of the send that just failed. A
        billed :class:`~keyapi_async.ResponseDecodeError` stops once two sends
        were made, whatever ``max_attempts`` allows (each retry is paid).
        """
        if not error.retryable or attempt >= self.max_attempts:
            return None
        if attempt >= 2 and isinstance(error, ResponseDecodeError) and error.billed:
            return None
        return self.wait_for(attempt, error, rand=rand)

    def wait_for(
        self, attempt: int, error: KeyAPIError, *, rand: Callable[[], float] = random.random
    ) -> float:
        """How long to wait after ``attempt`` failed with ``error``, retries left or not.

        The server's ``Retry-After`` (capped at ``retry_after_cap``) for any
        retryable status error that carried one, else full-jitter backoff. The
        rate gate also uses it as the shared cooldown after a 429.
        """
        if isinstance(error, APIStatusError) and error.retryable and error.retry_after is not None:
            return min(error.retry_after, self.retry_after_cap)
        return backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_cap, rand=rand)
