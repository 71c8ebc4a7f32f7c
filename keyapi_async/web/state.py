"""What a running gallery keeps: its settings and the objects the handlers share (app keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import jinja2
from aiohttp import web
from prometheus_client import CollectorRegistry

from .health import Heartbeat
from .metrics import LiveStats
from .queries import ArchiveReader

__all__ = ["CONFIG", "ENV", "HEARTBEAT", "READER", "REGISTRY", "GalleryConfig"]


@dataclass(frozen=True, slots=True)
class GalleryConfig:
    """What one gallery serves and how it guards it."""

    archive: Path
    """The SQLite archive (opened read-only)."""
    media_root: Path
    """The download directory the archive's media paths are relative to."""
    token: str | None = None
    """Required on every page when set (see :mod:`keyapi_async.web.security`)."""
    allowed_hosts: frozenset[str] | None = None
    """Host header values accepted (``None``: any; set for loopback binds)."""
    live: LiveStats = field(default_factory=LiveStats)
    """A running watch's counters (``watch --serve``)."""
    page_size: int = 60
    """Stories per timeline page."""
    reachable_within: float = 300.0
    """``/readyz`` fails when a watch's API has not answered for this long (seconds)."""

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, not {self.page_size!r}")
        if self.token is not None and not self.token:
            raise ValueError("token must not be empty (use None for no token)")


CONFIG: Final = web.AppKey("config", GalleryConfig)
"""The app's :class:`GalleryConfig`."""
READER: Final = web.AppKey("reader", ArchiveReader)
"""The read-only archive reader (set on start-up)."""
ENV: Final = web.AppKey("env", jinja2.Environment)
"""The Jinja2 environment (autoescape on)."""
REGISTRY: Final = web.AppKey("registry", CollectorRegistry)
"""The app's own metrics registry (set on start-up)."""
HEARTBEAT: Final = web.AppKey("heartbeat", Heartbeat)
"""The event loop's pulse and the API's last answer."""
