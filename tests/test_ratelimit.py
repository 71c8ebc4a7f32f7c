"""Rate control: pure arithmetic, the gate, and whole batches on a virtual clock.

The batch tests run the real ``KeyAPIClient`` (gate, retry loop, sans-I/O
parsing, batch engine) on :class:`VirtualClockLoop`, against the real emulator
through its in-memory transport (:class:`EmulatorTransport`): its sliding
one-second window, its 429 ``qps limit exceeded`` answers and its latency, with
no sockets. Timestamps are exact, so the timing bounds (1.10x at the cap at any
latency with default settings, 1.5x when misconfigured 3x over) are asserted
without measuring wall-clock speed.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools

import pytest

from keyapi_async import KeyAPIClient
from keyapi_async.engine.gate import (
    BETA,
    COLD_AFTER,
    COLD_START,
    FLOOR,
    HOLD,
    RECOVERY,
    AdaptiveRate,
    RateGate,
    Verdict,
    cut_rate,
    is_cold,
    recovered_rate,
)
from keyapi_async.testing import Emulator, EmulatorConfig, EmulatorTransport

from .virtual_clock import VirtualClockLoop, run_virtual

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
    rate = AdaptiveRate(20.0, margin=0.05)
    new = rate.throttled(now=0.0, accepted_in_window=30, sent_in_window=30)
    assert new == pytest.approx(14.0)


def test_recovery_is_concave_then_holds_then_probes_up_to_ceiling() -> None:
    rate = AdaptiveRate(40.0, margin=0.05)
    rate.throttled(now=0.0, accepted_in_window=20, sent_in_window=25)  # w_max = new = 19
    assert rate.current(1.0) == pytest.approx(19.0)
    assert rate.current(RECOVERY + HOLD - 0.1) == pytest.approx(19.0)  # held
    probe = (1.0 / RECOVERY) ** 3
    assert rate.current(RECOVERY + HOLD + 1.0) == pytest.approx(19.0 + 21.0 * probe)
    assert rate.current(100.0) == 40.0  # back to the ceiling, and stays there
    assert rate.current(100.5) == 40.0


def test_recovery_from_a_deep_cut_climbs_back_to_w_max_in_recovery_seconds() -> None:
    rate = AdaptiveRate(20.0, margin=0.0)
    new = rate.throttled(now=0.0, accepted_in_window=20, sent_in_window=20)
    assert new == pytest.approx(20.0 * BETA)
    k = RECOVERY
    samples = [rate.current(t) for t in (0.0, k / 3, 2 * k / 3, k)]
    assert samples == sorted(samples)
    assert samples[0] == pytest.approx(20.0 * BETA)
    assert samples[-1] == pytest.approx(20.0)
    # Concave: the first third of the way gains more than the last third.
    assert samples[1] - samples[0] > samples[3] - samples[2]


@pytest.mark.parametrize(("accepted", "sent"), [(30, 30), (12, 30), (1, 2)])
def test_the_local_gate_recovers_by_the_one_rule(accepted: int, sent: int) -> None:
    # Issue 22: one recovery rule for both gates (tests/test_redis.py holds
    # the Redis gate to the same function).
    ceiling = 19.0
    rate = AdaptiveRate(ceiling, margin=0.05)
    t0 = 100.0
    cut_to, w_max = cut_rate(ceiling, accepted * 0.95)
    assert rate.throttled(t0, accepted, sent) == pytest.approx(cut_to)
    for elapsed in (0.0, 0.5, 2.0, RECOVERY - 0.1, RECOVERY + 1.0, RECOVERY + HOLD + 2.0):
        expected = min(ceiling, recovered_rate(elapsed, cut_to, w_max, ceiling))
        assert rate.current(t0 + elapsed) == pytest.approx(expected, rel=1e-12)


def test_the_one_rule_is_shaped_as_documented() -> None:
    cut_to, w_max = cut_rate(20.0, None)
    assert (cut_to, w_max) == (pytest.approx(20.0 * BETA), 20.0)
    assert cut_rate(0.6, None) == (FLOOR, 0.6)  # never below FLOOR
    assert cut_rate(20.0, 10.0) == (pytest.approx(10.0), 10.0)  # never above what was accepted
    assert recovered_rate(0.0, cut_to, w_max, 30.0) == pytest.approx(cut_to)
    assert recovered_rate(RECOVERY, cut_to, w_max, 30.0) == pytest.approx(w_max)
    assert recovered_rate(RECOVERY + HOLD, cut_to, w_max, 30.0) == pytest.approx(w_max)
    assert recovered_rate(2 * RECOVERY + HOLD, cut_to, w_max, 30.0) == pytest.approx(30.0)
    # No ceiling: the probe climbs by the depth of the cut per RECOVERY seconds.
    unbounded = recovered_rate(2 * RECOVERY + HOLD, cut_to, w_max, None)
    assert unbounded == pytest.approx(w_max + (w_max - cut_to))


def test_throttle_without_ceiling_learns_from_what_was_sent_and_accepted() -> None:
    rate = AdaptiveRate(None, margin=0.1)
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
    assert AdaptiveRate(1.0).throttled(0.0, 0, 3) == pytest.approx(0.7)
    assert AdaptiveRate(0.6).throttled(0.0, 0, 3) == FLOOR


def test_gate_spaces_sends_evenly_with_no_initial_burst() -> None:
    async def main() -> list[float]:
        gate = RateGate(qps=20.0, concurrency=100, margin=0.0)
        times = []
        for _ in range(21):
            ticket = await gate.acquire()
            times.append(ticket.sent_at)
            await gate.release(ticket, Verdict.ACCEPTED)
        return times

    times = run_virtual(main)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The first turn is cold: the second waits COLD_START more (issue 21).
    assert gaps == pytest.approx([0.05 + COLD_START] + [0.05] * 19, abs=1e-4)


def _max_in_window(times: list[float]) -> int:
    ordered = sorted(times)
    return max(bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered))


@pytest.mark.parametrize("late", [0.0, 0.03, 0.06, 0.1])
def test_a_cold_first_send_written_late_never_crowds_the_next_second(late: float) -> None:
    # Issue 21: the first request pays for a new connection and a busy start,
    # the ones after it go out at once. Arrivals = grant + that lateness: no
    # one-second window may hold qps + 1 of them. With no margin, so that the
    # cold start's room is all there is (the margin is spent on other jitter).
    async def main() -> list[float]:
        gate = RateGate(qps=20.0, concurrency=100, margin=0.0)
        grants = []
        for _ in range(60):
            ticket = await gate.acquire()
            grants.append(ticket.sent_at)
            await gate.release(ticket, Verdict.ACCEPTED)
        return grants

    grants = run_virtual(main)
    arrivals = [grants[0] + late, *grants[1:]]
    assert _max_in_window(arrivals) <= 20


def test_a_gate_idle_for_longer_than_cold_after_starts_cold_again() -> None:
    async def main() -> list[float]:
        gate = RateGate(qps=20.0, concurrency=100, margin=0.0)
        times = []
        for pause in (0.0, 0.0, COLD_AFTER + 1.0, 0.0):
            await asyncio.sleep(pause)
            ticket = await gate.acquire()
            times.append(ticket.sent_at)
            await gate.release(ticket, Verdict.ACCEPTED)
        return times

    times = run_virtual(main)
    assert times[1] - times[0] == pytest.approx(0.05 + COLD_START, abs=1e-4)
    assert times[3] - times[2] == pytest.approx(0.05 + COLD_START, abs=1e-4)
    assert [is_cold(None, 0.0), is_cold(0.0, COLD_AFTER), is_cold(0.0, COLD_AFTER + 0.1)] == [
        True,
        False,
        True,
    ]


def test_from_idle_the_slack_is_no_head_start() -> None:
    # A batch starts all its workers in one loop iteration; one that reaches
    # the bucket after the slack (26 ms at 19/s) had passed must queue behind
    # the others, not take a turn beside the first: a busy first iteration
    # holds the first send back, and the two then reach the server together
    # (a 429 in CI, where the first iteration is slow).
    async def main() -> list[float]:
        gate = RateGate(qps=20.0, concurrency=100, margin=0.05)
        first = await gate.acquire()
        queued = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(0.03)
        newcomer = await gate.acquire()
        return [first.sent_at, (await queued).sent_at, newcomer.sent_at]

    grants = sorted(run_virtual(main))
    interval = 1 / (20.0 * 0.95)
    gaps = [b - a for a, b in itertools.pairwise(grants)]
    assert min(gaps) >= interval - 1e-6, gaps


def test_gate_holds_the_inflight_cap() -> None:
    async def main() -> int:
        gate = RateGate(qps=None, concurrency=3)
        held = [await gate.acquire() for _ in range(3)]
        waiter = asyncio.ensure_future(gate.acquire())
        await asyncio.sleep(1.0)
        blocked = not waiter.done()
        await gate.release(held[0], Verdict.NO_ANSWER)
        ticket = await waiter
        for t in (*held[1:], ticket):
            await gate.release(t, Verdict.UNUSED)
        return int(blocked)

    assert run_virtual(main) == 1


def test_a_throttle_pauses_everyone_and_retunes_the_one_bucket() -> None:
    async def main() -> tuple[list[float], float | None]:
        gate = RateGate(qps=20.0, concurrency=100, margin=0.0)
        for _ in range(10):
            ticket = await gate.acquire()
            await gate.release(ticket, Verdict.ACCEPTED)
        throttled = await gate.acquire()
        await gate.release(throttled, Verdict.THROTTLED, cooldown=2.0, server_said=True)
        pause_ends = throttled.sent_at + 2.0
        times = []
        for _ in range(5):
            ticket = await gate.acquire()
            times.append(ticket.sent_at)
            await gate.release(ticket, Verdict.ACCEPTED)
        return [t - pause_ends for t in times], gate.snapshot().current_qps

    times, rate = run_virtual(main)
    assert times[0] >= 0.0  # nobody sends during the cooldown
    assert rate is not None and rate < 20.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Paced at the lowered rate by the same bucket: wider gaps than 1/20 s.
    assert min(gaps) > 0.05


def test_turns_granted_during_a_cooldown_are_forfeit_not_bunched() -> None:
    async def main() -> list[float]:
        gate = RateGate(qps=10.0, concurrency=100, margin=0.0)
        times: list[float] = []

        async def sender() -> None:
            ticket = await gate.acquire()
            times.append(ticket.sent_at)
            if len(times) == 2:
                await gate.release(ticket, Verdict.THROTTLED, cooldown=1.5, server_said=True)
            else:
                await gate.release(ticket, Verdict.ACCEPTED)

        await asyncio.gather(*(sender() for _ in range(12)))
        return sorted(times)

    times = run_virtual(main)
    after = [t for t in times if t >= 1.5]
    assert len(after) >= 9
    # No two sends closer than the (lowered) bucket spacing after the pause.
    assert all(b - a >= 0.099 for a, b in itertools.pairwise(after))


# -- whole batches against the emulator, on a virtual clock --------------------------


def run_batch(config: EmulatorConfig, n: int, **options: object) -> tuple[float, int, Emulator]:
    emulator = Emulator(config)

    async def main() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        client = KeyAPIClient(
            "sk_test_virtual",
            base_url="http://127.0.0.1:9",
            transport=EmulatorTransport(emulator),
            **options,  # type: ignore[arg-type]
        )
        async with client:
            start = loop.time()
            async with client.fetch_many(f"user{i}" for i in range(n)) as batch:
                results = [r async for r in batch]
            elapsed = loop.time() - start
        assert len({r.target for r in results}) == n
        return elapsed, sum(r.ok for r in results)

    elapsed, ok = run_virtual(main)
    return elapsed, ok, emulator


def _config(**overrides: object) -> EmulatorConfig:
    options: dict[str, object] = {
        "api_keys": frozenset({"sk_test_virtual"}),
        "qps": 20,
        "latency": 0.004,
        "latency_jitter": 0.003,
    }
    options.update(overrides)
    return EmulatorConfig(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("latency", [0.05, 0.5, 1.5, 3.0, 5.0])
def test_default_settings_fill_the_cap_at_any_latency(latency: float) -> None:
    # The user gives qps and nothing else: concurrency is derived from it.
    config = _config(latency=latency, latency_jitter=0.1 * latency)
    elapsed, ok, emu = run_batch(config, 200, qps=20)
    assert ok == 200
    assert emu.count(status=429) == 0
    assert emu.max_in_window() <= 20
    assert elapsed <= 1.10 * 200 / 20 + 1.1 * latency, elapsed


def test_the_old_fixed_sixteen_could_not_fill_the_cap_at_three_seconds() -> None:
    # The regression this guards: 16 in flight at 3 s latency is 5.3 req/s.
    elapsed, ok, _ = run_batch(
        _config(latency=3.0, latency_jitter=0.0), 200, qps=20, concurrency=16
    )
    assert ok == 200
    assert elapsed > 1.5 * 200 / 20


@pytest.mark.parametrize("retry_after", [True, False])
def test_at_the_cap_no_429_and_within_ten_percent_of_ideal(retry_after: bool) -> None:
    elapsed, ok, emu = run_batch(_config(retry_after=retry_after), 200, qps=20)
    assert ok == 200
    assert emu.count(status=429) == 0
    assert emu.max_in_window() <= 20
    assert elapsed <= 1.10 * 200 / 20, elapsed


@pytest.mark.parametrize("retry_after", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_misconfigured_three_times_over_adapts_down(retry_after: bool, seed: int) -> None:
    config = _config(retry_after=retry_after, seed=seed)
    elapsed, ok, emu = run_batch(config, 200, qps=60, concurrency=16)
    assert ok == 200
    sends = emu.requests_total
    assert emu.count(status=429) <= 0.10 * sends, (emu.count(status=429), sends)
    assert elapsed <= 1.5 * (200 / 20), elapsed


def test_no_cap_and_429s_learns_a_rate() -> None:
    elapsed, ok, emu = run_batch(_config(retry_after=False), 200, qps=None, concurrency=16)
    assert ok == 200
    # Unbounded at first, so a burst of 429s is expected; it must settle.
    assert emu.count(status=429) <= 0.25 * emu.requests_total
    assert elapsed <= 2.0 * (200 / 20), elapsed


def test_first_second_never_exceeds_qps_even_from_idle() -> None:
    config = _config(qps=1000, latency_jitter=0.0)
    _, _, emu = run_batch(config, 60, qps=20, concurrency=32)
    arrivals = [r.time for r in emu.log]
    first = [t for t in arrivals if t < arrivals[0] + 1.0]
    assert len(first) <= 20
    assert emu.max_in_window() <= 20


def test_one_429_pauses_every_worker() -> None:
    config = _config(qps=10, latency_jitter=0.0)
    run_batch_result = run_batch(config, 40, qps=40, concurrency=8)
    emu = run_batch_result[2]
    arrivals = [r.time for r in emu.log]
    # After a 429 with Retry-After: 1 nobody sends for the cooldown: there is
    # a gap of at least ~1 s between two consecutive arrivals.
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert emu.count(status=429) >= 1
    assert max(gaps) >= 0.95


class LaggyLoop(VirtualClockLoop):
    """A virtual clock whose timers fire late, as a busy real loop's do."""

    def __init__(self, lag: float) -> None:
        super().__init__()
        real_select = self._selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> list[tuple[object, int]]:
            if timeout is not None and timeout > 0:
                self._virtual_now += lag
            return real_select(timeout)  # type: ignore[no-any-return]

        self._selector.select = select  # type: ignore[attr-defined]


