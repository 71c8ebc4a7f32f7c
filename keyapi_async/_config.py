"""Validated, explicit client settings: one list of options, their defaults in one place.

:class:`ClientConfig` is that list. :class:`~keyapi_async.KeyAPIClient` takes
the same names as keyword arguments (typed by :class:`ClientOptions`) and hands
them to :meth:`ClientConfig.create`, which validates each one, naming the bad
one, and applies the environment fallbacks.

Defaults and why:

* ``qps=10``: conservative. keyapi.ai does not publish a per-key limit, and a
  429 costs a round trip and a pause for the whole batch, so the default errs
  low; raise it to your plan's limit. ``qps=None`` switches the rate cap off
  (429s still slow the client down).
* ``concurrency=None``: derived. Filling a rate cap needs ``qps * latency``
  requests in flight (Little's law): 20/s at 3 s is 60. No request can be in
  flight longer than ``timeout``, so ``ceil(qps * timeout)`` in flight can
  never be the bottleneck under the cap, whatever the API's latency; it is
  bounded by :data:`MAX_DERIVED_CONCURRENCY` (sockets and tasks) and is at
  least :data:`MIN_DERIVED_CONCURRENCY`. With ``qps=None`` it is
  :data:`DEFAULT_UNCAPPED_CONCURRENCY`. An explicit ``concurrency`` is a hard cap.
  Only requests let out by the rate gate hold a socket, so at ``qps`` req/s
  and latency ``L`` about ``qps * L`` sockets are open, not ``concurrency``.
* ``timeout=30`` seconds per attempt, measured from the moment the rate gate
  lets the request out (waiting for a turn never eats into it).
* ``max_attempts=5`` sends per target for transient failures.
* ``proxy=None``: honour ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` from the
  environment, as httpx and requests do; a URL forces that proxy.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TypedDict, TypeVar
from urllib.parse import SplitResult, urlsplit

from ._errors import ConfigurationError
from ._retry import RetryPolicy

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_QPS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_UNCAPPED_CONCURRENCY",
    "MAX_DERIVED_CONCURRENCY",
    "MIN_DERIVED_CONCURRENCY",
    "REDIS_URL_ENV",
    "ClientConfig",
    "ClientOptions",
    "Secret",
    "mask_proxy_url",
    "shown_url",
    "validate_proxy_url",
]

_T = TypeVar("_T")

DEFAULT_BASE_URL = "https://api.keyapi.ai"
MAX_DERIVED_CONCURRENCY = 512
MIN_DERIVED_CONCURRENCY = 16
DEFAULT_UNCAPPED_CONCURRENCY = 32
API_KEY_ENV = "KEYAPI_API_KEY"
BASE_URL_ENV = "KEYAPI_BASE_URL"
REDIS_URL_ENV = "KEYAPI_REDIS_URL"


class Secret:
    """A string that never shows itself in ``repr``/``str`` (the API key)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; only the request builder and the key fingerprint call this."""
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


class ClientOptions(TypedDict, total=False):
    """The keyword options of :class:`~keyapi_async.KeyAPIClient` (see :class:`ClientConfig`)."""

    base_url: str | None
    timeout: float
    connect_timeout: float
    qps: float | None
    concurrency: int | None
    rate_margin: float
    max_attempts: int
    backoff_base: float
    backoff_cap: float
    retry_after_cap: float
    max_credits: int | None
    user_agent: str
    proxy: str | None
    redis_url: str | None
    redis_namespace: str | None
    redis_grace: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Every setting of a :class:`~keyapi_async.KeyAPIClient`, validated once.

    Build it with :meth:`create`, which applies the environment fallbacks and
    resolves ``concurrency``; the defaults below are the only ones.
    """

    api_key: Secret
    """The key (masked in every repr); ``$KEYAPI_API_KEY`` when not given."""
    base_url: str = DEFAULT_BASE_URL
    """API root; ``$KEYAPI_BASE_URL`` when not given."""
    timeout: float = 30.0
    """Seconds per attempt, counted from when the rate gate lets the request out."""
    connect_timeout: float = 10.0
    """Seconds to open a connection."""
    qps: float | None = 10.0
    """Requests never exceeded in any one-second window; ``None``: no cap."""
    concurrency: int | None = None
    """Requests in flight at most; ``None`` derives it (module docstring)."""
    rate_margin: float = 0.05
    """Share below ``qps`` to pace at, absorbing network jitter."""
    max_attempts: int = 5
    """Sends per target for transient failures (1: no retries)."""
    backoff_base: float = 0.5
    """First backoff ceiling in seconds (full jitter, doubling)."""
    backoff_cap: float = 20.0
    """Largest backoff in seconds."""
    retry_after_cap: float = 60.0
    """Largest server ``Retry-After`` honoured, in seconds."""
    max_credits: int | None = None
    """Credit budget: nothing is sent that could exceed it."""
    user_agent: str = ""
    """Prefix for the ``User-Agent`` header."""
    proxy: str | None = None
    """Proxy URL; ``None`` honours the ``*_PROXY`` environment variables."""
    redis_url: str | None = None
    """Share the rate, cooldown and budget through this Redis (``$KEYAPI_REDIS_URL``)."""
    redis_namespace: str | None = None
    """A separate shared budget and gate under the same key."""
    redis_grace: float = 5.0
    """Seconds to wait for a lost Redis before giving up on sending."""

    @classmethod
    def create(cls, api_key: str | None = None, **options: object) -> ClientConfig:
        """Validate every option, naming the bad one, and apply env fallbacks.

        Unknown option names raise :class:`TypeError`, as a misspelt keyword
        argument does anywhere in Python.
        """
        defaults = {f.name: f.default for f in fields(cls) if f.name != "api_key"}
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
        o = defaults | options
        qps = _optional(_positive, "qps", o["qps"])
        timeout = _positive("timeout", o["timeout"])
        margin = _non_negative("rate_margin", o["rate_margin"])
        if margin >= 0.5:
            raise ConfigurationError(f"rate_margin must be below 0.5, got {margin!r}")
        attempts = o["max_attempts"]
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise ConfigurationError(f"max_attempts must be an int, got {attempts!r}")
        if attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {attempts!r}")
        concurrency = _optional(_count, "concurrency", o["concurrency"])
        credits = o["max_credits"]
        if credits is not None:
            credits = _count("max_credits", credits, minimum=0)
        agent = o["user_agent"]
        if not isinstance(agent, str) or not agent.isprintable():
            raise ConfigurationError(f"user_agent must be printable text, got {agent!r}")
        namespace = o["redis_namespace"]
        if namespace is not None and (
            not isinstance(namespace, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", namespace)
        ):
            raise ConfigurationError(
                f"redis_namespace must be 1-64 of letters, digits, '.', '_', '-', got {namespace!r}"
            )
        # ``None`` when not given (not the field's default) so that the
        # environment applies.
        base_url = options.get("base_url") or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        redis_url = o["redis_url"] or os.environ.get(REDIS_URL_ENV) or None
        return cls(
            api_key=_resolve_key(api_key),
            base_url=_base_url(base_url),
            timeout=timeout,
            connect_timeout=_positive("connect_timeout", o["connect_timeout"]),
            qps=qps,
            concurrency=derived_concurrency(qps, timeout) if concurrency is None else concurrency,
            rate_margin=margin,
            max_attempts=attempts,
            backoff_base=_non_negative("backoff_base", o["backoff_base"]),
            backoff_cap=_non_negative("backoff_cap", o["backoff_cap"]),
            retry_after_cap=_non_negative("retry_after_cap", o["retry_after_cap"]),
            max_credits=credits,
            user_agent=agent,
            proxy=None if o["proxy"] is None else validate_proxy_url(o["proxy"]),
            redis_url=None if redis_url is None else _redis_url(redis_url),
            redis_namespace=namespace,
            redis_grace=_positive("redis_grace", o["redis_grace"]),
        )

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy these settings describe."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
            retry_after_cap=self.retry_after_cap,
        )

    @property
    def workers(self) -> int:
        """The resolved in-flight cap (``concurrency`` after :meth:`create`)."""
        if self.concurrency is None:
            return derived_concurrency(self.qps, self.timeout)
        return self.concurrency

    @property
    def paced_qps(self) -> float | None:
        """The rate the gate paces at: ``qps`` less the margin."""
        return None if self.qps is None else self.qps * (1 - self.rate_margin)


