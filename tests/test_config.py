"""Client settings: every bad argument is named; environment fallbacks; explicit wins."""

from __future__ import annotations

import math
import pickle
import re
from typing import Any

import pytest

from keyapi_async import ConfigurationError, KeyAPIClient
from keyapi_async.engine.config import DEFAULT_BASE_URL, ClientConfig, Secret


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own KEYAPI_* variables must not leak into these tests.
    monkeypatch.delenv("KEYAPI_API_KEY", raising=False)
    monkeypatch.delenv("KEYAPI_BASE_URL", raising=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"qps": 0}, "qps must be a finite number > 0, got 0"),
        ({"qps": -1}, "qps must be a finite number > 0, got -1"),
        ({"qps": math.nan}, "qps must be a finite number > 0, got nan"),
        ({"qps": math.inf}, "qps must be a finite number > 0, got inf"),
        ({"qps": "10"}, "qps must be a number, got '10'"),
        ({"qps": True}, "qps must be a number, got True"),
        ({"concurrency": 0}, "concurrency must be an int >= 1, got 0"),
        ({"concurrency": -3}, "concurrency must be an int >= 1, got -3"),
        ({"concurrency": 1.5}, "concurrency must be an int >= 1, got 1.5"),
        ({"concurrency": True}, "concurrency must be an int >= 1, got True"),
        ({"concurrency": "4"}, "concurrency must be an int >= 1, got '4'"),
        ({"timeout": 0}, "timeout must be a finite number > 0, got 0"),
        ({"timeout": -1.0}, "timeout must be a finite number > 0, got -1.0"),
        ({"timeout": math.inf}, "timeout must be a finite number > 0, got inf"),
        ({"timeout": None}, "timeout must be a number, got None"),
        ({"connect_timeout": 0}, "connect_timeout must be a finite number > 0, got 0"),
        ({"max_attempts": 0}, "max_attempts must be an int >= 1, got 0"),
        ({"max_attempts": 2.0}, "max_attempts must be an int >= 1, got 2.0"),
        ({"max_attempts": True}, "max_attempts must be an int >= 1, got True"),
        ({"rate_margin": 0.6}, "rate_margin must be below 0.5, got 0.6"),
        ({"rate_margin": 0.5}, "rate_margin must be below 0.5, got 0.5"),
        ({"rate_margin": -0.1}, "rate_margin must be a finite number >= 0, got -0.1"),
        ({"rate_margin": math.nan}, "rate_margin must be a finite number >= 0, got nan"),
        ({"backoff_base": -1}, "backoff_base must be a finite number >= 0, got -1"),
        ({"backoff_base": math.nan}, "backoff_base must be a finite number >= 0, got nan"),
        ({"backoff_cap": math.nan}, "backoff_cap must be a finite number >= 0, got nan"),
        ({"retry_after_cap": -1}, "retry_after_cap must be a finite number >= 0, got -1"),
        ({"max_credits": -1}, "max_credits must be an int >= 0, got -1"),
        ({"max_credits": 1.5}, "max_credits must be an int >= 0, got 1.5"),
        ({"max_credits": True}, "max_credits must be an int >= 0, got True"),
        ({"user_agent": "bad\nagent"}, "user_agent must be printable text, got 'bad\\nagent'"),
        ({"user_agent": 5}, "user_agent must be printable text, got 5"),
        ({"base_url": "ftp://x"}, "base_url must be an http(s) URL, got 'ftp://x'"),
        ({"base_url": "http://"}, "base_url must be an http(s) URL, got 'http://'"),
        ({"base_url": "api.keyapi.ai"}, "base_url must be an http(s) URL, got 'api.keyapi.ai'"),
        ({"base_url": "http://h:99999"}, "base_url must be an http(s) URL, got 'http://h:99999'"),
        ({"base_url": "http://[::1"}, "base_url must be an http(s) URL, got 'http://[::1'"),
        ({"base_url": 5}, "base_url must be a string, got 5"),
        (
            {"base_url": "https://api.keyapi.ai/?x=1"},
            "base_url must not carry a query, fragment or credentials; 'https://api.keyapi.ai/' "
            "was given with a query",
        ),
        (
            {"base_url": "https://api.keyapi.ai/#frag"},
            "base_url must not carry a query, fragment or credentials; 'https://api.keyapi.ai/' "
            "was given with a fragment",
        ),
        (
            {"base_url": "https://user:pw@api.keyapi.ai"},
            "base_url must not carry a query, fragment or credentials; 'https://***@api.keyapi.ai' "
            "was given with credentials",
        ),
    ],
)
def test_invalid_argument_is_named(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        KeyAPIClient("k", **kwargs)
    assert info.value.message == message
    assert str(info.value) == message
    assert info.value.target is None
    assert isinstance(info.value, ValueError)
    assert next(iter(kwargs)) in str(info.value)


def test_base_url_errors_never_echo_what_may_be_a_secret() -> None:
    for url in (
        "https://api.keyapi.ai/?apiKey=hunter2",
        "https://me:hunter2@api.keyapi.ai",
        "https://api.keyapi.ai/#hunter2",
        "ftp://me:hunter2@api.keyapi.ai:bad/?k=hunter2",
    ):
        with pytest.raises(ConfigurationError) as info:
            KeyAPIClient("k", base_url=url)
        assert "hunter2" not in str(info.value)
        assert "hunter2" not in repr(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"qps": None},
        {"qps": 0.5},
        {"rate_margin": 0},
        {"rate_margin": 0.49},
        {"max_credits": 0},
        {"max_attempts": 1},
        {"backoff_base": 0, "backoff_cap": 0, "retry_after_cap": 0},
        {"concurrency": 1},
        {"base_url": "http://127.0.0.1:8089"},
    ],
)
def test_edge_values_are_accepted(kwargs: dict[str, Any]) -> None:
    KeyAPIClient("k", **kwargs)


