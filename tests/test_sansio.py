"""Pure tests of the sans-I/O protocol: request building, answer mapping, Retry-After."""

from __future__ import annotations

import email.utils
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from keyapi_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    KeyAPIError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    Reel,
    ResponseDecodeError,
    ServerError,
    Target,
)
from keyapi_async._sansio import (
    ENDPOINT_PATH,
    Request,
    RequestBuilder,
    error_for,
    parse_response,
    parse_retry_after,
)

SEED_BODY = (Path(__file__).parent / "data" / "seed_example.json").read_bytes()
JSON_HEADERS = {"Content-Type": "application/json"}
NOW = 1_773_108_781.0  # a fixed "wall clock" for HTTP-date Retry-After values


def envelope(
    code: int, message: str, *, data: Any = None, request_id: str | None = "req-1"
) -> bytes:
    body: dict[str, Any] = {"code": code, "message": message, "data": data}
    if request_id is not None:
        body["requestId"] = request_id
    return json.dumps(body).encode()


# -- building requests ------------------------------------------------------------


@pytest.fixture
def key() -> str:
    return "sk_test_" + secrets.token_hex(16)


def test_build_request_for_a_username(key: str) -> None:
    builder = RequestBuilder(base_url="https://api.example.test", api_key=key, user_agent="ua/1")
    request = builder.build(Target.username("@Javan"))
    assert request.method == "GET"
    assert request.url == "https://api.example.test/v1/instagram/fetch_user_stories?username=javan"
    assert dict(request.headers) == {
        "Authorization": f"Bearer {key}",
        "User-Agent": "ua/1",
        "Accept": "application/json",
    }


def test_build_request_for_a_user_id_and_a_base_url_with_a_path(key: str) -> None:
    builder = RequestBuilder(base_url="http://127.0.0.1:8089/proxy/", api_key=key, user_agent="u")
    request = builder.build(Target.user_id(18527))
    assert request.url == f"http://127.0.0.1:8089/proxy{ENDPOINT_PATH}?user_id=18527"
    assert ENDPOINT_PATH == "/v1/instagram/fetch_user_stories"


def test_build_request_quotes_the_value(key: str) -> None:
    builder = RequestBuilder(base_url="http://h", api_key=key, user_agent="u")
    # Target's constructors never let such a value through; the builder quotes anyway.
    request = builder.build(Target("username", "a b&c=d/é?#"))
    assert (
        request.url
        == "http://h/v1/instagram/fetch_user_stories?username=a%20b%26c%3Dd%2F%C3%A9%3F%23"
    )


def test_headers_are_shared_and_read_only(key: str) -> None:
    builder = RequestBuilder(base_url="http://h", api_key=key, user_agent="u")
    first = builder.build(Target.username("a"))
    second = builder.build(Target.user_id("1"))
    assert first.headers is second.headers
    with pytest.raises(TypeError):
        first.headers["Authorization"] = "Bearer other"  # type: ignore[index]


def test_request_and_builder_reprs_hide_the_key(key: str) -> None:
    builder = RequestBuilder(base_url="http://h", api_key=key, user_agent="u")
    request = builder.build(Target.username("javan"))
    assert repr(request) == (
        "Request(method='GET', url='http://h/v1/instagram/fetch_user_stories?username=javan', "
        "headers=<hidden>)"
    )
    assert repr(builder) == "RequestBuilder(endpoint='http://h/v1/instagram/fetch_user_stories')"
    assert key not in repr(request)
    assert key not in str(request)
    assert key not in repr(builder)
    assert Request("GET", "u", {"Authorization": key}).__repr__().endswith("headers=<hidden>)")


# -- successful answers ---------------------------------------------------------


def test_success_decodes_the_reel() -> None:
    reel = parse_response(200, JSON_HEADERS, SEED_BODY, target="javan")
    assert isinstance(reel, Reel)
    assert not reel.is_empty
    assert reel.count == 2
    assert len(reel.items) == 2
    assert reel.user is not None
    assert reel.user.username == "javan"
    assert reel.user.id == "18527"
    assert reel.items[0].id == "3849025813912605899"


