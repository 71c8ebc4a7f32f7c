"""The API's wire envelopes and their decoders (private: users get :mod:`.models` types).

A ``fetch_user_stories`` answer is a keyapi envelope around Instagram's reel::

    {"code": 0, "message": "success", "requestId": "...",
     "data": {"data": {"additional_data": {...}, "count": 2, "items": [...]}}}

which decodes as ``StoriesEnvelope -> StoriesData -> WireReel``, the reel's
parts being the public :class:`~keyapi_async.models.ReelInfo` and
:class:`~keyapi_async.models.StoryItem`. Error bodies (``{"code": 402,
"data": null, "message": "..."}``) decode with :class:`ErrorEnvelope`, which
has no ``data`` field, so whatever shape the server puts there cannot make
that fallback decode fail.

:class:`WireReel` differs from the public :class:`~keyapi_async.models.Reel`
in one respect: a missing ``items`` key stays :data:`msgspec.UNSET` instead of
becoming ``[]``, so that a reel announcing ``count: 3`` without items can be
told apart from an empty one (malformed is not empty). Turning it into a
``Reel`` is one constructor call, not a second pass over the body.

The decoders are built once at import: building one per call would redo
msgspec's type analysis every time.
"""

from __future__ import annotations

import msgspec

from .models import Reel, ReelInfo, StoryItem

__all__ = [
    "ErrorEnvelope",
    "StoriesData",
    "StoriesEnvelope",
    "WireReel",
    "decode_envelope",
    "decode_error_envelope",
]


class WireReel(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The reel as sent: like :class:`~keyapi_async.models.Reel`, but ``items`` may be unset."""

    additional_data: ReelInfo | None = None
    count: int = 0
    items: list[StoryItem] | msgspec.UnsetType = msgspec.UNSET

    def to_reel(self) -> Reel:
        """The public reel; a missing ``items`` becomes ``[]`` (check before calling)."""
        items = self.items
        return Reel(
            additional_data=self.additional_data,
            count=self.count,
            items=[] if items is msgspec.UNSET else items,
        )


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
    def ok(self) -> bool:
        """Whether keyapi reported success (``code == 0``)."""
        return self.code == 0

    @property
    def reel(self) -> WireReel | None:
        """The reel at ``data.data``, or None when either level is null."""
        return None if self.data is None else self.data.data


class ErrorEnvelope(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A keyapi error body.

    There is intentionally no ``data`` field: error bodies carry ``null`` or
    arbitrary objects there, and ignoring it means this fallback decode only
    fails if ``code`` itself is unusable.
    """

    code: int
    # Nullable: a null message must not hide a usable error code.
    message: str | None = ""
    request_id: str | None = msgspec.field(default=None, name="requestId")


_ENVELOPE_DECODER = msgspec.json.Decoder(StoriesEnvelope)
_ERROR_DECODER = msgspec.json.Decoder(ErrorEnvelope)


def decode_envelope(body: bytes) -> StoriesEnvelope:
    """Decode a ``fetch_user_stories`` response body.

    Raises ``msgspec.DecodeError`` for malformed JSON, ``msgspec.ValidationError``
    (a subclass) for JSON of the wrong shape, :class:`UnicodeDecodeError` for
    bytes that are not UTF-8 inside a modelled string, and
    :class:`RecursionError` for absurdly deep nesting.
    """
    return _ENVELOPE_DECODER.decode(body)


def decode_error_envelope(body: bytes | str) -> ErrorEnvelope:
    """Decode a keyapi error body, ignoring whatever ``data`` holds.

    Accepts ``str`` too, for a body re-read leniently after a UTF-8 error.
    Raises like :func:`decode_envelope`.
    """
    return _ERROR_DECODER.decode(body)