def test_defaults_and_normalisation() -> None:
    config = KeyAPIClient(" k-1 ", base_url=" https://proxy.example/base/ ", qps=20).config
    assert config.api_key == Secret("k-1")
    assert config.base_url == "https://proxy.example/base"
    assert config.qps == 20.0
    assert isinstance(config.qps, float)
    # Derived: enough in flight to fill 20/s at any latency up to the timeout.
    assert config.concurrency == 512  # ceil(20 * 30) = 600, bounded at 512
    assert config.timeout == 30.0
    assert config.connect_timeout == 10.0
    assert config.rate_margin == 0.05
    assert config.retry.max_attempts == 5
    assert config.max_credits is None
    assert KeyAPIClient("k").config.base_url == DEFAULT_BASE_URL == "https://api.keyapi.ai"


def test_missing_key_names_the_environment_variable() -> None:
    expected = "no API key: pass api_key=... or set the KEYAPI_API_KEY environment variable"
    for key in (None, "", "   "):
        with pytest.raises(ConfigurationError) as info:
            KeyAPIClient(key)
        assert info.value.message == expected


def test_malformed_key_is_rejected_without_echoing_it() -> None:
    for key in ("sk_test_has space", "sk_test_tab\there", "sk_test_bell\x07"):
        with pytest.raises(ConfigurationError) as info:
            KeyAPIClient(key)
        assert info.value.message == "api_key contains whitespace or control characters"
    with pytest.raises(ConfigurationError) as typed:
        KeyAPIClient(b"bytes-key")  # type: ignore[arg-type]
    assert typed.value.message == "api_key must be a string"


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYAPI_API_KEY", "env-key")
    assert KeyAPIClient().config.api_key == Secret("env-key")
    assert KeyAPIClient("explicit-key").config.api_key == Secret("explicit-key")


def test_blank_key_in_environment_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYAPI_API_KEY", "  ")
    with pytest.raises(ConfigurationError, match="KEYAPI_API_KEY"):
        KeyAPIClient()


