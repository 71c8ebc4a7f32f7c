"""The bulk engine against the emulator over loopback: exactly one outcome per target."""

from __future__ import annotations

import asyncio
import collections
import gc
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from keyapi_async import (
    InsufficientCreditsError,
    InvalidTargetError,
    KeyAPIClient,
    NotAttemptedError,
    RateLimitError,
    StoryResult,
    Target,
    estimate_credits,
)
from keyapi_async.testing import EmulatorConfig, Fault, run_emulator

ClientFactory = Callable[..., KeyAPIClient]


def names(n: int, prefix: str = "user") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def assert_one_result_each(results: list[StoryResult], expected: set[str]) -> None:
    counts = collections.Counter(r.target for r in results)
    assert set(counts) == expected
    assert max(counts.values()) == 1, [t for t, c in counts.items() if c > 1]


# -- rate cap against the real server (timing bounds here are generous; the
#    tight ones are proven on a virtual clock in test_ratelimit.py) ------------------


@pytest.mark.slow
async def test_capped_batch_never_exceeds_the_window_and_sees_no_429(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), qps=20)
    async with run_emulator(config) as emu, make_client(emu, qps=20) as client:
        # Warm-up, then idle again: a fresh process's first requests run cold
        # code (imports, first connections) with client and emulator sharing
        # one loop, so the first send can leave long after its turn; the
        # from-idle guarantee is proven on the virtual clock (test_ratelimit).
        warm = [r async for r in client.fetch_many([f"warm{i}" for i in range(5)])]
        assert all(r.ok for r in warm)
        await asyncio.sleep(1.1)
        started = time.monotonic()
        results = [r async for r in client.fetch_many(names(200))]
        elapsed = time.monotonic() - started
    assert_one_result_each(results, set(names(200)))
    assert all(r.ok for r in results)
    log = [r for r in emu.log if not (r.username or "").startswith("warm")]
    seen = [(round(r.time - log[0].time, 3), r.username, r.status) for r in log]
    throttled = [entry for entry in seen if entry[2] == 429]
    assert emu.count(status=429) == 0, (len(seen), seen[:6], throttled)
    assert emu.max_in_window(1.0) <= 20
    first_second = [r for r in log if r.time < log[0].time + 1.0]
    assert len(first_second) <= 20
    assert elapsed < 2 * 10.0  # generous: the 1.10x bound is asserted in virtual time


@pytest.mark.slow
async def test_misconfigured_client_adapts_to_the_servers_cap(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), qps=20)
    async with run_emulator(config) as emu, make_client(emu, qps=60) as client:
        started = time.monotonic()
        results = [r async for r in client.fetch_many(names(200))]
        elapsed = time.monotonic() - started
        stats = client.stats
    assert_one_result_each(results, set(names(200)))
    assert all(r.ok for r in results)
    sends = emu.count()
    assert emu.count(status=429) <= 0.10 * sends
    assert stats.rate_limited == emu.count(status=429)
    assert stats.current_qps is not None and stats.current_qps < 60
    assert elapsed < 2 * 10.0  # generous: the 1.5x bound is asserted in virtual time


