"""The retry policy: its arithmetic without I/O, and what it means for sends over loopback HTTP."""

from __future__ import annotations

import pytest

from keyapi_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConnectError,
    GateUnavailableError,
    InsufficientCreditsError,
    KeyAPIClient,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseDecodeError,
    ServerError,
    TransportError,
)
from keyapi_async._errors import InvalidTargetError, KeyAPIError
from keyapi_async.engine.retry import RetryPolicy, backoff_delay
from keyapi_async.testing import EmulatorConfig, Fault, run_emulator
from tests.test_transport import ScriptedServer


def test_backoff_doubles_up_to_the_cap_with_full_jitter() -> None:
    top = [backoff_delay(n, base=0.5, cap=8.0, rand=lambda: 0.999999) for n in range(1, 8)]
    assert top == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0], rel=1e-5)
    assert backoff_delay(3, base=0.5, cap=8.0, rand=lambda: 0.0) == 0.0
    assert backoff_delay(3, base=0.5, cap=8.0, rand=lambda: 0.5) == pytest.approx(1.0)


def test_backoff_survives_huge_attempt_numbers_and_rejects_zero() -> None:
    assert backoff_delay(10_000, base=1.0, cap=30.0, rand=lambda: 1.0) == 30.0
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0, base=1.0, cap=1.0, rand=lambda: 0.5)


def _rate_limit(retry_after: float | None) -> RateLimitError:
    return RateLimitError("qps limit exceeded", status=429, code=429, retry_after=retry_after)


def test_retry_after_wins_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=5, retry_after_cap=60.0)
    assert policy.delay_for(1, _rate_limit(3.0)) == 3.0
    assert policy.delay_for(1, _rate_limit(86_400.0)) == 60.0


def test_missing_retry_after_falls_back_to_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_base=0.5, backoff_cap=20.0)
    assert policy.delay_for(2, _rate_limit(None), rand=lambda: 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "error",
    [
        ServerError("boom", status=500, code=500),
        TransportError("reset"),
        ResponseDecodeError("truncated", status=200),
        _rate_limit(None),
    ],
)
def test_transient_errors_are_retried_until_attempts_run_out(error: KeyAPIError) -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.delay_for(1, error, rand=lambda: 0.5) is not None
    assert policy.delay_for(2, error, rand=lambda: 0.5) is not None
    assert policy.delay_for(3, error, rand=lambda: 0.5) is None


@pytest.mark.parametrize(
    "error",
    [
        BadRequestError("bad", status=400, code=400),
        AuthenticationError("apiKey is invalid", status=401, code=401),
        InsufficientCreditsError("apiKey quota is not enough", status=402, code=402),
        PermissionDeniedError("no permission", status=403, code=403, retry_after=1.0),
        NotFoundError("user not found", status=404, code=404),
        NotFoundError("user not found", status=200, code=404),
        GateUnavailableError("shared rate gate unreachable"),
        InvalidTargetError("bad username", value="a b"),
    ],
)
def test_permanent_errors_are_never_retried(error: KeyAPIError) -> None:
    assert RetryPolicy(max_attempts=10).delay_for(1, error) is None


def test_wait_for_ignores_attempt_budget() -> None:
    # The gate's shared cooldown still needs a wait for a target out of retries.
    policy = RetryPolicy(max_attempts=1)
    assert policy.delay_for(1, _rate_limit(2.0)) is None
    assert policy.wait_for(1, _rate_limit(2.0)) == 2.0


@pytest.mark.parametrize(
    "error",
    [
        ServerError("unavailable", status=503, code=503, retry_after=2.0),
        ServerError("boom", status=500, code=500, retry_after=2.0),
        ServerError("upstream", status=200, code=500, retry_after=2.0),
        _rate_limit(2.0),
    ],
    ids=["503", "500", "code-500-in-200", "429"],
)
def test_retry_after_is_honoured_for_every_retryable_status(error: APIStatusError) -> None:
    policy = RetryPolicy(max_attempts=5, backoff_base=0.01, backoff_cap=0.05)
    # rand would give a tiny backoff: the server's 2 s must win instead.
    assert policy.delay_for(1, error, rand=lambda: 0.5) == 2.0
    assert policy.wait_for(4, error, rand=lambda: 0.5) == 2.0


def test_retry_after_of_any_status_is_capped() -> None:
    policy = RetryPolicy(max_attempts=5, retry_after_cap=1.5)
    error = ServerError("unavailable", status=503, code=503, retry_after=3600.0)
    assert policy.delay_for(1, error) == 1.5


