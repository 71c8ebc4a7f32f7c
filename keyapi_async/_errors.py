"""The exception tree of keyapi_async; when each is raised: docs/errors.md.

Every error raised on purpose derives from :class:`KeyAPIError`::

    KeyAPIError
    ├── InvalidTargetError (also ValueError)  bad username/user id; nothing was sent
    ├── ConfigurationError (also ValueError)  bad client settings, missing API key
    ├── TransportError                        no usable HTTP answer: reset, body cut off
    │   ├── ConnectError                      no connection opened (refused, DNS, proxy)
    │   └── RequestTimeoutError               timed out
    ├── ResponseDecodeError                   an answer that is not the API's JSON
    ├── APIStatusError                        the API said no (HTTP status or body code)
    │   ├── BadRequestError                   400
    │   ├── AuthenticationError               401 (missing or wrong key)
    │   ├── InsufficientCreditsError          402 (quota exhausted)
    │   ├── PermissionDeniedError             403 (the key may not call this endpoint)
    │   ├── NotFoundError                     404 (account missing or private)
    │   ├── RateLimitError                    429
    │   └── ServerError                       5xx
    ├── GateUnavailableError                  the shared rate gate is unreachable
    ├── ArchiveError                          the story archive cannot be used (locked, closed)
    ├── MediaDiskFullError                    the disk filled up while saving media
    └── NotAttemptedError                     a batch target never sent, with the reason
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol

__all__ = [
    "APIStatusError",
    "ArchiveError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConnectError",
    "GateUnavailableError",
    "InsufficientCreditsError",
    "InvalidTargetError",
    "KeyAPIError",
    "MediaDiskFullError",
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

    ``target`` is the normalised target (``"javan"``, ``"id:18527"``) or ``None``;
    ``retryable`` says whether the retry policy may try again.
    """

    retryable: ClassVar[bool] = False
    # Attributes repr() shows after the message; the second lot only when set.
    _shown: ClassVar[tuple[str, ...]] = ("target",)
    _shown_if_set: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str, *, target: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.target = target

    def __str__(self) -> str:
        return self.message if self.target is None else f"{self.message} (target: {self.target})"

    def __repr__(self) -> str:
        shown = [f"{name}={getattr(self, name)!r}" for name in self._shown]
        for name in self._shown_if_set:
            value = getattr(self, name)
            if value is not None and value is not False:
                shown.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join([repr(self.message), *shown])})"

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
    """A username or user id is malformed (``value``, as given); nothing was sent for it."""

    _shown = ("value",)

    def __init__(self, message: str, *, value: object) -> None:
        super().__init__(message, target=None)
        self.value = value

    def __str__(self) -> str:
        return f"{self.message}: {self.value!r}"


class ConfigurationError(KeyAPIError, ValueError):
    """A client setting is invalid or missing (for example no API key)."""


class TransportError(KeyAPIError):
    """No usable HTTP answer arrived: the connection failed, was reset, or the body was cut off."""

    retryable = True


class ConnectError(TransportError):
    """No connection could be opened (refused, DNS, unreachable host or proxy); nothing billed."""


class RequestTimeoutError(TransportError):
    """The request did not complete within the configured timeout."""


class ResponseDecodeError(KeyAPIError):
    """An HTTP answer arrived but its body is not the API's JSON (never "no stories").

    ``status`` is the HTTP status and ``snippet`` the first bytes of the body.
    ``billed`` is true when the body was complete JSON that still said
    ``code: 0``: the API charged for it, so the answer is final and the retry
    policy never buys it again (an unbilled one, empty or cut off, is retried).
    """

    retryable = True
    _shown = ("status", "target")
    _shown_if_set = ("billed",)

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


class APIStatusError(KeyAPIError):
    """The API answered with an error, by HTTP status and/or a non-zero body ``code``.

    ``status`` is the HTTP status (a 200 whose body ``code`` is non-zero keeps
    200), ``code`` the body's ``code`` or ``None``, ``request_id`` the body's
    ``requestId``. ``retry_after`` is the wait in seconds the server asked for
    (``Retry-After`` or ``retry-after-ms``), or ``None``.
    """

    _shown = ("status", "code", "request_id", "target")
    _shown_if_set = ("retry_after",)

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
        code = "" if self.code in (None, self.status) else f" (code {self.code})"
        request = f" [request {self.request_id}]" if self.request_id else ""
        target = "" if self.target is None else f" (target: {self.target})"
        return f"HTTP {self.status}{code}: {self.message}{request}{target}"


