"""The local web app over a capture: gallery, status page, ``/metrics``, ``/healthz``, ``/readyz``.

``keyapi-stories serve DIR`` runs it over a quiet archive and its download
directory; ``keyapi-stories watch --serve ADDR`` runs it beside a watch,
with the watch's live counters. From Python::

    from pathlib import Path
    from keyapi_async.web import GalleryConfig, running_gallery

    config = GalleryConfig(archive=Path("stories/archive.sqlite3"), media_root=Path("stories"))
    async with running_gallery(config, "127.0.0.1", 8080) as url:
        ...  # serve until the block ends

Module map: :mod:`~keyapi_async.web.app` (the aiohttp app),
:mod:`~keyapi_async.web.views` (routes), :mod:`~keyapi_async.web.queries`
(read-only SQLite), :mod:`~keyapi_async.web.files` (which file a media URL
may serve), :mod:`~keyapi_async.web.metrics` (Prometheus),
:mod:`~keyapi_async.web.health` (probes), :mod:`~keyapi_async.web.security`
(headers, Host check, token), :mod:`~keyapi_async.web.templating` (Jinja2),
:mod:`~keyapi_async.web.state` (settings and app keys),
:mod:`~keyapi_async.web.server` (binding). Needs the ``web`` extra
(Jinja2, prometheus_client).
"""

from __future__ import annotations

from .app import create_app
from .metrics import LiveStats
from .server import is_loopback, running_gallery
from .state import GalleryConfig

__all__ = ["GalleryConfig", "LiveStats", "create_app", "is_loopback", "running_gallery"]
