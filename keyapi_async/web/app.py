"""The aiohttp application: settings, middlewares, routes, and what lives as long as the app.

:func:`create_app` wires the parts together: the read-only
:class:`~keyapi_async.web.queries.ArchiveReader`, the Jinja2 environment
(autoescape on for every template), the metrics registry, the heartbeat
task, the security middlewares, and the routes of
:mod:`keyapi_async.web.views`. The reader opens on start-up (a wrong
archive path fails before the server listens) and every connection closes
on clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from aiohttp import web

from . import views
from .health import Heartbeat
from .metrics import build_registry
from .queries import ArchiveReader
from .security import host_check, security_headers, token_check
from .state import CONFIG, ENV, HEARTBEAT, READER, REGISTRY, GalleryConfig
from .templating import make_environment

__all__ = ["create_app"]

_STATIC: Final = Path(__file__).parent / "static"


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    reader = await asyncio.to_thread(ArchiveReader, config.archive)
    app[READER] = reader
    app[REGISTRY] = build_registry(reader, config.live)
    client = config.live.client

    def answers() -> int:
        assert client is not None
        stats = client()
        return stats.successes + stats.rate_limited

    beat = asyncio.ensure_future(app[HEARTBEAT].run(None if client is None else answers))
    try:
        yield
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        reader.close()


def create_app(config: GalleryConfig) -> web.Application:
    """The gallery, status page, ``/metrics``, ``/healthz`` and ``/readyz`` over ``config``."""
    app = web.Application(
        middlewares=[
            security_headers,
            host_check(config.allowed_hosts),
            token_check(config.token),
        ]
    )
    app[CONFIG] = config
    app[ENV] = make_environment()
    app[HEARTBEAT] = Heartbeat()
    app.cleanup_ctx.append(_lifetime)
    views.add_routes(app)
    app.router.add_static("/static/", _STATIC, follow_symlinks=False, append_version=True)
    return app
