"""The decisions of a media download, without I/O.

What to fetch for a story item (:func:`draft`, :func:`name_fields`), which
headers to send (:func:`request_headers`), what an answer's status and
headers mean (:func:`judge`: follow a redirect, give up, retry, adopt a
``.part`` that is already whole, or stream the body from an offset), and how
long to wait before the next attempt (:func:`retry_wait`). The HTTP adapter
(``media/http.py``) does what these say; like gidgethub's ``sansio`` module,
every rule here is tested with plain values.

``Retry-After`` and the backoff are the engine's (``engine.sansio.parse_retry_after``,
``engine.retry.backoff_delay``): the API client and the downloader wait by one rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final, TypeAlias
from urllib.parse import urlsplit

from ..engine.retry import backoff_delay
from ..engine.sansio import parse_retry_after
from ..models import Highlight, ImageCandidate, ImageVersions, StoryItem, User, VideoVersion
from .outcome import MediaOutcome, MediaStatus
from .paths import template_fields

__all__ = [
    "CONTENT_TYPE_EXT",
    "MAX_REDIRECTS",
    "Adopt",
    "Expired",
    "GiveUp",
    "Receive",
    "Redirect",
    "Retry",
    "Verdict",
    "cover_item",
    "cover_story_id",
    "draft",
    "ext_for_content_type",
    "judge",
    "name_fields",
    "request_headers",
    "retry_wait",
]

MAX_REDIRECTS: Final = 5
"""Redirect hops followed per item (each to an allowed host) before giving up."""

CONTENT_TYPE_EXT: Final[Mapping[str, str]] = {
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "video/webm": "webm",
}
"""The file extension a known media ``Content-Type`` asks for."""

_URL_EXTS: Final = frozenset(CONTENT_TYPE_EXT.values())
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_EXPIRED: Final = frozenset({403, 410})


# -- what to fetch ----------------------------------------------------------------------


def draft(item: StoryItem, *, target: str | None, owner: User | None) -> MediaOutcome:
    """The item's outcome before any request: ``failed`` until something better happens.

    It names the chosen rendition (:attr:`StoryItem.best_rendition
    <keyapi_async.models.StoryItem.best_rendition>`, the one rule); without
    one, ``url`` is None and ``reason`` says so.
    """
    username = _first_username(item.user, item.owner, owner) or target or "unknown"
    outcome = MediaOutcome(
        story_id=item.id, status=MediaStatus.FAILED, target=target, username=username
    )
    best = item.best_rendition
    if best is None:
        return replace(outcome, reason="the item has no media URL")
    media_type = "video" if isinstance(best, VideoVersion) else "image"
    return replace(
        outcome, url=best.url, width=best.width, height=best.height, media_type=media_type
    )


def name_fields(
    item: StoryItem, outcome: MediaOutcome, owner: User | None, highlight: Highlight | None = None
) -> dict[str, object]:
    """The name template's fields for ``item``, whose :func:`draft` is ``outcome``.

    ``highlight`` is the highlight the item is saved as part of (its id and
    title fill ``{highlight_id}`` and ``{highlight_title}``; empty otherwise).
    """
    assert outcome.url is not None
    assert outcome.media_type is not None
    user = item.user or item.owner or owner
    return template_fields(
        story_id=item.id,
        username=outcome.username or "",
        user_id=(user.id if user is not None and user.id else ""),
        code=item.code or "",
        taken_at=item.taken_at,
        ext=_ext_from_url(outcome.url, outcome.media_type),
        media_type=outcome.media_type,
        width=outcome.width or 0,
        height=outcome.height or 0,
        target=outcome.target or "",
        highlight_id="" if highlight is None else highlight.id,
        highlight_title=None if highlight is None else highlight.title,
    )


def cover_story_id(highlight_id: str) -> str:
    """The story id a highlight's cover is filed (and looked up) under: ``cover_<id>``."""
    return f"cover_{highlight_id}"


def cover_item(highlight: Highlight) -> StoryItem:
    """A highlight's cover as a one-image story item, so it is named and saved like one.

    Its id is :func:`cover_story_id`, its time the highlight's creation and
    its owner the highlight's; without a cover it has no media URL (its
    :func:`draft` says so).
    """
    cover = highlight.cover
    images = (
        None
        if cover is None or not cover.url
        else ImageVersions(
            items=(ImageCandidate(url=cover.url, width=cover.width or 0, height=cover.height or 0),)
        )
    )
    return StoryItem(
        id=cover_story_id(highlight.id),
        media_type=1,
        taken_at=highlight.created_at,
        image_versions=images,
        user=highlight.user,
    )


def ext_for_content_type(content_type: str | None) -> str | None:
    """The extension a known media ``Content-Type`` asks for, or None."""
    return CONTENT_TYPE_EXT.get(content_type or "")


