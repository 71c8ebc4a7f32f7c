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
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import hashlib
import inspect
import io
import os
import random
import tempfile
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeAlias
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp import hdrs

from .._errors import ConfigurationError, KeyAPIError
from ..models import Reel, StoryItem, User
from .paths import (
    DEFAULT_MEDIA_HOSTS,
    DEFAULT_NAME_TEMPLATE,
    MEDIA_HOSTS_ENV,
    TEMPLATE_FIELDS,
    HostAllowlist,
    NameTemplate,
    inside,
    media_hosts_from_env,
    sanitize_component,
    template_fields,
)

__all__ = [
    "DEFAULT_MEDIA_HOSTS",
    "DEFAULT_NAME_TEMPLATE",
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
_CHUNK: Final = 256 * 1024
_MAX_REDIRECTS: Final = 5
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_EXPIRED: Final = frozenset({403, 410})
_SNIPPET: Final = 120
_DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})
_CONTENT_TYPE_EXT: Final[Mapping[str, str]] = {
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/gif": "gif",
    "video/mp4": "mp4",
    "video/quicktime": "mov",
    "video/webm": "webm",
}
_URL_EXTS: Final = frozenset(_CONTENT_TYPE_EXT.values())


class MediaStatus(enum.StrEnum):
    """What happened to one story item's media."""

    SAVED = "saved"
    """Downloaded, verified and renamed into place in this call."""
    SKIPPED = "skipped"
    """Already present (known-saved record or an existing final file); nothing downloaded."""
    EXPIRED = "expired"
    """The CDN answered 403/410: the signed URL is no longer valid (refetch the reel)."""
    FAILED = "failed"
    """Gave up (retries exhausted, too large, HTTP error, local I/O error); see ``reason``."""
    REJECTED = "rejected"
    """Never requested: the URL or a redirect is off the allowlist, or no safe name exists."""


@dataclass(frozen=True, slots=True)
class MediaOutcome:
    """The result for one story item (every item gets exactly one)."""

    story_id: str
    """The story item's id, as the API sent it (not sanitised)."""
    status: MediaStatus
    """See :class:`MediaStatus`."""
    path: Path | None = None
    """Absolute path of the saved (or already present) file."""
    bytes: int = 0
    """Bytes received from the CDN for this item in this call (0 when skipped)."""
    sha256: str | None = None
    """Hex SHA-256 of the whole file (when saved, or known / recomputed when skipped)."""
    reason: str | None = None
    """Why the item is not ``saved`` (or why it was skipped); None when saved."""
    width: int | None = None
    """Width of the chosen rendition."""
    height: int | None = None
    """Height of the chosen rendition."""
    size: int | None = None
    """Size of the file on disk."""
    relative_path: str | None = None
    """``path`` relative to the download directory, with ``/`` separators."""
    target: str | None = None
    """The target label the caller passed with the reel."""
    username: str | None = None
    """The story owner's username (as sent, unsanitised)."""
    media_type: str | None = None
    """``"image"`` or ``"video"``."""
    url: str | None = None
    """The media URL that was (or would have been) requested."""
    content_type: str | None = None
    """The CDN's ``Content-Type`` for a saved file."""
    attempts: int = 0
    """HTTP requests made for this item (redirect hops included)."""

    @property
    def ok(self) -> bool:
        """Whether the file is on disk (``saved`` or ``skipped``)."""
        return self.status in (MediaStatus.SAVED, MediaStatus.SKIPPED)


@dataclass(frozen=True, slots=True)
class SavedMedia:
    """A file an earlier run saved (what a ``known_saved`` lookup returns)."""

    path: str | os.PathLike[str]
    """Where it is: absolute, or relative to the download directory."""
    size: int
    """Its recorded size; the item is skipped only if the file still has it."""
    sha256: str | None = None
    """Its recorded hash, copied into the ``skipped`` outcome."""


_SavedLike: TypeAlias = SavedMedia | tuple[str | os.PathLike[str], int]
KnownSaved: TypeAlias = (
    Mapping[str, _SavedLike]
    | Callable[[str], _SavedLike | None]
    | Callable[[str], Awaitable[_SavedLike | None]]
)
"""Story id -> record of a saved file: a mapping, or a (sync or async) lookup function."""


