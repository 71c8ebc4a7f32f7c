"""Validated, explicit client settings (keyword-only; every bad value is named).

Defaults and why:

* ``qps=10``: conservative. keyapi.ai does not publish a per-key limit, and a
  429 costs a round trip and a pause for the whole batch, so the default errs
  low; raise it to your plan's limit. ``qps=None`` switches the rate cap off
  (the in-flight cap still bounds the work, and 429s still slow it down).
* ``concurrency=16``: enough to keep 10-50 req/s flowing at typical API
  latencies (0.3-1.5 s) without opening hundreds of sockets.
* ``timeout=30`` seconds per attempt, measured from the moment the rate gate
  lets the request out (waiting for a turn never eats into it).
* ``max_attempts=5`` sends per target for transient failures.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ._errors import ConfigurationError
from ._retry import RetryPolicy

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_BACKOFF_CAP",
    "DEFAULT_BASE_URL",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_QPS",
    "DEFAULT_RATE_MARGIN",
    "DEFAULT_RETRY_AFTER_CAP",
    "DEFAULT_TIMEOUT",
    "ClientConfig",
    "Secret",
]

DEFAULT_BASE_URL = "https://api.keyapi.ai"
DEFAULT_QPS = 10.0
DEFAULT_CONCURRENCY = 16
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_RATE_MARGIN = 0.05
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_CAP = 20.0
DEFAULT_RETRY_AFTER_CAP = 60.0
API_KEY_ENV = "KEYAPI_API_KEY"
BASE_URL_ENV = "KEYAPI_BASE_URL"


class Secret:
    """A string that never shows itself in ``repr``/``str`` (the API key)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; only the request builder calls this."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Refuse to be pickled into logs, caches or task queues by accident.
        raise TypeError("the API key is not picklable")


def _number(
    name: str, value: object, *, allow_zero: bool = False, allow_none: bool = False
) -> None:
    """Require a finite number > 0 (or >= 0 with ``allow_zero``), naming ``name`` if not."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be a finite number {bound}, got {value!r}")


def _resolve_key(api_key: str | None) -> Secret:
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV)
    if api_key is not None and not isinstance(api_key, str):
        raise ConfigurationError("api_key must be a string")
    if api_key is None or not api_key.strip():
        raise ConfigurationError(
            f"no API key: pass api_key=... or set the {API_KEY_ENV} environment variable"
        )
    key = api_key.strip()
    if any(ch.isspace() for ch in key) or not key.isprintable():
        # Never echo the value: it is a secret even when malformed.
        raise ConfigurationError("api_key contains whitespace or control characters")
    return Secret(key)


def _shown(url: str) -> str:
    """``url`` without its userinfo, query and fragment (they may hold secrets), for messages."""
    head = re.split(r"[?#]", url, maxsplit=1)[0]
    return re.sub(r"//[^/@]*@", "//***@", head)


def _resolve_base_url(base_url: str | None) -> str:
    if base_url is None:
        base_url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if not isinstance(base_url, str):
        raise ConfigurationError(f"base_url must be a string, got {base_url!r}")
    text = base_url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - parsed lazily; raises ValueError when out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"base_url must be an http(s) URL, got {_shown(text)!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(
            f"base_url must not carry a query, fragment or credentials, got {_shown(text)!r}"
        )
    return text.rstrip("/")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Every setting of a :class:`~keyapi_async.KeyAPIClient`, validated once.

    Build it with :meth:`create`, which applies the environment fallbacks.
    """

    api_key: Secret
    base_url: str = DEFAULT_BASE_URL
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    qps: float | None = DEFAULT_QPS
    concurrency: int = DEFAULT_CONCURRENCY
    rate_margin: float = DEFAULT_RATE_MARGIN
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_credits: int | None = None
    user_agent: str = ""

    @classmethod
    def create(
        cls,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        qps: float | None = DEFAULT_QPS,
        concurrency: int = DEFAULT_CONCURRENCY,
        rate_margin: float = DEFAULT_RATE_MARGIN,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base: float = DEFAULT_BACKOFF_BASE,
        backoff_cap: float = DEFAULT_BACKOFF_CAP,
        retry_after_cap: float = DEFAULT_RETRY_AFTER_CAP,
        max_credits: int | None = None,
        user_agent: str = "",
    ) -> ClientConfig:
        """Validate every argument, naming the bad one, and apply env fallbacks."""
        _number("timeout", timeout)
        _number("connect_timeout", connect_timeout)
        _number("qps", qps, allow_none=True)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an int >= 1, got {concurrency!r}")
        _number("rate_margin", rate_margin, allow_zero=True)
        if rate_margin >= 0.5:
            raise ConfigurationError(f"rate_margin must be below 0.5, got {rate_margin!r}")
        if max_credits is not None and (
            isinstance(max_credits, bool) or not isinstance(max_credits, int) or max_credits < 0
        ):
            raise ConfigurationError(f"max_credits must be an int >= 0, got {max_credits!r}")
        if not isinstance(user_agent, str) or not user_agent.isprintable():
            raise ConfigurationError(f"user_agent must be printable text, got {user_agent!r}")
        # RetryPolicy lets NaN through (NaN < 0 is false), which would silently
        # turn backoff off; every float the client gets must be finite.
        _number("backoff_base", backoff_base, allow_zero=True)
        _number("backoff_cap", backoff_cap, allow_zero=True)
        _number("retry_after_cap", retry_after_cap, allow_zero=True)
        try:
            retry = RetryPolicy(
                max_attempts=max_attempts,
                backoff_base=backoff_base,
                backoff_cap=backoff_cap,
                retry_after_cap=retry_after_cap,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from None
        return cls(
            api_key=_resolve_key(api_key),
            base_url=_resolve_base_url(base_url),
            timeout=float(timeout),
            connect_timeout=float(connect_timeout),
            qps=None if qps is None else float(qps),
            concurrency=concurrency,
            rate_margin=float(rate_margin),
            retry=retry,
            max_credits=max_credits,
            user_agent=user_agent,
        )