def _ext_from_url(url: str, media_type: str) -> str:
    suffix = urlsplit(url).path.rpartition(".")[2].lower()
    if suffix == "jpeg":
        suffix = "jpg"
    if suffix in _URL_EXTS:
        return suffix
    return "mp4" if media_type == "video" else "jpg"


def _first_username(*users: User | None) -> str | None:
    for user in users:
        if user is not None and user.username:
            return user.username
    return None


# -- what an answer means ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Redirect:
    """Follow ``location`` (relative to the URL asked), if the allowlist agrees."""

    location: str


@dataclass(frozen=True, slots=True)
class Expired:
    """The signed URL no longer works (403/410); the body's first bytes go in the reason."""

    status: int


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Give up on the item with this status and reason (``discard``: delete the ``.part``)."""

    status: MediaStatus
    reason: str
    discard: bool = False


@dataclass(frozen=True, slots=True)
class Retry:
    """Try again after a backoff (at least ``wait`` seconds, when the server asked).

    ``restart``: delete the ``.part`` first; it cannot be resumed.
    """

    reason: str
    wait: float | None = None
    restart: bool = False


@dataclass(frozen=True, slots=True)
class Adopt:
    """The ``.part`` already holds the whole file (``size`` bytes): finish it, fetch nothing."""

    size: int


@dataclass(frozen=True, slots=True)
class Receive:
    """Stream the body into the ``.part`` from ``offset`` (0: start over).

    ``length`` is the body's byte count to verify, or None when unknown (no
    ``Content-Length``, or one that counts encoded bytes).
    """

    offset: int
    length: int | None


Verdict: TypeAlias = Redirect | Expired | GiveUp | Retry | Adopt | Receive
"""What one answer means for the download (see :func:`judge`)."""


def request_headers(offset: int) -> dict[str, str]:
    """Headers of one media request: no compression (bytes are counted), ``Range`` to resume."""
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return headers


def judge(status: int, headers: Mapping[str, str], *, offset: int, max_bytes: int) -> Verdict:
    """What an answer means, given ``offset`` bytes already in the ``.part``.

    ``headers`` must look names up case-insensitively (aiohttp's
    ``CIMultiDictProxy``, or a ``multidict.CIMultiDict`` in tests).
    """
    if status in _REDIRECTS:
        location = headers.get("Location")
        if not location:
            return GiveUp(MediaStatus.FAILED, f"HTTP {status} without Location")
        return Redirect(location)
    if status in _EXPIRED:
        return Expired(status)
    if status == 416 and offset:
        if _unsatisfied_total(headers.get("Content-Range")) == offset:
            # The .part already holds the whole file (its last answer lied about
            # the length, or a run died between the last byte and the rename).
            return Adopt(offset)
        return Retry("the CDN cannot resume this file (416); restarting it", restart=True)
    if status == 429 or status >= 500:
        return Retry(f"HTTP {status}", wait=parse_retry_after(headers))
    if status not in (200, 206):
        return GiveUp(MediaStatus.FAILED, f"HTTP {status}")
    return _body(status, headers, offset=offset, max_bytes=max_bytes)


def _body(status: int, headers: Mapping[str, str], *, offset: int, max_bytes: int) -> Verdict:
    length = _digits(headers.get("Content-Length"))
    if status == 206:
        start, total = _content_range(headers.get("Content-Range"))
        if start != offset:
            return Retry("the CDN resumed at another offset; restarting the file", restart=True)
    else:
        offset, total = 0, length  # the whole file again: the .part starts over
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        length = None  # the header counts encoded bytes, we count decoded ones
    if total is not None and total > max_bytes:
        reason = f"file is {total} bytes, over max_bytes={max_bytes}"
        return GiveUp(MediaStatus.FAILED, reason, discard=True)
    return Receive(offset, length)


def retry_wait(
    attempt: int, hint: float | None, *, base: float, cap: float, rand: Callable[[], float]
) -> float:
    """Seconds before request ``attempt + 1``: the engine's backoff, or longer if asked, capped."""
    wait = backoff_delay(attempt, base=base, cap=cap, rand=rand)
    return wait if hint is None else min(cap, max(wait, hint))


def _digits(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() else None


def _unsatisfied_total(value: str | None) -> int | None:
    """Parse a 416's ``bytes */TOTAL``."""
    if not value or not value.startswith("bytes */"):
        return None
    return _digits(value[8:])


def _content_range(value: str | None) -> tuple[int, int | None]:
    """Parse ``bytes START-END/TOTAL`` into ``(START, TOTAL)``; (-1, None) if unusable."""
    if not value or not value.startswith("bytes "):
        return -1, None
    span, _, total = value[6:].partition("/")
    first = span.partition("-")[0]
    if not first.isdigit():
        return -1, None
    return int(first), int(total) if total.isdigit() else None
