"""One media download over HTTP: redirects, retries, resume with ``Range``, verification.

:class:`HTTPDownload` is the only media module that touches aiohttp. For one
story item it sends a request, asks :func:`.plan.judge` what the answer
means and does it: follow a redirect (by hand, only to allowed hosts), give
up, wait and retry (resuming the ``.part`` with ``Range`` where the CDN
allows), finish a ``.part`` that is already whole, or stream the body into
the ``.part`` (see ``media/files.py``), check its length against
``Content-Length`` and commit it under its final name. Like gallery-dl's
``downloader/http.py``, it knows nothing of queues, reels or archives.

A full disk is not an outcome: :class:`~keyapi_async.MediaDiskFullError` is
raised, because every later file would fail too.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, TypeAlias
from urllib.parse import urljoin

import aiohttp

from .._errors import MediaDiskFullError
from .files import CHUNK, PartFile, is_disk_full, part_of, unlink
from .outcome import MediaOutcome, MediaStatus
from .paths import HostAllowlist
from .plan import (
    MAX_REDIRECTS,
    Adopt,
    Expired,
    GiveUp,
    Receive,
    Redirect,
    Retry,
    ext_for_content_type,
    judge,
    request_headers,
    retry_wait,
)

__all__ = ["Destination", "HTTPDownload"]

_SNIPPET: Final = 120


@dataclass(frozen=True, slots=True)
class Destination:
    """Where one item's file goes."""

    path: Path
    """The final path, named with the extension the URL suggests."""
    ext: str
    """That extension."""
    mtime: int | None
    """The file's modification time to set (the story's ``taken_at``)."""
    rename: Callable[[str], Path]
    """The final path for another extension (a ``Content-Type`` asks for one);
    raises ValueError when no safe name exists."""


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


class _Halt(Exception):
    """Ends an attempt from deep inside it (the body loop) with what that means."""

    def __init__(self, verdict: GiveUp | Retry) -> None:
        super().__init__(verdict)
        self.verdict = verdict


class _DiskFull(Exception):
    pass


_Result: TypeAlias = _Saved | Redirect | GiveUp | Retry