class MediaDiskFullError(KeyAPIError):
    """The disk (or quota) filled up while saving media (``ENOSPC``/``EDQUOT``).

    Raised instead of per-item outcomes because every later file would fail
    too: stop sending, keep what is complete (final-name files always are),
    and run again once there is space. The item being written lost its
    ``.part`` (to give the space back); others keep theirs for resuming.
    """

    def __init__(self, message: str, *, story_id: str | None, outcomes: list[MediaOutcome]) -> None:
        super().__init__(message)
        self.story_id = story_id
        """The item whose write failed."""
        self.outcomes = outcomes
        """Outcomes of the items that finished before it (``download_reel``)."""


# -- internal signals of one attempt ------------------------------------------------------


class _Retry(Exception):
    def __init__(self, reason: str, *, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


class _Final(Exception):
    def __init__(self, status: MediaStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class _DiskFull(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Saved:
    path: Path
    received: int
    size: int
    sha256: str
    content_type: str | None


@dataclass(slots=True)
class _Progress:
    received: int = 0  # bytes from the CDN for one item, across its attempts


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in _DISK_FULL_ERRNOS


def _nofollow_opener(path: str, flags: int) -> int:
    # A planted symlink at the .part name must not redirect our writes elsewhere.
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)


def _hash_file(path: Path, chunk: int = _CHUNK) -> tuple[hashlib._Hash, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            size += len(block)
    return digest, size


def _finish(handle: io.FileIO, part: Path, final: Path, mtime: int | None, fsync: bool) -> None:
    """Fsync, close and rename a finished ``.part`` (runs in a worker thread)."""
    if fsync:
        os.fsync(handle.fileno())
    handle.close()
    os.replace(part, final)
    if mtime is not None:
        os.utime(final, (mtime, mtime))
    if fsync:
        with contextlib.suppress(OSError):  # not every platform can open a directory
            fd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _pick(item: StoryItem) -> tuple[str, int, int, str] | None:
    """Return ``(url, width, height, media_type)`` of the largest rendition, or None."""
    if item.is_video_media:
        videos = [v for v in item.video_versions if v.url]
        if not videos:
            return None
        best = max(videos, key=lambda v: v.width * v.height)
        return best.url, best.width, best.height, "video"
    if item.image_versions is None or item.image_versions.best is None:
        return None
    image = item.image_versions.best
    return image.url, image.width, image.height, "image"


def _ext_from_url(url: str, media_type: str) -> str:
    suffix = urlsplit(url).path.rpartition(".")[2].lower()
    if suffix == "jpeg":
        suffix = "jpg"
    if suffix in _URL_EXTS:
        return suffix
    return "mp4" if media_type == "video" else "jpg"


def _first_username(*users: User | None) -> str | None:
    for user in users:
        if user is not None and user.username:
            return user.username
    return None


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
        known_saved: Story id -> :class:`SavedMedia` (or ``(path, size)``) of
            files saved earlier; such an item is skipped when its file still
            has the recorded size.
        skip_existing: Also skip an item whose final file already exists
            (files at final names are only ever complete ones); its hash is
            recomputed for the outcome.
        timeout: Seconds without receiving a byte before an attempt fails.
        connect_timeout: Seconds to open a connection.
        backoff_base: First retry waits up to this long (full jitter, doubling).
        backoff_cap: Longest wait between attempts.
        fsync: Flush files (and their directory) to stable storage before renaming.
        trust_env: Let the session honour ``HTTP(S)_PROXY``/``NO_PROXY``.
        user_agent: ``User-Agent`` sent to the CDN.

    Raises:
        ConfigurationError: An invalid argument (also a ValueError).

    """

    def __init__(
        self,
        dest_dir: str | os.PathLike[str],
        *,
        session: aiohttp.ClientSession | None = None,
        concurrency: int = 8,
        allowed_hosts: Iterable[str] = (),
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_attempts: int = 4,
        name_template: str | None = None,
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
        for name, value in (
            ("concurrency", concurrency),
            ("max_bytes", max_bytes),
            ("max_attempts", max_attempts),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
        for name, number in (
            ("timeout", timeout),
            ("connect_timeout", connect_timeout),
            ("backoff_base", backoff_base),
            ("backoff_cap", backoff_cap),
        ):
            if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
                raise ConfigurationError(f"{name} must be a number >= 0, got {number!r}")
        try:
            self._allow = HostAllowlist(allowed_hosts)
            self._template = NameTemplate(name_template or DEFAULT_NAME_TEMPLATE)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(str(exc)) from None
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
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout or None, sock_read=timeout or None
        )
        self._backoff = (backoff_base, backoff_cap)
        self._fsync = fsync
        self._trust_env = trust_env
        self._user_agent = user_agent
        self._root: Path | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(concurrency)
        self._path_locks: dict[Path, tuple[asyncio.Lock, int]] = {}
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
        if self._session is not None:
            return
        self._root = await asyncio.to_thread(self._prepare_dir)
        headers = {hdrs.USER_AGENT: self._user_agent}
        options: dict[str, object] = {
            "timeout": self._timeout,
            "headers": headers,
            "cookie_jar": aiohttp.DummyCookieJar(),
            "auto_decompress": False,
            "trust_env": self._trust_env,
        }
        if self._given_session is not None:
            if self._given_session.closed:
                raise ConfigurationError("the given aiohttp session is closed")
            options["connector"] = self._given_session.connector
            options["connector_owner"] = False
        self._session = aiohttp.ClientSession(**options)  # type: ignore[arg-type]

    def _prepare_dir(self) -> Path:
        try:
            self.dest_dir.mkdir(parents=True, exist_ok=True)
            root = self.dest_dir.resolve(strict=True)
            fd, probe = tempfile.mkstemp(prefix=".keyapi-probe-", dir=root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigurationError(
                f"download directory {str(self.dest_dir)!r} is not writable: {exc.strerror}"
            ) from None
        return root

    async def aclose(self) -> None:
        """Close the downloader's session; safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

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
        owner = reel.user
        tasks = [asyncio.ensure_future(self._download(target, owner, item)) for item in reel.items]
        try:
            if tasks:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            errors = [t.exception() for t in tasks if t.done() and not t.cancelled()]
            error = next((e for e in errors if e is not None), None)
            if error is not None:
                await _cancel(tasks)
                if isinstance(error, MediaDiskFullError):
                    error.outcomes = [
                        t.result()
                        for t in tasks
                        if t.done() and not t.cancelled() and t.exception() is None
                    ]
                raise error
            return [t.result() for t in tasks]
        finally:
            await _cancel(tasks)

    async def download_item(
        self, item: StoryItem, *, target: str | None = None, owner: User | None = None
    ) -> MediaOutcome:
        """Download one story item (``owner`` names the folder when the item has no user).

        Raises:
            MediaDiskFullError: The disk filled up.

        """
        return await self._download(target, owner, item)

    async def download_many(
        self,
        reels: Iterable[tuple[str | None, Reel]] | AsyncIterable[tuple[str | None, Reel]],
    ) -> AsyncGenerator[MediaOutcome, None]:
        """Download the items of many ``(target, reel)`` pairs, yielding outcomes as they finish.

        The source is consumed lazily (at most ``2 * concurrency`` items wait
        at any time), so it can be a stream of reels still being fetched.
        Close the iterator (``contextlib.aclosing``) to stop early: downloads
        in flight are cancelled and keep their ``.part`` files.

        Raises:
            MediaDiskFullError: The disk filled up (everything in flight is cancelled).

        """
        results: asyncio.Queue[MediaOutcome | BaseException | None] = asyncio.Queue()
        room = asyncio.Semaphore(2 * self.concurrency)
        running: set[asyncio.Task[MediaOutcome]] = set()

        def finished(task: asyncio.Task[MediaOutcome]) -> None:
            running.discard(task)
            room.release()
            if not task.cancelled():
                error = task.exception()
                results.put_nowait(error if error is not None else task.result())

        async def produce() -> None:
            try:
                async for target, reel in _aiter(reels):
                    for item in reel.items:
                        await room.acquire()
                        task = asyncio.ensure_future(self._download(target, reel.user, item))
                        running.add(task)
                        task.add_done_callback(finished)
                while running:
                    await asyncio.wait(set(running))
            except Exception as exc:  # the caller's source failed: hand it over
                results.put_nowait(exc)
            results.put_nowait(None)

        producer = asyncio.ensure_future(produce())
        try:
            while (result := await results.get()) is not None:
                if isinstance(result, BaseException):
                    raise result
                yield result
        finally:
            await _cancel([producer, *running])

    # -- one item ---------------------------------------------------------------------

    async def _download(
        self, target: str | None, owner: User | None, item: StoryItem
    ) -> MediaOutcome:
        if self._session is None:
            raise RuntimeError("MediaDownloader is not started: use 'async with' or start()")
        story_id = item.id
        username = _first_username(item.user, item.owner, owner) or target or "unknown"
        draft = MediaOutcome(
            story_id=story_id, status=MediaStatus.FAILED, target=target, username=username
        )
        picked = _pick(item)
        if picked is None:
            return replace(draft, reason="the item has no media URL")
        url, width, height, media_type = picked
        draft = replace(draft, url=url, width=width, height=height, media_type=media_type)
        refused = self._allow.check(url)
        if refused is not None:
            return replace(draft, status=MediaStatus.REJECTED, reason=refused)
        user = item.user or item.owner or owner
        fields = template_fields(
            story_id=story_id,
            username=username,
            user_id=(user.id if user is not None and user.id else ""),
            code=item.code or "",
            taken_at=item.taken_at,
            ext=_ext_from_url(url, media_type),
            media_type=media_type,
            width=width,
            height=height,
            target=target or "",
        )
        try:
            path = self._path_for(fields)
        except ValueError as exc:
            return replace(draft, status=MediaStatus.REJECTED, reason=str(exc))

        # Two items with one name (a story listed twice) must not share a .part.
        lock, users = self._path_locks.get(path, (asyncio.Lock(), 0))
        self._path_locks[path] = (lock, users + 1)
        try:
            async with lock:
                skipped = await self._skipped(story_id, path)
                if skipped is not None:
                    found, size, sha, why = skipped
                    return replace(
                        draft,
                        status=MediaStatus.SKIPPED,
                        path=found,
                        relative_path=self._relative(found),
                        size=size,
                        sha256=sha,
                        reason=why,
                    )
                async with self._slots:
                    return await self._fetch(draft, item.taken_at, fields, path)
        finally:
            lock, users = self._path_locks[path]
            if users == 1:
                del self._path_locks[path]
            else:
                self._path_locks[path] = (lock, users - 1)

    def _path_for(self, fields: Mapping[str, object]) -> Path:
        return inside(self.root, self._template.render(fields))

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    async def _skipped(self, story_id: str, path: Path) -> tuple[Path, int, str | None, str] | None:
        record = await self._lookup(story_id)
        if record is not None:
            recorded = Path(record.path)
            if not recorded.is_absolute():
                recorded = self.root / recorded
            try:
                recorded = inside(self.root, recorded.relative_to(self.root).parts)
                size = recorded.stat().st_size
            except (ValueError, OSError):
                size = -1
            if size == record.size:
                return recorded, size, record.sha256, "already saved"
        if self._skip_existing and await asyncio.to_thread(path.is_file):
            digest, size = await asyncio.to_thread(_hash_file, path)
            # A .part beside a complete file is a leftover nobody will resume.
            await asyncio.to_thread(_unlink, _part_of(path))
            return path, size, digest.hexdigest(), "file already present"
        return None

    async def _lookup(self, story_id: str) -> SavedMedia | None:
        known = self._known
        if known is None:
            return None
        found: object
        if isinstance(known, Mapping):
            found = known.get(story_id)
        else:
            found = known(story_id)
            if inspect.isawaitable(found):
                found = await found
        if found is None:
            return None
        if isinstance(found, SavedMedia):
            return found
        if isinstance(found, tuple) and len(found) == 2:
            return SavedMedia(path=found[0], size=int(found[1]))
        raise TypeError(f"known_saved gave {type(found).__name__}, not SavedMedia or (path, size)")

    async def _fetch(
        self, draft: MediaOutcome, taken_at: int | None, fields: dict[str, object], path: Path
    ) -> MediaOutcome:
        url = draft.url
        assert url is not None
        progress = _Progress()
        attempts = redirects = 0
        last_reason = ""
        while True:
            attempts += 1
            try:
                saved = await self._attempt(url, path, fields, taken_at, progress)
            except _Redirect as hop:
                location = urljoin(url, hop.location)
                refused = self._allow.check(location)
                if refused is not None:
                    return replace(
                        draft,
                        status=MediaStatus.REJECTED,
                        reason=f"redirect refused: {refused}",
                        attempts=attempts,
                    )
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    last_reason = "too many redirects"
                    break
                url = location
                continue
            except _Final as final:
                return replace(
                    draft,
                    status=final.status,
                    reason=final.reason,
                    attempts=attempts,
                    bytes=progress.received,
                )
            except _DiskFull as full:
                raise MediaDiskFullError(
                    f"disk full while saving story {draft.story_id!r}: {full}",
                    story_id=draft.story_id,
                    outcomes=[],
                ) from None
            except _Retry as retry:
                last_reason = retry.reason
                if attempts - redirects >= self.max_attempts:
                    break
                await asyncio.sleep(self._delay(attempts - redirects, retry.wait))
                continue
            return replace(
                draft,
                status=MediaStatus.SAVED,
                path=saved.path,
                relative_path=self._relative(saved.path),
                bytes=progress.received,
                size=saved.size,
                sha256=saved.sha256,
                content_type=saved.content_type,
                attempts=attempts,
            )
        return replace(
            draft,
            reason=f"gave up after {attempts} requests: {last_reason}",
            bytes=progress.received,
            attempts=attempts,
        )

    def _delay(self, attempt: int, hint: float | None) -> float:
        base, cap = self._backoff
        wait = self._rng.uniform(0, min(cap, base * 2 ** (attempt - 1)))
        return wait if hint is None else min(cap, max(wait, hint))

    async def _attempt(
        self,
        url: str,
        path: Path,
        fields: dict[str, object],
        taken_at: int | None,
        progress: _Progress,
    ) -> _Saved:
        session = self._session
        if session is None:
            raise RuntimeError("MediaDownloader is closed")
        part = _part_of(path)
        try:
            offset = part.stat().st_size
        except FileNotFoundError:
            offset = 0
        except OSError as exc:
            raise _Final(MediaStatus.FAILED, f"cannot use {part.name}: {exc.strerror}") from None
        headers = {hdrs.ACCEPT_ENCODING: "identity"}
        if offset:
            headers[hdrs.RANGE] = f"bytes={offset}-"
        try:
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                return await self._receive(resp, path, part, offset, fields, taken_at, progress)
        except (_Retry, _Final, _Redirect, _DiskFull):
            raise
        except aiohttp.ClientPayloadError as exc:
            raise _Retry(f"body cut off ({_describe(exc)})") from None
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise _Retry(_describe(exc)) from None

    async def _adopt(self, part: Path, final: Path, size: int, taken_at: int | None) -> _Saved:
        try:
            digest, _ = await asyncio.to_thread(_hash_file, part)
            handle = await asyncio.to_thread(open, part, "ab", buffering=0, opener=_nofollow_opener)
            try:
                await asyncio.to_thread(_finish, handle, part, final, taken_at, self._fsync)
            finally:
                with contextlib.suppress(OSError):
                    handle.close()
        except OSError as exc:
            raise _local_error(exc, part) from None
        return _Saved(final, 0, size, digest.hexdigest(), None)

    async def _receive(
        self,
        resp: aiohttp.ClientResponse,
        path: Path,
        part: Path,
        offset: int,
        fields: dict[str, object],
        taken_at: int | None,
        progress: _Progress,
    ) -> _Saved:
        status = resp.status
        if status in _REDIRECTS:
            location = resp.headers.get(hdrs.LOCATION)
            if not location:
                raise _Final(MediaStatus.FAILED, f"HTTP {status} without Location")
            raise _Redirect(location)
        if status in _EXPIRED:
            snippet = (await resp.content.read(_SNIPPET)).decode("utf-8", "replace").strip()
            raise _Final(
                MediaStatus.EXPIRED, f"HTTP {status}" + (f": {snippet}" if snippet else "")
            )
        if status == 416 and offset:
            if _unsatisfied_total(resp.headers.get(hdrs.CONTENT_RANGE)) == offset:
                # The .part already holds the whole file (its last answer lied about
                # the length, or a run died between the last byte and the rename).
                return await self._adopt(part, path, offset, taken_at)
            await asyncio.to_thread(_unlink, part)
            raise _Retry("the CDN cannot resume this file (416); restarting it", wait=0.0)
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status}", wait=_retry_after(resp.headers.get(hdrs.RETRY_AFTER)))
        if status not in (200, 206):
            raise _Final(MediaStatus.FAILED, f"HTTP {status}")

        length = resp.content_length
        if status == 206:
            start, total = _content_range(resp.headers.get(hdrs.CONTENT_RANGE))
            if start != offset:
                await asyncio.to_thread(_unlink, part)
                raise _Retry("the CDN resumed at another offset; restarting the file", wait=0.0)
        else:
            offset, total = 0, length  # the whole file again: the .part starts over
        if resp.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() != "identity":
            length = None  # the header counts encoded bytes, we count decoded ones
        if total is not None and total > self.max_bytes:
            await asyncio.to_thread(_unlink, part)
            raise _Final(
                MediaStatus.FAILED, f"file is {total} bytes, over max_bytes={self.max_bytes}"
            )

        content_type = resp.content_type or None
        final = path
        wanted_ext = _CONTENT_TYPE_EXT.get(content_type or "")
        if wanted_ext is not None and wanted_ext != fields["ext"]:
            try:
                final = self._path_for({**fields, "ext": wanted_ext})
            except ValueError as exc:
                raise _Final(MediaStatus.REJECTED, str(exc)) from None

        try:
            await asyncio.to_thread(part.parent.mkdir, parents=True, exist_ok=True)
            digest = (await asyncio.to_thread(_hash_file, part))[0] if offset else hashlib.sha256()
            # Unbuffered: a full disk shows at the write that hit it, not at a later flush.
            handle = open(part, "ab" if offset else "wb", buffering=0, opener=_nofollow_opener)  # noqa: ASYNC230, SIM115
        except OSError as exc:
            raise _local_error(exc, part) from None
        received = 0
        try:
            async for chunk in resp.content.iter_chunked(_CHUNK):
                received += len(chunk)
                progress.received += len(chunk)
                if offset + received > self.max_bytes:
                    handle.close()
                    await asyncio.to_thread(_unlink, part)
                    raise _Final(
                        MediaStatus.FAILED, f"file exceeds max_bytes={self.max_bytes}; aborted"
                    )
                try:
                    _write_all(handle, chunk)
                except OSError as exc:
                    raise _local_error(exc, part) from None
                digest.update(chunk)
            if length is not None and received != length:
                raise _Retry(f"body has {received} of {length} bytes")
            try:
                await asyncio.to_thread(_finish, handle, part, final, taken_at, self._fsync)
            except OSError as exc:
                raise _local_error(exc, part) from None
        finally:
            with contextlib.suppress(OSError):
                handle.close()
        return _Saved(final, received, offset + received, digest.hexdigest(), content_type)


async def _aiter(
    source: Iterable[tuple[str | None, Reel]] | AsyncIterable[tuple[str | None, Reel]],
) -> AsyncIterator[tuple[str | None, Reel]]:
    if isinstance(source, AsyncIterable):
        async for pair in source:
            yield pair
    else:
        for pair in source:
            yield pair


def _part_of(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _write_all(handle: io.FileIO, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        written = handle.write(view)
        if not written:
            raise OSError(errno.EIO, "write returned 0 bytes")
        view = view[written:]


def _local_error(exc: OSError, part: Path) -> Exception:
    if _is_disk_full(exc):
        _unlink(part)
        return _DiskFull(exc.strerror or "no space left on device")
    return _Final(MediaStatus.FAILED, f"local I/O error: {exc.strerror or exc}")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _describe(exc: BaseException) -> str:
    # aiohttp's messages are short and carry no request headers; the class name helps triage.
    text = str(exc).split("\n", 1)[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def _unsatisfied_total(value: str | None) -> int | None:
    """Parse a 416's ``bytes */TOTAL``."""
    if not value or not value.startswith("bytes */"):
        return None
    total = value[8:].strip()
    return int(total) if total.isdigit() else None


def _content_range(value: str | None) -> tuple[int, int | None]:
    """Parse ``bytes START-END/TOTAL`` into ``(START, TOTAL)``; (-1, None) if unusable."""
    if not value or not value.startswith("bytes "):
        return -1, None
    span, _, total = value[6:].partition("/")
    first = span.partition("-")[0]
    if not first.isdigit():
        return -1, None
    return int(first), int(total) if total.isdigit() else None


async def _cancel(tasks: Iterable[asyncio.Future[Any]]) -> None:
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