def test_a_server_error_without_retry_after_uses_full_jitter() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_base=0.5, backoff_cap=20.0)
    error = ServerError("unavailable", status=503, code=503)
    assert policy.delay_for(3, error, rand=lambda: 0.25) == pytest.approx(0.5)
    assert policy.delay_for(3, error, rand=lambda: 0.0) == 0.0


def test_retry_after_on_a_non_retryable_error_does_not_change_its_wait() -> None:
    # wait_for is also the gate's cooldown source; a 403's header is not a rate signal.
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=1.0)
    denied = PermissionDeniedError("no", status=403, code=403, retry_after=30.0)
    assert policy.wait_for(1, denied, rand=lambda: 0.5) == 0.5


def test_a_billed_decode_error_is_final() -> None:
    # Complete and paid for: a retry would buy the same bytes again (issue 18).
    policy = RetryPolicy(max_attempts=10, backoff_base=0.5, backoff_cap=20.0)
    billed = ResponseDecodeError("schema drift", status=200, billed=True)
    assert [policy.delay_for(n, billed, rand=lambda: 0.5) for n in (1, 2, 7)] == [None] * 3
    # The same answer unbilled (empty, cut off, not the API's JSON) is retried.
    free = ResponseDecodeError("truncated", status=200)
    assert policy.delay_for(1, free, rand=lambda: 0.5) == pytest.approx(0.25)


def test_an_unbilled_decode_error_keeps_the_attempt_budget() -> None:
    policy = RetryPolicy(max_attempts=4)
    free = ResponseDecodeError("truncated", status=200)
    assert [policy.delay_for(n, free, rand=lambda: 0.5) is not None for n in (1, 2, 3, 4)] == [
        True,
        True,
        True,
        False,
    ]


def test_connect_errors_are_retried_like_transport_errors() -> None:
    policy = RetryPolicy(max_attempts=2, backoff_base=1.0, backoff_cap=1.0)
    assert policy.delay_for(1, ConnectError("refused"), rand=lambda: 0.5) == 0.5
    assert policy.delay_for(2, ConnectError("refused"), rand=lambda: 0.5) is None


# -- over loopback HTTP: a billed answer is bought once ---------------------------------


async def test_a_billed_untypable_answer_is_bought_once(api_key: str) -> None:
    # Issue 18: integer ids where strings belong, HTTP 200 and code 0. The
    # emulator answers the first request so and the next one correctly: a
    # retry would have "worked", for 2 more credits and the same account.
    config = EmulatorConfig(
        api_keys=frozenset({api_key}), fault_script={"username:drift": (Fault.SCHEMA_DRIFT,)}
    )
    async with run_emulator(config, host="127.0.0.1") as emu:
        client = KeyAPIClient(
            api_key, base_url=emu.base_url, qps=None, backoff_base=0.01, max_credits=4
        )
        async with client:
            with pytest.raises(ResponseDecodeError) as caught:
                await client.fetch_user_stories(username="drift")
            assert caught.value.billed
            assert emu.requests_total == 1
            assert emu.credits_spent == 2 and client.stats.credits_spent == 2
            assert client.stats.retries == 0
            # Counted against max_credits (4): room for one more answer only.
            async with client.fetch_many(["next", "third"]) as batch:
                statuses = sorted([r.status async for r in batch])
            assert statuses[1] == "not_attempted" and statuses[0] in ("ok", "empty")
            assert emu.requests_total == 2 and emu.credits_spent == 4


async def test_an_unbilled_cut_off_answer_is_still_retried(api_key: str) -> None:
    config = EmulatorConfig(
        api_keys=frozenset({api_key}), fault_script={"username:cut": (Fault.TRUNCATED,)}
    )
    async with run_emulator(config, host="127.0.0.1") as emu:
        client = KeyAPIClient(api_key, base_url=emu.base_url, qps=None, backoff_base=0.01)
        async with client:
            await client.fetch_user_stories(username="cut")
            assert emu.requests_total == 2 and client.stats.retries == 1


async def test_a_body_shorter_than_its_content_length_is_still_retried(api_key: str) -> None:
    # Cut off by the transport (headers, half the body, reset): no complete
    # answer, so nothing final; the next send gets the whole body.
    async with ScriptedServer(["cut"]) as server:
        client = KeyAPIClient(api_key, base_url=server.base_url, qps=None, backoff_base=0.01)
        async with client:
            await client.fetch_user_stories(username="cut")
            assert server.requests == 2 and client.stats.retries == 1