class BadRequestError(APIStatusError):
    """The API rejected the request's parameters (400)."""


class AuthenticationError(APIStatusError):
    """The API key is missing or wrong (401)."""


class InsufficientCreditsError(APIStatusError):
    """The account has no credits left (402)."""


class PermissionDeniedError(APIStatusError):
    """The API key is valid but may not call this endpoint (403); a batch stops on it."""


class NotFoundError(APIStatusError):
    """The account does not exist or cannot be seen (404); not retried, a batch goes on."""


class RateLimitError(APIStatusError):
    """The API's QPS limit was exceeded (429, by status or body code)."""

    retryable = True


class ServerError(APIStatusError):
    """The API failed on its side (5xx, by status or body code)."""

    retryable = True


class GateUnavailableError(KeyAPIError):
    """The shared rate gate (e.g. Redis) is unreachable past its grace period; not retried."""


class NotAttemptedError(KeyAPIError):
    """A batch target that was never sent.

    ``reason`` is ``"authentication failed"``, ``"permission denied"``, ``"credits
    exhausted"``, ``"credit budget reached"``, ``"API unreachable at URL"``, a lost
    shared gate's message, or the text given to :meth:`~keyapi_async.StoryBatch.stop`
    (default ``"batch stopped"``). ``cause`` is the error that stopped the batch, if any.
    """

    BUDGET_REACHED: ClassVar[str] = "credit budget reached"
    """The ``reason`` of a target refused by the ``max_credits`` budget."""

    def __init__(
        self, reason: str, *, target: str | None = None, cause: KeyAPIError | None = None
    ) -> None:
        message = f"not attempted: {reason}"
        if cause is not None:
            message += f" ({type(cause).__name__}: {cause.message})"
        super().__init__(message, target=target)
        self.reason = reason
        self.cause = cause


#: The class of an error answer by HTTP status or body code (other 5xx: ServerError).
STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}


class ArchiveError(KeyAPIError):
    """The archive cannot be used.

    It is locked by another writer, not writable, not an archive, from a
    newer version of the library, the disk is full, or it is closed.
    ``path`` is the archive file. Raised before anything is sent when opening
    fails, so a command line can exit early; the SQLite error, if any, is
    chained as ``__cause__``.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class _FinishedItem(Protocol):
    """An item that finished before the disk filled up, as the error tree sees it.

    The items are :class:`keyapi_async.media.MediaOutcome` objects. The tree
    sits below the media downloader and may not import it, so it names the
    part of an outcome a handler needs; the downloader's own assignment of its
    outcomes to :attr:`MediaDiskFullError.outcomes` is what mypy checks
    against this protocol.
    """

    @property
    def story_id(self) -> str:
        """The story item's id."""
        ...

    @property
    def status(self) -> str:
        """The outcome's status (a ``MediaStatus``, which is a ``str``)."""
        ...

    @property
    def path(self) -> Path | None:
        """Where the file is, when it is on disk."""
        ...

    @property
    def ok(self) -> bool:
        """Whether the file is on disk."""
        ...


class MediaDiskFullError(KeyAPIError):
    """The disk (or quota) filled up while saving media (``ENOSPC``/``EDQUOT``).

    Raised by :class:`keyapi_async.media.MediaDownloader` instead of per-item
    outcomes because every later file would fail too: stop sending, keep
    what is complete (final-name files always are), and run again once there
    is space. The item being written lost its ``.part`` (to give the space
    back); others keep theirs for resuming.
    """

    def __init__(
        self, message: str, *, story_id: str | None, outcomes: list[_FinishedItem]
    ) -> None:
        super().__init__(message)
        self.story_id = story_id
        """The item whose write failed."""
        self.outcomes = outcomes
        """The :class:`~keyapi_async.media.MediaOutcome` of each item that finished before
        it (filled by ``download_reel``; empty otherwise)."""