@pytest.mark.parametrize(
    "data",
    [
        {"data": None},
        {"data": {"additional_data": None, "count": 0, "items": []}},
        {"data": {"items": []}},
        None,
        {},
    ],
)
def test_no_stories_is_an_empty_reel(data: Any) -> None:
    reel = parse_response(200, JSON_HEADERS, envelope(0, "success", data=data))
    assert isinstance(reel, Reel)
    assert reel.is_empty
    assert reel.items == []
    assert reel.count == 0


def test_any_2xx_status_counts_as_an_answer() -> None:
    assert parse_response(203, {}, SEED_BODY).count == 2


# -- API errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "message", "cls"),
    [
        (400, 400, "Missing required parameter: handle", BadRequestError),
        (401, 401, "apiKey is null", AuthenticationError),
        (401, 401, "apiKey is invalid", AuthenticationError),
        (402, 402, "apiKey quota is not enough", InsufficientCreditsError),
        (429, 429, "qps limit exceeded", RateLimitError),
        (500, 500, "Internal server error", ServerError),
        (503, 503, "unavailable", ServerError),
        (403, 403, "apiKey has no permission for this endpoint", PermissionDeniedError),
        (404, 404, "user not found", NotFoundError),
        (418, 418, "teapot", APIStatusError),
        # The HTTP status decides when it signals an error, whatever the body code says.
        (500, 429, "odd", ServerError),
        (401, 0, "odd", AuthenticationError),
    ],
)
def test_error_status_with_json_body(
    status: int, code: int, message: str, cls: type[APIStatusError]
) -> None:
    with pytest.raises(APIStatusError) as info:
        parse_response(status, JSON_HEADERS, envelope(code, message), target="javan")
    error = info.value
    assert type(error) is cls
    assert error.status == status
    assert error.code == code
    assert error.message == message
    assert error.request_id == "req-1"
    assert error.target == "javan"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (1, APIStatusError),
    ],
)
def test_http_200_with_an_error_code(code: int, cls: type[APIStatusError]) -> None:
    with pytest.raises(APIStatusError) as info:
        parse_response(200, JSON_HEADERS, envelope(code, "nope"), target="id:5")
    error = info.value
    assert type(error) is cls
    assert (error.status, error.code, error.message, error.request_id, error.target) == (
        200,
        code,
        "nope",
        "req-1",
        "id:5",
    )


def test_http_200_with_code_429_reads_retry_after_from_headers() -> None:
    with pytest.raises(RateLimitError) as info:
        parse_response(200, {"Retry-After": "3"}, envelope(429, "qps limit exceeded"))
    assert (info.value.status, info.value.code, info.value.retry_after) == (200, 429, 3.0)
    with pytest.raises(RateLimitError) as bare:
        parse_response(200, JSON_HEADERS, envelope(429, "qps limit exceeded"))
    assert bare.value.retry_after is None


def test_http_429_with_and_without_retry_after() -> None:
    body = envelope(429, "qps limit exceeded", request_id=None)
    with pytest.raises(RateLimitError) as info:
        parse_response(429, {"Content-Type": "application/json", "retry-after": "2"}, body)
    assert (info.value.status, info.value.code, info.value.retry_after) == (429, 429, 2.0)
    assert info.value.request_id is None
    with pytest.raises(RateLimitError) as bare:
        parse_response(429, JSON_HEADERS, body)
    assert bare.value.retry_after is None


def test_error_code_with_an_odd_data_field_is_still_the_api_error() -> None:
    body = json.dumps({"code": 402, "message": "apiKey quota is not enough", "data": "x"}).encode()
    with pytest.raises(InsufficientCreditsError) as info:
        parse_response(200, JSON_HEADERS, body)
    assert (info.value.status, info.value.code, info.value.request_id) == (200, 402, None)


def test_empty_message_falls_back_to_a_description() -> None:
    with pytest.raises(ServerError) as status_error:
        parse_response(500, JSON_HEADERS, envelope(500, ""))
    assert status_error.value.message == "HTTP 500"
    with pytest.raises(ServerError) as code_error:
        parse_response(200, JSON_HEADERS, envelope(500, ""))
    assert code_error.value.message == "code 500"


