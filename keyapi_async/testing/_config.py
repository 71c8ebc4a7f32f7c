"""Configuration of the emulator: :class:`EmulatorConfig` and the :class:`Fault` catalogue."""

from __future__ import annotations

import enum
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, cast
from urllib.parse import urlsplit

from .._errors import ConfigurationError
from ..engine.validate import check_count, check_number
from ._checks import fault_rates, fault_script
from ._churn import ChurnConfig
from ._highlights import HIGHLIGHT_STORIES_PATH, TRAY_PATH, HighlightConfig

__all__ = [
    "BILLED_FAULTS",
    "DEFAULT_TEST_KEY",
    "ENDPOINT",
    "ENDPOINTS",
    "EmulatorConfig",
    "Fault",
    "MediaConfig",
    "MediaFault",
]

ENDPOINT: Final = "/v1/instagram/fetch_user_stories"
"""The stories path the emulator answers."""
ENDPOINTS: Final = frozenset({ENDPOINT, TRAY_PATH, HIGHLIGHT_STORIES_PATH})
"""Every API path the emulator answers: stories, highlight trays, highlight stories."""

_MIN_OVERRIDE_SIZE: Final = 1024  # smaller media overrides could not hold a JPEG/MP4 header

DEFAULT_TEST_KEY = "sk_test_emulator_key"
"""An obviously fake API key that a default :class:`EmulatorConfig` accepts."""


class MediaFault(enum.Enum):
    """A misbehaviour the media CDN can inject instead of a clean answer."""

    TRUNCATED = "truncated"
    """Full ``Content-Length``, half of the bytes, then the connection is closed."""

    RESET = "reset"
    """Full ``Content-Length``, a quarter of the bytes, then the connection is aborted."""

    SLOW = "slow"
    """The right bytes, trickled in :attr:`MediaConfig.slow_chunk` pieces."""

    WRONG_LENGTH = "wrong_length"
    """``Content-Length`` announces more than the file has; all of it is sent, then close."""

    EXPIRED = "expired"
    """HTTP 403 ``URL signature expired`` although the URL is still valid."""

    GONE = "gone"
    """HTTP 410 ``Gone``."""

    SERVER_ERROR = "server_error"
    """HTTP 503 ``Service Unavailable``."""

    REDIRECT = "redirect"
    """HTTP 302 to the same media on this emulator (a hop a client may follow)."""

    REDIRECT_OFFSITE = "redirect_offsite"
    """HTTP 302 to :attr:`MediaConfig.offsite_base` (a host a client must not follow to)."""


def _story_key(story_id: object) -> str:
    if not isinstance(story_id, str) or not story_id:
        raise ConfigurationError(f"media.fault_script keys must be story ids, got {story_id!r}")
    return story_id


