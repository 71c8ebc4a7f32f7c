"""Validated, explicit client settings: one list of options, their defaults in one place.

:class:`ClientConfig` is that list; :class:`~keyapi_async.KeyAPIClient` takes
the same names as keyword arguments (typed by :class:`ClientOptions`) and hands
them to :meth:`ClientConfig.create`, which validates each one, naming the bad
one, and applies the environment fallbacks.

Why the defaults: docs/decisions.md#rate-concurrency-time, docs/rate-limits.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any, TypedDict
from urllib.parse import SplitResult, urlsplit

from .._errors import ConfigurationError
from .retry import RetryPolicy
from .validate import check_count, check_number

DEFAULT_BASE_URL = "https://api.keyapi.ai"
DEFAULT_QPS = 10.0
DEFAULT_TIMEOUT = 30.0
API_KEY_ENV = "KEYAPI_API_KEY"
BASE_URL_ENV = "KEYAPI_BASE_URL"
REDIS_URL_ENV = "KEYAPI_REDIS_URL"
_HTTP = ("http", "https")
#: Numeric options: those that must be > 0, those that may be 0; integer ones, and their minimum.
_POSITIVE = ("qps", "timeout", "connect_timeout", "redis_grace")
_NON_NEGATIVE = ("rate_margin", "backoff_base", "backoff_cap", "retry_after_cap")
_COUNTS = {"max_attempts": 1, "concurrency": 1, "max_credits": 0}
_OPTIONAL = frozenset({"qps", "max_credits"})  # None: no cap


class Secret:
    """A string that never shows itself in ``repr``/``str`` (the API key)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself; only the request builder and the key fingerprint call this."""
        return self._value

    def __repr__(self) -> str:  # also str() and format(): object.__str__ calls it
        return "Secret('**********')"

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
    timeout: float = DEFAULT_TIMEOUT
    """Seconds per attempt, counted from when the rate gate lets the request out."""
    connect_timeout: float = 10.0
    """Seconds to open a connection."""
    qps: float | None = DEFAULT_QPS
    """Requests never exceeded in any one-second window; ``None``: no cap."""
    concurrency: int | None = None
    """Requests in flight at most; ``None`` derives ``ceil(qps * timeout)``, 16 to 512."""
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
        o: dict[str, Any] = defaults | options
        for name in _POSITIVE + _NON_NEGATIVE:
            if o[name] is not None or name not in _OPTIONAL:
                o[name] = check_number(o[name], name, positive=name not in _NON_NEGATIVE)
        if o["rate_margin"] >= 0.5:
            raise ConfigurationError(f"rate_margin must be below 0.5, got {o['rate_margin']!r}")
        if o["concurrency"] is None:
            o["concurrency"] = derived_concurrency(o["qps"], o["timeout"])
        for name, minimum in _COUNTS.items():
            if o[name] is not None or name not in _OPTIONAL:
                check_count(o[name], name, minimum=minimum)
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
        key = _resolve_key(api_key)
        # Not the field's default: an empty or no ``base_url`` lets the environment apply.
        base_url = options.get("base_url") or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        o["base_url"] = _base_url(base_url)
        if o["proxy"] is not None:
            o["proxy"] = validate_proxy_url(o["proxy"])
        redis_url = o["redis_url"] or os.environ.get(REDIS_URL_ENV)
        o["redis_url"] = _redis_url(redis_url) if redis_url else None
        if namespace is not None and o["redis_url"] is None:
            # Else a namespace meant to separate shared gates would be silently unused.
            raise ConfigurationError(
                f"redis_namespace {namespace!r} needs redis_url (or ${REDIS_URL_ENV}): "
                "it names keys in a shared Redis gate"
            )
        return cls(api_key=key, **o)

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


def derived_concurrency(qps: float | None, timeout: float) -> int:
    """The in-flight cap when none is given: fills ``qps`` at any latency up to ``timeout``.

    Bounded to 16-512 (sockets and tasks); 32 without a rate cap.
    """
    if qps is None:
        return 32
    return max(16, min(512, math.ceil(qps * timeout)))


def _resolve_key(api_key: object) -> Secret:
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV, "")
    if not isinstance(api_key, str):
        raise ConfigurationError("api_key must be a string")
    key = api_key.strip()
    if not key:
        raise ConfigurationError(
            f"no API key: pass api_key=... or set the {API_KEY_ENV} environment variable"
        )
    if any(ch.isspace() for ch in key) or not key.isprintable():
        # Never echo the value: it is a secret even when malformed.
        raise ConfigurationError("api_key contains whitespace or control characters")
    return Secret(key)


def _unauthenticated(url: str) -> tuple[str, str]:
    # ``scheme://`` (plus ``***@`` where credentials were) and the rest. All
    # before the last ``@`` counts as credentials, even where a parser would
    # see a host, a port or a fragment (``user:pa#ss@host``): an unencoded
    # password must not leak.
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "", scheme
    _, at, rest = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}", rest


def shown_url(url: str) -> str:
    """``url`` without its credentials, query and fragment (they may hold secrets), for messages."""
    head, rest = _unauthenticated(url)
    return head + re.split(r"[?#]", rest, maxsplit=1)[0]


def mask_proxy_url(url: str) -> str:
    """``scheme://host:port`` of a (proxy) URL, credentials shown as ``***@``, no path."""
    head, rest = _unauthenticated(url)
    hostport = re.split(r"[/?#]", rest, maxsplit=1)[0]
    scheme = head.partition("://")[0]
    with contextlib.suppress(ValueError):
        parts = urlsplit(f"//{hostport}")
        if parts.port is None and parts.hostname and scheme in _HTTP:
            hostport += ":443" if scheme == "https" else ":80"
    return head + hostport


def _parse_url(
    name: str, text: str, schemes: tuple[str, ...], kind: str, shown: str
) -> SplitResult:
    """``text`` parsed with one of ``schemes``, a valid port and (http) a host; else say so."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - parsed lazily; raises ValueError when out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in schemes or (schemes == _HTTP and not parts.hostname):
        raise ConfigurationError(f"{name} must be {kind}, got {shown!r}")
    return parts


def _base_url(value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"base_url must be a string, got {value!r}")
    text = value.strip()
    parts = _parse_url("base_url", text, _HTTP, "an http(s) URL", shown_url(text))
    carried = [
        what
        for what, present in (
            ("a query", parts.query),
            ("a fragment", parts.fragment),
            ("credentials", parts.username or parts.password),
        )
        if present
    ]
    if carried:
        # Named, not shown: a query or credentials may hold a secret.
        raise ConfigurationError(
            f"base_url must not carry a query, fragment or credentials; {shown_url(text)!r} "
            f"was given with {' and '.join(carried)}"
        )
    return text.rstrip("/")


def validate_proxy_url(url: object) -> str:
    """A proxy URL stripped of blanks: http(s), a host, a valid port, maybe ``user:password@``.

    A ConfigurationError for anything else names the URL with its credentials masked.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"proxy must be a URL string, got {type(url).__name__}")
    text = url.strip()
    kind = "an http:// or https:// URL with a host"
    parts = _parse_url("proxy", text, _HTTP, kind, mask_proxy_url(text))
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
    _parse_url("redis_url", text, ("redis", "rediss", "unix"), kind, shown_url(text))
    return text
