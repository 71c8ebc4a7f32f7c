"""Deterministic synthetic story reels shaped like the real API's ``data`` field.

Everything here is a pure function of the target key, the seed and the empty
ratio: no wall clock, no process-salted ``hash()``. That keeps emulator bodies
byte-identical across runs and processes, which tests and benchmarks rely on.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from .._errors import ConfigurationError

__all__ = [
    "BASE_EPOCH",
    "IMAGE_RENDITIONS",
    "build_reel",
    "digest",
    "encoded_reel",
    "localize_media",
    "make_item",
    "owner_for",
    "split_target_key",
    "target_key",
]

BASE_EPOCH: Final = 1_773_108_781
"""The newest possible ``taken_at`` (the seed example's latest story, March 2026)."""

_DAY: Final = 86_400
_CDN: Final = "https://scontent.example.invalid"
_CDN_HOST: Final = "scontent.example.invalid"

_FIRST_NAMES: Final = (
    "Alex", "Bea", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Javan",
    "Kai", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tomoko",
)  # fmt: skip
_LAST_NAMES: Final = (
    "Ng", "Silva", "Okafor", "Larsen", "Kowalski", "Haddad", "Tanaka", "Moreau",
    "Rossi", "Novak", "Costa", "Ibrahim", "Park", "Fischer", "Reyes", "Walsh",
)  # fmt: skip
_WORDS: Final = (
    "grsnaps", "streetphotography", "sunset", "coffee", "weekendvibes", "travel",
    "foodie", "citylights", "hiking", "rainyday", "nofilter", "latergram",
    "snakeinmyhood", "streetsofshanghai", "catsofinstagram", "filmisnotdead",
)  # fmt: skip
_COMMENTS: Final = (
    "A freaking cobra having its dinner in the middle of the footpath! 🐍",
    "Best coffee in town, no contest ☕",
    "Caught the last light just in time",
    "Who else is out in this rain?",
    "Swipe for the full set →",
)
IMAGE_RENDITIONS: Final = ((720, 1280), (1080, 1920), (360, 640))
"""``(width, height)`` of the image renditions :func:`localize_media` lists, in wire order.

The largest is deliberately not first: a client must pick by size, not position.
"""

_SHORTCODE_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

# Item fields that never vary; copied into every item so bodies carry the
# seed's full key set (and therefore its size) without per-item work.
_ITEM_CONSTANTS: Final[dict[str, Any]] = {
    "archive_story_deletion_ts": 0,
    "boost_unavailable_identifier": None,
    "boost_unavailable_reason": None,
    "boost_unavailable_reason_v2": None,
    "can_hype": False,
    "can_mention_back": False,
    "can_mention_share": False,
    "can_play_spotify_audio": False,
    "can_reply": True,
    "can_reshare": True,
    "can_reshare_to_story": True,
    "can_save": False,
    "can_send_prompt": False,
    "caption": None,
    "caption_is_edited": False,
    "coauthor_producer_can_see_organic_insights": False,
    "coauthor_producers": [],
    "creative_config": None,
    "crosspost": ["FB", "IG"],
    "crosspost_metadata": {
        "fb_downstream_use_xpost_metadata": {"downstream_use_xpost_deny_reason": "NONE"}
    },
    "cutout_sticker_info": [],
    "deleted_reason": 0,
    "filter_type": 0,
    "fundraiser_tag": {"has_standalone_fundraiser": False},
    "gen_ai_detection_method": {"detection_method": "NONE"},
    "has_high_risk_gen_ai_inform_treatment": False,
    "has_liked": False,
    "has_privately_liked": False,
    "has_translation": False,
    "ig_media_sharing_disabled": False,
    "integrity_review_decision": "pending",
    "invited_coauthor_producers": [],
    "is_creator_secret_story": False,
    "is_first_take": False,
    "is_from_ayt_clips_inspiration": False,
    "is_from_discovery_surface": False,
    "is_in_profile_grid": False,
    "is_open_to_public_submission": False,
    "is_organic_product_tagging_eligible": True,
    "is_paid_partnership": False,
    "is_photo_mash_story": False,
    "is_pinned": False,
    "is_quicksnap_recap": False,
    "is_reel_media": True,
    "is_reshare_of_text_post_app_media_in_ig": False,
    "is_story_image_with_music": False,
    "is_tagged_media_shared_to_viewer_profile_grid": False,
    "is_terminal_video_segment": False,
    "is_viewer_mentioned": False,
    "location": None,
    "media_attributions_data": [],
    "media_name": "story",
    "media_overlay_info": None,
    "music_metadata": None,
    "product_suggestions": [],
    "product_type": "story",
    "sharing_friction_info": {
        "bloks_app_url": None,
        "sharing_friction_payload": None,
        "should_have_sharing_friction": False,
    },
    "shop_routing_user_id": None,
    "should_show_author_pog_for_tagged_media_shared_to_profile_grid": False,
    "sponsor_tags": [],
    "supports_reel_reactions": True,
    "tagged_users": [],
    "video_sticker_locales": [],
    "wearable_shared_media_resolutions": [],
    "wearables_creator_tools_info": [],
}

_STICKER_FLAGS: Final[dict[str, int]] = {
    "is_fb_sticker": 0,
    "is_hidden": 0,
    "is_pinned": 0,
    "is_sticker": 0,
}


def target_key(username: str | None = None, user_id: str | None = None) -> str:
    """Return the target key (``"username:NAME"`` or ``"user_id:DIGITS"``) for one handle."""
    if (username is None) == (user_id is None):
        raise ConfigurationError("give exactly one of username or user_id")
    return f"username:{username}" if username is not None else f"user_id:{user_id}"


def split_target_key(key: str) -> tuple[str, str]:
    """Split a target key into ``(kind, value)``; kind is ``"username"`` or ``"user_id"``."""
    kind, sep, value = key.partition(":")
    if not sep or kind not in ("username", "user_id"):
        raise ConfigurationError(f"not a target key: {key!r}")
    return kind, value


def digest(*parts: str) -> int:
    """A stable 64-bit number from ``parts`` (what every synthetic choice is drawn from)."""
    data = "\x00".join(parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=16).digest(), "big")


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randrange(10 ** (n - 1), 10**n))


