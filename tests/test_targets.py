"""Pure tests of target normalisation and validation (no I/O)."""

from __future__ import annotations

import pytest

from keyapi_async import InvalidTargetError, KeyAPIError, Target, parse_target
from keyapi_async.engine.targets import as_target, from_arguments

BAD_NAME = "username must be 1-30 letters, digits, '.' or '_'"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("javan", "javan"),
        ("  javan\t\n", "javan"),
        ("@javan", "javan"),
        (" @javan ", "javan"),
        ("JaVaN", "javan"),
        ("@JAVAN", "javan"),
        ("j.a_v4n", "j.a_v4n"),
        ("a" * 30, "a" * 30),
        ("https://www.instagram.com/javan/", "javan"),
        ("https://www.instagram.com/javan", "javan"),
        ("http://instagram.com/javan", "javan"),
        ("instagram.com/javan", "javan"),
        ("www.instagram.com/javan/", "javan"),
        ("https://m.instagram.com/javan/", "javan"),
        ("https://www.instagram.com/javan/?igsh=abc123&utm_source=qr", "javan"),
        ("https://www.instagram.com/javan?hl=en", "javan"),
        ("https://www.instagram.com/javan/#top", "javan"),
        ("HTTPS://WWW.INSTAGRAM.COM/JaVan/", "javan"),
        ("  https://instagram.com/@Javan  ", "javan"),
        ("https://www.instagram.com:443/javan/", "javan"),
        # Story URLs resolve to their account.
        ("https://www.instagram.com/stories/javan/3312345678901234567/", "javan"),
        ("https://www.instagram.com/stories/javan/3312345678901234567", "javan"),
        ("https://www.instagram.com/stories/javan/", "javan"),
        ("http://instagram.com/stories/Javan/33/", "javan"),
        ("instagram.com/stories/javan/33/", "javan"),
        ("www.instagram.com/stories/javan/33", "javan"),
        ("https://m.instagram.com/stories/j.a_v4n/33/", "j.a_v4n"),
        ("https://www.instagram.com/stories/javan/33/?igsh=MWQ1ZGUxMzBkMA==", "javan"),
        (
            "https://www.instagram.com/stories/javan/33/?utm_source=ig_story_item_share&igsh=x",
            "javan",
        ),
        ("https://www.instagram.com/stories/javan/33/#x", "javan"),
        ("HTTPS://WWW.INSTAGRAM.COM/STORIES/JAVAN/33/", "javan"),
    ],
)
def test_username_normalisation(raw: str, expected: str) -> None:
    target = Target.username(raw)
    assert target == Target("username", expected)
    assert target.kind == "username"
    assert target.value == expected
    assert target.query == ("username", expected)
    assert str(target) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("a" * 31, BAD_NAME),
        ("jav an", BAD_NAME),
        ("javan!", BAD_NAME),
        ("java-n", BAD_NAME),
        ("jävan", BAD_NAME),
        ("id:123", BAD_NAME),
        ("@@javan", BAD_NAME),
        ("https://www.instagram.com/jav an/", BAD_NAME),
        ("https://www.instagram.com/javan!/", BAD_NAME),
        ("https://www.instagram.com/stories/" + "a" * 31 + "/1/", BAD_NAME),
        ("", "username is empty"),
        ("   ", "username is empty"),
        ("@", "username is empty"),
        (" @ ", "username is empty"),
    ],
)
def test_invalid_usernames(raw: str, reason: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        Target.username(raw)
    error = info.value
    assert error.message == reason
    assert error.value == raw
    assert error.target is None
    assert str(error) == f"{reason}: {raw!r}"


NOT_INSTAGRAM = "not an Instagram URL"
NO_ACCOUNT = "an Instagram URL that names no account (use a profile or story URL)"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("https://example.com/javan", NOT_INSTAGRAM),
        ("http://example.com/stories/javan/33/", NOT_INSTAGRAM),
        ("example.com/javan", NOT_INSTAGRAM),
        ("https://instagram.com.evil.example/javan", NOT_INSTAGRAM),
        ("https://notinstagram.com/javan", NOT_INSTAGRAM),
        ("https://l.instagram.com/javan", NOT_INSTAGRAM),
        ("ftp://instagram.example/javan", NOT_INSTAGRAM),
        ("no/slash", NOT_INSTAGRAM),
        ("https://www.instagram.com/p/C1a2b3c4d5/", NO_ACCOUNT),
        ("https://www.instagram.com/reel/C1a2b3c4d5/", NO_ACCOUNT),
        ("https://www.instagram.com/explore/", NO_ACCOUNT),
        ("https://www.instagram.com/", NO_ACCOUNT),
        ("https://www.instagram.com/stories/", NO_ACCOUNT),
        ("https://www.instagram.com/javan/tagged/", NO_ACCOUNT),
        ("https://www.instagram.com/stories/javan/33/extra/", NO_ACCOUNT),
        (
            "https://www.instagram.com/stories/highlights/17912345678901234/",
            "a story highlight URL names no account; give the account instead",
        ),
    ],
)
def test_urls_that_name_no_instagram_account(raw: str, reason: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        Target.username(raw)
    assert info.value.message == reason
    assert info.value.value == raw
    with pytest.raises(InvalidTargetError) as parsed:
        parse_target(raw)
    assert parsed.value.message == reason


def test_story_url_and_handle_are_one_target() -> None:
    story = parse_target("https://www.instagram.com/stories/Javan/3312345678901234567/?igsh=x")
    assert story == parse_target("@javan") == Target("username", "javan")


@pytest.mark.parametrize("raw", [None, 123, b"javan", ["javan"]])
def test_username_must_be_a_string(raw: object) -> None:
    with pytest.raises(InvalidTargetError) as info:
        Target.username(raw)  # type: ignore[arg-type]
    assert info.value.message == "username must be a string"
    assert info.value.value is raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("18527", "18527"), (18527, "18527"), (" 42 ", "42"), ("0", "0"), ("9" * 30, "9" * 30)],
)
def test_user_ids(raw: str | int, expected: str) -> None:
    target = Target.user_id(raw)
    assert target == Target("user_id", expected)
    assert target.query == ("user_id", expected)
    assert str(target) == f"id:{expected}"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (True, "user_id must be a string of digits"),
        (False, "user_id must be a string of digits"),
        (1.5, "user_id must be a string of digits"),
        (None, "user_id must be a string of digits"),
        ("12a", "user_id must be 1-30 digits"),
        ("-5", "user_id must be 1-30 digits"),
        (-5, "user_id must be 1-30 digits"),
        ("", "user_id must be 1-30 digits"),
        ("1 2", "user_id must be 1-30 digits"),
        ("\u0663", "user_id must be 1-30 digits"),  # ARABIC-INDIC DIGIT THREE: not ASCII
        ("9" * 31, "user_id must be 1-30 digits"),
        ("javan", "user_id must be 1-30 digits"),
    ],
)
def test_invalid_user_ids(raw: object, reason: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        Target.user_id(raw)  # type: ignore[arg-type]
    assert info.value.message == reason
    assert info.value.value is raw
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("id:123", Target("user_id", "123")),
        ("ID:123", Target("user_id", "123")),
        ("  id:123  ", Target("user_id", "123")),
        ("id: 123", Target("user_id", "123")),
        ("javan", Target("username", "javan")),
        ("@Javan", Target("username", "javan")),
        ("id", Target("username", "id")),
        ("idx", Target("username", "idx")),
        ("https://instagram.com/javan/", Target("username", "javan")),
    ],
)
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("id:", "user_id must be 1-30 digits"),
        ("id:abc", "user_id must be 1-30 digits"),
        ("", "username is empty"),
    ],
)
def test_parse_target_rejects(text: str, reason: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        parse_target(text)
    assert info.value.message == reason


def test_parse_target_requires_a_string() -> None:
    with pytest.raises(InvalidTargetError) as info:
        parse_target(123)  # type: ignore[arg-type]
    assert info.value.message == "target must be a string"
    assert info.value.value == 123


@pytest.mark.parametrize(
    "target",
    [
        Target.username("javan"),
        Target.username("a.b_c"),
        Target.username("id"),
        Target.user_id("18527"),
        Target.user_id(7),
    ],
)
def test_str_round_trips_through_parse_target(target: Target) -> None:
    assert parse_target(str(target)) == target
    assert as_target(str(target)) == target


def test_targets_are_hashable_and_compare_by_value() -> None:
    assert len({Target.username("Javan"), Target.username("@javan"), parse_target("javan")}) == 1
    assert Target.username("123") != Target.user_id("123")
    assert str(Target.username("123")) == "123"
    assert str(Target.user_id("123")) == "id:123"


def test_as_target() -> None:
    ready = Target.user_id("5")
    assert as_target(ready) is ready
    assert as_target("@Javan") == Target("username", "javan")
    with pytest.raises(InvalidTargetError) as info:
        as_target(42)
    assert info.value.message == "target must be a username string or a Target"
    assert info.value.value == 42


def test_from_arguments() -> None:
    assert from_arguments("@Javan", None) == Target("username", "javan")
    assert from_arguments(None, 18527) == Target("user_id", "18527")
    with pytest.raises(InvalidTargetError) as both:
        from_arguments("javan", "18527")
    assert both.value.message == "give either username or user_id, not both"
    assert both.value.value == {"username": "javan", "user_id": "18527"}
    with pytest.raises(InvalidTargetError) as neither:
        from_arguments(None, None)
    assert neither.value.message == "give a username or a user_id"
    assert neither.value.value is None
    with pytest.raises(InvalidTargetError) as empty:
        from_arguments("", None)
    assert empty.value.message == "username is empty"


def test_invalid_target_error_is_a_value_error_naming_the_input() -> None:
    with pytest.raises(ValueError, match="bad handle!") as info:
        Target.username("bad handle!")
    error = info.value
    assert isinstance(error, InvalidTargetError)
    assert isinstance(error, KeyAPIError)
    assert str(error) == "username must be 1-30 letters, digits, '.' or '_': 'bad handle!'"
    assert repr(error) == (
        "InvalidTargetError(\"username must be 1-30 letters, digits, '.' or '_'\", "
        "value='bad handle!')"
    )