@dataclass(frozen=True, kw_only=True)
class MediaConfig:
    """How the emulator's media CDN behaves (the ``media`` field of ``EmulatorConfig``).

    Immutable and validated on construction like ``EmulatorConfig``; fault
    names may be given as strings.
    """

    enabled: bool = False
    """Point story items' image and video URLs at this emulator's ``/media`` route.

    Off by default because the signed URLs carry the emulator's port and an
    expiry time, so answers would no longer be byte-identical across runs.
    The route itself is always served.
    """

    url_ttl: float = 3600.0
    """Seconds a signed URL stays valid after the answer that carried it (0: expired at once)."""

    fault_rates: Mapping[MediaFault, float] = field(default_factory=dict)
    """Per-request probability of each fault, drawn from a seeded RNG; sum <= 1."""

    fault_script: Mapping[str, Sequence[MediaFault]] = field(default_factory=dict)
    """Per story id, the faults applied to its 1st, 2nd, ... valid media request.

    Scripted faults take precedence over random ones.
    """

    sizes: Mapping[str, int] = field(default_factory=dict)
    """Per story id, the exact byte size of every rendition (e.g. 60 MB for a memory test).

    Bodies are generated in chunks, so large sizes cost no memory.
    """

    ranges: bool = True
    """Honour ``Range: bytes=N-[M]`` with 206 (False: always answer 200 with the whole file)."""

    chunk_size: int = 65536
    """Bytes per write when streaming a body."""

    slow_chunk: int = 4096
    """Bytes per write for :attr:`MediaFault.SLOW`."""

    slow_delay: float = 0.02
    """Pause between writes for :attr:`MediaFault.SLOW`, in seconds."""

    offsite_base: str = "https://media.attacker.invalid"
    """Where :attr:`MediaFault.REDIRECT_OFFSITE` points (scheme://host[:port])."""

    def __post_init__(self) -> None:
        """Validate every field and freeze the containers."""
        if not isinstance(self.enabled, bool):
            raise ConfigurationError(f"media.enabled must be a bool, got {self.enabled!r}")
        if not isinstance(self.ranges, bool):
            raise ConfigurationError(f"media.ranges must be a bool, got {self.ranges!r}")
        check_number(self.url_ttl, "media.url_ttl")
        check_number(self.slow_delay, "media.slow_delay")
        for name in ("chunk_size", "slow_chunk"):
            check_count(getattr(self, name), f"media.{name}", minimum=1)

        rates = fault_rates(MediaFault, self.fault_rates, "media.fault_rates", "media fault")
        object.__setattr__(self, "fault_rates", rates)
        script = fault_script(
            MediaFault, self.fault_script, "media.fault_script", _story_key, "media fault"
        )
        object.__setattr__(self, "fault_script", script)

        if not isinstance(self.sizes, Mapping):
            raise ConfigurationError("media.sizes must be a mapping of story id to byte size")
        sizes: dict[str, int] = {}
        for story_id, size in self.sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or size < _MIN_OVERRIDE_SIZE:
                raise ConfigurationError(
                    f"media.sizes[{story_id!r}] must be an int >= {_MIN_OVERRIDE_SIZE}, "
                    f"got {size!r}"
                )
            sizes[str(story_id)] = size
        object.__setattr__(self, "sizes", types.MappingProxyType(sizes))

        parts = urlsplit(self.offsite_base) if isinstance(self.offsite_base, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"media.offsite_base must be an http(s) URL, got {self.offsite_base!r}"
            )


class Fault(enum.Enum):
    """A misbehaviour the emulator can inject instead of a normal answer.

    The values are the names accepted on the command line
    (``python -m keyapi_async.testing --fault-rate server_error=0.1``).
    """

    SERVER_ERROR = "server_error"
    """HTTP 500 with the JSON body ``{"code": 500, ..., "message": "Internal server error"}``."""

    BAD_GATEWAY_HTML = "bad_gateway_html"
    """HTTP 502 with an nginx-like ``text/html`` page instead of JSON."""

    ERROR_CODE_200 = "error_code_200"
    """HTTP 200 whose JSON body carries ``code`` 500 and ``data`` null."""

    RATE_LIMIT_200 = "rate_limit_200"
    """HTTP 200 whose JSON body carries ``code`` 429 ``"qps limit exceeded"``."""

    RATE_LIMIT = "rate_limit"
    """HTTP 429 ``"qps limit exceeded"`` (with ``Retry-After`` when enabled)."""

    TRUNCATED = "truncated"
    """HTTP 200 JSON whose body is the first half of the real body (matching Content-Length)."""

    EMPTY = "empty"
    """HTTP 200 ``application/json`` with an empty body."""

    RESET = "reset"
    """Headers announce the full body, half of it is written, then the connection is aborted."""

    SLOW = "slow"
    """Wait :attr:`EmulatorConfig.slow_seconds`, then answer normally."""

    # Hostile answers, appended so that seeded draws of the faults above keep
    # their sequence. The ones whose body says code 0 are billed like a success.

    NON_UTF8 = "non_utf8"
    """HTTP 200, code 0, with a byte ``0xff`` inside a JSON string (billed: 2 credits)."""

    SERVER_ERROR_LATIN1 = "server_error_latin1"
    """HTTP 500 JSON whose ``message`` is Latin-1 bytes, as some proxies send."""

    SCHEMA_DRIFT = "schema_drift"
    """HTTP 200, code 0, whose story items have numeric ids (billed: 2 credits)."""

    COUNT_WITHOUT_ITEMS = "count_without_items"
    """HTTP 200, code 0, a reel with ``count: 3`` and no ``items`` key (billed: 2 credits)."""

    SERVICE_UNAVAILABLE = "service_unavailable"
    """HTTP 503 JSON ``{"code": 503, ...}`` with ``Retry-After: 2``."""