def _default(name: str) -> object:
    return next(f.default for f in fields(ClientConfig) if f.name == name)


# Read from the dataclass, the one place defaults are written, for the CLI's
# help texts.
DEFAULT_QPS: float | None = _default("qps")  # type: ignore[assignment]
DEFAULT_TIMEOUT: float = _default("timeout")  # type: ignore[assignment]


def derived_concurrency(qps: float | None, timeout: float) -> int:
    """The in-flight cap when none is given: enough to fill ``qps`` at any latency up to ``timeout``."""  # noqa: E501
    if qps is None:
        return DEFAULT_UNCAPPED_CONCURRENCY
    wanted = math.ceil(qps * timeout)
    return max(MIN_DERIVED_CONCURRENCY, min(MAX_DERIVED_CONCURRENCY, wanted))


def _finite(name: str, value: object, *, zero: bool) -> float:
    """``value`` as a float: finite and > 0 (or >= 0 with ``zero``); else name it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ConfigurationError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _positive(name: str, value: object) -> float:
    return _finite(name, value, zero=False)


def _non_negative(name: str, value: object) -> float:
    return _finite(name, value, zero=True)


def _count(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _optional(check: Callable[[str, object], _T], name: str, value: object) -> _T | None:
    return None if value is None else check(name, value)


def _resolve_key(api_key: object) -> Secret:
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


def shown_url(url: str) -> str:
    """``url`` without its password, query and fragment (they may hold secrets), for messages."""
    head = re.split(r"[?#]", url, maxsplit=1)[0]
    return re.sub(r"//[^/@]*@", "//***@", head)


def _split(name: str, text: str, schemes: tuple[str, ...], shown: str, kind: str) -> SplitResult:
    """Parse ``text`` as a URL with one of ``schemes`` and a valid port, or say what it must be."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - parsed lazily; raises ValueError when out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in schemes or (schemes != ("unix",) and not parts.netloc):
        raise ConfigurationError(f"{name} must be {kind}, got {shown!r}")
    return parts


