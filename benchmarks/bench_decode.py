"""Decode: keyapi_async's typed Structs against json, orjson, pydantic v2 and untyped msgspec.

Two bodies: the seed (the API's documented example response, 2 items, as
published, pretty-printed) and a larger compact one of 10 items (4 of them
videos, with stickers, mentions and comments) assembled from the emulator's
synthetic reels. Every contender decodes the same bytes; the rounds alternate
the contenders (rotating their order) and report medians.

Run alone: ``python -m benchmarks.bench_decode [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from pydantic import BaseModel, ConfigDict, Field

from benchmarks._common import median, say, seed_bytes, table
from keyapi_async.engine.sansio import decode_envelope
from keyapi_async.testing._data import build_reel

if TYPE_CHECKING:
    from matplotlib.axes import Axes

NAME = "decode"
REFERENCE = "keyapi_async Structs"

# -- pydantic v2 models mirroring keyapi_async.models field for field ----------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class PUser(_Model):
    id: str | None = None
    username: str | None = None
    full_name: str | None = None
    is_private: bool = False
    is_verified: bool = False
    profile_pic_id: str | None = None
    profile_pic_url: str | None = None


class PReelInfo(_Model):
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
    user: PUser | None = None


class PImageCandidate(_Model):
    url: str = ""
    width: int = 0
    height: int = 0
    is_spatial_image: bool = False


class PImageVersions(_Model):
    items: tuple[PImageCandidate, ...] = ()


class PVideoVersion(_Model):
    type: int | None = None
    width: int = 0
    height: int = 0
    url: str = ""
    id: str | None = None


class PHashtag(_Model):
    id: str | None = None
    name: str = ""


class PStoryHashtag(_Model):
    id: str | None = None
    x: float = 0.0
    y: float = 0.0
    z: int | None = None
    width: float = 0.0
    height: float = 0.0
    rotation: float = 0.0
    start_time_ms: float | None = None
    end_time_ms: float | None = None
    hashtag: PHashtag = Field(default_factory=PHashtag)


class PReelMention(_Model):
    id: str | None = None
    x: float = 0.0
    y: float = 0.0
    z: int | None = None
    width: float = 0.0
    height: float = 0.0
    rotation: float = 0.0
    start_time_ms: float | None = None
    end_time_ms: float | None = None
    display_type: str | None = None
    user: PUser | None = None


class PTaggedUser(_Model):
    user: PUser | None = None
    x: float | None = None
    y: float | None = None


class PStoryComment(_Model):
    id: str | None = None
    text: str = ""
    created_at: int | None = None
    content_type: str | None = None
    user_id: str | None = None
    user: PUser | None = None


class PCaption(_Model):
    text: str = ""
    created_at: int | None = None
    content_type: str | None = None


class PLocation(_Model):
    pk: str | None = None
    id: str | None = None
    name: str | None = None
    short_name: str | None = None
    address: str | None = None
    city: str | None = None
    lat: float | None = None
    lng: float | None = None
    external_source: str | None = None


class PMusicAssetInfo(_Model):
    title: str | None = None
    display_artist: str | None = None
    duration_in_ms: int | None = None
    is_explicit: bool = False


class PMusicInfo(_Model):
    music_asset_info: PMusicAssetInfo | None = None


class PMusicMetadata(_Model):
    music_canonical_id: str | None = None
    audio_type: str | None = None
    music_info: PMusicInfo | None = None


class PStoryItem(_Model):
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
    image_versions: PImageVersions | None = None
    video_versions: tuple[PVideoVersion, ...] = ()
    video_duration: float | None = None
    has_audio: bool | None = None
    thumbnail_url: str | None = None
    caption: PCaption | None = None
    story_hashtags: tuple[PStoryHashtag, ...] = ()
    reel_mentions: tuple[PReelMention, ...] = ()
    story_comments: tuple[PStoryComment, ...] = ()
    tagged_users: tuple[PTaggedUser, ...] = ()
    location: PLocation | None = None
    music_metadata: PMusicMetadata | None = None
    user: PUser | None = None
    owner: PUser | None = None
    is_paid_partnership: bool = False
    is_pinned: bool = False
    can_reply: bool = False
    can_reshare: bool = False


class PReel(_Model):
    additional_data: PReelInfo | None = None
    count: int = 0
    items: tuple[PStoryItem, ...] = ()


class PStoriesData(_Model):
    data: PReel | None = None


class PStoriesEnvelope(_Model):
    code: int
    message: str = ""
    data: PStoriesData | None = None
    request_id: str | None = Field(default=None, alias="requestId")


# -- bodies ----------------------------------------------------------------------------


def large_body(items: int = 10, videos: int = 4) -> bytes:
    """A compact success body of ``items`` synthetic stories, ``videos`` of them videos."""
    collected: list[dict[str, Any]] = []
    owner_reel: dict[str, Any] | None = None
    n_videos = 0
    index = 0
    while len(collected) < items:
        index += 1
        reel = build_reel(f"username:bench_large_{index}", seed=7, empty_ratio=0.0)["data"]
        if reel is None:
            continue
        if owner_reel is None:
            owner_reel = reel
        for item in reel["items"]:
            is_video = bool(item.get("is_video"))
            if is_video and n_videos >= videos:
                continue
            if not is_video and len(collected) - n_videos >= items - videos:
                continue
            # One owner for the whole reel, as the API sends it.
            item = {**item, "user": owner_reel["additional_data"]["user"]}
            item["owner"] = item["user"]
            collected.append(item)
            n_videos += is_video
            if len(collected) == items:
                break
    assert owner_reel is not None
    envelope = {
        "code": 0,
        "message": "success",
        "data": {
            "data": {
                "additional_data": owner_reel["additional_data"],
                "count": len(collected),
                "items": collected,
            }
        },
        "requestId": "00000000-0000-4000-8000-000000000000",
    }
    return msgspec.json.encode(envelope)


def _contenders() -> dict[str, Callable[[bytes], object]]:
    untyped = msgspec.json.Decoder()
    return {
        REFERENCE: decode_envelope,
        "msgspec untyped": untyped.decode,
        "orjson": orjson.loads,
        "json.loads": json.loads,
        "pydantic v2": PStoriesEnvelope.model_validate_json,
    }


def _check_equivalent(body: bytes) -> None:
    """The pydantic mirror must decode to exactly what the Structs decode to."""
    ours = msgspec.to_builtins(decode_envelope(body))
    theirs = PStoriesEnvelope.model_validate_json(body).model_dump(by_alias=True)
    if ours != theirs:
        raise AssertionError("pydantic mirror models disagree with keyapi_async.models")


def _calibrate(fn: Callable[[bytes], object], body: bytes, target_seconds: float) -> int:
    loops = 1
    while True:
        started = time.perf_counter()
        for _ in range(loops):
            fn(body)
        elapsed = time.perf_counter() - started
        if elapsed >= target_seconds / 4:
            return max(1, int(loops * target_seconds / elapsed))
        loops *= 2


def _time(fn: Callable[[bytes], object], body: bytes, loops: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(loops):
        fn(body)
    return (time.perf_counter() - started) / loops


def bench_body(label: str, body: bytes, rounds: int, chunk_seconds: float) -> dict[str, Any]:
    contenders = _contenders()
    _check_equivalent(body)
    # Loop counts are fixed per contender (from the reference's speed) so that
    # every round of a contender does the same work.
    loops = {name: _calibrate(fn, body, chunk_seconds) for name, fn in contenders.items()}
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_no in range(rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time(contenders[name], body, loops[name]))
    ref = median(samples[REFERENCE])
    rows: list[dict[str, Any]] = []
    for name in names:
        per = median(samples[name])
        rows.append(
            {
                "contender": name,
                "us_per_response": per * 1e6,
                "responses_per_s": 1.0 / per,
                "mb_per_s": len(body) / per / 1e6,
                "speed_vs_keyapi": ref / per,
                "keyapi_speedup": per / ref,
                "rounds_us": [s * 1e6 for s in samples[name]],
            }
        )
    decoded = decode_envelope(body)
    reel = decoded.reel
    items = reel.items if reel is not None else []
    return {
        "body": label,
        "bytes": len(body),
        "items": len(items),
        "videos": sum(1 for item in items if item.is_video_media),
        "rounds": rounds,
        "rows": rows,
    }


def run(quick: bool = False) -> dict[str, Any]:
    rounds, chunk = (3, 0.03) if quick else (9, 0.12)
    bodies = [("seed (as published)", seed_bytes()), ("10 items, 4 videos", large_body())]
    results = []
    for label, body in bodies:
        say(f"decode: {label}: {len(body):,} bytes, {rounds} rounds")
        result = bench_body(label, body, rounds, chunk)
        for row in result["rows"]:
            say(
                f"  {row['contender']:<22} {row['responses_per_s']:>10,.0f} resp/s "
                f"{row['mb_per_s']:>7.1f} MB/s  {row['us_per_response']:>8.1f} us  "
                f"keyapi_async is {row['keyapi_speedup']:.2f}x as fast"
            )
        results.append(result)
    return {"name": NAME, "quick": quick, "bodies": results}


def markdown(result: dict[str, Any]) -> str:
    parts = ["## Decode", ""]
    parts.append(
        "One response body decoded per call, median of the rounds (contenders alternate). "
        "`keyapi_async x` is how many times faster keyapi_async's typed decode is "
        "(>1: keyapi_async wins). keyapi_async and pydantic produce typed, validated "
        "objects; the others produce untyped dicts."
    )
    for body in result["bodies"]:
        parts += [
            "",
            f"**{body['body']}**: {body['bytes']:,} bytes, {body['items']} items "
            f"({body['videos']} videos)",
            "",
        ]
        rows = [
            [
                r["contender"],
                r["responses_per_s"],
                r["mb_per_s"],
                r["us_per_response"],
                r["keyapi_speedup"],
            ]
            for r in body["rows"]
        ]
        parts.append(
            table(["contender", "responses/s", "MB/s", "µs/response", "keyapi_async x"], rows)
        )
    return "\n".join(parts)


def plot(ax: Axes, result: dict[str, Any]) -> None:
    bodies = result["bodies"]
    names = [r["contender"] for r in bodies[0]["rows"]]
    width = 0.8 / len(bodies)
    colors = ["#4C72B0", "#DD8452"]
    for b, body in enumerate(bodies):
        values = [r["responses_per_s"] / 1000 for r in body["rows"]]
        xs = [i + (b - (len(bodies) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, values, width, label=body["body"], color=colors[b % len(colors)])
        for bar, row in zip(bars, body["rows"], strict=True):
            ax.annotate(
                f"{row['speed_vs_keyapi']:.2f}x",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("thousand responses / s")
    ax.set_title("Decode one response (label: speed vs keyapi_async)")
    ax.legend(fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_decode")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    run(args.quick)


if __name__ == "__main__":
    main()