BILLED_FAULTS: frozenset[Fault] = frozenset(
    {Fault.SLOW, Fault.NON_UTF8, Fault.SCHEMA_DRIFT, Fault.COUNT_WITHOUT_ITEMS}
)
"""Faults whose answer says ``code: 0`` and therefore costs credits like a success."""


def _check_target_key(target: object, field_name: str) -> str:
    kind, sep, value = target.partition(":") if isinstance(target, str) else ("", "", "")
    if not sep or not value or kind not in ("username", "user_id", "highlight"):
        raise ConfigurationError(
            f"{field_name} keys must look like 'username:NAME', 'user_id:DIGITS' or "
            f"'highlight:DIGITS', got {target!r}"
        )
    return f"{kind}:{value}"


def _api_keys(keys: Iterable[object]) -> frozenset[str]:
    """The accepted keys as a set: at least one, each a non-empty string without spaces."""
    if isinstance(keys, str | bytes):
        raise ConfigurationError("api_keys must be a collection of keys, not a single string")
    try:
        key_set = frozenset(keys)
    except TypeError:
        raise ConfigurationError("api_keys must be a collection of strings") from None
    if not key_set:
        raise ConfigurationError("api_keys must contain at least one key")
    checked: set[str] = set()
    for key in key_set:
        # Keys are secrets-shaped, so never echo them in the message.
        if not isinstance(key, str) or not key or key != key.strip() or " " in key:
            raise ConfigurationError("api_keys must be non-empty strings without whitespace")
        checked.add(key)
    return frozenset(checked)


def _key_set(keys: object, field_name: str) -> frozenset[str]:
    if isinstance(keys, str | bytes):
        raise ConfigurationError(f"{field_name} must be a collection of keys, not a single string")
    try:
        key_set: frozenset[object] = frozenset(keys)  # type: ignore[call-overload]
    except TypeError:
        raise ConfigurationError(f"{field_name} must be a collection of strings") from None
    for key in key_set:
        # Keys are secrets-shaped, so never echo them in the message.
        if not isinstance(key, str) or not key or key != key.strip() or " " in key:
            raise ConfigurationError(f"{field_name} must be non-empty strings without whitespace")
    return cast("frozenset[str]", key_set)