def _token(rng: random.Random, nbytes: int) -> str:
    return base64.urlsafe_b64encode(rng.randbytes(nbytes)).rstrip(b"=").decode()


def _query_tail(rng: random.Random) -> str:
    # The long signed query strings are most of a real body's bytes.
    return (
        f"&_nc_cat={rng.randrange(100, 120)}&ccb=7-5&_nc_sid=58cdad"
        f"&efg={_token(rng, 45)}&_nc_ohc={_token(rng, 17)}&_nc_oc={_token(rng, 48)}"
        f"&_nc_ad=z-m&_nc_cid=0&_nc_zt=23&_nc_ht={_CDN_HOST}&_nc_gid={_token(rng, 16)}"
        f"&_nc_ss=1a&oh=00_{_token(rng, 33)}&oe={rng.getrandbits(32):08X}"
    )


def _profile_pic_url(rng: random.Random) -> str:
    path = f"{_digits(rng, 9)}_{_digits(rng, 15)}_{_digits(rng, 19)}_n.jpg"
    return f"{_CDN}/v/t51.2885-19/{path}?stp=dst-webp_s150x150{_query_tail(rng)}"


def _make_user(rng: random.Random, user_id: str, username: str) -> dict[str, Any]:
    return {
        "full_name": f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}",
        "id": user_id,
        "interop_messaging_user_fbid": rng.randrange(10**14, 10**15),
        "is_creator_agent_enabled": False,
        "is_private": False,
        "is_ring_creator": False,
        "is_screenshot_blocking_enabled": False,
        "is_verified": rng.random() < 0.1,
        "profile_pic_id": _digits(rng, 19),
        "profile_pic_url": _profile_pic_url(rng),
        "show_ring_award": False,
        "transparency_product_enabled": False,
        "username": username,
    }


def _short_user(rng: random.Random) -> dict[str, Any]:
    username = f"{rng.choice(_FIRST_NAMES).lower()}_{rng.choice(_WORDS)}"
    return {
        "full_name": username.upper(),
        "id": _digits(rng, 11),
        "is_private": False,
        "is_verified": rng.random() < 0.2,
        "profile_pic_id": _digits(rng, 19),
        "profile_pic_url": _profile_pic_url(rng),
        "username": username,
    }


