"""Run the gallery app on an address: bind, report the URL, shut down cleanly.

Used by ``keyapi-stories serve`` (for as long as the user wants) and by
``watch --serve`` (for as long as the watch runs). The access log is off:
a request line can carry ``?token=``, and a gallery's own requests are not
worth a line each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import socket
from collections.abc import AsyncIterator

from aiohttp import web

from .app import create_app
from .security import loopback_hosts
from .state import GalleryConfig

__all__ = ["is_loopback", "running_gallery"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost`` (pure; no DNS lookup)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bare, port))
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.asynccontextmanager
async def running_gallery(config: GalleryConfig, host: str, port: int) -> AsyncIterator[str]:
    """Serve ``config`` on ``host:port`` (port 0: a free one); yield the base URL.

    On a loopback host, unless ``config.allowed_hosts`` says otherwise, only
    the Host names of the bound address are accepted (see
    :mod:`keyapi_async.web.security`). ``OSError`` when the address cannot
    be bound.
    """
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    if config.allowed_hosts is None and is_loopback(host):
        config = dataclasses.replace(config, allowed_hosts=loopback_hosts(bound))
    runner = web.AppRunner(create_app(config), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    try:
        shown = f"[{host.strip('[]')}]" if sock.family == socket.AF_INET6 else host
        yield f"http://{shown}:{bound}"
    finally:
        await runner.cleanup()
        sock.close()
