"""The exception tree: relations, retryable flags, str/repr and pickling."""

from __future__ import annotations

import pickle

import pytest

import keyapi_async
from keyapi_async import (
    APIStatusError,
    ArchiveError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConnectError,
    GateUnavailableError,
    InsufficientCreditsError,
    InvalidTargetError,
    KeyAPIError,
    MediaDiskFullError,
    NotAttemptedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseDecodeError,
    ServerError,
    TransportError,
)

# (class, its direct parents as drawn in the _errors docstring)
TREE: list[tuple[type[BaseException], tuple[type[BaseException], ...]]] = [
    (KeyAPIError, (Exception,)),
    (InvalidTargetError, (KeyAPIError, ValueError)),
    (ConfigurationError, (KeyAPIError, ValueError)),
    (TransportError, (KeyAPIError,)),
    (ConnectError, (TransportError,)),
    (RequestTimeoutError, (TransportError,)),
    (ResponseDecodeError, (KeyAPIError,)),
    (APIStatusError, (KeyAPIError,)),
    (BadRequestError, (APIStatusError,)),
    (AuthenticationError, (APIStatusError,)),
    (InsufficientCreditsError, (APIStatusError,)),
    (PermissionDeniedError, (APIStatusError,)),
    (NotFoundError, (APIStatusError,)),
    (RateLimitError, (APIStatusError,)),
    (ServerError, (APIStatusError,)),
    (GateUnavailableError, (KeyAPIError,)),
    (ArchiveError, (KeyAPIError,)),
    (MediaDiskFullError, (KeyAPIError,)),
    (NotAttemptedError, (KeyAPIError,)),
]


@pytest.mark.parametrize(("cls", "parents"), TREE, ids=lambda v: getattr(v, "__name__", ""))
def test_tree(cls: type[BaseException], parents: tuple[type[BaseException], ...]) -> None:
    assert cls.__bases__ == parents
    for parent in parents:
        assert issubclass(cls, parent)


def test_tree_has_no_other_cross_links() -> None:
    assert not issubclass(ResponseDecodeError, TransportError)
    assert not issubclass(TransportError, APIStatusError)
    assert not issubclass(RateLimitError, TransportError)
    assert not issubclass(APIStatusError, ValueError)
    assert not issubclass(NotAttemptedError, APIStatusError)
    assert not issubclass(InvalidTargetError, ConfigurationError)
    assert not issubclass(GateUnavailableError, TransportError)
    assert not issubclass(ConnectError, RequestTimeoutError)


def test_every_class_in_the_tree_is_drawn_in_the_module_docstring() -> None:
    import keyapi_async._errors as errors

    doc = errors.__doc__ or ""
    for cls, _ in TREE:
        assert cls.__name__ in doc, cls.__name__
    assert errors.__all__ == sorted(errors.__all__)
    assert {cls.__name__ for cls, _ in TREE} == set(errors.__all__)


def test_every_error_is_exported() -> None:
    for cls, _ in TREE:
        assert getattr(keyapi_async, cls.__name__) is cls
        assert cls.__name__ in keyapi_async.__all__


