"""Pure tests for keyapi_async.models against the documented seed response."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from keyapi_async.engine.sansio import (
    ErrorEnvelope,
    StoriesData,
    StoriesEnvelope,
    WireReel,
    decode_envelope,
    decode_error_envelope,
)
from keyapi_async.models import (
    Caption,
    Hashtag,
    ImageCandidate,
    ImageVersions,
    Location,
    MusicMetadata,
    Reel,
    ReelInfo,
    ReelMention,
    StoryComment,
    StoryHashtag,
    StoryItem,
    TaggedUser,
    User,
    VideoVersion,
    decode_reel,
    encode,
)

SEED_PATH = Path(__file__).parent / "data" / "seed_example.json"

FIRST_ID = "3849025813912605899"
SECOND_ID = "3849437931484859245"


@pytest.fixture(scope="module")
def seed_bytes() -> bytes:
    return SEED_PATH.read_bytes()


@pytest.fixture(scope="module")
def seed_dict(seed_bytes: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(seed_bytes)
    return loaded


@pytest.fixture(scope="module")
def envelope(seed_bytes: bytes) -> StoriesEnvelope:
    return decode_envelope(seed_bytes)


@pytest.fixture(scope="module")
def reel(envelope: StoriesEnvelope) -> Reel:
    assert envelope.data is not None
    assert envelope.data.data is not None
    return envelope.data.data.to_reel()


def _body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _seed_item(seed_dict: dict[str, Any], index: int) -> dict[str, Any]:
    item: dict[str, Any] = copy.deepcopy(seed_dict["data"]["data"]["items"][index])
    return item


# --- the seed response -------------------------------------------------------


def test_seed_envelope_header(envelope: StoriesEnvelope) -> None:
    assert envelope.code == 0
    assert envelope.message == "success"
    assert envelope.request_id == "e9ddf3f9-1bf1-4c64-be2f-aa8c056fd2a8"
    assert isinstance(envelope.data, StoriesData)
    assert isinstance(envelope.data.data, WireReel)
    assert envelope.reel is envelope.data.data


def test_seed_reel_shape(reel: Reel) -> None:
    assert reel.count == 2
    assert len(reel.items) == 2
    assert not reel.is_empty
    assert [item.id for item in reel.items] == [FIRST_ID, SECOND_ID]
    assert all(isinstance(item.id, str) for item in reel.items)


def test_seed_reel_info(reel: Reel) -> None:
    info = reel.additional_data
    assert isinstance(info, ReelInfo)
    assert info.id == "18527"
    assert info.reel_type == "user_reel"
    assert info.expiring_at == 1773195181
    assert info.latest_reel_media == 1773108781
    assert info.ad_expiry_timestamp_in_millis is None
    assert info.is_archived is False
    assert info.can_reply is True
    assert info.can_reshare is True
    assert info.can_gif_quick_reply is True
    assert info.can_react_with_avatar is False
    assert info.disabled_reply_types == ("story_remix_reply", "story_selfie_reply")
    assert info.expiring_at_datetime == datetime(2026, 3, 11, 2, 13, 1, tzinfo=UTC)
    assert info.latest_reel_media_datetime == datetime(2026, 3, 10, 2, 13, 1, tzinfo=UTC)
    assert reel.expiring_at_datetime == info.expiring_at_datetime


def test_seed_reel_user(reel: Reel) -> None:
    user = reel.user
    assert user is not None
    assert user.username == "javan"
    assert user.full_name == "Javan Ng"
    assert user.id == "18527"
    assert user.is_private is False
    assert user.is_verified is False
    assert user.profile_pic_id == "3459147014560655728"
    assert user.profile_pic_url is not None
    assert user.profile_pic_url.startswith("https://scontent-lax3-1.cdninstagram.com/")
    # The huge numeric fbid is deliberately not part of the model.
    assert not hasattr(user, "interop_messaging_user_fbid")


def test_seed_first_item(reel: Reel) -> None:
    item = reel.items[0]
    assert item.code == "DVqfJWxkdTL"
    assert item.fbid == "18165077431406810"
    assert item.pk is None
    assert item.taken_at == 1773059653
    assert item.taken_at_date == "2026-03-09T12:34:13+00:00"
    assert item.expiring_at == 1773146053
    assert item.media_format == "image"
    assert item.product_type == "story"
    assert item.original_width == 1320
    assert item.original_height == 2346
    assert item.caption is None
    assert item.location is None
    assert item.music_metadata is None
    assert item.tagged_users == ()
    assert item.reel_mentions == ()
    assert item.can_reply is True
    assert item.can_reshare is True
    assert item.is_paid_partnership is False
    assert item.is_pinned is False
    assert item.owner == item.user
    assert item.user is not None
    assert item.user.username == "javan"
    assert item.hashtag_names == ["snakeinmyhood"]


def test_seed_first_item_story_comment(reel: Reel) -> None:
    (comment,) = reel.items[0].story_comments
    assert isinstance(comment, StoryComment)
    assert comment.text.startswith("A freaking cobra")
    assert comment.text.endswith("footpath! 🐍")
    assert comment.id == FIRST_ID
    assert comment.content_type == "comment"
    assert comment.created_at == 1773059659
    assert comment.created_at_datetime == datetime(2026, 3, 9, 12, 34, 19, tzinfo=UTC)
    assert comment.user_id == "18527"
    assert comment.user is not None
    assert comment.user.username == "javan"
    assert comment.user.full_name == "Javan Ng"
    assert comment.user.id == "18527"


def test_seed_second_item_stickers(reel: Reel) -> None:
    item = reel.items[1]
    (mention,) = item.reel_mentions
    assert isinstance(mention, ReelMention)
    assert mention.user is not None
    assert mention.user.username == "ricoh_gr_singapore"
    assert mention.user.full_name == "RICOH_GR_SINGAPORE"
    assert mention.user.id == "61261833606"
    assert mention.display_type == "mention_username"
    assert mention.id == "18110102302782761"
    assert mention.x == pytest.approx(0.844540655559579)
    assert mention.y == pytest.approx(0.95664538795327)
    assert mention.z == 2
    assert mention.rotation == 0.0
    assert mention.end_time_ms == 86400
    assert item.mentioned_usernames == ["ricoh_gr_singapore"]

    assert [h.hashtag.name for h in item.story_hashtags] == ["grsnaps", "streetsofshanghai"]
    assert item.hashtag_names == ["grsnaps", "streetsofshanghai"]
    first_tag = item.story_hashtags[0]
    assert isinstance(first_tag, StoryHashtag)
    assert first_tag.hashtag == Hashtag(id="17843728471023235", name="grsnaps")
    assert first_tag.id == "18129671404540719"
    assert first_tag.width == pytest.approx(0.20982546178920602)
    assert first_tag.start_time_ms == 0


def test_seed_best_image_url(reel: Reel) -> None:
    for item in reel.items:
        assert item.image_versions is not None
        widths = [c.width for c in item.image_versions.items]
        assert widths == [1080, 360]
        wide = item.image_versions.items[0]
        assert item.best_image_url == wide.url
        assert "p1080x1080" in wide.url
        assert item.image_versions.best == wide
    assert reel.items[1].best_image_url is not None
    assert reel.items[1].best_image_url.startswith(
        "https://scontent-lax7-1.cdninstagram.com/v/t51.82787-15/648354756_"
    )


def test_seed_items_are_images_without_video(reel: Reel) -> None:
    for item in reel.items:
        assert item.media_type == 1
        assert item.is_video is False
        assert item.is_video_media is False
        assert item.video_versions == ()
        assert item.video_duration is None
        assert item.has_audio is None
        assert item.best_video_url is None
        assert item.best_media_url == item.best_image_url


def test_seed_taken_at_datetime_matches_taken_at_date(reel: Reel) -> None:
    second = reel.items[1]
    expected = datetime(2026, 3, 10, 2, 13, 1, tzinfo=UTC)
    assert second.taken_at_date == "2026-03-10T02:13:01+00:00"
    assert second.taken_at_datetime == expected
    assert second.taken_at_datetime == datetime.fromisoformat(second.taken_at_date)
    assert second.taken_at_datetime is not None
    assert second.taken_at_datetime.tzinfo is UTC
    assert second.expiring_at_datetime == expected + timedelta(hours=24)
    for item in reel.items:
        assert item.taken_at_date is not None
        assert item.taken_at_datetime == datetime.fromisoformat(item.taken_at_date)


def test_is_expired(reel: Reel) -> None:
    second = reel.items[1]
    expires = datetime(2026, 3, 11, 2, 13, 1, tzinfo=UTC)
    assert second.is_expired(expires - timedelta(seconds=1)) is False
    assert second.is_expired(expires) is True
    # Without expiring_at, the documented 24 h lifetime from taken_at applies.
    no_expiry = msgspec.structs.replace(second, expiring_at=None)
    assert no_expiry.is_expired(expires - timedelta(seconds=1)) is False
    assert no_expiry.is_expired(expires) is True
    assert StoryItem(id="1").is_expired(expires) is False


def test_taken_at_datetime_falls_back_to_taken_at_date() -> None:
    item = StoryItem(id="1", taken_at_date="2026-03-10T10:13:01+08:00")
    assert item.taken_at_datetime == datetime(2026, 3, 10, 2, 13, 1, tzinfo=UTC)
    assert StoryItem(id="1", taken_at_date="2026-03-10T02:13:01").taken_at_datetime == (
        datetime(2026, 3, 10, 2, 13, 1, tzinfo=UTC)
    )
    assert StoryItem(id="1", taken_at_date="not a date").taken_at_datetime is None
    assert StoryItem(id="1").taken_at_datetime is None
    assert StoryItem(id="1").expiring_at_datetime is None


def test_out_of_range_timestamp_gives_none() -> None:
    assert StoryItem(id="1", taken_at=10**18).taken_at_datetime is None


# --- video items -------------------------------------------------------------


def _video_item(seed_dict: dict[str, Any]) -> dict[str, Any]:
    item = _seed_item(seed_dict, 0)
    item.update(
        {
            "is_video": True,
            "media_type": 2,
            "media_format": "video",
            "video_duration": 14.6,
            "has_audio": True,
            "video_versions": [
                {"type": 101, "width": 720, "height": 1280, "url": "https://v/720.mp4", "id": "a"},
                {"type": 102, "width": 1080, "height": 1920, "url": "https://v/1080.mp4"},
                {"type": 103, "width": 480, "height": 854, "url": "https://v/480.mp4", "id": "c"},
            ],
        }
    )
    return item


def test_video_item_picks_largest_video(seed_dict: dict[str, Any]) -> None:
    reel = decode_reel(_body({"count": 1, "items": [_video_item(seed_dict)]}))
    (item,) = reel.items
    assert item.is_video is True
    assert item.media_type == 2
    assert item.is_video_media is True
    assert item.video_duration == pytest.approx(14.6)
    assert item.has_audio is True
    assert len(item.video_versions) == 3
    assert item.video_versions[0] == VideoVersion(
        type=101, width=720, height=1280, url="https://v/720.mp4", id="a"
    )
    assert item.video_versions[1].id is None
    assert item.best_video_url == "https://v/1080.mp4"
    assert item.best_media_url == "https://v/1080.mp4"
    # The poster image is still reachable on its own.
    assert item.best_image_url is not None
    assert item.best_image_url != item.best_media_url


def test_video_without_versions_has_no_media_url() -> None:
    item = StoryItem(
        id="1",
        media_type=2,
        image_versions=ImageVersions(items=[ImageCandidate(url="https://i/1.jpg", width=1)]),
    )
    assert item.best_video_url is None
    assert item.best_media_url is None
    assert item.best_image_url == "https://i/1.jpg"


def test_video_duration_accepts_integer() -> None:
    body = _body({"items": [{"id": "1", "video_duration": 15}]})
    assert decode_reel(body).items[0].video_duration == 15.0


def test_best_urls_skip_candidates_without_url() -> None:
    item = StoryItem(
        id="1",
        image_versions=ImageVersions(
            items=[
                ImageCandidate(url="", width=4000, height=4000),
                ImageCandidate(url="https://i/small.jpg", width=10, height=10),
            ]
        ),
        video_versions=[
            VideoVersion(url="", width=4000, height=4000),
            VideoVersion(url="https://v/small.mp4", width=10, height=10),
        ],
        is_video=True,
    )
    assert item.best_image_url == "https://i/small.jpg"
    assert item.best_video_url == "https://v/small.mp4"
    assert StoryItem(id="1", image_versions=ImageVersions()).best_image_url is None


# --- optional / nested structures -------------------------------------------


def test_optional_nested_objects_decode(seed_dict: dict[str, Any]) -> None:
    item = _seed_item(seed_dict, 1)
    user = item["user"]
    item.update(
        {
            "pk": "3849437931484859245",
            "caption": {"text": "hello", "created_at": 1773108782, "content_type": "comment"},
            "location": {
                "pk": "213385402",
                "name": "Shanghai, China",
                "short_name": "Shanghai",
                "lat": 31.2304,
                "lng": 121,
            },
            "music_metadata": {
                "music_canonical_id": "18149596924049565",
                "audio_type": None,
                "music_info": {
                    "music_asset_info": {
                        "title": "Song",
                        "display_artist": "Artist",
                        "duration_in_ms": 180000,
                    }
                },
            },
            "tagged_users": [{"user": user, "x": 0.25, "y": 0.75}],
        }
    )
    (decoded,) = decode_reel(_body({"items": [item]})).items
    assert decoded.pk == SECOND_ID
    assert decoded.caption == Caption(text="hello", created_at=1773108782, content_type="comment")
    assert decoded.location == Location(
        pk="213385402", name="Shanghai, China", short_name="Shanghai", lat=31.2304, lng=121.0
    )
    music = decoded.music_metadata
    assert isinstance(music, MusicMetadata)
    assert music.music_canonical_id == "18149596924049565"
    assert music.music_info is not None
    assert music.music_info.music_asset_info is not None
    assert music.music_info.music_asset_info.title == "Song"
    assert music.music_info.music_asset_info.duration_in_ms == 180000
    (tagged,) = decoded.tagged_users
    assert isinstance(tagged, TaggedUser)
    assert tagged.user is not None
    assert tagged.user.username == "javan"
    assert (tagged.x, tagged.y) == (0.25, 0.75)


def test_sparse_item_uses_defaults() -> None:
    (item,) = decode_reel(b'{"items": [{"id": "42"}]}').items
    assert item == StoryItem(id="42")
    assert item.is_video is False
    assert item.story_comments == ()
    assert item.image_versions is None
    assert item.best_image_url is None
    assert item.best_media_url is None
    assert item.user is None


def test_item_without_id_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"missing required field `id`"):
        decode_reel(b'{"items": [{"code": "x"}]}')


# --- robustness --------------------------------------------------------------


def test_unknown_fields_are_ignored(seed_dict: dict[str, Any]) -> None:
    doc = copy.deepcopy(seed_dict)
    doc["brand_new_top_level"] = {"x": [1, 2, 3]}
    doc["data"]["surprise"] = True
    reel_doc = doc["data"]["data"]
    reel_doc["extra"] = None
    reel_doc["additional_data"]["new_flag"] = "yes"
    reel_doc["additional_data"]["user"]["new_user_key"] = 1
    first = reel_doc["items"][0]
    first["some_future_sticker"] = [{"a": 1}]
    first["image_versions"]["items"][0]["codec"] = "avif"
    first["story_comments"][0]["reactions"] = {"like": 3}
    reel_doc["items"][1]["reel_mentions"][0]["user"]["badge"] = {"k": "v"}

    with_extras = decode_envelope(_body(doc))
    assert with_extras == decode_envelope(_body(seed_dict))
    assert with_extras.reel is not None
    assert with_extras.reel.to_reel().items[0].id == FIRST_ID


def test_null_reel_is_handled() -> None:
    envelope = decode_envelope(b'{"code": 0, "message": "success", "data": {"data": null}}')
    assert envelope.data == StoriesData(data=None)
    assert envelope.reel is None
    assert envelope.request_id is None


def test_null_data_is_handled() -> None:
    envelope = decode_envelope(b'{"code": 0, "data": null}')
    assert envelope.data is None
    assert envelope.reel is None
    assert envelope.message == ""


def test_empty_items_is_empty_reel() -> None:
    envelope = decode_envelope(
        b'{"code": 0, "message": "success", "data": {"data": {"count": 0, "items": []}},'
        b' "requestId": "r-1"}'
    )
    assert envelope.reel is not None
    assert envelope.reel.items == ()
    reel = envelope.reel.to_reel()
    assert reel.is_empty
    assert reel.count == 0
    assert reel.user is None
    assert reel.expiring_at_datetime is None
    assert envelope.request_id == "r-1"
    assert Reel().is_empty


def test_reel_user_falls_back_to_first_item() -> None:
    javan = User(id="18527", username="javan")
    reel = Reel(items=[StoryItem(id="1", user=javan)])
    assert reel.user == javan
    owner_only = Reel(additional_data=ReelInfo(), items=[StoryItem(id="1", owner=javan)])
    assert owner_only.user == javan


def test_numeric_id_is_rejected(seed_dict: dict[str, Any]) -> None:
    # Ids are a string contract: a JSON number is a schema violation, not
    # something to coerce (precision of 19-digit ids is not guaranteed upstream).
    doc = copy.deepcopy(seed_dict)
    doc["data"]["data"]["items"][0]["id"] = 3849025813912605899
    with pytest.raises(msgspec.ValidationError, match=r"Expected `str`, got `int`"):
        decode_envelope(_body(doc))

    doc = copy.deepcopy(seed_dict)
    doc["data"]["data"]["additional_data"]["user"]["id"] = 18527
    with pytest.raises(msgspec.ValidationError, match=r"\$\.data\.data\.additional_data\.user\.id"):
        decode_envelope(_body(doc))


def test_malformed_json_raises_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_envelope(b'{"code": 0, ')
    with pytest.raises(msgspec.ValidationError):
        decode_envelope(b'{"message": "no code"}')
    with pytest.raises(msgspec.ValidationError):
        decode_envelope(b"[]")


def test_models_are_frozen(reel: Reel) -> None:
    item = reel.items[0]
    with pytest.raises(AttributeError):
        item.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        StoryItem("positional")  # type: ignore[call-arg]


# --- error envelope ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            b'{"code":400,"data":null,"message":"Missing required parameter: handle"}',
            400,
            "Missing required parameter: handle",
        ),
        (b'{"code":401,"data":null,"message":"apiKey is null"}', 401, "apiKey is null"),
        (
            b'{"code":402,"data":null,"message":"apiKey quota is not enough"}',
            402,
            "apiKey quota is not enough",
        ),
        (b'{"code":429,"data":null,"message":"qps limit exceeded"}', 429, "qps limit exceeded"),
        (
            b'{"code":500,"data":null,"message":"Internal server error"}',
            500,
            "Internal server error",
        ),
    ],
)
def test_error_envelope_documented_bodies(body: bytes, code: int, message: str) -> None:
    assert decode_error_envelope(body) == ErrorEnvelope(code=code, message=message)


def test_error_envelope_ignores_arbitrary_data() -> None:
    body = (
        b'{"code": 500, "message": "upstream failed", "requestId": "abc",'
        b' "data": {"data": {"items": "not a list", "count": "x"}, "trace": [1, 2]}}'
    )
    err = decode_error_envelope(body)
    assert err == ErrorEnvelope(code=500, message="upstream failed", request_id="abc")
    assert not hasattr(err, "data")
    # The same body is unusable as a stories envelope, which is why the
    # fallback exists.
    with pytest.raises(msgspec.ValidationError):
        decode_envelope(body)

    assert decode_error_envelope(b'{"code": 429, "data": [1, "two"]}').message == ""


def test_error_envelope_decodes_success_body(seed_bytes: bytes) -> None:
    err = decode_error_envelope(seed_bytes)
    assert err == ErrorEnvelope(
        code=0, message="success", request_id="e9ddf3f9-1bf1-4c64-be2f-aa8c056fd2a8"
    )


# --- encoding ----------------------------------------------------------------


def test_reel_round_trip(reel: Reel) -> None:
    encoded = encode(reel)
    assert isinstance(encoded, bytes)
    again = decode_reel(encoded)
    assert again == reel
    assert again is not reel
    assert encode(again) == encoded


def test_video_reel_round_trip(seed_dict: dict[str, Any]) -> None:
    reel = decode_reel(_body({"count": 1, "items": [_video_item(seed_dict)]}))
    assert decode_reel(encode(reel)) == reel


def test_envelope_encodes_wire_names(envelope: StoriesEnvelope) -> None:
    wire = json.loads(encode(envelope))
    assert wire["requestId"] == "e9ddf3f9-1bf1-4c64-be2f-aa8c056fd2a8"
    assert "request_id" not in wire
    assert decode_envelope(encode(envelope)) == envelope


def test_encode_projects_away_unmodelled_fields(reel: Reel) -> None:
    wire = json.loads(encode(reel))
    assert "interop_messaging_user_fbid" not in wire["additional_data"]["user"]
    assert "crosspost" not in wire["items"][0]
    assert wire["items"][1]["reel_mentions"][0]["user"]["username"] == "ricoh_gr_singapore"
