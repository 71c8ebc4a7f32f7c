"""Serve an :class:`Emulator` on a loopback port for the duration of an ``async with`` block."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from .._errors import ConfigurationError
from ._app import Emulator
from ._config import EmulatorConfig

__all__ = ["run_emulator"]

# Requests still in flight at exit (e.g. a SLOW fault nobody awaits) should not
# hold a test run hostage for aiohttp's default 60 s.
_SHUTDOWN_TIMEOUT: Final = 1.0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@contextlib.asynccontextmanager
async def run_emulator(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_log: int | None = None,
    allow_non_loopback: bool = False,
) -> AsyncIterator[Emulator]:
    """Serve the emulator over HTTP while the ``async with`` block runs.

    Binds ``host:port`` (port 0 picks a free port), yields the :class:`Emulator`
    with :attr:`~Emulator.base_url` set to ``http://HOST:PORT``, and shuts the
    server down on exit. Access logging is disabled to keep it fast and quiet.

    Args:
        config: Behaviour of the emulator; defaults to ``EmulatorConfig()``.
        host: Interface to bind; must be a loopback address unless
            ``allow_non_loopback`` is true, since the emulator accepts a
            well-known fake key and is meant for local tests only.
        port: TCP port, 0 for any free port.
        max_log: Bound on :attr:`Emulator.log` for long benchmark runs.
        allow_non_loopback: Permit binding a non-loopback interface.

    Raises:
        ValueError: ``host`` is not loopback and ``allow_non_loopback`` is false,
            or ``max_log`` is invalid.

    """
    if not allow_non_loopback and not _is_loopback(host):
        raise ConfigurationError(
            f"refusing to bind non-loopback host {host!r}; pass allow_non_loopback=True "
            "(--allow-non-loopback on the command line) to do so"
        )
    if host == "localhost":
        # "localhost" may resolve to both 127.0.0.1 and ::1, and with port 0 each
        # socket would get its own port; pin one so base_url is unambiguous.
        host = "127.0.0.1"
    emulator = Emulator(config, max_log=max_log)
    runner = web.AppRunner(emulator.make_app(), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        emulator.base_url = f"http://{_url_host(host)}:{bound_port}"
        yield emulator
    finally:
        await runner.cleanup()
