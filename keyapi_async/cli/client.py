"""The client of a run, built from the command line's settings: the one place the CLI makes one.

``fetch``, ``demo``, the highlights pass and ``watch`` all build their
:class:`~keyapi_async.KeyAPIClient` here, so a bad setting maps to one
stderr line and exit status 2 everywhere (:func:`~.exit.setting_errors`).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from .._client import KeyAPIClient
from ..engine.config import ClientOptions
from .exit import setting_errors
from .invocation import PROG

__all__ = ["FetchSettings", "make_client", "open_client", "settings_from_args"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchSettings:
    """How to send and how to show progress (the request and run-control options)."""

    qps: float | None = 10.0
    concurrency: int | None = None
    """Requests in flight; None lets the client derive it from ``qps`` and ``timeout``."""
    max_credits: int | None = None
    timeout: float = 30.0
    retries: int = 4
    base_url: str | None = None
    progress: bool | None = None
    progress_interval: float = 10.0
    grace: float = 10.0
    fsync: bool = False
    quiet: bool = False
    """``-q``: no progress and no notes; errors and a one-line summary only."""
    verbose: int = 0
    """``-v``: 1 shows the library's INFO log lines, 2 DEBUG too."""
    proxy: str | None = None
    """``--proxy``: API requests through this proxy (None: the ``*_PROXY`` variables)."""
    redis_url: str | None = None
    """``--redis-url``: a shared gate and budget (None: ``$KEYAPI_REDIS_URL``)."""
    redis_namespace: str | None = None


def settings_from_args(args: argparse.Namespace) -> FetchSettings:
    """The settings of :func:`~.args.add_connection_options` (and of the run, when present)."""
    return FetchSettings(
        qps=args.qps,
        concurrency=args.concurrency,
        max_credits=args.max_credits,
        timeout=args.timeout,
        retries=args.retries,
        base_url=args.base_url,
        proxy=args.proxy,
        redis_url=args.redis_url,
        redis_namespace=args.redis_namespace,
        progress=getattr(args, "progress", None),
        progress_interval=getattr(args, "progress_interval", 10.0),
        grace=getattr(args, "grace", 10.0),
        fsync=getattr(args, "fsync", False),
        quiet=getattr(args, "quiet", False),
        verbose=getattr(args, "verbose", 0),
    )


def make_client(settings: FetchSettings, api_key: str) -> KeyAPIClient:
    """Build (but do not open) the client; a bad setting is a usage error."""
    options: ClientOptions = {
        "base_url": settings.base_url,
        "qps": settings.qps or None,  # --qps 0 switches the client-side cap off
        "max_credits": settings.max_credits,
        "timeout": settings.timeout,
        "max_attempts": settings.retries + 1,
        "user_agent": PROG,
    }
    # Passed only when given: otherwise the client derives it from qps and
    # timeout, so that the rate cap is filled whatever the API's latency.
    if settings.concurrency is not None:
        options["concurrency"] = settings.concurrency
    # Likewise: left out, the client applies its own defaults and environment.
    if settings.proxy is not None:
        options["proxy"] = settings.proxy
    if settings.redis_url is not None:
        options["redis_url"] = settings.redis_url
    if settings.redis_namespace is not None:
        options["redis_namespace"] = settings.redis_namespace
    with setting_errors():
        return KeyAPIClient(api_key, **options)


@contextlib.asynccontextmanager
async def open_client(client: KeyAPIClient) -> AsyncIterator[KeyAPIClient]:
    """Open ``client`` for a run; a setting unusable only now is a usage error (exit 2).

    Opening is where a Redis given by ``--redis-url`` is first reached: one
    that is not running ends the run here, with one line naming Redis and the
    address, before anything is sent or written.
    """
    with setting_errors():
        await client.__aenter__()
    try:
        yield client
    finally:
        await client.aclose()
