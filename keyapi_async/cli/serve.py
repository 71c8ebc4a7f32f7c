"""``keyapi-stories serve DIR_OR_ARCHIVE`` and the web part of ``watch --serve ADDR``.

``serve`` needs no API key and sends nothing to the API: it reads the
archive read-only and serves the files its media records name. Any
address other than loopback needs ``--allow-remote`` and prints a warning;
``--token`` (or ``KEYAPI_SERVE_TOKEN``) makes every page ask for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .exit import CLIError, ExitCode

if TYPE_CHECKING:
    from ..engine.fetch import ClientStats
    from ..watch import WatchStats
    from ..web import GalleryConfig

__all__ = ["parse_address", "run_serve", "serving_watch"]

_TOKEN_ENV = "KEYAPI_SERVE_TOKEN"
_MAX_PORT = 65535


def parse_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:8080``, ``[::1]:8080`` or ``:8080`` (loopback) -> ``(host, port)``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= _MAX_PORT:
        raise argparse.ArgumentTypeError(f"not an address HOST:PORT: {text!r}")
    return host or "127.0.0.1", int(port)


def _locate(target: str) -> tuple[Path, Path]:
    path = Path(target)
    if path.is_dir():
        return path / "archive.sqlite3", path
    if path.is_file():
        return path, path.parent
    raise CLIError(f"no archive or download directory at {target!r}")


def _gallery_config(
    archive: Path,
    media_root: Path,
    host: str,
    args: argparse.Namespace,
    client: Callable[[], ClientStats] | None = None,
    watch: Callable[[], WatchStats] | None = None,
) -> GalleryConfig:
    try:
        from ..web import GalleryConfig, LiveStats, is_loopback
    except ImportError as exc:  # the web extra is missing
        raise CLIError(
            f"serving needs the web extra (pip install 'keyapi-async[web]'): {exc}"
        ) from None
    if not is_loopback(host):
        if not args.allow_remote:
            raise CLIError(
                f"{host} is not a loopback address: anyone who can reach it sees the gallery. "
                "Add --allow-remote (and --token) to serve it anyway"
            )
        print(
            f"WARNING: serving on {host}, reachable from other machines"
            + ("" if args.token or os.environ.get(_TOKEN_ENV) else " and without a token"),
            file=sys.stderr,
        )
    token = args.token or os.environ.get(_TOKEN_ENV) or None
    return GalleryConfig(
        archive=archive, media_root=media_root, token=token, live=LiveStats(client, watch)
    )


def _shown_url(url: str, token: str | None) -> str:
    return f"{url}/?token=<your token>" if token else f"{url}/"


def run_serve(args: argparse.Namespace) -> int:
    """Run ``keyapi-stories serve``; return the exit status."""
    if args.port > _MAX_PORT:
        raise CLIError(f"--port must be <= {_MAX_PORT}, got {args.port}")
    archive, media_root = _locate(args.target)
    if not archive.is_file():
        raise CLIError(f"no archive at {archive} (run fetch --download {media_root} first)")
    config = _gallery_config(archive, media_root, args.host, args)
    return asyncio.run(_serve(config, args.host, args.port))


async def _serve(config: GalleryConfig, host: str, port: int) -> int:
    from ..archive import ArchiveError
    from ..web import running_gallery
    from .signals import Interrupts

    stop = asyncio.Event()
    try:
        async with running_gallery(config, host, port) as url:
            print(f"serving {_shown_url(url, config.token)} (Ctrl-C stops)", file=sys.stderr)
            with Interrupts(lambda _s: stop.set(), lambda _s: stop.set()):
                await stop.wait()
    except ArchiveError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return ExitCode.OK


@contextlib.asynccontextmanager
async def serving_watch(
    args: argparse.Namespace,
    archive_path: str | os.PathLike[str],
    client: Callable[[], ClientStats],
    watch: Callable[[], WatchStats],
) -> AsyncIterator[None]:
    """Serve status, metrics and health beside a running watch when ``--serve`` was given.

    ``client`` and ``watch`` return the live counters (``client.stats``,
    ``watcher.stats``); nothing else of the watch is read. An address that
    cannot be bound is a :class:`CLIError` (exit 2) before any poll.
    """
    if args.serve is None:
        yield
        return
    from ..web import running_gallery

    host, port = args.serve
    archive = Path(archive_path)
    media_root = Path(args.download) if args.download else archive.parent
    config = _gallery_config(archive, media_root, host, args, client, watch)
    async with contextlib.AsyncExitStack() as stack:
        try:
            url = await stack.enter_async_context(running_gallery(config, host, port))
        except OSError as exc:
            raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        print(f"status page: {_shown_url(url, config.token)}status", file=sys.stderr, flush=True)
        yield
