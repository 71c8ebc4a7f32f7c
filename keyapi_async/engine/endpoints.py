"""One small description per API endpoint: what the one engine needs to call it (pure data).

An :class:`Endpoint` says where the endpoint lives (``path``), which targets it
takes and how one becomes its query parameter (``parse_target``; the
:class:`~.targets.Target` then gives the parameter), how an answer's bytes
decode (``decode``, into an envelope whose ``result`` is the public model or
the reason a billed answer is malformed) and what one billed answer costs
(``credits``). The sans-I/O core, the transport, the gate, the budget, the
retries, the breaker and the batch take an endpoint and hold no knowledge of
any one of them: a fourth endpoint is one more description here.

The wire shapes of the two highlight endpoints are assumed (no sample was in
hand): docs/highlights.md says what is assumed and why. Their decoding is
lenient: unknown fields are ignored, a missing optional field is ``None``,
and a tray entry that cannot be used is skipped with a logged reason.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import msgspec

from ..models import (
    HIGHLIGHT_PREFIX,
    Highlight,
    HighlightCover,
    HighlightStories,
    HighlightTray,
    Reel,
    ReelInfo,
    StoryItem,
    User,
)
from .targets import Target, as_highlight, as_target
from .validate import check_count

__all__ = [
    "CREDITS_PER_ANSWER",
    "HIGHLIGHT_STORIES",
    "MAX_TITLE_LENGTH",
    "STORIES",
    "USER_HIGHLIGHTS",
    "Answer",
    "Endpoint",
    "ErrorEnvelope",
    "HighlightEnvelope",
    "StoriesData",
    "StoriesEnvelope",
    "TrayEnvelope",
    "WireReel",
    "decode_envelope",
    "decode_error_envelope",
]

_log = logging.getLogger("keyapi_async")

#: Credits the API charges for one billed answer, on every endpoint until it says otherwise.
CREDITS_PER_ANSWER = 2
#: Longest highlight title kept (Instagram allows 15 characters; this only stops absurd ones).
MAX_TITLE_LENGTH = 1000

R_co = TypeVar("R_co", covariant=True)


class Answer(Protocol[R_co]):
    """A decoded answer's envelope: its code, message, request id and result."""

    @property
    def code(self) -> int:
        """The API's code: 0 for success."""
        ...

    @property
    def message(self) -> str | None:
        """The API's message."""
        ...

    @property
    def request_id(self) -> str | None:
        """The API's request id, if it sent one."""
        ...

    def result(self, key: str | None) -> R_co | str:
        """The public model of a ``code == 0`` answer for target ``key``, or why it is malformed."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint(Generic[R_co]):
    """One API endpoint, as the engine needs it; frozen, one instance per endpoint.

    ``what`` names the answer in error messages ("does not match the
    ``what`` schema"). :meth:`with_credits` gives a copy at another price.
    """

    name: str
    path: str
    what: str
    parse_target: Callable[[object], Target]
    decode: Callable[[bytes], Answer[R_co]]
    credits: int = CREDITS_PER_ANSWER

    def with_credits(self, credits: int) -> Endpoint[R_co]:
        """A copy with ``credits`` per billed answer (should the API's price change)."""
        return dataclasses.replace(self, credits=check_count(credits, "credits"))

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, credits={self.credits})"


# -- fetch_user_stories ------------------------------------------------------------

_EMPTY_REEL = Reel()  # frozen, so one shared instance is safe


class WireReel(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The reel as sent: a missing ``items`` stays UNSET, so that malformed is not empty."""

    additional_data: ReelInfo | None = None
    count: int = 0
    items: tuple[StoryItem, ...] | msgspec.UnsetType = msgspec.UNSET

    def to_reel(self) -> Reel:
        """The public reel; a missing ``items`` becomes ``()`` (check before calling)."""
        items = () if self.items is msgspec.UNSET else self.items
        return Reel(additional_data=self.additional_data, count=self.count, items=items)


class StoriesData(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The envelope's ``data`` object, which wraps the reel in another ``data``."""

    data: WireReel | None = None


class StoriesEnvelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The full keyapi response for ``fetch_user_stories``."""

    code: int
    message: str | None = ""
    data: StoriesData | None = None
    request_id: str | None = msgspec.field(default=None, name="requestId")

    @property
    def reel(self) -> WireReel | None:
        """The reel inside ``data.data``, or None when the envelope has none."""
        return None if self.data is None else self.data.data

    def result(self, key: str | None) -> Reel | str:
        """The public reel, or why a billed answer is malformed."""
        wire = None if self.data is None else self.data.data
        if wire is None:
            return _EMPTY_REEL
        if wire.items is not msgspec.UNSET or wire.count <= 0:
            return wire.to_reel()
        # Malformed is not empty: "no stories" would make a resumed run skip the account.
        return f"reel says count {wire.count} but has no items"


class ErrorEnvelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A keyapi error body; ``data`` is ignored (whatever its shape), a null message kept."""

    code: int
    message: str | None = ""
    request_id: str | None = msgspec.field(default=None, name="requestId")


#: Decode a ``fetch_user_stories`` body; raises msgspec.DecodeError (or its
#: ValidationError), another ValueError, or RecursionError for absurd nesting.
decode_envelope = msgspec.json.Decoder(StoriesEnvelope).decode
#: Decode a keyapi error body (bytes or str), raising like ``decode_envelope``.
decode_error_envelope = msgspec.json.Decoder(ErrorEnvelope).decode


# -- fetch_user_highlights ---------------------------------------------------------


class _WireImage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    url: str | None = None
    width: int | None = None
    height: int | None = None


class _WireCover(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    cropped_image_version: _WireImage | None = None


class _WireOwner(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    # Instagram sends ``pk`` as a number or a string, some payloads ``id`` instead.
    pk: str | int | None = None
    id: str | int | None = None
    username: str | None = None
    full_name: str | None = None


class _WireHighlight(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: str | int | None = None
    title: str | None = None
    created_at: int | None = None
    latest_reel_media: int | None = None
    media_count: int | None = None
    cover_media: _WireCover | None = None
    user: _WireOwner | None = None


class _TrayReel(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    # Each entry is decoded on its own, so that one bad entry skips only itself.
    items: tuple[msgspec.Raw, ...] = ()


class _TrayData(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    data: _TrayReel | None = None


class TrayEnvelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The full keyapi response for ``fetch_user_highlights`` (assumed: docs/highlights.md)."""

    code: int
    message: str | None = ""
    data: _TrayData | None = None
    request_id: str | None = msgspec.field(default=None, name="requestId")

    def result(self, key: str | None) -> HighlightTray:
        """The public tray; unusable entries are skipped, each with a logged reason."""
        wire = None if self.data is None else self.data.data
        if wire is None or not wire.items:
            return _EMPTY_TRAY
        return _tray(wire.items, key)


_EMPTY_TRAY = HighlightTray()
_decode_highlight = msgspec.json.Decoder(_WireHighlight).decode


def _bare_id(value: str | int | None) -> str | None:
    """The digits of a highlight id given as ``highlight:<digits>``, digits or a number."""
    if isinstance(value, int):
        return str(value) if value >= 0 else None
    if value is None:
        return None
    text = value.removeprefix(HIGHLIGHT_PREFIX)
    return text if text.isascii() and text.isdigit() and len(text) <= 30 else None


def _owner(wire: _WireOwner | None) -> User | None:
    if wire is None:
        return None
    pk = wire.pk if wire.pk is not None else wire.id
    return User(
        id=None if pk is None else str(pk), username=wire.username, full_name=wire.full_name
    )


def _highlight(raw: msgspec.Raw, seen: set[str]) -> Highlight | str:
    """One tray entry as a Highlight, or why it is skipped."""
    try:
        wire = _decode_highlight(raw)
    except (ValueError, RecursionError) as exc:
        # msgspec's message names the field and the types, never the value.
        return f"entry does not match the tray schema ({str(exc)[:200]})"
    bare = _bare_id(wire.id)
    if bare is None:
        return "entry has no usable id" if wire.id is None else "entry id is not digits"
    if bare in seen:
        return f"highlight {bare} is listed twice; the first is kept"
    if wire.title is not None and len(wire.title) > MAX_TITLE_LENGTH:
        return f"highlight {bare} has a title of {len(wire.title)} characters"
    seen.add(bare)
    image = None if wire.cover_media is None else wire.cover_media.cropped_image_version
    cover = (
        None
        if image is None or not image.url
        else HighlightCover(url=image.url, width=image.width, height=image.height)
    )
    return Highlight(
        id=bare,
        title=wire.title,
        created_at=wire.created_at,
        latest_reel_media=wire.latest_reel_media,
        media_count=wire.media_count,
        cover=cover,
        user=_owner(wire.user),
    )


def _tray(entries: tuple[msgspec.Raw, ...], key: str | None) -> HighlightTray:
    items: list[Highlight] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for position, raw in enumerate(entries):
        got = _highlight(raw, seen)
        if isinstance(got, str):
            reason = f"tray entry {position}: {got}"
            _log.warning("%s: skipped %s", key or "tray", reason)
            skipped.append(reason)
        else:
            items.append(got)
    return HighlightTray(items=tuple(items), skipped=tuple(skipped))


# -- fetch_highlight_stories -------------------------------------------------------


class _WireHighlightReel(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: str | int | None = None
    title: str | None = None
    items: tuple[StoryItem, ...] | msgspec.UnsetType = msgspec.UNSET
    user: _WireOwner | None = None


class _HighlightData(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    # Either the items themselves, or Instagram's reels_media shape keyed by reel id.
    id: str | int | None = None
    title: str | None = None
    items: tuple[StoryItem, ...] | msgspec.UnsetType = msgspec.UNSET
    user: _WireOwner | None = None
    reels: dict[str, _WireHighlightReel] | None = None


class _HighlightOuter(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    data: _HighlightData | None = None


class HighlightEnvelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The full keyapi response for ``fetch_highlight_stories`` (assumed: docs/highlights.md)."""

    code: int
    message: str | None = ""
    data: _HighlightOuter | None = None
    request_id: str | None = msgspec.field(default=None, name="requestId")

    def result(self, key: str | None) -> HighlightStories | str:
        """The highlight's items (``data.data.items`` or ``data.data.reels[key].items``)."""
        wanted = None if key is None else key.removeprefix(HIGHLIGHT_PREFIX)
        wire = None if self.data is None else self.data.data
        if wire is None:
            return HighlightStories(highlight_id=wanted)
        reel: _HighlightData | _WireHighlightReel = wire
        if wire.items is msgspec.UNSET and wire.reels:
            found = wire.reels.get(HIGHLIGHT_PREFIX + wanted) if wanted else None
            if found is None and len(wire.reels) == 1:
                found = next(iter(wire.reels.values()))
            if found is None:
                return f"answer has no reel for {key}"
            reel = found
        if reel.items is msgspec.UNSET:
            return "answer has neither items nor reels"
        return HighlightStories(
            highlight_id=_bare_id(reel.id) or wanted,
            title=reel.title,
            items=_distinct(reel.items, key),
            user=_owner(reel.user),
        )


def _distinct(items: tuple[StoryItem, ...], key: str | None) -> tuple[StoryItem, ...]:
    """Items with a repeated story id dropped (the first kept): one story is one file."""
    seen: set[str] = set()
    kept: list[StoryItem] = []
    for item in items:
        if item.id in seen:
            _log.warning("%s: skipped story %s, listed twice", key or "highlight", item.id)
            continue
        seen.add(item.id)
        kept.append(item)
    return items if len(kept) == len(items) else tuple(kept)


# -- the endpoints -----------------------------------------------------------------

#: ``GET /v1/instagram/fetch_user_stories``: an account's active stories, as a :class:`Reel`.
STORIES: Endpoint[Reel] = Endpoint(
    name="fetch_user_stories",
    path="/v1/instagram/fetch_user_stories",
    what="stories",
    parse_target=as_target,
    decode=decode_envelope,
)
#: ``GET /v1/instagram/fetch_user_highlights``: an account's :class:`HighlightTray`.
USER_HIGHLIGHTS: Endpoint[HighlightTray] = Endpoint(
    name="fetch_user_highlights",
    path="/v1/instagram/fetch_user_highlights",
    what="highlight tray",
    parse_target=as_target,
    decode=msgspec.json.Decoder(TrayEnvelope).decode,
)
#: ``GET /v1/instagram/fetch_highlight_stories``: one highlight's :class:`HighlightStories`.
HIGHLIGHT_STORIES: Endpoint[HighlightStories] = Endpoint(
    name="fetch_highlight_stories",
    path="/v1/instagram/fetch_highlight_stories",
    what="highlight stories",
    parse_target=as_highlight,
    decode=msgspec.json.Decoder(HighlightEnvelope).decode,
)