@dataclass(frozen=True, kw_only=True)
class EmulatorConfig:
    """How the emulator behaves; immutable, validated on construction.

    Use :func:`dataclasses.replace` to derive a variant, and assign it to
    :attr:`Emulator.config <keyapi_async.testing.Emulator.config>` to change a
    running emulator from the next request on.

    Mappings are copied into read-only views and fault names given as strings
    are converted to :class:`Fault`, so the config cannot change behind the
    emulator's back. Invalid values raise :class:`ValueError` naming the field.
    """

    # Kept out of repr() so configs can be logged or shown in test failures safely.
    api_keys: frozenset[str] = field(default=frozenset({DEFAULT_TEST_KEY}), repr=False)
    """Bearer tokens that are accepted; any other token gets 401 ``"apiKey is invalid"``."""

    forbidden_keys: frozenset[str] = field(default=frozenset(), repr=False)
    """Bearer tokens that authenticate (they need not be in :attr:`api_keys`) but may
    not call the endpoint: every request with one gets 403 ``"apiKey has no
    permission for this endpoint"``, before parameters, QPS window and credits."""

    qps: float | None = None
    """Accepted-request cap per sliding one-second window (``None``: no cap).

    A request is rejected with 429 when ``floor(qps)`` requests were already
    accepted in the preceding 1.0 s. For ``qps < 1`` the window is stretched
    to ``1 / qps`` seconds holding one request. Rejected requests do not
    occupy the window.
    """

    retry_after: bool = True
    """Whether 429 answers carry a ``Retry-After`` header (whole seconds, at least 1)."""

    credits: int | None = None
    """Starting quota (``None``: unlimited). Each code-0 answer costs 2 credits;
    with fewer than 2 left the answer is 402 ``"apiKey quota is not enough"``."""

    fault_rates: Mapping[Fault, float] = field(default_factory=dict)
    """Per-request probability of each fault, drawn from ``random.Random(seed)``; sum <= 1."""

    fault_script: Mapping[str, Sequence[Fault]] = field(default_factory=dict)
    """Per target key (``"username:javan"`` / ``"user_id:18527"``), the faults applied
    to that target's 1st, 2nd, ... request that reaches the fault stage; afterwards
    the target behaves normally. Scripted faults take precedence over random ones."""

    missing_accounts: frozenset[str] = frozenset()
    """Target keys (``"username:ghost"``, ``"user_id:123"``) whose account does not
    exist: 404 ``"user not found"``, as does any username starting with
    ``missing_``. Decided after the credit check and before faults; never billed."""

    slow_seconds: float = 2.0
    """How long :attr:`Fault.SLOW` waits before answering."""

    latency: float = 0.0
    """Delay added before every answer, in seconds."""

    latency_jitter: float = 0.0
    """Extra delay per answer, uniform in ``[0, latency_jitter]`` seconds (seeded)."""

    seed: int = 0
    """Seed for the synthetic data, the random faults and the ``requestId`` values."""

    empty_ratio: float = 0.2
    """Share of targets that have no active stories."""

    media: MediaConfig = field(default_factory=MediaConfig)
    """The media CDN: signed ``/media`` URLs in answers, their expiry, sizes and faults."""

    highlights: HighlightConfig = field(default_factory=HighlightConfig)
    """The highlight endpoints: trays per account, items per highlight, growth, hostile trays."""

    churn: ChurnConfig | None = None
    """Story churn (watch mode tests): new stories appear and old ones expire over time.

    ``None``: every reel is fixed by its key and the seed. See
    :class:`~keyapi_async.testing._churn.ChurnConfig`."""

    def __post_init__(self) -> None:
        """Validate every field and normalise the containers."""
        if not isinstance(self.media, MediaConfig):
            raise ConfigurationError(
                f"media must be a MediaConfig, got {type(self.media).__name__}"
            )
        if not isinstance(self.highlights, HighlightConfig):
            raise ConfigurationError(
                f"highlights must be a HighlightConfig, got {type(self.highlights).__name__}"
            )
        if self.churn is not None and not isinstance(self.churn, ChurnConfig):
            raise ConfigurationError(
                f"churn must be a ChurnConfig or None, got {type(self.churn).__name__}"
            )
        object.__setattr__(self, "api_keys", _api_keys(self.api_keys))
        object.__setattr__(self, "forbidden_keys", _key_set(self.forbidden_keys, "forbidden_keys"))

        if self.qps is not None:
            check_number(self.qps, "qps")
            if self.qps == 0:
                raise ConfigurationError("qps must be > 0 (use None for no cap)")

        if not isinstance(self.retry_after, bool):
            raise ConfigurationError(f"retry_after must be a bool, got {self.retry_after!r}")

        if self.credits is not None:
            check_count(self.credits, "credits")

        object.__setattr__(self, "fault_rates", fault_rates(Fault, self.fault_rates, "fault_rates"))

        script = fault_script(
            Fault,
            self.fault_script,
            "fault_script",
            lambda key: _check_target_key(key, "fault_script"),
        )
        object.__setattr__(self, "fault_script", script)

        if isinstance(self.missing_accounts, str | bytes):
            raise ConfigurationError("missing_accounts must be a collection of target keys")
        try:
            missing = frozenset(self.missing_accounts)
        except TypeError:
            raise ConfigurationError(
                "missing_accounts must be a collection of target keys"
            ) from None
        for target in missing:
            _check_target_key(target, "missing_accounts")
        object.__setattr__(self, "missing_accounts", missing)

        check_number(self.slow_seconds, "slow_seconds")
        check_number(self.latency, "latency")
        check_number(self.latency_jitter, "latency_jitter")

        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigurationError(f"seed must be an int, got {self.seed!r}")

        check_number(self.empty_ratio, "empty_ratio")
        if self.empty_ratio > 1:
            raise ConfigurationError(
                f"empty_ratio must be between 0 and 1, got {self.empty_ratio!r}"
            )
