"""Download the photos and videos of fetched stories from Instagram's CDN.

:class:`MediaDownloader` takes reels (as returned by
:meth:`KeyAPIClient.fetch_user_stories <keyapi_async.KeyAPIClient.fetch_user_stories>`)
and saves each story's media below a directory, one :class:`MediaOutcome` per
story item::

    from keyapi_async import KeyAPIClient
    from keyapi_async.media import MediaDownloader

    async with KeyAPIClient() as client, MediaDownloader("stories") as downloader:
        reel = await client.fetch_user_stories(username="javan")
        for outcome in await downloader.download_reel("javan", reel):
            print(outcome.status, outcome.path, outcome.reason)

It is independent of the API client: it never sends the API key, never waits
on the API's rate gate and costs no credits. See ``docs/media.md`` for the
layout, the name template fields, the host allowlist and the guarantees
(atomic, verified, resumable files; flat memory; nothing fetched off the
allowlist).

The parts, each in its own module: ``plan`` (what an answer means, pure),
``http`` (one download with resume and verification), ``files`` (``.part``,
fsync, rename, hash), ``paths`` (names, the allowlist), ``outcome`` (the
result types). :class:`MediaDownloader` owns them: the session, the
concurrency limit and the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncGenerator, Iterable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import aiohttp

from .._errors import ConfigurationError, MediaDiskFullError
from ..engine.validate import check_count, check_number
from ..models import Highlight, Reel, StoryItem, User
from . import files, plan, queue, skip
from .http import Destination, HTTPDownload
from .outcome import KnownSaved, MediaOutcome, MediaStatus, SavedMedia, lookup_saved
from .paths import (
    DEFAULT_MEDIA_HOSTS,
    DEFAULT_NAME_TEMPLATE,
    HIGHLIGHT_NAME_TEMPLATE,
    MEDIA_HOSTS_ENV,
    TEMPLATE_FIELDS,
    HostAllowlist,
    NameTemplate,
    inside,
    media_hosts_from_env,
    sanitize_component,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MEDIA_HOSTS",
    "DEFAULT_NAME_TEMPLATE",
    "HIGHLIGHT_NAME_TEMPLATE",
    "MEDIA_HOSTS_ENV",
    "TEMPLATE_FIELDS",
    "KnownSaved",
    "MediaDiskFullError",
    "MediaDownloader",
    "MediaOutcome",
    "MediaStatus",
    "SavedMedia",
    "media_hosts_from_env",
    "sanitize_component",
]

DEFAULT_MAX_BYTES: Final = 200 * 2**20
"""The per-file size cap by default (200 MiB): a story video is far smaller."""
DEFAULT_CONCURRENCY: Final = 8
"""Downloads in flight at once by default."""


class MediaDownloader:
    """Save story media below ``dest_dir``: atomic, verified, resumable and on an allowlist.

    Use it as an async context manager (it owns an aiohttp session without
    any default headers). All calls share one concurrency limit, so several
    :meth:`download_reel` calls in flight still open at most ``concurrency``
    downloads.

    Args:
        dest_dir: The download directory (created if missing; must be writable).
        session: An aiohttp session whose connection pool to share. Only its
            connector is used: its default headers, auth, cookies and
            middlewares never reach the CDN.
        concurrency: Downloads in flight at once.
        allowed_hosts: Extra hosts (``host``, ``host:port`` or ``*.domain``)
            besides :data:`DEFAULT_MEDIA_HOSTS`; plain http is accepted only
            for hosts listed here by name. See :func:`media_hosts_from_env`.
        max_bytes: Per-file cap; a larger file is aborted and reported ``failed``.
        max_attempts: Requests per item before giving up on 5xx, resets and
            cut-off bodies (resumed with ``Range`` where the CDN allows).
        name_template: Layout below ``dest_dir`` (default
            :data:`DEFAULT_NAME_TEMPLATE`); fields in :data:`TEMPLATE_FIELDS`.
        highlight_template: Layout of the items and covers of a highlight
            (``download_item(..., highlight=)``, :meth:`download_cover`;
            default :data:`HIGHLIGHT_NAME_TEMPLATE`).
        known_saved: Story id -> :class:`SavedMedia` (or ``(path, size)``) of
            files saved earlier; such an item is skipped when its file still
            has the recorded size.
        skip_existing: Also skip an item whose final file already exists
            (files at final names are only ever complete ones); its hash is
            recomputed for the outcome.
        timeout: Seconds without receiving a byte before an attempt fails
            (finite, > 0).
        connect_timeout: Seconds to open a connection (finite, > 0).
        backoff_base: First retry waits up to this long (the engine's full
            jitter, doubling); finite, >= 0.
        backoff_cap: Longest wait between attempts, a server's ``Retry-After``
            included; finite, >= 0.
        fsync: Flush files (and their directory) to stable storage before renaming.
        trust_env: Let the session honour ``HTTP(S)_PROXY``/``NO_PROXY``.
        user_agent: ``User-Agent`` sent to the CDN.

    Raises:
        ConfigurationError: An invalid argument (also a ValueError), named in
            the message; numbers are checked by ``engine.validate``.

    """

    def __init__(
        self,
        dest_dir: str | os.PathLike[str],
        *,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        allowed_hosts: Iterable[str] = (),
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_attempts: int = 4,
        name_template: str | None = None,
        highlight_template: str | None = None,
        known_saved: KnownSaved | None = None,
        skip_existing: bool = True,
        timeout: float = 60.0,
        connect_timeout: float = 15.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        fsync: bool = True,
        trust_env: bool = False,
        user_agent: str = "keyapi-async-media",
    ) -> None:
        for name, count in (
            ("concurrency", concurrency),
            ("max_bytes", max_bytes),
            ("max_attempts", max_attempts),
        ):
            check_count(count, name, minimum=1)
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=check_number(connect_timeout, "connect_timeout", positive=True),
            sock_read=check_number(timeout, "timeout", positive=True),
        )
        self._backoff = (
            check_number(backoff_base, "backoff_base"),
            check_number(backoff_cap, "backoff_cap"),
        )
        try:
            self._allow = HostAllowlist(allowed_hosts)
        except TypeError as exc:
            raise ConfigurationError(str(exc)) from None
        self._template = NameTemplate(name_template or DEFAULT_NAME_TEMPLATE)
        self._highlight_template = NameTemplate(
            highlight_template or HIGHLIGHT_NAME_TEMPLATE, name="highlight_template"
        )
        self.dest_dir = Path(dest_dir)
        """The download directory as given (files land below its resolved form)."""
        self.concurrency = concurrency
        """Downloads in flight at once."""
        self.max_bytes = max_bytes
        """Per-file size cap in bytes."""
        self.max_attempts = max_attempts
        """Requests per item before giving up on transient failures."""
        self._given_session = session
        self._known = known_saved
        self._skip_existing = skip_existing
        self._fsync = fsync
        self._trust_env = trust_env
        self._user_agent = user_agent
        self._root: Path | None = None
        self._http: HTTPDownload | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._path_locks = queue.PathLocks()
        self._rng = random.Random()

    def __repr__(self) -> str:
        return (
            f"MediaDownloader({str(self.dest_dir)!r}, concurrency={self.concurrency}, "
            f"name_template={self._template.template!r})"
        )

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Create and check the directory, open the session."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the session (a shared connector stays open)."""
        await self.aclose()

    async def start(self) -> None:
        """Create ``dest_dir``, prove it writable and open the session (idempotent).

        Raises:
            ConfigurationError: The directory cannot be created or written.

        """
        if self._http is not None:
            return
        try:
            self._root = await asyncio.to_thread(files.prepare_dir, self.dest_dir)
        except (FileExistsError, NotADirectoryError):
            # mkdir's own words ("File exists") would hide that a file is in the way.
            raise ConfigurationError(
                f"download directory {str(self.dest_dir)!r} is not writable: it, or a folder "
                "on its path, is a file, not a directory"
            ) from None
        except OSError as exc:
            raise ConfigurationError(
                f"download directory {str(self.dest_dir)!r} is not writable: {exc.strerror}"
            ) from None
        options: dict[str, object] = {
            "timeout": self._timeout,
            "headers": {"User-Agent": self._user_agent},
            "cookie_jar": aiohttp.DummyCookieJar(),
            "auto_decompress": False,
            "trust_env": self._trust_env,
        }
        if self._given_session is not None:
            if self._given_session.closed:
                raise ConfigurationError("the given aiohttp session is closed")
            options["connector"] = self._given_session.connector
            options["connector_owner"] = False
        self._http = HTTPDownload(
            aiohttp.ClientSession(**options),  # type: ignore[arg-type]
            allow=self._allow,
            max_bytes=self.max_bytes,
            max_attempts=self.max_attempts,
            backoff=self._backoff,
            fsync=self._fsync,
            rng=self._rng,
        )

    async def aclose(self) -> None:
        """Close the downloader's session; safe to call twice."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    @property
    def root(self) -> Path:
        """The resolved download directory (after :meth:`start`)."""
        if self._root is None:
            raise RuntimeError("MediaDownloader is not started: use 'async with' or start()")
        return self._root

    # -- public API -------------------------------------------------------------------

    async def download_reel(self, target: str | None, reel: Reel) -> list[MediaOutcome]:
        """Download every item of ``reel`` concurrently; outcomes in item order.

        ``target`` labels the outcomes (and names the folder when the reel
        carries no username).

        Raises:
            MediaDiskFullError: The disk filled up; its ``outcomes`` holds the
                items that finished before.

        """
        return await queue.gather_reel(self._download, target, reel)

    async def download_item(
        self,
        item: StoryItem,
        *,
        target: str | None = None,
        owner: User | None = None,
        highlight: Highlight | None = None,
        known: SavedMedia | None = None,
    ) -> MediaOutcome:
        """Download one story item (``owner`` names the folder when the item has no user).

        With ``highlight`` the item is saved as part of that highlight: named
        by the highlight template, whose ``{highlight_id}`` and
        ``{highlight_title}`` are the highlight's. ``known`` is the record of
        the item's file saved earlier (anywhere below the directory, e.g. by
        the stories layout): it is skipped while that file has the recorded
        size, before ``known_saved`` is asked.

        Raises:
            MediaDiskFullError: The disk filled up.

        """
        return await self._download(target, owner, item, known, highlight)

    async def download_cover(
        self,
        highlight: Highlight,
        *,
        target: str | None = None,
        owner: User | None = None,
        known: SavedMedia | None = None,
    ) -> MediaOutcome:
        """Download a highlight's cover image, filed like an item of that highlight.

        The outcome's ``story_id`` is ``cover_<highlight id>``
        (:func:`~keyapi_async.media.plan.cover_story_id`), the name the
        highlight template gives an item of that id taken when the highlight
        was created; ``known`` as for :meth:`download_item`. A highlight
        without a cover gives a ``failed`` outcome saying so.

        Raises:
            MediaDiskFullError: The disk filled up.

        """
        item = plan.cover_item(highlight)
        return await self._download(target, owner, item, known, highlight)

    async def download_many(
        self,
        reels: queue.ReelSource,
    ) -> AsyncGenerator[MediaOutcome, None]:
        """Download the items of many ``(target, reel)`` pairs, yielding outcomes as they finish.

        The source is consumed lazily (at most ``2 * concurrency`` items wait
        at any time), so it can be a stream of reels still being fetched.
        Close the iterator (``contextlib.aclosing``) to stop early: downloads
        in flight are cancelled and keep their ``.part`` files.

        Raises:
            MediaDiskFullError: The disk filled up: nothing new starts, the downloads in
                flight end by themselves and their outcomes come first.

        """
        async with contextlib.aclosing(
            queue.stream(self._download, reels, window=2 * self.concurrency)
        ) as outcomes:
            async for outcome in outcomes:
                yield outcome

    # -- one item ---------------------------------------------------------------------

    async def _download(
        self,
        target: str | None,
        owner: User | None,
        item: StoryItem,
        known: SavedMedia | None = None,
        highlight: Highlight | None = None,
    ) -> MediaOutcome:
        http = self._http
        if http is None:
            raise RuntimeError("MediaDownloader is not started: use 'async with' or start()")
        draft = plan.draft(item, target=target, owner=owner)
        if draft.url is None:
            return draft
        refused = self._allow.check(draft.url)
        if refused is not None:
            return replace(draft, status=MediaStatus.REJECTED, reason=refused)
        fields = plan.name_fields(item, draft, owner, highlight)
        template = self._template if highlight is None else self._highlight_template
        try:
            path = inside(self.root, template.render(fields))
        except ValueError as exc:
            return replace(draft, status=MediaStatus.REJECTED, reason=str(exc))
        # Two items with one name (a story listed twice) must not share a .part.
        async with self._path_locks.hold(path):
            record = known if known is not None else await lookup_saved(self._known, draft.story_id)
            done = await skip.skipped(
                self.root, draft, path, record, skip_existing=self._skip_existing
            )
            if done is not None:
                return done
            dest = Destination(
                path=path,
                ext=str(fields["ext"]),
                mtime=item.taken_at,
                rename=lambda ext: inside(self.root, template.render({**fields, "ext": ext})),
            )
            async with self._slots:
                outcome = await http.download(draft, dest)
        if outcome.path is None:
            return outcome
        return replace(outcome, relative_path=self._relative(outcome.path))

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()
