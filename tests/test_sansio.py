"""Pure tests of the sans-I/O protocol: request building, answer mapping, Retry-After."""

from __future__ import annotations

import email.utils
import json
import random
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
from keyapi_async.engine.sansio import (
    ENDPOINT_PATH,
    ErrorEnvelope,
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
    assert reel.items == ()
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
    def body(code: int) -> ErrorEnvelope:
        return ErrorEnvelope(code=code, message="m")

    assert type(error_for(200, {}, None, body(402))) is InsufficientCreditsError
    assert type(error_for(503, {}, None, body(402))) is ServerError
    assert type(error_for(200, {}, None, None, "m")) is APIStatusError
    limited = error_for(200, {"retry-after-ms": "1500"}, None, body(429))
    assert isinstance(limited, RateLimitError)
    assert limited.retry_after == 1.5
    assert (limited.message, limited.code, limited.status) == ("m", 429, 200)


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


# -- 403 and 404 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"), [(403, PermissionDeniedError), (404, NotFoundError)], ids=["403", "404"]
)
@pytest.mark.parametrize("status", [200, "code"], ids=["in-a-200", "by-status"])
def test_403_and_404_have_their_own_classes_by_status_and_by_body_code(
    code: int, cls: type[APIStatusError], status: int | str
) -> None:
    http_status = code if status == "code" else 200
    with pytest.raises(cls) as info:
        parse_response(http_status, JSON_HEADERS, envelope(code, "no"), target="ghost")
    error = info.value
    assert (error.status, error.code, error.target) == (http_status, code, "ghost")
    assert not error.retryable


def test_non_json_403_and_404_still_map_by_status() -> None:
    with pytest.raises(PermissionDeniedError):
        parse_response(403, {"Content-Type": "text/html"}, b"<h1>Forbidden</h1>")
    with pytest.raises(NotFoundError):
        parse_response(404, {}, b"")


# -- bytes that are not UTF-8 -----------------------------------------------------


def test_non_utf8_inside_a_2xx_json_string_is_a_billed_decode_error() -> None:
    body = SEED_BODY.replace(b'"full_name": "', b'"full_name": "\xff', 1)
    assert body != SEED_BODY
    with pytest.raises(ResponseDecodeError) as info:
        parse_response(200, JSON_HEADERS, body, target="javan")
    error = info.value
    assert error.message == "response body is not valid UTF-8"
    assert error.billed  # the body said code 0: the API charged for it
    assert error.request_id == "e9ddf3f9-1bf1-4c64-be2f-aa8c056fd2a8"
    assert error.retryable
    assert error.__context__ is None
    assert error.__cause__ is None


def test_non_utf8_in_the_message_of_a_code_0_body() -> None:
    body = b'{"code": 0, "message": "succ\xffss", "data": {"data": null}}'
    with pytest.raises(ResponseDecodeError) as info:
        parse_response(200, JSON_HEADERS, body)
    assert info.value.billed
    assert info.value.snippet.startswith('{"code": 0, "message": "succ\ufffdss"')


def test_non_utf8_in_an_error_code_inside_a_200_keeps_the_code() -> None:
    body = b'{"code": 500, "message": "d\xe9faillance", "data": null, "requestId": "r"}'
    with pytest.raises(ServerError) as info:
        parse_response(200, JSON_HEADERS, body)
    assert (info.value.status, info.value.code, info.value.request_id) == (200, 500, "r")
    assert info.value.message == "d\ufffdfaillance"


def test_latin1_message_on_a_500_is_a_server_error() -> None:
    message = "Erreur interne du serveur : délai dépassé".encode("latin-1")
    body = b'{"code":500,"data":null,"message":"' + message + b'","requestId":"q-1"}'
    headers = {"Content-Type": "application/json; charset=iso-8859-1"}
    with pytest.raises(ServerError) as info:
        parse_response(500, headers, body, target="javan")
    error = info.value
    assert (error.status, error.code, error.request_id, error.target) == (500, 500, "q-1", "javan")
    assert error.message == "Erreur interne du serveur : d\ufffdlai d\ufffdpass\ufffd"
    assert error.retryable
    assert error.__context__ is None


