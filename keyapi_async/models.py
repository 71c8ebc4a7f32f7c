"""Typed msgspec models of keyapi.ai's Instagram stories: what a fetch returns.

A :class:`Reel` holds its :class:`ReelInfo` (``additional_data``) and a tuple
of :class:`StoryItem`. A :class:`HighlightTray` lists an account's
:class:`Highlight` s; :class:`HighlightStories` holds the items of one
highlight, the same :class:`StoryItem` as an active story. Every sequence
is a tuple (``()`` when absent). Only the fields a consumer needs are
modelled (unknown keys are skipped) and anything that may be missing has a
default. Ids are ``str``: a numeric id is
rejected, not coerced. Structs are frozen, so safe to share and cache.
Timestamps stay raw Unix seconds; ``*_datetime`` properties return aware UTC
datetimes. :func:`decode_reel` and :func:`encode` round-trip stored reels.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeVar

import msgspec

__all__ = [
    "Caption",
    "Hashtag",
    "Highlight",
    "HighlightCover",
    "HighlightStories",
    "HighlightTray",
    "ImageCandidate",
    "ImageVersions",
    "Location",
    "MusicAssetInfo",
    "MusicInfo",
    "MusicMetadata",
    "Reel",
    "ReelInfo",
    "ReelMention",
    "StoryComment",
    "StoryHashtag",
    "StoryItem",
    "TaggedUser",
    "User",
    "VideoVersion",
    "decode_reel",
    "encode",
]

_MEDIA_TYPE_VIDEO = 2
_STORY_LIFETIME = timedelta(hours=24)  # keyapi: "Stories expire after 24 hours"


def _utc_from_timestamp(ts: int | None) -> datetime | None:
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, tz=UTC)
    except (OverflowError, OSError, ValueError):  # e.g. milliseconds: no crash in a batch loop
        return None


def _utc_from_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:  # Instagram's times are UTC; keep it comparable with aware ones
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


class User(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An Instagram user as embedded in reels, items, mentions and comments."""

    id: str | None = None
    username: str | None = None
    full_name: str | None = None
    is_private: bool = False
    is_verified: bool = False
    profile_pic_id: str | None = None
    profile_pic_url: str | None = None


class ReelInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Reel-level metadata (the ``additional_data`` object)."""

    id: str | None = None
    reel_type: str | None = None
    expiring_at: int | None = None
    latest_reel_media: int | None = None
    ad_expiry_timestamp_in_millis: int | None = None
    is_archived: bool = False
    can_reply: bool = False
    can_reshare: bool = False
    can_gif_quick_reply: bool = False
    can_react_with_avatar: bool = False
    show_expiration_tray_signal: bool = False
    disabled_reply_types: tuple[str, ...] = ()
    user: User | None = None

    @property
    def expiring_at_datetime(self) -> datetime | None:
        """When the reel expires, as an aware UTC datetime (None if unknown)."""
        return _utc_from_timestamp(self.expiring_at)

    @property
    def latest_reel_media_datetime(self) -> datetime | None:
        """When the newest story was posted, as an aware UTC datetime (None if unknown)."""
        return _utc_from_timestamp(self.latest_reel_media)


class ImageCandidate(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One rendition of a story image."""

    url: str = ""
    width: int = 0
    height: int = 0
    is_spatial_image: bool = False


