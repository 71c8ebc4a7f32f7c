"""The emulator's highlights: deterministic trays per account and the items of each highlight.

A highlight's content is a function of its id and the seed only, so that a
``fetch_highlight_stories`` request agrees with the tray that listed the id
(its ``media_count`` and ``latest_reel_media``) without any state. Items
appear over time: :attr:`HighlightConfig.grow_every` adds one item to each
account's first highlight per period, and :attr:`HighlightConfig.added` adds
items to named highlights (what a test sets to make exactly one change).
With :attr:`HighlightConfig.keep_active` an account's first highlight also
holds the newest of its active stories: the very item (id, time, media) its
``fetch_user_stories`` answer carries, as when a live story is kept.
The wire shape is the one the client assumes (docs/highlights.md).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from .._errors import ConfigurationError
from ..engine.validate import check_count, check_number
from ._data import BASE_EPOCH, digest, make_item, owner_for, split_target_key

__all__ = [
    "HIGHLIGHT_STORIES_PATH",
    "HOSTILE_TITLE_LENGTH",
    "TRAY_PATH",
    "HighlightConfig",
    "highlight_ids",
    "highlight_stories_data",
    "tray_data",
]

TRAY_PATH: Final = "/v1/instagram/fetch_user_highlights"
HIGHLIGHT_STORIES_PATH: Final = "/v1/instagram/fetch_highlight_stories"
#: The title length of a hostile tray's absurd entry (5 MB).
HOSTILE_TITLE_LENGTH: Final = 5 * 1024 * 1024

# Titles a media layout must survive: emoji, separators, dots, a way up and out,
# an absolute path, a NUL byte, a Windows device name.
_TITLES: Final = (
    "Travel ✈️",
    "Food",
    "2024",
    "Friends 💛",
    "a/b",
    "..",
    "CON",
    "Work: notes",
    "",
    "../../escape",
    "/etc",
    "nul\x00byte",
)
_HOUR: Final = 3600


@dataclass(frozen=True, kw_only=True)
class HighlightConfig:
    """How the emulator's highlight endpoints answer (the ``highlights`` field of ``EmulatorConfig``)."""  # noqa: E501

    max_highlights: int = 4
    """Most highlights in one account's tray (each account has 0 to this many)."""
    max_items: int = 4
    """Most items a highlight starts with (each has 1 to this many)."""
    added: Mapping[str, int] = field(default_factory=dict)
    """Extra items per highlight id (bare digits): what a test sets to change one highlight."""
    grow_every: float | None = None
    """Seconds after which each account's first highlight gains one more item (None: never)."""
    shape: Literal["items", "reels", "mixed"] = "mixed"
    """Highlight stories as ``data.data.items``, as ``data.data.reels[...]``, or either by id."""
    hostile: frozenset[str] = frozenset()
    """Target keys whose tray also holds hostile entries: no id, wrong types, a 5 MB title,
    a repeated id."""
    keep_active: bool = False
    """Each account's first highlight also holds the newest of its active stories (the same
    item), counted in the tray's ``media_count`` and ``latest_reel_media``."""

    def __post_init__(self) -> None:
        """Validate every field."""
        check_count(self.max_highlights, "highlights.max_highlights")
        check_count(self.max_items, "highlights.max_items", minimum=1)
        if self.grow_every is not None:
            check_number(self.grow_every, "highlights.grow_every", positive=True)
        if self.shape not in ("items", "reels", "mixed"):
            raise ConfigurationError(
                f"highlights.shape must be items, reels or mixed, got {self.shape!r}"
            )
        added: dict[str, int] = {}
        for hid, extra in dict(self.added).items():
            if not isinstance(hid, str) or not (hid.isascii() and hid.isdigit()):
                raise ConfigurationError(
                    f"highlights.added keys must be highlight ids, got {hid!r}"
                )
            added[hid] = check_count(extra, f"highlights.added[{hid!r}]")
        object.__setattr__(self, "added", added)
        object.__setattr__(self, "hostile", frozenset(self.hostile))


def highlight_ids(key: str, seed: int, config: HighlightConfig) -> list[str]:
    """The ids (bare digits) of the highlights in the tray of target ``key``, in tray order."""
    split_target_key(key)
    rng = random.Random(digest("highlights", str(seed), key))
    count = rng.randint(0, config.max_highlights) if rng.random() >= 0.2 else 0
    return [str(17_000_000_000_000_000 + rng.randrange(10**15)) for _ in range(count)]