def test_latin1_without_a_code_on_a_500_is_still_a_server_error() -> None:
    with pytest.raises(ServerError) as info:
        parse_response(500, {}, b'{"message": "\xe9chec"}')
    assert info.value.code is None
    assert info.value.message == "HTTP 500 with a JSON body that has no usable code"


# -- malformed is not empty -------------------------------------------------------


def test_count_without_items_is_a_billed_decode_error_not_an_empty_reel() -> None:
    body = envelope(0, "success", data={"data": {"additional_data": {"id": "1"}, "count": 3}})
    with pytest.raises(ResponseDecodeError) as info:
        parse_response(200, JSON_HEADERS, body, target="javan")
    error = info.value
    assert error.message == "reel says count 3 but has no items"
    assert error.billed
    assert (error.status, error.request_id, error.target) == (200, "req-1", "javan")


@pytest.mark.parametrize(
    "reel",
    [{"count": 0}, {"additional_data": {"id": "7"}}, {"count": 0, "additional_data": None}, {}],
)
def test_missing_items_is_empty_only_without_a_positive_count(reel: dict[str, Any]) -> None:
    parsed = parse_response(200, JSON_HEADERS, envelope(0, "success", data={"data": reel}))
    assert parsed.items == ()
    assert parsed.is_empty
    assert parsed.count == 0
    if reel.get("additional_data"):
        assert parsed.additional_data is not None
        assert parsed.additional_data.id == "7"


def test_items_present_but_empty_is_still_empty_whatever_the_count() -> None:
    # An explicit empty list is the API's own way to say "no stories".
    body = envelope(0, "success", data={"data": {"count": 2, "items": []}})
    assert parse_response(200, JSON_HEADERS, body).is_empty


def test_a_decoded_reel_is_the_public_type() -> None:
    reel = parse_response(200, JSON_HEADERS, SEED_BODY)
    assert type(reel) is Reel
    assert type(parse_response(200, JSON_HEADERS, envelope(0, "ok", data={"data": {}}))) is Reel


# -- schema drift is billed -------------------------------------------------------


def test_schema_drift_in_a_code_0_body_is_billed() -> None:
    data = json.loads(SEED_BODY)
    data["data"]["data"]["items"][0]["id"] = 3849025813912605899
    with pytest.raises(ResponseDecodeError) as info:
        parse_response(200, JSON_HEADERS, json.dumps(data).encode())
    assert info.value.billed
    assert info.value.message == "response JSON does not match the stories schema"
    assert "billed=True" in repr(info.value)


@pytest.mark.parametrize(
    "body",
    [b"", b"<html/>", b'{"code": "0"}', b"[1, 2]", SEED_BODY[:-3], b'{"message": "success"}'],
)
def test_undecodable_bodies_without_code_0_are_not_billed(body: bytes) -> None:
    with pytest.raises(ResponseDecodeError) as info:
        parse_response(200, JSON_HEADERS, body)
    assert not info.value.billed


# -- Retry-After on every error status ---------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [(503, ServerError), (500, ServerError), (502, ServerError), (429, RateLimitError)],
)
def test_retry_after_is_attached_to_every_retryable_status(
    status: int, cls: type[APIStatusError]
) -> None:
    headers = {"Content-Type": "application/json", "Retry-After": "2"}
    with pytest.raises(cls) as info:
        parse_response(status, headers, envelope(status, "unavailable"))
    assert info.value.retry_after == 2.0
    html = {"Content-Type": "text/html", "retry-after-ms": "750"}
    with pytest.raises(cls) as info:
        parse_response(status, html, b"<html>busy</html>")
    assert info.value.retry_after == 0.75


def test_retry_after_is_none_when_absent_and_read_for_body_codes_too() -> None:
    with pytest.raises(ServerError) as info:
        parse_response(503, JSON_HEADERS, envelope(503, "unavailable"))
    assert info.value.retry_after is None
    with pytest.raises(ServerError) as info:
        parse_response(200, {"Retry-After": "4"}, envelope(500, "upstream"))
    assert info.value.retry_after == 4.0
    with pytest.raises(NotFoundError) as missing:
        parse_response(404, {"Retry-After": "4"}, envelope(404, "user not found"))
    assert missing.value.retry_after == 4.0  # attached; the policy never retries a 404


