"""Normalising and validating what to fetch: a username or a numeric user id (pure).

A target is rendered as text in one canonical way, used for deduplication, in
error messages and in the CLI's ledger: a username as itself (``javan``), a
user id with an ``id:`` prefix (``id:18527``). Usernames can never contain a
colon, so the two forms cannot collide, and :func:`parse_target` reads the
rendering back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ._errors import InvalidTargetError

__all__ = ["Target", "TargetLike", "as_target", "parse_target"]

# Instagram's rule as documented to users: 1-30 of letters, digits, '.' and '_'.
# It is applied after lowercasing, because Instagram handles are case-insensitive.
_USERNAME = re.compile(r"[a-z0-9._]{1,30}")
_USER_ID = re.compile(r"[0-9]{1,30}")
# A profile URL: optional scheme, optional www./m. host prefix, the handle, then
# an optional trailing slash, query or fragment (share links carry ?igsh=...).
_PROFILE_URL = re.compile(
    r"(?:https?://)?(?:www\.|m\.)?instagram\.com/([^/?#]+)/?(?:[?#].*)?",
    re.IGNORECASE,
)
_ID_PREFIX = "id:"

Kind = Literal["username", "user_id"]


@dataclass(frozen=True, slots=True)
class Target:
    """One account to fetch, already normalised and validated.

    Build one with :meth:`username` or :meth:`user_id`; both raise
    :class:`~keyapi_async.InvalidTargetError` for malformed input.
    """

    kind: Kind
    value: str

    @classmethod
    def username(cls, raw: str) -> Target:
        """Normalise a username, ``@handle`` or profile URL and validate it."""
        if not isinstance(raw, str):
            raise InvalidTargetError("username must be a string", value=raw)
        if _USERNAME.fullmatch(raw):
            # Already canonical (the common case in bulk input): one regex.
            return cls("username", raw)
        text = raw.strip()
        match = _PROFILE_URL.fullmatch(text)
        if match is not None:
            text = match.group(1)
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

    @property
    def query(self) -> tuple[str, str]:
        """The one query parameter that selects this target."""
        return (self.kind, self.value)

    def __str__(self) -> str:
        return self.value if self.kind == "username" else _ID_PREFIX + self.value


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
    if isinstance(value, Target):
        return value
    if isinstance(value, str):
        return parse_target(value)
    raise InvalidTargetError("target must be a username string or a Target", value=value)


def from_arguments(username: str | None, user_id: str | int | None) -> Target:
    """Pick the target from ``fetch_user_stories``' keyword pair: exactly one must be set."""
    if username is not None and user_id is not None:
        raise InvalidTargetError(
            "give either username or user_id, not both",
            value={"username": username, "user_id": user_id},
        )
    if username is not None:
        return Target.username(username)
    if user_id is not None:
        return Target.user_id(user_id)
    raise InvalidTargetError("give a username or a user_id", value=None)