def test_non_json_error_page_maps_by_status() -> None:
    page = b"<html><head><title>502 Bad Gateway</title></head></html>"
    with pytest.raises(ServerError) as info:
        parse_response(502, {"Content-Type": "text/html"}, page, target="javan")
    error = info.value
    assert (error.status, error.code, error.request_id, error.target) == (502, None, None, "javan")
    assert error.message == "HTTP 502 with a non-JSON body (text/html)"
    assert error.retryable


@pytest.mark.parametrize(
    ("status", "headers", "body", "cls", "message"),
    [
        (429, {}, b"slow down", RateLimitError, "HTTP 429 with a non-JSON body (no content type)"),
        (
            401,
            {"content-type": "text/plain"},
            b"",
            AuthenticationError,
            "HTTP 401 with an empty body",
        ),
        (
            402,
            {},
            b"<html/>",
            InsufficientCreditsError,
            "HTTP 402 with a non-JSON body (no content type)",
        ),
        (400, {}, b"{", BadRequestError, "HTTP 400 with a non-JSON body (no content type)"),
        (504, {}, b"", ServerError, "HTTP 504 with an empty body"),
        (100, {}, b"", APIStatusError, "HTTP 100 with an empty body"),
    ],
)
def test_non_json_error_bodies(
    status: int, headers: dict[str, str], body: bytes, cls: type[APIStatusError], message: str
) -> None:
    with pytest.raises(APIStatusError) as info:
        parse_response(status, headers, body)
    assert type(info.value) is cls
    assert (info.value.status, info.value.code, info.value.message) == (status, None, message)


def test_non_json_429_still_reads_retry_after() -> None:
    with pytest.raises(RateLimitError) as info:
        parse_response(429, {"Retry-After": "7"}, b"<html>Too Many Requests</html>")
    assert (info.value.code, info.value.retry_after) == (None, 7.0)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_an_error_naming_the_location(status: int) -> None:
    headers = {"Location": "http://elsewhere.example/steal"}
    with pytest.raises(APIStatusError) as info:
        parse_response(status, headers, b"", target="javan")
    error = info.value
    assert type(error) is APIStatusError
    assert (error.status, error.code, error.target) == (status, None, "javan")
    assert error.message == (
        "redirect to http://elsewhere.example/steal not followed "
        "(the API key is only sent to base_url)"
    )
    assert not error.retryable


def test_redirect_without_location() -> None:
    with pytest.raises(APIStatusError) as info:
        parse_response(302, {}, b"moved")
    assert info.value.message.startswith("redirect to nowhere not followed")


# -- undecodable 2xx bodies -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty response body"),
        (b"   \r\n", "empty response body"),
        (SEED_BODY[: len(SEED_BODY) // 2], "response body is not valid JSON"),
        (b"<html>hello</html>", "response body is not valid JSON"),
        (b'{"code": 0, "data": ', "response body is not valid JSON"),
    ],
)
def test_undecodable_2xx_is_a_decode_error(body: bytes, message: str) -> None:
    with pytest.raises(ResponseDecodeError) as info:
        parse_response(200, JSON_HEADERS, body, target="javan")
    error = info.value
    assert error.message == message
    assert (error.status, error.target, error.request_id) == (200, "javan", None)
    assert error.snippet == body[:160].decode("utf-8", errors="replace")
    assert error.retryable


def test_snippet_is_bounded_and_lenient() -> None:
    body = b"\xff\xfe" + b"x" * 1000
    with pytest.raises(ResponseDecodeError) as info:
        parse_response(200, {}, body)
    assert info.value.snippet == "\ufffd\ufffd" + "x" * 158


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"null",
        b'"success"',
        b'{"message": "success"}',
        b'{"code": "0", "data": null}',
        b'{"code": 0, "data": {"data": {"items": "none"}}}',
        b'{"code": 0, "data": {"data": {"items": [{"no_id": true}]}}, "requestId": "r-9"}',
        b'{"code": 0, "data": {"data": {"count": "2"}}}',
    ],
)
def test_json_of_the_wrong_shape_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(ResponseDecodeError) as info:
        parse_response(200, JSON_HEADERS, body, target="t")
    error = info.value
    assert error.message == "response JSON does not match the stories schema"
    assert error.status == 200
    assert error.snippet == body.decode()
    assert error.target == "t"
    assert error.request_id == ("r-9" if b"r-9" in body else None)
    # A body that still said code 0 was charged for; anything else was not.
    assert error.billed is body.startswith(b'{"code": 0')


