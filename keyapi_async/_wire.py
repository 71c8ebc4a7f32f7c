"""The API's wire envelopes and their decoders (private: users get :mod:`.models` types).

``{"code": 0, "message": ..., "requestId": ..., "data": {"data": <reel>}}``
decodes as ``StoriesEnvelope -> StoriesData -> WireReel``. Error bodies decode
with :class:`ErrorEnvelope`, which ignores ``data``, so whatever shape the server
puts there cannot make that fallback fail. The decoders are built once, at import
(building one per call would redo msgspec's type analysis).
"""

from __future__ import annotations

import msgspec

from .models import Reel, ReelInfo, StoryItem


class WireReel(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The reel as sent: a missing ``items`` stays UNSET, so that malformed is not empty."""

    additional_data: ReelInfo | None = None
    count: int = 0
    items: tuple[StoryItem, ...] | msgspec.UnsetType = msgspec.UNSET

    def to_reel(self) -> Reel:
        """The public reel; a missing ``items`` becomes ``[]`` (check before calling)."""
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
        return None if self.data is None else self.data.data


class ErrorEnvelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A keyapi error body; its ``data`` is ignored, and a null message keeps the code."""

    code: int
    message: str | None = ""
    request_id: str | None = msgspec.field(default=None, name="requestId")


#: Decode a ``fetch_user_stories`` body; raises msgspec.DecodeError (or its
#: ValidationError), another ValueError, or RecursionError for absurd nesting.
decode_envelope = msgspec.json.Decoder(StoriesEnvelope).decode
#: Decode a keyapi error body (bytes or str), raising like ``decode_envelope``.
decode_error_envelope = msgspec.json.Decoder(ErrorEnvelope).decode
