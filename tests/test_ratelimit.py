"""Rate control: pure arithmetic, and whole batches on a virtual clock.

The batch tests run the real ``KeyAPIClient`` (gate, retry loop, sans-I/O
parsing, batch engine) on :class:`VirtualClockLoop`, with the network replaced
by an in-memory server that enforces a strict sliding one-second window and
answers 429 ``qps limit exceeded`` like the API. Timestamps are exact, so the
issue's timing bounds (1.10x at the cap, 1.5x when misconfigured 3x over) are
asserted without measuring wall-clock speed.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec
import pytest

from keyapi_async import KeyAPIClient
from keyapi_async._ratelimit import AdaptiveRate, Pacer
from keyapi_async._sansio import Request
from keyapi_async._transport import RawResponse

from .virtual_clock import run_virtual

# -- pure arithmetic -------------------------------------------------------------


def test_adaptive_rate_starts_at_ceiling_and_none_means_unlimited() -> None:
    assert AdaptiveRate(19.0).current(0.0) == 19.0
    assert AdaptiveRate(None).current(123.0) is None


def test_throttle_never_keeps_rate_above_what_the_server_accepted() -> None:
    rate = AdaptiveRate(57.0, margin=0.05)
    new = rate.throttled(now=10.0, accepted_in_window=20, sent_in_window=21)
    # min(57 * 0.7, 20 * 0.95) = 19
    assert new == pytest.approx(19.0)
    assert rate.current(10.0) == pytest.approx(19.0)


def test_throttle_below_learned_cap_is_multiplicative() -> None:
    rate = AdaptiveRate(20.0, margin=0.05, beta=0.7)
    new = rate.throttled(now=0.0, accepted_in_window=30, sent_in_window=30)
    assert new == pytest.approx(14.0)


def test_recovery_is_concave_then_holds_then_probes_up_to_ceiling() -> None:
    rate = AdaptiveRate(40.0, margin=0.05, beta=0.7, scale=0.4, hold=5.0)
    rate.throttled(now=0.0, accepted_in_window=20, sent_in_window=25)  # w_max = new = 19
    assert rate.current(1.0) == pytest.approx(19.0)
    assert rate.current(4.9) == pytest.approx(19.0)  # held
    assert rate.current(6.0) == pytest.approx(19.0 + 0.4 * 1.0**3)  # probing
    assert rate.current(100.0) == 40.0  # back to the ceiling, and stays there
    assert rate.current(100.5) == 40.0


def test_recovery_from_a_deep_cut_climbs_back_to_w_max_in_k_seconds() -> None:
    rate = AdaptiveRate(20.0, margin=0.0, beta=0.5, scale=0.4, hold=5.0)
    new = rate.throttled(now=0.0, accepted_in_window=20, sent_in_window=20)
    assert new == pytest.approx(10.0)
    k = (10.0 / 0.4) ** (1 / 3)
    samples = [rate.current(t) for t in (0.0, k / 3, 2 * k / 3, k)]
    assert samples == sorted(samples)
    assert samples[0] == pytest.approx(10.0)
    assert samples[-1] == pytest.approx(20.0)
    # Concave: the first third of the way gains more than the last third.
    assert samples[1] - samples[0] > samples[3] - samples[2]


def test_throttle_without_ceiling_learns_from_what_was_sent_and_accepted() -> None:
    rate = AdaptiveRate(None, margin=0.1, beta=0.7)
    # Sent 30 in the window, 10 accepted: min(30 * 0.7, 10 * 0.9) = 9.
    assert rate.throttled(now=0.0, accepted_in_window=10, sent_in_window=30) == pytest.approx(9.0)
    assert rate.current(0.0) == pytest.approx(9.0)


def test_a_429_with_nothing_sent_before_it_teaches_nothing() -> None:
    unlimited = AdaptiveRate(None)
    assert unlimited.throttled(now=0.0, accepted_in_window=0, sent_in_window=0) is None
    assert unlimited.current(1.0) is None
    capped = AdaptiveRate(20.0)
    assert capped.throttled(now=0.0, accepted_in_window=0, sent_in_window=0) == 20.0


def test_throttle_respects_the_floor() -> None:
    assert AdaptiveRate(1.0, floor=0.5).throttled(0.0, 0, 3) == pytest.approx(0.7)
    assert AdaptiveRate(0.6, floor=0.5).throttled(0.0, 0, 3) == 0.5


def test_pacer_spaces_evenly_with_no_initial_burst() -> None:
    pacer = Pacer()
    slots = [pacer.reserve(0.0, 20.0) for _ in range(21)]
    assert slots[0] == 0.0
    assert slots[20] == pytest.approx(1.0)
    assert all(b - a == pytest.approx(0.05) for a, b in itertools.pairwise(slots))
    assert Pacer().reserve(5.0, None) == 5.0


def test_pacer_delay_until_pushes_later_slots() -> None:
    pacer = Pacer()
    pacer.reserve(0.0, 10.0)
    pacer.delay_until(3.0)
    assert pacer.reserve(0.5, 10.0) == 3.0


# -- whole batches on a virtual clock ----------------------------------------------


def max_in_any_window(times: list[float], window: float = 1.0) -> int:
    """Most arrivals in any half-open window [t, t + window)."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


