"""The exception tree of keyapi_async.

Every error the client raises on purpose derives from :class:`KeyAPIError`::

    KeyAPIError
    ├── InvalidTargetError (also ValueError)   bad username/user id; nothing was sent
    ├── ConfigurationError (also ValueError)   bad client settings, missing API key
    ├── TransportError                         no usable HTTP answer: reset, body cut off
    │   ├── ConnectError                       no connection opened: refused, DNS,
    │   │                                      unreachable host, proxy refused
    │   └── RequestTimeoutError                timed out
    ├── ResponseDecodeError                    an answer came but is not the API's JSON
    │                                          (HTML page, empty, truncated, not UTF-8,
    │                                          schema drift); ``billed`` if it said code 0
    ├── APIStatusError                         the API said no (HTTP status and/or body
    │   │                                      code); ``retry_after`` if the server sent one
    │   ├── BadRequestError                    400
    │   ├── AuthenticationError                401 (missing or wrong key)
    │   ├── InsufficientCreditsError           402 (quota exhausted)
    │   ├── PermissionDeniedError              403 (the key may not call this endpoint)
    │   ├── NotFoundError                      404 (account missing or private)
    │   ├── RateLimitError                     429
    │   └── ServerError                        5xx
    ├── GateUnavailableError                   the shared rate gate is unreachable;
    │                                          nothing may be sent
    └── NotAttemptedError                      a batch target never sent, with the reason

``retryable`` on each class says whether the retry policy may try again: rate
limits, server errors, transport failures and undecodable bodies are transient;
everything else would fail the same way again (and 401/402/403 would waste
requests, a 404 is an answer about the account, not a glitch).

No exception built here ever holds the API key: messages are built from the
response body and the target only, and transport errors are raised outside the
``except`` clause that caught aiohttp's exception, so that it (whose repr can
include the request headers) is chained in neither as ``__cause__`` nor as
``__context__``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConnectError",
    "GateUnavailableError",
    "InsufficientCreditsError",
    "InvalidTargetError",
    "KeyAPIError",
    "NotAttemptedError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "ResponseDecodeError",
    "ServerError",
    "TransportError",
]


class KeyAPIError(Exception):
    """Base class of every error raised by keyapi_async.

    ``target`` is the normalised target (``"javan"`` or ``"id:18527"``) the
    error belongs to, or ``None`` when it is not about one target.
    """

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, target: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.target = target

    def __str__(self) -> str:
        if self.target is None:
            return self.message
        return f"{self.message} (target: {self.target})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, target={self.target!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only constructors break the default pickling of exceptions,
        # and errors cross process boundaries in users' worker pools.
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[KeyAPIError], state: dict[str, object]) -> KeyAPIError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class InvalidTargetError(KeyAPIError, ValueError):
    """A username or user id is malformed; no request was sent for it.

    ``value`` is the input exactly as given, so the caller can report it.
    """

    def __init__(self, message: str, *, value: object) -> None:
        super().__init__(message, target=None)
        self.value = value

    def __str__(self) -> str:
        return f"{self.message}: {self.value!r}"

    def __repr__(self) -> str:
        return f"InvalidTargetError({self.message!r}, value={self.value!r})"


class ConfigurationError(KeyAPIError, ValueError):
    """A client setting is invalid or missing (for example no API key)."""


class TransportError(KeyAPIError):
    """No usable HTTP answer arrived: the connection failed, was reset, or the body was cut off."""

    retryable = True


class ConnectError(TransportError):
    """No connection could be opened: refused, DNS failure, unreachable host or proxy.

    Nothing reached the API, so nothing was billed. When every attempt of a
    batch ends here the API is unreachable (a wrong ``base_url``, a dead
    proxy), which is why the batch may stop early instead of retrying each
    target on its own.
    """


class RequestTimeoutError(TransportError):
    """The request did not complete within the configured timeout."""


class ResponseDecodeError(KeyAPIError):
    """An HTTP answer arrived but its body is not the API's JSON.

    An HTML error page from a proxy, an empty, truncated or non-UTF-8 body, or
    JSON of an unexpected shape all land here, never as "no stories".
    ``status`` is the HTTP status and ``snippet`` the first bytes of the body
    (decoded leniently) to help diagnosis.

    ``billed`` is true when the body still said ``code: 0``: the API charged
    for this answer even though it cannot be used (schema drift, a reel that
    announces items but carries none). Retrying buys it again, so the retry
    policy retries such an answer at most once.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status: int,
        snippet: str = "",
        request_id: str | None = None,
        target: str | None = None,
        billed: bool = False,
    ) -> None:
        super().__init__(message, target=target)
        self.status = status
        self.snippet = snippet
        self.request_id = request_id
        self.billed = billed

    def __repr__(self) -> str:
        billed = ", billed=True" if self.billed else ""
        return (
            f"ResponseDecodeError({self.message!r}, status={self.status}, "
            f"target={self.target!r}{billed})"
        )