async def test_a_429_pauses_every_worker_for_the_retry_after(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(
        api_keys=frozenset({api_key}), fault_script={"username:user0": [Fault.RATE_LIMIT]}
    )
    async with run_emulator(config) as emu, make_client(emu, qps=None, concurrency=4) as client:
        results = [r async for r in client.fetch_many(names(12))]
    assert all(r.ok for r in results)
    throttled = next(r for r in emu.log if r.status == 429)
    later = [r.time - throttled.time for r in emu.log if r.seq > throttled.seq]
    # Retry-After is 1 s: every request after the 429 waited out the cooldown
    # (those already in flight arrive within milliseconds of it; 0.5 s leaves
    # room for a stalled machine while staying far from the 1 s pause).
    assert all(dt < 0.5 or dt >= 0.95 for dt in later), later
    assert sum(dt >= 0.95 for dt in later) >= 1
    by_target = {r.target: r for r in results}
    assert by_target["user0"].attempts == 2


# -- retries and faults ------------------------------------------------------------


async def test_faults_are_retried_and_every_target_ends_ok(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(
        api_keys=frozenset({api_key}),
        seed=7,
        fault_rates={Fault.SERVER_ERROR: 0.05, Fault.RESET: 0.02, Fault.TRUNCATED: 0.02},
    )
    async with run_emulator(config) as emu, make_client(emu, max_attempts=6) as client:
        results = [r async for r in client.fetch_many(names(400))]
        stats = client.stats
    assert_one_result_each(results, set(names(400)))
    assert all(r.ok for r in results), [r.error for r in results if r.error]
    faults = sum(emu.count(fault=f) for f in (Fault.SERVER_ERROR, Fault.RESET, Fault.TRUNCATED))
    assert faults >= 10  # the faults really happened ...
    assert stats.retries == faults  # ... and each one cost exactly one retry
    assert sum(r.attempts for r in results) == emu.count()
    assert stats.credits_spent == 2 * 400


async def test_without_retries_left_a_target_yields_its_error_never_nothing(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(
        api_keys=frozenset({api_key}),
        seed=3,
        fault_rates={Fault.SERVER_ERROR: 0.1, Fault.RESET: 0.05, Fault.TRUNCATED: 0.05},
    )
    async with run_emulator(config) as emu, make_client(emu, max_attempts=1) as client:
        results = [r async for r in client.fetch_many(names(300))]
    assert_one_result_each(results, set(names(300)))
    failed = [r for r in results if r.error is not None]
    assert len(failed) == emu.count() - emu.count(status=200, body_code=0)
    assert failed and all(r.status == "error" and r.attempts == 1 for r in failed)


async def test_a_target_failing_every_attempt_reports_all_attempts(
    api_key: str, make_client: ClientFactory
) -> None:
    script = {"username:doomed": [Fault.SERVER_ERROR] * 3}
    config = EmulatorConfig(api_keys=frozenset({api_key}), fault_script=script)
    async with run_emulator(config) as emu, make_client(emu, max_attempts=3) as client:
        results = [r async for r in client.fetch_many(["doomed", "fine"])]
    doomed = next(r for r in results if r.target == "doomed")
    assert doomed.attempts == 3 and doomed.status == "error"
    assert len(emu.records_for("username:doomed")) == 3


# -- credits -----------------------------------------------------------------------


async def test_402_stops_sending_and_every_remaining_target_is_not_attempted(
    api_key: str, make_client: ClientFactory
) -> None:
    credits = 40
    config = EmulatorConfig(api_keys=frozenset({api_key}), credits=credits, latency=0.01)
    targets = names(100)
    async with run_emulator(config) as emu, make_client(emu, concurrency=8) as client:
        batch = client.fetch_many(targets)
        results = [r async for r in batch]
    assert_one_result_each(results, set(targets))
    ok = [r for r in results if r.ok]
    assert len(ok) == credits // 2
    others = [r for r in results if not r.ok]
    assert all(isinstance(r.error, (InsufficientCreditsError, NotAttemptedError)) for r in others)
    not_attempted = [r for r in others if isinstance(r.error, NotAttemptedError)]
    assert not_attempted and all(r.error.reason == "credits exhausted" for r in not_attempted)  # type: ignore[union-attr]
    assert all(r.attempts == 0 for r in not_attempted)
    # Only requests already in flight when the first 402 arrived got one too.
    first_402 = next(r for r in emu.log if r.status == 402)
    after = [r for r in emu.log if r.seq > first_402.seq]
    assert all(r.status == 402 for r in after)
    assert len(after) < 8
    assert batch.stopped_reason is not None and batch.stopped_reason.reason == "credits exhausted"


async def test_max_credits_budget_stops_before_overspending(
    emulator_config: EmulatorConfig, api_key: str, make_client: ClientFactory
) -> None:
    async with run_emulator(emulator_config) as emu, make_client(emu, max_credits=11) as client:
        results = [r async for r in client.fetch_many(names(30))]
        assert client.stats.credits_spent == 10
    assert_one_result_each(results, set(names(30)))
    assert sum(r.ok for r in results) == 5
    assert emu.count() == 5
    budget = [r for r in results if isinstance(r.error, NotAttemptedError)]
    assert len(budget) == 25
    assert all(r.error.reason == "credit budget reached" for r in budget)  # type: ignore[union-attr]


async def test_401_stops_the_batch(
    emulator_config: EmulatorConfig, make_client: ClientFactory
) -> None:
    async with run_emulator(emulator_config) as emu:
        client = KeyAPIClient("sk_test_not_known", base_url=emu.base_url, qps=None, concurrency=4)
        async with client:
            results = [r async for r in client.fetch_many(names(50))]
    assert_one_result_each(results, set(names(50)))
    assert emu.count() <= 4  # the first wave only
    reasons = {r.error.reason for r in results if isinstance(r.error, NotAttemptedError)}
    assert reasons == {"authentication failed"}


def test_estimate_credits_counts_distinct_valid_targets() -> None:
    targets = ["javan", "@Javan", "https://instagram.com/javan/", "id:18527", "bad name", "x"]
    assert estimate_credits(targets) == 2 * 3


# -- input handling ------------------------------------------------------------------


async def test_duplicates_and_invalid_targets(
    emulator: object, api_key: str, make_client: ClientFactory
) -> None:
    inputs: list[object] = [
        "javan",
        " @JAVAN ",
        "https://www.instagram.com/javan/?hl=en",
        "id:18527",
        Target.user_id("18527"),
        "not a name!",
        "",
        "x" * 31,
        42,
        "valid.name_2",
    ]
    async with run_emulator(EmulatorConfig(api_keys=frozenset({api_key}))) as emu:
        async with make_client(emu) as client:
            batch = client.fetch_many(inputs)  # type: ignore[arg-type]
            results = [r async for r in batch]
    ok_targets = sorted(r.target for r in results if r.ok)
    assert ok_targets == ["id:18527", "javan", "valid.name_2"]
    invalid = [r for r in results if isinstance(r.error, InvalidTargetError)]
    assert sorted(r.target for r in invalid) == sorted(["", "42", "not a name!", "x" * 31])
    assert all(r.attempts == 0 for r in invalid)
    assert batch.counts.duplicates == 3 and batch.counts.invalid == 4
    assert emu.count() == 3  # nothing sent for duplicates or invalid input
    assert collections.Counter(r.target for r in results).most_common(1)[0][1] == 1


async def test_async_iterable_input(
    emulator_config: EmulatorConfig, make_client: ClientFactory
) -> None:
    async def source() -> AsyncIterator[str]:
        for name in names(25):
            await asyncio.sleep(0)
            yield name

    async with run_emulator(emulator_config) as emu, make_client(emu) as client:
        results = [r async for r in client.fetch_many(source())]
    assert_one_result_each(results, set(names(25)))


async def test_ordered_results_come_in_input_order(
    api_key: str, make_client: ClientFactory
) -> None:
    script = {f"username:user{i}": [Fault.SLOW] for i in range(0, 30, 7)}
    config = EmulatorConfig(api_keys=frozenset({api_key}), fault_script=script, slow_seconds=0.3)
    inputs = names(30)[:5] + ["bad name"] + names(30)[5:]
    async with run_emulator(config) as emu:
        async with make_client(emu, concurrency=4) as client:
            ordered = [r.target async for r in client.fetch_many(inputs, ordered=True)]
        emu.config = config  # restart the scripts for the unordered run
        async with make_client(emu, concurrency=4) as client:
            unordered = [r.target async for r in client.fetch_many(inputs)]
    assert ordered == inputs
    assert sorted(unordered) == sorted(inputs)
    assert unordered != inputs  # the slow ones finish late when order is not kept


async def test_a_broken_input_iterable_surfaces_after_queued_targets_finish(
    emulator_config: EmulatorConfig, make_client: ClientFactory
) -> None:
    def source() -> Iterator[str]:
        yield from names(5)
        raise OSError("disk on fire")

    seen: list[str] = []
    async with run_emulator(emulator_config) as emu, make_client(emu) as client:
        with pytest.raises(OSError, match="disk on fire"):
            async for result in client.fetch_many(source()):
                seen.append(result.target)
    assert sorted(seen) == sorted(names(5))


# -- bounded memory, cancellation, early exit ------------------------------------------


async def test_twenty_thousand_targets_stream_with_bounded_buffers(
    api_key: str, make_client: ClientFactory
) -> None:
    concurrency = 16
    pulled = 0
    worst_lead = 0
    worst_tasks = 0

    def source() -> Iterator[str]:
        nonlocal pulled
        for i in range(20_000):
            pulled += 1
            yield f"u{i}"

    config = EmulatorConfig(api_keys=frozenset({api_key}), empty_ratio=1.0)
    received = 0
    async with run_emulator(config, max_log=1000) as emu:
        async with make_client(emu, concurrency=concurrency) as client:
            baseline = len(asyncio.all_tasks())
            async for result in client.fetch_many(source()):
                assert result.ok
                received += 1
                worst_lead = max(worst_lead, pulled - received)
                if received % 500 == 0:
                    worst_tasks = max(worst_tasks, len(asyncio.all_tasks()) - baseline)
    assert received == 20_000
    # One target in each worker's hand + the result buffer + the one just
    # handed to us.
    assert worst_lead <= 2 * concurrency + 1, worst_lead
    # One batch runner + its workers; the emulator's per-request handlers are
    # bounded by the in-flight requests too.
    assert worst_tasks <= 1 + concurrency + concurrency + 2, worst_tasks
    assert emu.requests_total == 20_000


async def test_breaking_out_early_cancels_the_batch(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), latency=0.02)
    async with run_emulator(config) as emu:
        client = make_client(emu, concurrency=4)
        async with client:
            got = 0
            async for _ in client.fetch_many(names(1000)):
                got += 1
                if got == 5:
                    break
            gc.collect()
            for _ in range(20):
                await asyncio.sleep(0.01)
            workers = [t for t in asyncio.all_tasks() if t.get_name().startswith("keyapi-")]
            assert workers == []
            sent = emu.count()
            await asyncio.sleep(0.2)
            assert emu.count() == sent  # nothing more is sent
            assert sent < 20
        assert client._transport is not None and client._transport.closed  # type: ignore[attr-defined]


async def test_async_with_closes_the_batch_deterministically(
    emulator_config: EmulatorConfig, make_client: ClientFactory
) -> None:
    async with run_emulator(emulator_config) as emu, make_client(emu, concurrency=4) as client:
        async with client.fetch_many(names(500)) as batch:
            async for _ in batch:
                break
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("keyapi-")]


async def test_stop_sends_nothing_new_but_every_target_gets_a_result(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), latency=0.01)
    async with run_emulator(config) as emu, make_client(emu, concurrency=4) as client:
        batch = client.fetch_many(names(200))
        results: list[StoryResult] = []
        async for result in batch:
            results.append(result)
            if len(results) == 10:
                batch.stop("interrupted")
                sent_at_stop = emu.count()
    assert_one_result_each(results, set(names(200)))
    assert emu.count() <= sent_at_stop + 4
    stopped = [r for r in results if isinstance(r.error, NotAttemptedError)]
    assert len(stopped) == 200 - emu.count()
    assert all(r.error.reason == "interrupted" for r in stopped)  # type: ignore[union-attr]