_OK_BODY = msgspec.json.encode(
    {"code": 0, "message": "success", "data": {"data": {"count": 0, "items": []}}}
)
_429_BODY = msgspec.json.encode({"code": 429, "data": None, "message": "qps limit exceeded"})


@dataclass
class WindowServer:
    """A strict sliding-window API with network jitter, in virtual time."""

    cap: int
    retry_after: bool
    seed: int = 0
    latency: float = 0.004
    jitter: float = 0.003
    arrivals: list[float] = field(default_factory=list)
    rejected: int = 0
    _accepted: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    async def send(self, request: Request, *, target: str | None = None) -> RawResponse:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self._rng.uniform(0, self.jitter))
        now = loop.time()
        self.arrivals.append(now)
        while self._accepted and self._accepted[0] <= now - 1.0:
            self._accepted.popleft()
        await asyncio.sleep(self.latency)
        if len(self._accepted) >= self.cap:
            self.rejected += 1
            wait = self._accepted[0] + 1.0 - now
            headers: Mapping[str, str] = (
                {"Retry-After": str(max(1, math.ceil(wait)))} if self.retry_after else {}
            )
            return RawResponse(429, headers, _429_BODY)
        self._accepted.append(now)
        return RawResponse(200, {}, _OK_BODY)

    async def aclose(self) -> None:
        return None


class SimulatedClient(KeyAPIClient):
    def __init__(self, server: WindowServer, **options: object) -> None:
        super().__init__("sk_test_virtual", base_url="http://127.0.0.1:9", **options)  # type: ignore[arg-type]
        self._server = server

    def _open_transport(self) -> WindowServer:  # type: ignore[override]
        return self._server


def run_batch(server: WindowServer, n: int, **options: object) -> tuple[float, int, int]:
    async def main() -> tuple[float, int, int]:
        loop = asyncio.get_running_loop()
        async with SimulatedClient(server, **options) as client:
            start = loop.time()
            results = [r async for r in client.fetch_many(f"user{i}" for i in range(n))]
            elapsed = loop.time() - start
        ok = sum(r.ok for r in results)
        return elapsed, ok, len({r.target for r in results})

    return run_virtual(main)


@pytest.mark.parametrize("retry_after", [True, False])
def test_at_the_cap_no_429_and_within_ten_percent_of_ideal(retry_after: bool) -> None:
    server = WindowServer(cap=20, retry_after=retry_after)
    elapsed, ok, distinct = run_batch(server, 200, qps=20, concurrency=16)
    assert (ok, distinct) == (200, 200)
    assert server.rejected == 0
    assert max_in_any_window(server.arrivals) <= 20
    ideal = 200 / 20
    assert elapsed <= 1.10 * ideal, elapsed


@pytest.mark.parametrize("retry_after", [True, False])
@pytest.mark.parametrize("seed", range(8))
def test_misconfigured_three_times_over_adapts_down(retry_after: bool, seed: int) -> None:
    server = WindowServer(cap=20, retry_after=retry_after, seed=seed)
    elapsed, ok, distinct = run_batch(server, 200, qps=60, concurrency=16)
    assert (ok, distinct) == (200, 200)
    sends = len(server.arrivals)
    assert server.rejected <= 0.10 * sends, (server.rejected, sends)
    assert elapsed <= 1.5 * (200 / 20), elapsed


def test_no_cap_and_429s_learns_a_rate() -> None:
    server = WindowServer(cap=20, retry_after=False)
    elapsed, ok, _ = run_batch(server, 200, qps=None, concurrency=16)
    assert ok == 200
    # Unbounded at first, so a burst of 429s is expected; it must settle.
    assert server.rejected <= 0.25 * len(server.arrivals)
    assert elapsed <= 2.0 * (200 / 20), elapsed


def test_first_second_never_exceeds_qps_even_from_idle() -> None:
    server = WindowServer(cap=1000, retry_after=True, jitter=0.0)
    run_batch(server, 60, qps=20, concurrency=32)
    first = [t for t in server.arrivals if t < server.arrivals[0] + 1.0]
    assert len(first) <= 20
    assert max_in_any_window(server.arrivals) <= 20


def test_one_429_pauses_every_worker() -> None:
    server = WindowServer(cap=10, retry_after=True, jitter=0.0)
    run_batch(server, 40, qps=40, concurrency=8)
    # After a 429 with Retry-After: 1 nobody sends for the cooldown: there is
    # a gap of at least ~1 s between two consecutive arrivals.
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:], strict=False)]
    assert server.rejected >= 1
    assert max(gaps) >= 0.95