def test_base_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYAPI_BASE_URL", "http://127.0.0.1:9999/")
    assert KeyAPIClient("k").config.base_url == "http://127.0.0.1:9999"
    assert KeyAPIClient("k", base_url="http://10.0.0.1").config.base_url == "http://10.0.0.1"
    monkeypatch.setenv("KEYAPI_BASE_URL", "")
    assert KeyAPIClient("k").config.base_url == DEFAULT_BASE_URL
    monkeypatch.setenv("KEYAPI_BASE_URL", "ftp://nope")
    with pytest.raises(ConfigurationError, match=re.escape("got 'ftp://nope'")):
        KeyAPIClient("k")


def test_session_must_be_an_aiohttp_session() -> None:
    with pytest.raises(TypeError, match=re.escape("session must be an aiohttp.ClientSession")):
        KeyAPIClient("k", session=object())  # type: ignore[arg-type]


def test_secret_never_shows_itself() -> None:
    secret = Secret("sk_test_abc")
    assert secret.reveal() == "sk_test_abc"
    assert repr(secret) == str(secret) == "Secret('**********')"
    assert f"{secret}" == "Secret('**********')"
    assert secret == Secret("sk_test_abc")
    assert secret != Secret("other")
    assert secret != "sk_test_abc"
    assert hash(secret) == hash(Secret("sk_test_abc"))
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(secret)


def test_client_config_create_is_the_same_validation() -> None:
    config = ClientConfig.create("k", qps=None, max_attempts=2, max_credits=10)
    assert (config.qps, config.retry.max_attempts, config.max_credits) == (None, 2, 10)
    with pytest.raises(ConfigurationError, match=r"^concurrency "):
        ClientConfig.create("k", concurrency=0)


@pytest.mark.parametrize(
    ("qps", "timeout", "expected"),
    [(10, 30, 300), (20, 30, 512), (1, 5, 16), (None, 30, 32), (20, 5, 100)],
)
def test_concurrency_is_derived_from_qps_and_timeout(
    qps: float | None, timeout: float, expected: int
) -> None:
    config = ClientConfig.create("k", qps=qps, timeout=timeout)
    assert config.concurrency == expected
    # An explicit value is a hard cap, whatever qps says.
    assert ClientConfig.create("k", qps=qps, concurrency=7).concurrency == 7


def test_an_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="qsp"):
        ClientConfig.create("k", qsp=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"proxy": "ftp://user:pw@proxy.example"},
            r"^proxy must be an http:// or https:// URL with a host, got 'ftp://\*\*\*@",
        ),
        ({"redis_url": "http://127.0.0.1:6379"}, "^redis_url must be"),
        ({"redis_namespace": "a b"}, "^redis_namespace must be"),
        ({"redis_namespace": "jobs"}, "^redis_namespace 'jobs' needs redis_url"),
        ({"redis_grace": -1}, "^redis_grace must be"),
    ],
)
def test_new_options_are_validated_without_echoing_secrets(
    kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match) as caught:
        ClientConfig.create("k", **kwargs)
    assert "pw" not in str(caught.value)


def test_redis_url_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYAPI_REDIS_URL", "redis://127.0.0.1:6390/0")
    assert ClientConfig.create("k").redis_url == "redis://127.0.0.1:6390/0"
    monkeypatch.delenv("KEYAPI_REDIS_URL")
    assert ClientConfig.create("k").redis_url is None


@pytest.mark.parametrize("option", ["base_url", "redis_url"])
def test_a_password_with_a_hash_never_shows_in_a_url_error(option: str) -> None:
    # An unencoded '#' or '?' in the password: a parser takes the rest for a fragment.
    scheme = "https" if option == "base_url" else "redis"
    for url in (f"{scheme}://alice:pa#hunter2@host:bad", f"{scheme}://alice:hun?ter2@host:bad"):
        with pytest.raises(ConfigurationError) as caught:
            ClientConfig.create("k", **{option: url})
        text = f"{caught.value} {caught.value!r}"
        assert "alice" not in text
        assert f"got '{scheme}://***@host:bad'" in text