class HTTPDownload:
    """Downloads one item at a time over ``session``, as the downloader's settings say.

    The caller bounds the concurrency; this object holds no per-item state.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        allow: HostAllowlist,
        max_bytes: int,
        max_attempts: int,
        backoff: tuple[float, float],
        fsync: bool,
        rng: random.Random,
    ) -> None:
        self._session = session
        self._allow = allow
        self._max_bytes = max_bytes
        self._max_attempts = max_attempts
        self._backoff = backoff
        self._fsync = fsync
        self._rng = rng

    async def aclose(self) -> None:
        """Close the session (a borrowed connector stays open)."""
        await self._session.close()

    async def download(self, draft: MediaOutcome, dest: Destination) -> MediaOutcome:
        """Fetch ``draft.url`` into ``dest``; ``draft`` completed into the item's outcome.

        ``relative_path`` is left to the caller, who knows the download directory.

        Raises:
            MediaDiskFullError: The disk filled up (its ``outcomes`` empty).

        """
        url = draft.url
        assert url is not None
        progress = _Progress()
        attempts = redirects = 0
        last_reason = ""
        while True:
            attempts += 1
            try:
                result = await self._attempt(url, dest, progress)
            except _DiskFull as full:
                raise MediaDiskFullError(
                    f"disk full while saving story {draft.story_id!r}: {full}",
                    story_id=draft.story_id,
                    outcomes=[],
                ) from None
            if isinstance(result, Redirect):
                location = urljoin(url, result.location)
                refused = self._allow.check(location)
                if refused is not None:
                    reason = f"redirect refused: {refused}"
                    return replace(
                        draft, status=MediaStatus.REJECTED, reason=reason, attempts=attempts
                    )
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    last_reason = "too many redirects"
                    break
                url = location
                continue
            if not isinstance(result, Retry):
                return _settled(draft, result, attempts=attempts, received=progress.received)
            last_reason = result.reason
            if attempts - redirects >= self._max_attempts:
                break
            await asyncio.sleep(self._wait(attempts - redirects, result.wait))
        return replace(
            draft,
            reason=f"gave up after {attempts} requests: {last_reason}",
            bytes=progress.received,
            attempts=attempts,
        )

    def _wait(self, attempt: int, hint: float | None) -> float:
        base, cap = self._backoff
        return retry_wait(attempt, hint, base=base, cap=cap, rand=self._rng.random)

    async def _attempt(self, url: str, dest: Destination, progress: _Progress) -> _Result:
        if self._session.closed:
            raise RuntimeError("MediaDownloader is closed")
        part = part_of(dest.path)
        try:
            offset = part.stat().st_size
        except FileNotFoundError:
            offset = 0
        except OSError as exc:
            return GiveUp(MediaStatus.FAILED, f"cannot use {part.name}: {exc.strerror}")
        headers = request_headers(offset)
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False) as resp:
                return await self._answer(resp, dest, part, offset, progress)
        except _Halt as halt:
            return halt.verdict
        except aiohttp.ClientPayloadError as exc:
            return Retry(f"body cut off ({_describe(exc)})")
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            return Retry(_describe(exc))

    async def _answer(
        self,
        resp: aiohttp.ClientResponse,
        dest: Destination,
        part: Path,
        offset: int,
        progress: _Progress,
    ) -> _Result:
        verdict = judge(resp.status, resp.headers, offset=offset, max_bytes=self._max_bytes)
        if isinstance(verdict, Expired):
            snippet = (await resp.content.read(_SNIPPET)).decode("utf-8", "replace").strip()
            reason = f"HTTP {verdict.status}" + (f": {snippet}" if snippet else "")
            return GiveUp(MediaStatus.EXPIRED, reason)
        if isinstance(verdict, Adopt):
            return await self._adopt(part, dest, verdict.size)
        if isinstance(verdict, Receive):
            return await self._receive(resp, dest, part, verdict, progress)
        if (isinstance(verdict, Retry) and verdict.restart) or (
            isinstance(verdict, GiveUp) and verdict.discard
        ):
            await asyncio.to_thread(unlink, part)
        return verdict

    async def _adopt(self, part: Path, dest: Destination, size: int) -> _Saved:
        try:
            file = await asyncio.to_thread(PartFile.adopt, part)
            try:
                await self._commit(file, dest.path, dest.mtime)
            finally:
                file.close()
        except OSError as exc:
            raise _local_error(exc, part) from None
        return _Saved(dest.path, 0, size, file.sha256, None)

    async def _receive(
        self,
        resp: aiohttp.ClientResponse,
        dest: Destination,
        part: Path,
        body: Receive,
        progress: _Progress,
    ) -> _Saved:
        content_type = resp.content_type or None
        final = dest.path
        wanted_ext = ext_for_content_type(content_type)
        if wanted_ext is not None and wanted_ext != dest.ext:
            try:
                final = dest.rename(wanted_ext)
            except ValueError as exc:
                raise _Halt(GiveUp(MediaStatus.REJECTED, str(exc))) from None
        try:
            file = await asyncio.to_thread(PartFile.open, part, body.offset)
        except OSError as exc:
            raise _local_error(exc, part) from None
        try:
            received = await self._stream(resp, file, body.offset, progress)
            if body.length is not None and received != body.length:
                raise _Halt(Retry(f"body has {received} of {body.length} bytes"))
            try:
                await self._commit(file, final, dest.mtime)
            except OSError as exc:
                raise _local_error(exc, part) from None
        finally:
            file.close()
        return _Saved(final, received, body.offset + received, file.sha256, content_type)

    async def _commit(self, file: PartFile, final: Path, mtime: int | None) -> None:
        # A rename under way finishes even if the download is cancelled: no thread
        # may rename behind the back of a caller who saw the cancellation done.
        commit = asyncio.ensure_future(asyncio.to_thread(file.commit, final, mtime, self._fsync))
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            await asyncio.wait([commit])
            if not commit.cancelled():
                commit.exception()  # seen: the cancellation is what the caller gets
            raise

    async def _stream(
        self, resp: aiohttp.ClientResponse, file: PartFile, offset: int, progress: _Progress
    ) -> int:
        received = 0
        async for chunk in resp.content.iter_chunked(CHUNK):
            received += len(chunk)
            progress.received += len(chunk)
            if offset + received > self._max_bytes:
                file.close()
                await asyncio.to_thread(unlink, file.path)
                reason = f"file exceeds max_bytes={self._max_bytes}; aborted"
                raise _Halt(GiveUp(MediaStatus.FAILED, reason))
            try:
                file.write(chunk)
            except OSError as exc:
                raise _local_error(exc, file.path) from None
        return received


def _settled(
    draft: MediaOutcome, result: _Saved | GiveUp, *, attempts: int, received: int
) -> MediaOutcome:
    if isinstance(result, GiveUp):
        return replace(
            draft, status=result.status, reason=result.reason, attempts=attempts, bytes=received
        )
    return replace(
        draft,
        status=MediaStatus.SAVED,
        path=result.path,
        bytes=received,
        size=result.size,
        sha256=result.sha256,
        content_type=result.content_type,
        attempts=attempts,
    )


def _local_error(exc: OSError, part: Path) -> Exception:
    if is_disk_full(exc):
        unlink(part)
        return _DiskFull(exc.strerror or "no space left on device")
    return _Halt(GiveUp(MediaStatus.FAILED, f"local I/O error: {exc.strerror or exc}"))


def _describe(exc: BaseException) -> str:
    # aiohttp's messages are short and carry no request headers; the class name helps triage.
    text = str(exc).split("\n", 1)[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