# -- error_for ------------------------------------------------------------------


def test_error_for_follows_the_code_inside_a_2xx_and_the_status_otherwise() -> None:
    args: dict[str, Any] = {"message": "m", "request_id": None, "target": None, "headers": {}}
    assert type(error_for(status=200, code=402, **args)) is InsufficientCreditsError
    assert type(error_for(status=503, code=402, **args)) is ServerError
    assert type(error_for(status=200, code=None, **args)) is APIStatusError
    limited = error_for(status=200, code=429, **{**args, "headers": {"retry-after-ms": "1500"}})
    assert isinstance(limited, RateLimitError)
    assert limited.retry_after == 1.5


# -- Retry-After ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": " 12 "}, 12.0),
        ({"Retry-After": "0.25"}, 0.25),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after": "2"}, 2.0),
        ({"RETRY-AFTER": "4"}, 4.0),
        ({"rEtRy-AfTeR": "5"}, 5.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "1500.5"}, 1.5005),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),
        ({"retry-after-ms": "0", "Retry-After": "9"}, 9.0),
        ({"retry-after-ms": "-5", "Retry-After": "9"}, 9.0),
        ({"retry-after-ms": "nan", "Retry-After": "9"}, 9.0),
        ({"retry-after-ms": "inf"}, None),
        ({}, None),
        ({"Content-Type": "application/json"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "0"}, None),
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "-0.5"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "NaN"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "-inf"}, None),
        ({"Retry-After": "Infinity"}, None),
        ({"Retry-After": "1e400"}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_retry_after_http_date_is_relative_to_now() -> None:
    in_30s = email.utils.formatdate(NOW + 30, usegmt=True)
    assert in_30s.endswith(" GMT")
    assert parse_retry_after({"Retry-After": in_30s}, now=NOW) == 30.0
    assert parse_retry_after({"Retry-After": in_30s}, now=NOW + 20) == 10.0
    # The same instant written with an explicit offset.
    offset = email.utils.formatdate(NOW + 30 + 3600, localtime=False).replace("-0000", "+0100")
    assert parse_retry_after({"Retry-After": offset}, now=NOW) == 30.0


def test_retry_after_http_date_in_the_past_or_now_is_none() -> None:
    past = email.utils.formatdate(NOW - 5, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=NOW) is None
    same = email.utils.formatdate(NOW, usegmt=True)
    assert parse_retry_after({"Retry-After": same}, now=NOW) is None


def test_retry_after_obsolete_http_date_forms_are_gmt() -> None:
    # RFC 9110 5.6.7: recipients accept the rfc850 and asctime forms; both are GMT.
    now = 784_111_777.0 - 60  # one minute before Sun, 06 Nov 1994 08:49:37 GMT
    for text in (
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ):
        assert parse_retry_after({"Retry-After": text}, now=now) == 60.0, text


def test_retry_after_defaults_to_the_wall_clock() -> None:
    far_past = "Sun, 06 Nov 1994 08:49:37 GMT"
    assert parse_retry_after({"Retry-After": far_past}) is None
    far_future = "Fri, 01 Jan 2100 00:00:00 GMT"
    value = parse_retry_after({"Retry-After": far_future})
    assert value is not None
    assert value > 365 * 24 * 3600


def test_retry_after_reads_aiohttp_style_headers() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("RETRY-AFTER", "6"), ("Content-Type", "x")]))
    assert parse_retry_after(headers) == 6.0
    with pytest.raises(RateLimitError) as info:
        parse_response(429, headers, envelope(429, "qps limit exceeded"))
    assert info.value.retry_after == 6.0


def test_error_code_with_a_null_message_is_still_the_api_error() -> None:
    body = b'{"code": 401, "message": null, "data": null, "requestId": "r"}'
    with pytest.raises(AuthenticationError) as info:
        parse_response(200, JSON_HEADERS, body)
    assert (info.value.status, info.value.code, info.value.request_id) == (200, 401, "r")
