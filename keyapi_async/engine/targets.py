"""Normalising and validating what to fetch: a username, a numeric user id, a highlight id (pure).

One canonical text per target, ``javan``, ``id:18527`` or ``highlight:17912345678901234``:
see docs/decisions.md#targets and docs/highlights.md.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from .._errors import InvalidTargetError

# 1-30 of letters, digits, '.' and '_', applied after lowercasing (handles are case-insensitive).
_USERNAME = re.compile(r"[a-z0-9._]{1,30}")
_USER_ID = re.compile(r"[0-9]{1,30}")
# Input with a '/' (which no username contains) is a URL: optional scheme, host,
# optional port, path, then an optional query or fragment (share links carry ?igsh=...).
_URL = re.compile(
    r"(?:[a-z][a-z0-9+.-]*://)?(?P<host>[^/?#\s:]*)(?::[0-9]+)?(?P<path>/[^?#]*)?(?:[?#].*)?",
    re.IGNORECASE | re.DOTALL,
)
_INSTAGRAM_HOSTS = frozenset({"instagram.com", "www.instagram.com", "m.instagram.com"})
# First path segments of instagram.com pages that are not an account (a post is not user "p").
_NOT_ACCOUNTS = frozenset(
    {"p", "reel", "reels", "tv", "explore", "accounts", "direct", "about", "legal", "web"}
)
_ID_PREFIX = "id:"
_HIGHLIGHT_PREFIX = "highlight:"


class Target(msgspec.Struct, frozen=True, gc=False):
    """One account to fetch, already normalised and validated.

    Build one with :meth:`username`, :meth:`user_id` or :meth:`highlight`;
    each raises :class:`~keyapi_async.InvalidTargetError` for malformed input.
    """

    kind: Literal["username", "user_id", "highlight_id"]
    value: str

    @classmethod
    def username(cls, raw: str) -> Target:
        """Normalise a username, ``@handle``, profile URL or story URL and validate it.

        A story URL (``instagram.com/stories/<user>/<story id>/``) resolves to
        its account; a URL on another site is rejected as "not an Instagram URL".
        """
        if not isinstance(raw, str):
            raise InvalidTargetError("username must be a string", value=raw)
        if _USERNAME.fullmatch(raw):
            # Already canonical (the common case in bulk input): one regex.
            return cls("username", raw)
        text = raw.strip()
        if "/" in text:
            text = _username_from_url(text, raw)
        text = text.removeprefix("@").lower()
        if not text:
            raise InvalidTargetError("username is empty", value=raw)
        if not _USERNAME.fullmatch(text):
            raise InvalidTargetError("username must be 1-30 letters, digits, '.' or '_'", value=raw)
        return cls("username", text)

    @classmethod
    def user_id(cls, raw: str | int) -> Target:
        """Validate a numeric Instagram user id (kept as a string)."""
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise InvalidTargetError("user_id must be a string of digits", value=raw)
        text = str(raw).strip()
        if not _USER_ID.fullmatch(text):
            raise InvalidTargetError("user_id must be 1-30 digits", value=raw)
        return cls("user_id", text)

    @classmethod
    def highlight(cls, raw: object) -> Target:
        """Validate a highlight id, ``highlight:<digits>`` or bare digits (kept as the digits)."""
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise InvalidTargetError("highlight id must be a string of digits", value=raw)
        text = str(raw).strip()
        if text[: len(_HIGHLIGHT_PREFIX)].lower() == _HIGHLIGHT_PREFIX:
            text = text[len(_HIGHLIGHT_PREFIX) :]
        if not _USER_ID.fullmatch(text):
            raise InvalidTargetError(
                "highlight id must be 1-30 digits, with or without 'highlight:'", value=raw
            )
        return cls("highlight_id", text)

    @property
    def is_account(self) -> bool:
        """Whether this target names an account (a username or user id), not a highlight."""
        return self.kind != "highlight_id"

    @property
    def query(self) -> tuple[str, str]:
        """The one query parameter that selects this target."""
        return (self.kind, self.value)

    def __str__(self) -> str:
        if self.kind == "username":
            return self.value
        return (_ID_PREFIX if self.kind == "user_id" else _HIGHLIGHT_PREFIX) + self.value


def _username_from_url(text: str, raw: object) -> str:
    # Accepted: [https://][www.|m.]instagram.com/<user>[/] and .../stories/<user>[/<story id>][/],
    # each with any query or fragment.
    match = _URL.fullmatch(text)
    if match is None or match["host"].lower() not in _INSTAGRAM_HOSTS:
        raise InvalidTargetError("not an Instagram URL", value=raw)
    segments = [part for part in (match["path"] or "").split("/") if part]
    if len(segments) in (2, 3) and segments[0].lower() == "stories":
        if segments[1].lower() == "highlights":
            raise InvalidTargetError(
                "a story highlight URL names no account; give the account instead", value=raw
            )
        return segments[1]
    if len(segments) == 1 and segments[0].lower() not in _NOT_ACCOUNTS | {"stories"}:
        return segments[0]
    raise InvalidTargetError(
        "an Instagram URL that names no account (use a profile or story URL)", value=raw
    )


TargetLike = str | Target
"""What the public API accepts as a target: a username string (or ``id:<digits>``),
or a ready :class:`Target`."""


def parse_target(text: str) -> Target:
    """Parse one line of input: ``id:<digits>`` is a user id, anything else a username."""
    if not isinstance(text, str):
        raise InvalidTargetError("target must be a string", value=text)
    stripped = text.strip()
    if stripped[:3].lower() == _ID_PREFIX:
        return Target.user_id(stripped[3:])
    return Target.username(stripped)


def as_target(value: object) -> Target:
    """Turn any accepted target form into a :class:`Target`, or raise InvalidTargetError."""
    if type(value) is str and _USERNAME.fullmatch(value):
        return Target("username", value)  # already canonical: most of any bulk input
    if isinstance(value, Target):
        if not value.is_account:
            raise InvalidTargetError("a highlight id names no account", value=value)
        return value
    if isinstance(value, str):
        return parse_target(value)
    raise InvalidTargetError("target must be a username string or a Target", value=value)


def as_highlight(value: object) -> Target:
    """A highlight target from ``highlight:<digits>``, bare digits or a highlight Target."""
    if isinstance(value, Target):
        if value.is_account:
            raise InvalidTargetError("an account is not a highlight id", value=value)
        return value
    return Target.highlight(value)


def from_arguments(username: str | None, user_id: str | int | None) -> Target:
    """Pick the target from ``fetch_user_stories``' keyword pair: exactly one must be set."""
    if username is not None and user_id is not None:
        both = {"username": username, "user_id": user_id}
        raise InvalidTargetError("give either username or user_id, not both", value=both)
    if username is not None:
        return Target.username(username)
    if user_id is not None:
        return Target.user_id(user_id)
    raise InvalidTargetError("give a username or a user_id", value=None)