class ImageVersions(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The set of image renditions (``image_versions``)."""

    items: tuple[ImageCandidate, ...] = ()

    @property
    def best(self) -> ImageCandidate | None:
        """The candidate with the most pixels that has a URL, or None."""
        return _most_pixels(self.items)


class VideoVersion(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One rendition of a story video (an entry of ``video_versions``)."""

    type: int | None = None
    width: int = 0
    height: int = 0
    url: str = ""
    id: str | None = None


class Hashtag(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A hashtag referenced by a story sticker."""

    id: str | None = None
    name: str = ""


class _Sticker(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    # Geometry is relative to the media (0..1); times are floats, as Instagram
    # sends both 0 and 0.0.
    id: str | None = None
    x: float = 0.0
    y: float = 0.0
    z: int | None = None
    width: float = 0.0
    height: float = 0.0
    rotation: float = 0.0
    start_time_ms: float | None = None
    end_time_ms: float | None = None


class StoryHashtag(_Sticker, frozen=True, kw_only=True, gc=False):
    """A hashtag sticker placed on a story; geometry is relative to the media (0..1)."""

    hashtag: Hashtag = msgspec.field(default_factory=Hashtag)


class ReelMention(_Sticker, frozen=True, kw_only=True, gc=False):
    """An @-mention sticker placed on a story; geometry is relative to the media (0..1)."""

    display_type: str | None = None
    user: User | None = None


class TaggedUser(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A user tagged on the story media at relative position ``(x, y)``."""

    user: User | None = None
    x: float | None = None
    y: float | None = None


class StoryComment(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A comment attached to a story (the owner's own text shows up here too)."""

    id: str | None = None
    text: str = ""
    created_at: int | None = None
    content_type: str | None = None
    user_id: str | None = None
    user: User | None = None

    @property
    def created_at_datetime(self) -> datetime | None:
        """When the comment was written, as an aware UTC datetime (None if unknown)."""
        return _utc_from_timestamp(self.created_at)


class Caption(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A media caption; only its text fields (its ids are numbers in some API versions)."""

    text: str = ""
    created_at: int | None = None
    content_type: str | None = None


class Location(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A place attached to a story."""

    pk: str | None = None
    id: str | None = None
    name: str | None = None
    short_name: str | None = None
    address: str | None = None
    city: str | None = None
    lat: float | None = None
    lng: float | None = None
    external_source: str | None = None


class MusicAssetInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Song details of a story's music track."""

    title: str | None = None
    display_artist: str | None = None
    duration_in_ms: int | None = None
    is_explicit: bool = False


class MusicInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Wrapper Instagram puts around the song details."""

    music_asset_info: MusicAssetInfo | None = None


class MusicMetadata(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Music attached to a story (``music_metadata``)."""

    music_canonical_id: str | None = None
    audio_type: str | None = None
    music_info: MusicInfo | None = None


class StoryItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One story (image or video) in a user's reel; ``id`` is its only required field."""

    id: str
    pk: str | None = None
    code: str | None = None
    fbid: str | None = None
    taken_at: int | None = None
    taken_at_date: str | None = None
    expiring_at: int | None = None
    media_type: int | None = None
    media_format: str | None = None
    product_type: str | None = None
    is_video: bool = False
    original_width: int | None = None
    original_height: int | None = None
    image_versions: ImageVersions | None = None
    video_versions: tuple[VideoVersion, ...] = ()
    video_duration: float | None = None
    has_audio: bool | None = None
    thumbnail_url: str | None = None
    caption: Caption | None = None
    story_hashtags: tuple[StoryHashtag, ...] = ()
    reel_mentions: tuple[ReelMention, ...] = ()
    story_comments: tuple[StoryComment, ...] = ()
    tagged_users: tuple[TaggedUser, ...] = ()
    location: Location | None = None
    music_metadata: MusicMetadata | None = None
    user: User | None = None
    owner: User | None = None
    is_paid_partnership: bool = False
    is_pinned: bool = False
    can_reply: bool = False
    can_reshare: bool = False

    @property
    def is_video_media(self) -> bool:
        """Whether this story is a video, by either ``is_video`` or ``media_type == 2``."""
        return self.is_video or self.media_type == _MEDIA_TYPE_VIDEO

    @property
    def best_image_url(self) -> str | None:
        """URL of the largest (width x height) image rendition, or None."""
        best = None if self.image_versions is None else self.image_versions.best
        return None if best is None else best.url

    @property
    def best_video_url(self) -> str | None:
        """URL of the largest (width x height) video rendition, or None."""
        best = _most_pixels(self.video_versions)
        return None if best is None else best.url

    @property
    def best_rendition(self) -> VideoVersion | ImageCandidate | None:
        """The story's own media: the largest video for a video, else the largest image.

        The one rule for "which file is this story" (the archive, the media
        downloader and :attr:`best_media_url` all ask here): most pixels, the
        first of equals, only renditions with a URL. A video without video
        renditions yields None, never its poster image.
        """
        if self.is_video_media:
            return _most_pixels(self.video_versions)
        return None if self.image_versions is None else self.image_versions.best

    @property
    def best_media_url(self) -> str | None:
        """URL of :attr:`best_rendition` (the story's own media), or None."""
        best = self.best_rendition
        return None if best is None else best.url

    @property
    def taken_at_datetime(self) -> datetime | None:
        """When the story was posted (``taken_at``, else ``taken_at_date``), aware UTC or None."""
        if self.taken_at is not None:
            return _utc_from_timestamp(self.taken_at)
        return _utc_from_iso(self.taken_at_date)

    @property
    def expiring_at_datetime(self) -> datetime | None:
        """When the story expires, as an aware UTC datetime (None if unknown)."""
        return _utc_from_timestamp(self.expiring_at)

    @property
    def hashtag_names(self) -> list[str]:
        """Names of the hashtag stickers, in wire order."""
        return [h.hashtag.name for h in self.story_hashtags if h.hashtag.name]

    @property
    def mentioned_usernames(self) -> list[str]:
        """Usernames of the @-mention stickers, in wire order."""
        return [m.user.username for m in self.reel_mentions if m.user and m.user.username]

    def is_expired(self, now: datetime | None = None) -> bool:
        """Return whether the story has expired at ``now`` (aware; default: the current time).

        Without ``expiring_at`` the documented 24-hour lifetime from ``taken_at``
        is used; with neither known the story is not expired.
        """
        expires = self.expiring_at_datetime
        if expires is None:
            taken = self.taken_at_datetime
            if taken is None:
                return False
            expires = taken + _STORY_LIFETIME
        return (now if now is not None else datetime.now(UTC)) >= expires


class Reel(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A user's active stories: reel metadata plus the story items."""

    additional_data: ReelInfo | None = None
    count: int = 0
    items: tuple[StoryItem, ...] = ()

    @property
    def is_empty(self) -> bool:
        """Whether the reel has no story items (no active stories)."""
        return not self.items

    @property
    def user(self) -> User | None:
        """The reel's owner, from ``additional_data`` or else the first item."""
        info = self.additional_data
        if info is not None and info.user is not None:
            return info.user
        return (self.items[0].user or self.items[0].owner) if self.items else None

    @property
    def expiring_at_datetime(self) -> datetime | None:
        """When the reel expires, as an aware UTC datetime (None if unknown)."""
        info = self.additional_data
        return None if info is None else info.expiring_at_datetime


#: The prefix Instagram puts on a highlight's reel id (``highlight:17912345678901234``).
HIGHLIGHT_PREFIX = "highlight:"


class HighlightCover(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A highlight's cover image (the tray's ``cover_media.cropped_image_version``)."""

    url: str = ""
    width: int | None = None
    height: int | None = None


class Highlight(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One highlight in an account's tray: the stories an account keeps on its profile.

    ``id`` is the bare digits, the ``highlight:`` prefix stripped whichever
    form the API sent (:attr:`reel_id` puts it back). ``latest_reel_media``
    and ``media_count`` tell whether the highlight changed since last seen.
    """

    id: str
    title: str | None = None
    created_at: int | None = None
    latest_reel_media: int | None = None
    media_count: int | None = None
    cover: HighlightCover | None = None
    user: User | None = None

    @property
    def reel_id(self) -> str:
        """The id with its ``highlight:`` prefix, as Instagram keys the highlight's reel."""
        return HIGHLIGHT_PREFIX + self.id

    @property
    def created_at_datetime(self) -> datetime | None:
        """When the highlight was created, as an aware UTC datetime (None if unknown)."""
        return _utc_from_timestamp(self.created_at)

    @property
    def latest_reel_media_datetime(self) -> datetime | None:
        """When the highlight's newest item was posted, aware UTC (None if unknown)."""
        return _utc_from_timestamp(self.latest_reel_media)


class HighlightTray(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An account's highlights, in tray order.

    ``skipped`` gives one reason per tray entry left out because it could not
    be used (no id, a wrong type, an absurd title, a repeated id); each is
    also logged as a warning.
    """

    items: tuple[Highlight, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        """Whether the account has no (usable) highlights."""
        return not self.items

    @property
    def user(self) -> User | None:
        """The tray's owner, from the first highlight that names one."""
        return next((h.user for h in self.items if h.user is not None), None)


class HighlightStories(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The story items of one highlight (``highlight_id`` without its prefix)."""

    highlight_id: str | None = None
    title: str | None = None
    items: tuple[StoryItem, ...] = ()
    user: User | None = None

    @property
    def is_empty(self) -> bool:
        """Whether the highlight has no items."""
        return not self.items


_R = TypeVar("_R", ImageCandidate, VideoVersion)


def _most_pixels(renditions: tuple[_R, ...]) -> _R | None:
    # max(..., key=) over a generator, unrolled: the first of equals wins the
    # same way, at a third of the cost (an import asks once per story).
    best: _R | None = None
    most = 0
    for rendition in renditions:
        if rendition.url:
            pixels = rendition.width * rendition.height
            if best is None or pixels > most:
                best, most = rendition, pixels
    return best


_REEL_DECODER = msgspec.json.Decoder(Reel)
_ENCODER = msgspec.json.Encoder()


def decode_reel(body: bytes) -> Reel:
    """Decode a bare reel (e.g. one ``encode`` wrote); raises ``msgspec.DecodeError`` if invalid."""
    return _REEL_DECODER.decode(body)


def encode(obj: msgspec.Struct) -> bytes:
    """Encode a model (or any msgspec Struct) to JSON bytes using wire field names."""
    return _ENCODER.encode(obj)