@pytest.mark.parametrize("lag", [0.0, 0.001, 0.003])
def test_late_wakeups_do_not_cost_rate_nor_break_the_cap(lag: float) -> None:
    # A bucket of exactly one token loses every wake-up's lag for good
    # (0.88-0.91 x qps measured on a busy loop); the slack makes it up.
    async def main() -> list[float]:
        gate = RateGate(qps=20.0, concurrency=600, margin=0.05)
        times: list[float] = []

        async def sender() -> None:
            ticket = await gate.acquire()
            times.append(ticket.sent_at)
            await gate.release(ticket, Verdict.ACCEPTED)

        await asyncio.gather(*(sender() for _ in range(400)))
        return sorted(times)

    loop = LaggyLoop(lag)
    try:
        times = loop.run_until_complete(main())
    finally:
        loop.close()
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert rate >= 0.95 * 20 * 0.995, rate
    window = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert window <= 20


def test_a_cut_rate_recovers_even_when_every_worker_is_already_queued() -> None:
    # As many workers as targets: each passes the gate once, so nobody
    # arrives after the 429 to retune the bucket; it must recover anyway.
    async def main() -> tuple[float, float]:
        gate = RateGate(qps=20.0, concurrency=1000, margin=0.05)
        times: list[float] = []

        async def sender(number: int) -> None:
            ticket = await gate.acquire()
            times.append(ticket.sent_at)
            verdict = Verdict.THROTTLED if number == 20 else Verdict.ACCEPTED
            await gate.release(ticket, verdict, cooldown=0.1, server_said=True)

        await asyncio.gather(*(sender(n) for n in range(700)))
        times.sort()
        tail = times[-100:]
        return (len(tail) - 1) / (tail[-1] - tail[0]), times[-1]

    tail_rate, _ = run_virtual(main)
    # CUBIC recovery back to the paced 19/s well before the last 100 sends.
    assert tail_rate >= 0.95 * 19.0, tail_rate
