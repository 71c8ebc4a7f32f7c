"""Engine v2 over loopback HTTP: money, lifetime, circuit breaker, logging, layering.

Each test here names the defect it guards against; each failed on the engine
before v2 (checked against the previous main in a separate worktree).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import time
from collections.abc import Callable

import anyio
import pytest

import keyapi_async
from keyapi_async import (
    KeyAPIClient,
    NotFoundError,
    PermissionDeniedError,
    ResponseDecodeError,
)
from keyapi_async.testing import (
    Emulator,
    EmulatorConfig,
    EmulatorTransport,
    Fault,
    run_emulator,
)

from .test_transport import ScriptedServer
from .virtual_clock import run_virtual

ClientFactory = Callable[..., KeyAPIClient]


def names(n: int, prefix: str = "user") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# -- money ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [1, 2])
async def test_a_dropped_connection_is_never_re_sent_behind_our_back(
    api_key: str, max_attempts: int
) -> None:
    # aiohttp re-sends an idempotent GET once when a kept-alive connection
    # dies before the answer; each of those is a paid request the client
    # never counted (max_attempts=1 put 2 on the wire, max_attempts=2 put 4).
    script = ["ok"] + ["close"] * max_attempts
    async with ScriptedServer(script) as server:
        client = KeyAPIClient(
            api_key,
            base_url=server.base_url,
            qps=None,
            max_attempts=max_attempts,
            backoff_base=0.01,
            backoff_cap=0.01,
            concurrency=1,
        )
        async with client:
            await client.fetch_user_stories(username="warmup")  # a kept-alive connection
            with pytest.raises(keyapi_async.TransportError):
                await client.fetch_user_stories(username="victim")
            assert server.requests == 1 + max_attempts
            assert client.stats.requests_sent == 1 + max_attempts


async def test_billed_undecodable_answers_count_and_max_credits_holds(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), fault_rates={Fault.SCHEMA_DRIFT: 1.0})
    async with run_emulator(config) as emu, make_client(emu, max_credits=10) as client:
        async with client.fetch_many(names(50)) as batch:
            results = [r async for r in batch]
    assert len(results) == 50
    assert emu.credits_spent <= 10
    assert client.stats.credits_spent == emu.credits_spent
    decode_errors = [r for r in results if isinstance(r.error, ResponseDecodeError)]
    assert decode_errors and all(r.error.billed for r in decode_errors)  # type: ignore[union-attr]
    # A complete billed answer is final: never bought again.
    assert all(r.attempts == 1 for r in decode_errors)
    assert {r.status for r in results} <= {"error", "not_attempted"}


async def test_cancelling_a_batch_gives_every_reservation_back(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), empty_ratio=1.0)
    async with run_emulator(config) as emu, make_client(emu, qps=5, max_credits=40) as client:
        async with client.fetch_many(names(100, "first")) as batch:
            async for _ in batch:
                break  # leaves many requests waiting at the gate, holding credits
        spent = client.stats.credits_spent
        async with client.fetch_many(names(100, "second")) as batch:
            second = [r async for r in batch]
    assert sum(r.ok for r in second) == (40 - spent) // 2
    assert emu.credits_spent <= 40


async def test_an_unreachable_api_stops_the_batch_at_once(api_key: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` now: every connection is refused.
    client = KeyAPIClient(
        api_key, base_url=f"http://127.0.0.1:{port}", qps=50, backoff_base=0.05, backoff_cap=0.2
    )
    started = time.monotonic()
    async with client, client.fetch_many(names(98)) as batch:
        results = [r async for r in batch]
    elapsed = time.monotonic() - started
    assert len(results) == 98
    unsent = [r for r in results if r.status == "not_attempted"]
    assert len(unsent) >= 90
    reason = unsent[0].error
    assert reason is not None and "API unreachable at http://127.0.0.1" in str(reason)
    assert batch.stopped_reason is not None
    assert client.stats.requests_sent <= 20
    assert elapsed < 20  # was 55 s; generous for a loaded machine


# -- errors that stop a batch, or one target ---------------------------------------------


async def test_403_stops_the_batch_like_401(api_key: str, make_client: ClientFactory) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), forbidden_keys=frozenset({api_key}))
    async with run_emulator(config) as emu, make_client(emu, qps=20) as client:
        async with client.fetch_many(names(60)) as batch:
            results = [r async for r in batch]
    assert len(results) == 60
    assert any(isinstance(r.error, PermissionDeniedError) for r in results)
    assert batch.stopped_reason is not None
    assert batch.stopped_reason.reason == "permission denied"
    assert emu.requests_total < 10


async def test_404_is_one_targets_error_and_not_retried(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}))
    async with run_emulator(config) as emu, make_client(emu) as client:
        async with client.fetch_many(["missing_one", "present"]) as batch:
            results = {r.target: r async for r in batch}
    assert isinstance(results["missing_one"].error, NotFoundError)
    assert results["missing_one"].attempts == 1
    assert results["present"].ok
    assert emu.requests_total == 2


# -- lifetime: nothing left open, break stops sending -----------------------------------


async def test_plain_async_for_leaves_nothing_open(
    emulator_config: EmulatorConfig, make_client: ClientFactory
) -> None:
    # Under filterwarnings=error an unclosed stream's ResourceWarning fails this.
    async with run_emulator(emulator_config) as emu, make_client(emu) as client:
        got = [r async for r in client.fetch_many(names(20))]
        assert len(got) == 20
        async for _ in client.fetch_many(names(20, "b")):
            break
        with pytest.raises(ZeroDivisionError):
            async for _ in client.fetch_many(names(20, "c")):
                raise ZeroDivisionError
        gc.collect()
        await asyncio.sleep(0.05)


async def test_leaving_async_with_stops_sending_deterministically(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), latency=0.05)
    async with run_emulator(config) as emu, make_client(emu, concurrency=8) as client:
        async with client.fetch_many(names(1000)) as batch:
            async for _ in batch:
                break
        sent = emu.requests_total
        workers = [t for t in asyncio.all_tasks() if t.get_name().startswith("keyapi-")]
        assert workers == []
        await asyncio.sleep(0.3)
        assert emu.requests_total == sent
        assert sent <= 2 * 8  # the first wave, and the workers that finished with it


async def test_cancellation_from_outside_propagates_and_closes(
    api_key: str, make_client: ClientFactory
) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), latency=0.05)
    async with run_emulator(config) as emu, make_client(emu, concurrency=4) as client:
        with anyio.move_on_after(0.3) as scope:
            async with client.fetch_many(names(1000)) as batch:
                async for _ in batch:
                    pass
        assert scope.cancelled_caught
        assert client.stats.in_flight == 0


def test_stop_frees_every_worker_waiting_at_the_gate_at_once() -> None:
    # 300 workers (derived from qps=10) wait for a turn; after stop() they
    # must not drain one turn at a time (that took 30 s).
    emulator = Emulator(EmulatorConfig(api_keys=frozenset({"sk_test_v"}), latency=0.2))

    async def main() -> tuple[float, int, int]:
        loop = asyncio.get_running_loop()
        client = KeyAPIClient(
            "sk_test_v",
            base_url="http://127.0.0.1:9",
            qps=10,
            transport=EmulatorTransport(emulator),
        )
        async with client, client.fetch_many(names(1000)) as batch:
            seen = 0
            async for _ in batch:
                seen += 1
                if seen == 5:
                    batch.stop("interrupted")
                    stopped_at = loop.time()
            drained = loop.time() - stopped_at
        return drained, seen, emulator.requests_total

    drained, seen, sent = run_virtual(main)
    assert seen == 1000  # one result per target, the rest not_attempted
    assert drained < 1.0, drained
    assert sent <= 10


# -- asyncio only -------------------------------------------------------------------------


def test_trio_gets_one_clear_error() -> None:
    pytest.importorskip("trio")

    async def main() -> None:
        async with KeyAPIClient("sk_test_x", base_url="http://127.0.0.1:9"):
            pass

    with pytest.raises(RuntimeError, match="asyncio only"):
        anyio.run(main, backend="trio")


# -- logging ------------------------------------------------------------------------------


async def test_debug_log_per_request_and_info_per_stop_never_the_key(
    api_key: str, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config = EmulatorConfig(api_keys=frozenset({api_key}), credits=6)
    caplog.set_level(logging.DEBUG, logger="keyapi_async")
    async with run_emulator(config) as emu, make_client(emu, concurrency=1) as client:
        async with client.fetch_many(names(6)) as batch:
            [r async for r in batch]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("user0" in line and "attempt=1" in line and "latency=" in line for line in debug)
    assert any("credits exhausted" in line for line in info)
    assert all(api_key not in r.getMessage() for r in caplog.records)