def _sticker(rng: random.Random, z: int) -> dict[str, Any]:
    return {
        "end_time_ms": 86400,
        "height": rng.uniform(0.02, 0.04),
        "id": _digits(rng, 17),
        **_STICKER_FLAGS,
        "rotation": 0,
        "start_time_ms": 0,
        "width": rng.uniform(0.2, 0.45),
        "x": rng.uniform(0.3, 0.9),
        "y": rng.uniform(0.1, 0.95),
        "z": z,
    }


def _image_versions(rng: random.Random, media_id: str) -> dict[str, Any]:
    path = f"{_digits(rng, 9)}_{_digits(rng, 17)}_{_digits(rng, 19)}_n.jpg"
    cache_key = base64.b64encode(media_id.encode()).decode().replace("=", "%3D")
    tail = _query_tail(rng)
    base = f"{_CDN}/v/t51.82787-15/{path}?stp=dst-jpg_e35_"
    query = f"_sh0.08_tt6&ig_cache_key={cache_key}{tail}"
    return {
        "items": [
            {
                "height": 1919,
                "is_spatial_image": False,
                "url": f"{base}p1080x1080{query}",
                "width": 1080,
            },
            {
                "height": 640,
                "is_spatial_image": False,
                "url": f"{base}s640x640{query}",
                "width": 360,
            },
        ]
    }


def _video_fields(rng: random.Random) -> dict[str, Any]:
    base = f"{_CDN}/o1/v/t2/f2/m78/{_token(rng, 24)}.mp4?strext=1"
    versions = [
        {
            "type": kind,
            "width": width,
            "height": height,
            "url": f"{base}&vs={_token(rng, 12)}{_query_tail(rng)}",
            "id": _digits(rng, 16),
        }
        for kind, width, height in ((101, 720, 1280), (102, 480, 854), (103, 360, 640))
    ]
    return {
        "has_audio": rng.random() < 0.8,
        "is_dash_eligible": 1,
        "is_video": True,
        "media_format": "video",
        "media_type": 2,
        "number_of_qualities": len(versions),
        "original_media_type": 2,
        "video_codec": "vp09.00.31.08.00.01.01.01.00",
        "video_duration": round(rng.uniform(3.0, 15.0), 3),
        "video_versions": versions,
    }


def make_item(
    rng: random.Random, taken_at: int, owner: dict[str, Any], z: int = 0
) -> dict[str, Any]:
    """One synthetic story item posted at ``taken_at`` by ``owner``, drawn from ``rng``."""
    media_id = _digits(rng, 19)
    images = _image_versions(rng, media_id)
    item: dict[str, Any] = {
        **_ITEM_CONSTANTS,
        "code": "".join(rng.choice(_SHORTCODE_ALPHABET) for _ in range(11)),
        "device_timestamp": taken_at * 1_000_000 + rng.randrange(1_000_000),
        "expiring_at": taken_at + _DAY,
        "fbid": _digits(rng, 17),
        "id": media_id,
        "image_versions": images,
        "is_video": False,
        "media_format": "image",
        "media_type": 1,
        "original_height": 2346,
        "original_media_type": 1,
        "original_width": 1320,
        "owner": owner,
        "taken_at": taken_at,
        "taken_at_date": datetime.fromtimestamp(taken_at, tz=UTC).isoformat(),
        "taken_at_ts": taken_at,
        "thumbnail_url": images["items"][0]["url"],
        "user": owner,
    }
    if rng.random() < 0.4:
        item.update(_video_fields(rng))
    if rng.random() < 0.4:
        item["story_hashtags"] = [
            {**_sticker(rng, z), "hashtag": {"id": _digits(rng, 17), "name": rng.choice(_WORDS)}}
            for z in range(rng.randint(1, 2))
        ]
    if rng.random() < 0.35:
        item["reel_mentions"] = [
            {**_sticker(rng, z + 2), "display_type": "mention_username", "user": _short_user(rng)}
            for z in range(rng.randint(1, 2))
        ]
    if rng.random() < 0.25:
        comment_user = {
            "fbid_v2": _digits(rng, 17),
            **{k: owner[k] for k in ("full_name", "id", "is_private", "is_verified")},
            **{k: owner[k] for k in ("profile_pic_id", "profile_pic_url", "username")},
        }
        created = taken_at + rng.randrange(1, 600)
        item["story_comments"] = [
            {
                "content_type": "comment",
                "created_at": created,
                "created_at_for_fb_app": created,
                "created_at_utc": created,
                "did_report_as_spam": False,
                "id": media_id,
                "is_covered": False,
                "is_created_by_media_owner": True,
                "is_ranked_comment": False,
                "share_enabled": False,
                "text": rng.choice(_COMMENTS),
                "type": 0,
                "user": comment_user,
                "user_id": owner["id"],
            }
        ]
    return item