# -- nothing escapes the error tree ---------------------------------------------------


def test_absurd_nesting_is_a_decode_error_not_a_recursion_error() -> None:
    deep = b'{"code": 0, "junk": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(ResponseDecodeError) as info:
        parse_response(200, JSON_HEADERS, deep)
    assert info.value.message == "response JSON is nested too deeply"
    assert not info.value.billed
    with pytest.raises(ServerError):
        parse_response(500, JSON_HEADERS, deep)


_HOSTILE_STATUSES: tuple[int, ...] = (0, 100, 199, 200, 201, 204, 299, 300, 302, 399, 400)
_HOSTILE_STATUSES += (401, 402, 403, 404, 418, 429, 499, 500, 502, 503, 504, 599, 600, 999)
_HOSTILE_FRAGMENTS = (
    b"\xff",
    b"\xfe",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xe9",
    b"\x00",
    b"\\ud800",
    b"\\udc00\\ud800",
    b'"',
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"1e999",
    b"-0",
    b"123456789012345678901234567890",
    b'"code":',
    b'"items":',
    b'"count":3',
    b"[" * 5000,
)
_HOSTILE_HEADERS: tuple[dict[str, str], ...] = (
    {},
    {"Retry-After": "2"},
    {"Retry-After": "nan"},
    {"Retry-After": "1e400"},
    {"Retry-After": "-3"},
    {"Retry-After": "Mon, 32 Foo 99999 99:99:99 GMT"},
    {"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"},
    {"Retry-After": "Mon, 01 Jan 0001 00:00:00 GMT"},
    {"retry-after-ms": "1_000"},
    {"retry-after-ms": "\x00"},
    {"Location": "\udcff"},
    {"Content-Type": "text/html; charset=\xff"},
)


def _hostile_bodies(rng: random.Random, count: int) -> list[bytes]:
    templates = [
        SEED_BODY,
        envelope(0, "success", data={"data": {"count": 3}}),
        envelope(500, "Internal server error"),
        envelope(429, "qps limit exceeded"),
        b'{"code":0,"message":"success","data":{"data":{"items":[{"id":"1"}]}}}',
        b"",
        b"<html>502</html>",
    ]
    bodies: list[bytes] = [*templates]
    for _ in range(count):
        body = bytearray(rng.choice(templates))
        for _ in range(rng.randint(1, 4)):
            action = rng.randrange(4)
            at = rng.randint(0, len(body))
            if action == 0:
                body[at:at] = rng.choice(_HOSTILE_FRAGMENTS)
            elif action == 1 and body:
                body[min(at, len(body) - 1)] = rng.randrange(256)
            elif action == 2:
                del body[at:]
            else:
                body[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        bodies.append(bytes(body))
    return bodies


def _outcome(status: int, headers: dict[str, str], body: bytes) -> Reel | KeyAPIError:
    # Anything but a KeyAPIError propagates and fails the test.
    try:
        return parse_response(status, headers, body, target="t")
    except KeyAPIError as error:
        return error


def test_nothing_but_the_error_tree_ever_escapes_parse_response() -> None:
    rng = random.Random(8)
    outcomes: set[str] = set()
    for body in _hostile_bodies(rng, 3000):
        status = rng.choice(_HOSTILE_STATUSES)
        result = _outcome(status, rng.choice(_HOSTILE_HEADERS), body)
        outcomes.add(type(result).__name__)
        if isinstance(result, Reel):
            assert 200 <= status < 300
            assert type(result) is Reel
            continue
        assert result.target == "t"
        # msgspec's exceptions can quote the body: never chained in.
        assert result.__cause__ is None
        assert result.__context__ is None
        if 200 <= status < 300:
            assert isinstance(result, (ResponseDecodeError, APIStatusError))
        else:
            assert isinstance(result, APIStatusError)
            assert result.status == status
        assert str(result)
        assert repr(result)
    # The generator reaches the interesting branches, not just one of them.
    assert {"Reel", "ResponseDecodeError", "ServerError", "RateLimitError"} <= outcomes