class APIStatusError(KeyAPIError):
    """The API answered with an error, by HTTP status and/or a non-zero body ``code``.

    ``status`` is the HTTP status (a 200 whose body ``code`` is non-zero keeps
    200 here), ``code`` the body's ``code`` (``None`` when the body had none),
    ``request_id`` the body's ``requestId`` when present. ``retry_after`` is
    the wait in seconds the server asked for (``Retry-After`` or
    ``retry-after-ms``), or ``None`` when it sent none (or nothing usable); the
    retry policy honours it for every retryable status.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: int | None,
        request_id: str | None = None,
        target: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, target=target)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        head = f"HTTP {self.status}"
        if self.code is not None and self.code != self.status:
            head += f" (code {self.code})"
        text = f"{head}: {self.message}"
        if self.request_id:
            text += f" [request {self.request_id}]"
        if self.target is not None:
            text += f" (target: {self.target})"
        return text

    def __repr__(self) -> str:
        retry_after = "" if self.retry_after is None else f", retry_after={self.retry_after!r}"
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status}, "
            f"code={self.code}, request_id={self.request_id!r}, target={self.target!r}"
            f"{retry_after})"
        )


class BadRequestError(APIStatusError):
    """The API rejected the request's parameters (400)."""


class AuthenticationError(APIStatusError):
    """The API key is missing or wrong (401)."""


class InsufficientCreditsError(APIStatusError):
    """The account has no credits left (402)."""


class PermissionDeniedError(APIStatusError):
    """The API key is valid but may not call this endpoint (403).

    Every other target would get the same answer, so a batch stops on it like
    on a 401.
    """


class NotFoundError(APIStatusError):
    """The account does not exist or cannot be seen (404).

    An answer about one target, not a glitch: it is not retried and does not
    stop a batch.
    """


class RateLimitError(APIStatusError):
    """The API's QPS limit was exceeded (429, by status or body code)."""

    retryable = True


class ServerError(APIStatusError):
    """The API failed on its side (5xx, by status or body code)."""

    retryable = True


class GateUnavailableError(KeyAPIError):
    """The shared rate gate (e.g. Redis) is unreachable past its grace period.

    Without the gate no request may be sent, since the rate cap could no
    longer be proven, so nothing is retried. The message names what is
    unreachable (never with credentials).
    """


class NotAttemptedError(KeyAPIError):
    """A batch target that was never sent; ``reason`` says why.

    ``reason`` is one of ``"authentication failed"`` (401), ``"permission
    denied"`` (403), ``"credits exhausted"`` (402), ``"credit budget reached"``
    (``max_credits``), ``"API unreachable at URL"`` (the circuit breaker), the
    message of a :class:`GateUnavailableError` (the shared gate was lost), or
    the text passed to :meth:`~keyapi_async.StoryBatch.stop` (default
    ``"batch stopped"``; the CLI uses ``"interrupted"``). ``cause`` is the
    error that stopped the batch, when there was one.
    """

    def __init__(
        self, reason: str, *, target: str | None = None, cause: KeyAPIError | None = None
    ) -> None:
        message = f"not attempted: {reason}"
        if cause is not None:
            message += f" ({type(cause).__name__}: {cause.message})"
        super().__init__(message, target=target)
        self.reason = reason
        self.cause = cause


#: Why the library itself leaves a batch target unsent (``API unreachable``
#: is followed by `` at URL``).
NOT_ATTEMPTED_REASONS = (
    "authentication failed",
    "permission denied",
    "credits exhausted",
    "credit budget reached",
    "API unreachable",
    "batch stopped",
)