async def test_cancellation_is_never_swallowed(api_key: str, make_client: ClientFactory) -> None:
    config = EmulatorConfig(
        api_keys=frozenset({api_key}),
        fault_script={"username:sleepy": [Fault.SLOW, Fault.SLOW]},
        slow_seconds=2.0,
    )
    async with run_emulator(config) as emu, make_client(emu) as client:
        task = asyncio.create_task(client.fetch_user_stories(username="sleepy"))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.fetch_user_stories(username="sleepy"), 0.1)


async def test_rate_limit_out_of_retries_is_reported(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(
        api_keys=frozenset({api_key}),
        retry_after=False,
        fault_script={"username:busy": [Fault.RATE_LIMIT_200, Fault.RATE_LIMIT_200]},
    )
    async with run_emulator(config) as emu, make_client(emu, max_attempts=2) as client:
        results = [r async for r in client.fetch_many(["busy"])]
        assert client.stats.rate_limited == 2
    (result,) = results
    assert isinstance(result.error, RateLimitError)
    assert (result.error.status, result.error.code, result.attempts) == (200, 429, 2)


async def test_waiting_for_the_rate_gate_does_not_count_against_the_timeout(
    emulator_config: EmulatorConfig, make_client: ClientFactory
) -> None:
    # qps=2 with a 0.3 s timeout: the fifth request waits ~2 s for its turn,
    # far longer than its timeout, and must still succeed.
    async with (
        run_emulator(emulator_config) as emu,
        make_client(emu, qps=2, timeout=0.3, rate_margin=0.0, max_attempts=1) as client,
    ):
        results = [r async for r in client.fetch_many(names(5))]
    assert all(r.ok for r in results), [r.error for r in results]
    assert max(r.elapsed for r in results) >= 1.5


async def test_requests_queued_at_the_gate_are_not_sent_after_a_402(
    api_key: str, make_client: ClientFactory
) -> None:
    # Paced at 10/s with 16 workers, most requests wait at the gate when the
    # 402 arrives; none of them may go out afterwards.
    config = EmulatorConfig(api_keys=frozenset({api_key}), credits=10)
    async with run_emulator(config) as emu, make_client(emu, qps=10, concurrency=16) as client:
        batch = client.fetch_many(names(20))
        results = [r async for r in batch]
    assert_one_result_each(results, set(names(20)))
    assert sum(r.ok for r in results) == 5
    assert emu.count(status=402) == 1
    assert emu.count() == 6
    assert batch.stopped_reason is not None
    assert batch.stopped_reason.reason == "credits exhausted"


async def test_budget_reached_is_the_batch_stop_reason(
    emulator_config: EmulatorConfig, make_client: ClientFactory
) -> None:
    # Paced, so that reserved requests are still waiting at the gate when the
    # budget runs out: they must still be sent.
    async with (
        run_emulator(emulator_config) as emu,
        make_client(emu, max_credits=4, qps=20) as client,
    ):
        batch = client.fetch_many(names(10))
        results = [r async for r in batch]
    assert sum(r.ok for r in results) == 2
    assert batch.stopped_reason is not None
    assert batch.stopped_reason.reason == "credit budget reached"
