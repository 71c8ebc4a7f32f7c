"""keyapi_async: an asyncio client for bulk, concurrent Instagram story fetching via keyapi.ai.

Quick start::

    import asyncio
    from keyapi_async import KeyAPIClient

    async def main() -> None:
        async with KeyAPIClient() as client:  # key from KEYAPI_API_KEY
            reel = await client.fetch_user_stories(username="javan")
            print(reel.count, [item.best_media_url for item in reel.items])

    asyncio.run(main())

The local emulator of the API for offline tests lives in :mod:`keyapi_async.testing`.
"""

from .__about__ import __version__
from ._client import KeyAPIClient
from ._errors import (
    APIStatusError,
    ArchiveError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConnectError,
    GateUnavailableError,
    InsufficientCreditsError,
    InvalidTargetError,
    KeyAPIError,
    MediaDiskFullError,
    NotAttemptedError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseDecodeError,
    ServerError,
    TransportError,
)
from .engine.batch import BatchCounts, StoryBatch, StoryResult, estimate_credits
from .engine.config import ClientConfig
from .engine.endpoints import HIGHLIGHT_STORIES, STORIES, USER_HIGHLIGHTS, Endpoint
from .engine.fetch import ClientStats
from .engine.targets import Target, TargetLike, parse_target
from .models import (
    Highlight,
    HighlightCover,
    HighlightStories,
    HighlightTray,
    Reel,
    StoryItem,
    User,
)

__all__ = [
    "HIGHLIGHT_STORIES",
    "STORIES",
    "USER_HIGHLIGHTS",
    "APIStatusError",
    "ArchiveError",
    "AuthenticationError",
    "BadRequestError",
    "BatchCounts",
    "ClientConfig",
    "ClientStats",
    "ConfigurationError",
    "ConnectError",
    "Endpoint",
    "GateUnavailableError",
    "Highlight",
    "HighlightCover",
    "HighlightStories",
    "HighlightTray",
    "InsufficientCreditsError",
    "InvalidTargetError",
    "KeyAPIClient",
    "KeyAPIError",
    "MediaDiskFullError",
    "NotAttemptedError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "Reel",
    "RequestTimeoutError",
    "ResponseDecodeError",
    "ServerError",
    "StoryBatch",
    "StoryItem",
    "StoryResult",
    "Target",
    "TargetLike",
    "TransportError",
    "User",
    "__version__",
    "estimate_credits",
    "parse_target",
]