def owner_for(key: str) -> dict[str, Any]:
    """The account behind target ``key``, the same in every run and for every endpoint."""
    kind, value = split_target_key(key)
    # Identity ignores the seed so a handle maps to the same person in every run.
    identity = random.Random(digest("identity", key))
    if kind == "username":
        user_id, username = str(1_000_000 + digest("user_id", key) % 70_000_000_000), value
    else:
        user_id, username = value, f"user_{value}"
    return _make_user(identity, user_id, username)


def build_reel(key: str, seed: int = 0, empty_ratio: float = 0.2) -> dict[str, Any]:
    """Build the value of the success envelope's ``data`` field for one target.

    Returns ``{"data": None}`` or ``{"data": {"additional_data": ..., "count": N,
    "items": [...]}}`` (with ``N == 0`` for some targets without stories, since
    the real API answers both ways).
    """
    owner = owner_for(key)
    user_id = owner["id"]

    rng = random.Random(digest("reel", str(seed), key))
    if rng.random() < empty_ratio:
        if rng.random() < 0.5:
            return {"data": None}
        count = 0
    else:
        count = rng.randint(1, 5)
    taken = sorted(BASE_EPOCH - rng.randrange(0, _DAY - 600) for _ in range(count))
    items = [make_item(rng, t, owner) for t in taken]
    latest = taken[-1] if taken else BASE_EPOCH
    return {
        "data": {
            "additional_data": {
                "ad_expiry_timestamp_in_millis": None,
                "can_gif_quick_reply": True,
                "can_react_with_avatar": False,
                "can_reply": True,
                "can_reshare": True,
                "disabled_reply_types": ["story_remix_reply", "story_selfie_reply"],
                "expiring_at": latest + _DAY,
                "id": user_id,
                "is_archived": False,
                "latest_reel_media": latest,
                "reel_type": "user_reel",
                "show_expiration_tray_signal": False,
                "user": owner,
            },
            "count": count,
            "items": items,
        }
    }


@functools.lru_cache(maxsize=4096)
def encoded_reel(key: str, seed: int = 0, empty_ratio: float = 0.2) -> bytes:
    """Return :func:`build_reel` encoded as compact JSON with sorted keys (cached)."""
    return msgspec.json.encode(build_reel(key, seed, empty_ratio), order="sorted")


def localize_media(reel: dict[str, Any], media_url: Callable[[str, str, int, int], str]) -> None:
    """Point a reel's (``data.data``) image and video URLs at a media server, in place.

    ``media_url(story_id, ext, width, height)`` returns the URL of one rendition
    (``ext`` is ``"jpg"`` or ``"mp4"``). Images get the :data:`IMAGE_RENDITIONS`;
    videos keep their renditions' sizes, reordered so the largest is in the
    middle. ``thumbnail_url`` follows the first image rendition.
    """
    for item in reel.get("items") or ():
        story_id = str(item["id"])
        candidates = [
            {
                "height": height,
                "is_spatial_image": False,
                "url": media_url(story_id, "jpg", width, height),
                "width": width,
            }
            for width, height in IMAGE_RENDITIONS
        ]
        item["image_versions"] = {"items": candidates}
        item["thumbnail_url"] = candidates[0]["url"]
        versions = item.get("video_versions")
        if versions:
            ordered = sorted(versions, key=lambda v: v["width"] * v["height"])
            # Smallest, largest, the rest: the best rendition is never first or last.
            ordered = [ordered[0], ordered[-1], *ordered[1:-1]] if len(ordered) > 2 else ordered
            item["video_versions"] = [
                {**v, "url": media_url(story_id, "mp4", v["width"], v["height"])} for v in ordered
            ]