def _base_url(value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"base_url must be a string, got {value!r}")
    text = value.strip()
    shown = shown_url(text)
    parts = _split("base_url", text, ("http", "https"), shown, "an http(s) URL")
    if not parts.hostname:
        raise ConfigurationError(f"base_url must be an http(s) URL, got {shown!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(
            f"base_url must not carry a query, fragment or credentials, got {shown_url(text)!r}"
        )
    return text.rstrip("/")


_PROXY_SCHEMES = ("http", "https")


def mask_proxy_url(url: str) -> str:
    """Return ``scheme://host:port`` of a proxy URL, credentials shown as ``***@``.

    Path, query and fragment are dropped. Everything before the last ``@`` is
    taken for credentials, even where a parser would see a host, a port or a
    fragment (``user:pa#ss@host``): an unencoded password must not leak.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "", url.strip()
    userinfo = ""
    if "@" in rest:
        userinfo, rest = "***@", rest.rsplit("@", 1)[1]
    hostport = re.split(r"[/?#]", rest, maxsplit=1)[0]
    prefix = f"{scheme}://" if sep else ""
    try:
        parts = urlsplit(f"//{hostport}")
        port = parts.port
    except ValueError:
        return f"{prefix}{userinfo}{hostport}"
    if port is None and parts.hostname and scheme in _PROXY_SCHEMES:
        hostport += ":443" if scheme == "https" else ":80"
    return f"{prefix}{userinfo}{hostport}"


def validate_proxy_url(url: object) -> str:
    """Check a proxy URL and return it stripped of surrounding blanks.

    It must be ``http://`` or ``https://`` (the scheme of the hop to the
    proxy; https targets are tunnelled either way) with a host and a valid
    port; ``user:password@`` is allowed and sent as ``Proxy-Authorization``.

    Raises:
        ConfigurationError: naming the URL with its credentials masked.

    """
    if not isinstance(url, str):
        raise ConfigurationError(f"proxy must be a URL string, got {type(url).__name__}")
    text = url.strip()
    kind = "an http:// or https:// URL with a host"
    parts = _split("proxy", text, _PROXY_SCHEMES, mask_proxy_url(text), kind)
    if not parts.hostname:
        raise ConfigurationError(f"proxy must be {kind}, got {mask_proxy_url(text)!r}")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ConfigurationError(
            f"proxy must not carry a path, query or fragment, got {mask_proxy_url(text)!r}"
        )
    return text


def _redis_url(value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"redis_url must be a string, got {type(value).__name__}")
    text = value.strip()
    kind = "a redis://, rediss:// or unix:// URL"
    _split("redis_url", text, ("redis", "rediss", "unix"), shown_url(text), kind)
    return text