def _count(hid: str, seed: int, config: HighlightConfig, elapsed: float, first: bool) -> int:
    base = 1 + digest("highlight-count", str(seed), hid) % config.max_items
    grown = 0
    if first and config.grow_every is not None:
        grown = int(max(0.0, elapsed) // config.grow_every)
    return base + config.added.get(hid, 0) + grown


def _created_at(hid: str) -> int:
    return BASE_EPOCH - 30 * 86_400 - digest("highlight-created", hid) % (300 * 86_400)


def _items(hid: str, seed: int, count: int, owner: dict[str, Any]) -> list[dict[str, Any]]:
    created = _created_at(hid)
    # Each item from its own generator: an added item leaves the earlier ones as they were.
    return [
        make_item(random.Random(digest("highlight-item", str(seed), hid, str(n))), t, owner)
        for n, t in ((n, created + n * _HOUR) for n in range(count))
    ]


def _entry(
    hid: str,
    seed: int,
    config: HighlightConfig,
    elapsed: float,
    position: int,
    owner: Any,
    kept: dict[str, Any] | None,
) -> dict[str, Any]:
    own = _count(hid, seed, config, elapsed, position == 0)
    created = _created_at(hid)
    latest = created + (own - 1) * _HOUR
    count = own
    if kept is not None and position == 0:
        count += 1
        latest = max(latest, int(kept["taken_at"]))
    width, height = 150, 150
    return {
        "cover_media": {
            "cropped_image_version": {
                "height": height,
                "url": f"https://scontent.example.invalid/v/t51.2885-15/cover_{hid}.jpg",
                "width": width,
            },
            "media_id": hid,
        },
        "created_at": created,
        "id": f"highlight:{hid}" if digest("prefix", hid) % 2 == 0 else hid,
        "is_pinned_highlight": False,
        "latest_reel_media": latest,
        "media_count": count,
        "reel_type": "highlight_reel",
        "title": _TITLES[digest("title", hid) % len(_TITLES)],
        "user": {"pk": owner["id"], "username": owner["username"]},
    }


def _hostile_entries(good: list[dict[str, Any]]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = [
        {"title": "no id", "media_count": 1},
        {"id": "highlight:17999999999999991", "media_count": "three", "title": "wrong type"},
        {"id": ["17999999999999992"], "title": "id is a list"},
        {"id": "highlight:not-digits", "title": "bad id"},
        {"id": "highlight:17999999999999993", "title": "x" * HOSTILE_TITLE_LENGTH},
    ]
    if good:
        entries.append(dict(good[0]))  # the same id twice
    return entries


def tray_data(
    key: str,
    seed: int,
    config: HighlightConfig,
    elapsed: float,
    kept: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``data`` field of a ``fetch_user_highlights`` success for ``key``.

    ``elapsed`` is the seconds since the emulator's configuration took
    effect (what :attr:`HighlightConfig.grow_every` counts against);
    ``kept`` is the active story item the first highlight also holds
    (:attr:`HighlightConfig.keep_active`), or None.
    """
    owner = owner_for(key)
    ids = highlight_ids(key, seed, config)
    items = [_entry(hid, seed, config, elapsed, n, owner, kept) for n, hid in enumerate(ids)]
    if key in config.hostile:
        items = items + _hostile_entries(items)
    return {"data": {"items": items}}


def highlight_stories_data(
    hid: str,
    seed: int,
    config: HighlightConfig,
    elapsed: float,
    owner_key: str | None,
    kept: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``data`` field of a ``fetch_highlight_stories`` success for highlight ``hid``.

    ``owner_key`` is the target key of the account whose tray listed it
    (``None`` when no tray did: the items then name a synthetic owner);
    ``kept`` as for :func:`tray_data` (the owner's kept active story).
    """
    owner = owner_for(owner_key or f"user_id:{hid[-9:]}")
    first = owner_key is not None and highlight_ids(owner_key, seed, config)[:1] == [hid]
    count = _count(hid, seed, config, elapsed, first)
    items = _items(hid, seed, count, owner)
    if first and kept is not None:
        items.append(kept)
    reel: dict[str, Any] = {
        "id": f"highlight:{hid}",
        "items": items,
        "title": _TITLES[digest("title", hid) % len(_TITLES)],
        "user": {"pk": owner["id"], "username": owner["username"]},
    }
    shape = config.shape
    if shape == "mixed":
        shape = "reels" if digest("shape", hid) % 2 else "items"
    if shape == "reels":
        return {"data": {"reels": {f"highlight:{hid}": reel}}}
    return {"data": reel}


def encode(data: dict[str, Any]) -> bytes:
    """``data`` as compact JSON with sorted keys, as the stories reels are encoded."""
    return msgspec.json.encode(data, order="sorted")