@pytest.mark.parametrize(
    ("cls", "retryable"),
    [
        (KeyAPIError, False),
        (InvalidTargetError, False),
        (ConfigurationError, False),
        (TransportError, True),
        (ConnectError, True),
        (RequestTimeoutError, True),
        (ResponseDecodeError, True),
        (APIStatusError, False),
        (BadRequestError, False),
        (AuthenticationError, False),
        (InsufficientCreditsError, False),
        (PermissionDeniedError, False),
        (NotFoundError, False),
        (RateLimitError, True),
        (ServerError, True),
        (GateUnavailableError, False),
        (MediaDiskFullError, False),
        (NotAttemptedError, False),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_retryable(cls: type[KeyAPIError], retryable: bool) -> None:
    assert cls.retryable is retryable


def test_base_error_str_and_repr() -> None:
    plain = KeyAPIError("boom")
    assert str(plain) == "boom"
    assert repr(plain) == "KeyAPIError('boom', target=None)"
    with_target = TransportError("connection failed", target="javan")
    assert str(with_target) == "connection failed (target: javan)"
    assert repr(with_target) == "TransportError('connection failed', target='javan')"
    assert with_target.message == "connection failed"
    assert with_target.args == ("connection failed",)


def test_api_status_error_str_and_repr() -> None:
    error = AuthenticationError(
        "apiKey is invalid", status=401, code=401, request_id="req-1", target="id:5"
    )
    assert str(error) == "HTTP 401: apiKey is invalid [request req-1] (target: id:5)"
    assert repr(error) == (
        "AuthenticationError('apiKey is invalid', status=401, code=401, "
        "request_id='req-1', target='id:5')"
    )


def test_api_status_error_str_shows_a_body_code_that_differs_from_the_status() -> None:
    error = ServerError("Internal server error", status=200, code=500)
    assert str(error) == "HTTP 200 (code 500): Internal server error"
    assert (error.status, error.code, error.request_id, error.target) == (200, 500, None, None)
    no_code = ServerError("HTTP 502 with a non-JSON body (text/html)", status=502, code=None)
    assert str(no_code) == "HTTP 502: HTTP 502 with a non-JSON body (text/html)"


def test_rate_limit_error_fields_and_repr() -> None:
    error = RateLimitError(
        "qps limit exceeded", status=429, code=429, request_id="r", target="javan", retry_after=1.5
    )
    assert error.retry_after == 1.5
    assert str(error) == "HTTP 429: qps limit exceeded [request r] (target: javan)"
    assert repr(error) == (
        "RateLimitError('qps limit exceeded', status=429, code=429, request_id='r', "
        "target='javan', retry_after=1.5)"
    )
    assert RateLimitError("x", status=200, code=429).retry_after is None
    assert "retry_after" not in repr(RateLimitError("x", status=200, code=429))


def test_retry_after_lives_on_every_status_error() -> None:
    unavailable = ServerError("unavailable", status=503, code=503, retry_after=2.0)
    assert unavailable.retry_after == 2.0
    assert repr(unavailable) == (
        "ServerError('unavailable', status=503, code=503, request_id=None, target=None, "
        "retry_after=2.0)"
    )
    assert str(unavailable) == "HTTP 503: unavailable"
    for cls in (APIStatusError, PermissionDeniedError, NotFoundError, AuthenticationError):
        assert cls("m", status=400, code=None).retry_after is None


def test_permission_denied_and_not_found() -> None:
    denied = PermissionDeniedError(
        "apiKey has no permission for this endpoint", status=403, code=403, request_id="r"
    )
    assert str(denied) == "HTTP 403: apiKey has no permission for this endpoint [request r]"
    missing = NotFoundError("user not found", status=200, code=404, target="ghost")
    assert str(missing) == "HTTP 200 (code 404): user not found (target: ghost)"
    assert repr(missing) == (
        "NotFoundError('user not found', status=200, code=404, request_id=None, target='ghost')"
    )


def test_connect_and_gate_errors() -> None:
    refused = ConnectError("connection refused by 127.0.0.1:9", target="javan")
    assert isinstance(refused, TransportError)
    assert str(refused) == "connection refused by 127.0.0.1:9 (target: javan)"
    gate = GateUnavailableError("shared rate gate at redis://127.0.0.1:6390/0 unreachable")
    assert str(gate) == "shared rate gate at redis://127.0.0.1:6390/0 unreachable"
    assert repr(gate) == (
        "GateUnavailableError('shared rate gate at redis://127.0.0.1:6390/0 unreachable', "
        "target=None)"
    )


def test_response_decode_error_fields_and_repr() -> None:
    error = ResponseDecodeError(
        "empty response body", status=200, snippet="", request_id=None, target="javan"
    )
    assert (error.status, error.snippet, error.request_id) == (200, "", None)
    assert error.billed is False
    assert str(error) == "empty response body (target: javan)"
    assert repr(error) == "ResponseDecodeError('empty response body', status=200, target='javan')"
    billed = ResponseDecodeError("response JSON does not match", status=200, billed=True)
    assert billed.billed is True
    assert repr(billed) == (
        "ResponseDecodeError('response JSON does not match', status=200, target=None, billed=True)"
    )


def test_invalid_target_error_str_and_repr() -> None:
    error = InvalidTargetError("username is empty", value="@")
    assert str(error) == "username is empty: '@'"
    assert repr(error) == "InvalidTargetError('username is empty', value='@')"
    assert error.target is None


def test_not_attempted_error() -> None:
    cause = InsufficientCreditsError("apiKey quota is not enough", status=402, code=402)
    error = NotAttemptedError("credits exhausted", target="javan", cause=cause)
    assert error.reason == "credits exhausted"
    assert error.cause is cause
    assert error.message == (
        "not attempted: credits exhausted (InsufficientCreditsError: apiKey quota is not enough)"
    )
    assert str(error) == error.message + " (target: javan)"
    bare = NotAttemptedError("batch stopped")
    assert bare.message == "not attempted: batch stopped"
    assert bare.cause is None


PICKLE_CASES: list[KeyAPIError] = [
    KeyAPIError("base", target="javan"),
    InvalidTargetError("user_id must be 1-30 digits", value="12a"),
    ConfigurationError("qps must be a finite number > 0, got 0"),
    TransportError("connection closed", target="id:1"),
    ConnectError("connection refused", target="id:2"),
    RequestTimeoutError("no complete answer within 0.3 s", target="javan"),
    ResponseDecodeError(
        "response body is not valid JSON", status=200, snippet='{"co', request_id="q", target="a"
    ),
    ResponseDecodeError("reel says count 3 but has no items", status=200, billed=True),
    APIStatusError("redirect", status=302, code=None, target="javan"),
    BadRequestError("Missing required parameter: handle", status=400, code=400, request_id="r"),
    AuthenticationError("apiKey is null", status=401, code=401, request_id="r", target="t"),
    InsufficientCreditsError("apiKey quota is not enough", status=402, code=402),
    RateLimitError("qps limit exceeded", status=429, code=429, target="t", retry_after=2.0),
    ServerError("Internal server error", status=200, code=500, request_id="z"),
    ServerError("unavailable", status=503, code=503, retry_after=2.0),
    PermissionDeniedError("no permission", status=403, code=403, request_id="p"),
    NotFoundError("user not found", status=404, code=404, target="ghost"),
    GateUnavailableError("shared rate gate unreachable"),
    MediaDiskFullError("disk full while saving story '7'", story_id="7", outcomes=[]),
    NotAttemptedError(
        "authentication failed",
        target="javan",
        cause=AuthenticationError("apiKey is invalid", status=401, code=401),
    ),
]


@pytest.mark.parametrize("error", PICKLE_CASES, ids=lambda e: type(e).__name__)
def test_pickle_round_trip_keeps_fields(error: KeyAPIError) -> None:
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert clone is not error
    assert set(vars(clone)) == set(vars(error))
    for name, value in vars(error).items():
        if isinstance(value, KeyAPIError):
            assert repr(getattr(clone, name)) == repr(value)
        else:
            assert getattr(clone, name) == value, name
    assert str(clone) == str(error)
    assert repr(clone) == repr(error)
    assert clone.args == (error.message,)
