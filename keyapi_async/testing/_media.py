"""The emulator's media CDN: signed, expiring ``/media`` URLs with injectable faults.

Story items in emulator answers can point at media the emulator serves itself
(:attr:`MediaConfig.enabled`): ``GET /media/<story_id>.<jpg|mp4>?w=&h=&exp=&sig=``
answers with small, valid JPEG or MP4 bytes that are a pure function of the
story id, the extension and the rendition size, so a test can check a saved
file against :func:`media_sha256`. URLs are HMAC-signed and expire
:attr:`MediaConfig.url_ttl` seconds after the API answer that carried them
(403 afterwards), ``Range`` requests get 206, and
:attr:`MediaConfig.fault_rates` / :attr:`MediaConfig.fault_script` inject the
misbehaviours real CDNs show (cut-off bodies, resets, trickles, lying
``Content-Length``, expired links, redirects).

Every media request is logged in :attr:`MediaCDN.log` with its headers
(credential values redacted, their presence kept), so tests can assert that no
``Authorization`` header ever reached the CDN.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import math
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import msgspec
from aiohttp import hdrs, web

from .._errors import ConfigurationError
from ._config import ENDPOINT, ENDPOINTS, EmulatorConfig, MediaConfig, MediaFault
from ._data import localize_media
from ._faults import FaultPicker
from ._highlights import TRAY_PATH

__all__ = [
    "MEDIA_ROUTE",
    "MediaCDN",
    "MediaRequestRecord",
    "install_media",
    "media_bytes",
    "media_cdn",
    "media_sha256",
    "media_size",
]


class Emulator(Protocol):
    """What the CDN needs of the emulator it serves beside (``testing.Emulator``)."""

    @property
    def config(self) -> EmulatorConfig:
        """The emulator's settings; the CDN reads ``config.media``."""

    @property
    def base_url(self) -> str | None:
        """Where the emulator listens, once it runs; media URLs point there."""


MEDIA_ROUTE: Final = "/media/{name}"
"""The path the CDN serves (``GET``); ``name`` is ``<quoted story id>.<jpg|mp4>``."""

_EXTENSIONS: Final[Mapping[str, str]] = {"jpg": "image/jpeg", "mp4": "video/mp4"}
_REDACTED: Final = "<redacted>"
_SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})

# A real 16x16 baseline JPEG (made once with Pillow). Files are padded to their
# size with COM segments after the JFIF header, which decoders skip.
_JPEG: Final = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e1211101318281a"
    "181616183123251d283a333d3c3933383740485c4e404457453738506d51575f626768673e4d717970"
    "64785c656763ffdb0043011112121815182f1a1a2f63423842636363636363636363636363636363636363"
    "6363636363636363636363636363636363636363636363636363636363636363ffc0001108001000100301"
    "2200021101031101ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc4"
    "00b5100002010303020403050504040000017d01020300041105122131410613516107227114328191a108"
    "2342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a43444546474849"
    "4a535455565758595a636465666768696a737475767778797a838485868788898a9293949596979899"
    "9aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4"
    "e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc4001f0100030101010101010101010000000000000102030405"
    "060708090a0bffc400b51100020102040403040705040400010277000102031104052131061241510761"
    "711322328108144291a1b1c109233352f0156272d10a162434e125f11718191a262728292a3536373839"
    "3a434445464748494a535455565758595a636465666768696a737475767778797a82838485868788898a"
    "92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7"
    "d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9faffda000c03010002110311003f00e7edec7a715a76"
    "f63d38ad3b7b1e9c569dbd8f4e2aaae2c32fc76da9ffd9"
)
_JFIF_END: Final = 20  # SOI + APP0: padding goes right after them
_COM_SEGMENT_MAX: Final = 65536  # marker (2) + length (2) + payload (<= 65533)
_FILL_BLOCK: Final = 65536


def _mvhd(duration: int) -> bytes:
    body = b"".join(
        (
            b"\x00\x00\x00\x00",  # version 0, flags
            b"\x00\x00\x00\x00" * 2,  # creation / modification time
            (1000).to_bytes(4, "big"),  # timescale: ms
            duration.to_bytes(4, "big"),
            b"\x00\x01\x00\x00",  # rate 1.0
            b"\x01\x00",  # volume 1.0
            b"\x00" * 10,
            b"\x00\x01\x00\x00" + b"\x00" * 12 + b"\x00\x01\x00\x00" + b"\x00" * 12 + b"\x40"
            b"\x00\x00\x00",  # unity matrix
            b"\x00" * 24,
            (1).to_bytes(4, "big"),  # next track id
        )
    )
    return (8 + len(body)).to_bytes(4, "big") + b"mvhd" + body


_FTYP: Final = (28).to_bytes(4, "big") + b"ftypisom" + (0x200).to_bytes(4, "big") + b"isomiso2mp41"
_MOOV: Final = (8 + 108).to_bytes(4, "big") + b"moov" + _mvhd(5000)
_MP4_HEAD: Final = _FTYP + _MOOV


# -- deterministic bytes ----------------------------------------------------------------


def _digest(*parts: str) -> bytes:
    return hashlib.blake2b("\x00".join(parts).encode(), digest_size=16).digest()


def media_size(
    story_id: str, ext: str, width: int, height: int, sizes: Mapping[str, int] | None = None
) -> int:
    """Return the byte size of one rendition: tens of KB, larger for bigger renditions.

    ``sizes`` (normally :attr:`MediaConfig.sizes`) overrides it per story id.
    """
    if sizes and story_id in sizes:
        return sizes[story_id]
    seed = int.from_bytes(_digest("size", story_id, ext), "big")
    base = (40_000 if ext == "mp4" else 20_000) + seed % 60_000
    # Smaller renditions are smaller files, so picking the wrong one shows in the size.
    scale = min(1.0, max(0.2, math.sqrt(max(width, 1) * max(height, 1) / (1080 * 1920))))
    head = len(_JPEG) if ext == "jpg" else len(_MP4_HEAD) + 8
    return max(head + 64, int(base * scale))


def _fill_block(story_id: str, ext: str, width: int, height: int) -> bytes:
    key = "\x00".join(("fill", story_id, ext, str(width), str(height))).encode()
    block = hashlib.shake_256(key).digest(_FILL_BLOCK)
    return block + block  # doubled so any window of <= _FILL_BLOCK bytes is one slice


def _pieces(story_id: str, ext: str, width: int, height: int, size: int) -> Iterator[bytes]:
    block = _fill_block(story_id, ext, width, height)
    offset = 0

    def fill(n: int) -> bytes:
        nonlocal offset
        start = offset % _FILL_BLOCK
        offset += n
        return block[start : start + n]

    if ext == "jpg":
        yield _JPEG[:_JFIF_END]
        remaining = size - len(_JPEG)
        while remaining > 0:
            take = min(remaining, _COM_SEGMENT_MAX)
            if 0 < remaining - take < 4:
                take = remaining - 4  # leave room for one more (empty) segment
            payload = take - 4
            yield b"\xff\xfe" + (payload + 2).to_bytes(2, "big")
            yield fill(payload)
            remaining -= take
        yield _JPEG[_JFIF_END:]
        return
    yield _MP4_HEAD
    payload = size - len(_MP4_HEAD) - 8
    yield (payload + 8).to_bytes(4, "big") + b"mdat"
    while payload > 0:
        n = min(payload, _FILL_BLOCK)
        yield fill(n)
        payload -= n


def _iter_range(
    story_id: str, ext: str, width: int, height: int, size: int, start: int, end: int, chunk: int
) -> Iterator[bytes]:
    """Yield bytes ``[start, end)`` of a rendition in pieces of at most ``chunk`` bytes."""
    position = 0
    for piece in _pieces(story_id, ext, width, height, size):
        piece_end = position + len(piece)
        if piece_end > start and position < end:
            view = piece[max(start - position, 0) : min(end, piece_end) - position]
            for i in range(0, len(view), chunk):
                yield view[i : i + chunk]
        position = piece_end
        if position >= end:
            return


def _check_ext(ext: str) -> None:
    if ext not in _EXTENSIONS:
        raise ConfigurationError(f"ext must be 'jpg' or 'mp4', got {ext!r}")


def media_bytes(
    story_id: str, ext: str, width: int, height: int, *, sizes: Mapping[str, int] | None = None
) -> bytes:
    """Return the exact bytes the CDN serves for one rendition (a valid JPEG or MP4)."""
    _check_ext(ext)
    size = media_size(story_id, ext, width, height, sizes)
    return b"".join(_pieces(story_id, ext, width, height, size))


def media_sha256(
    story_id: str, ext: str, width: int, height: int, *, sizes: Mapping[str, int] | None = None
) -> str:
    """Return the hex SHA-256 of :func:`media_bytes`, computed in chunks (fine for huge sizes)."""
    _check_ext(ext)
    size = media_size(story_id, ext, width, height, sizes)
    digest = hashlib.sha256()
    for piece in _pieces(story_id, ext, width, height, size):
        digest.update(piece)
    return digest.hexdigest()


# -- the CDN ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaRequestRecord:
    """One media request as the CDN saw it."""

    seq: int
    """Arrival number, starting at 1."""
    time: float
    """``time.monotonic()`` on arrival."""
    method: str
    """HTTP method."""
    path: str
    """The raw request path (``/media/<quoted id>.<ext>``)."""
    query: Mapping[str, str]
    """The query parameters."""
    headers: tuple[tuple[str, str], ...]
    """Every request header in order; credential values are replaced by ``<redacted>``."""
    story_id: str | None
    """The story id the path names (``None`` for an unparsable path)."""
    status: int
    """HTTP status of the answer (0: the connection was cut before it ended)."""
    fault: MediaFault | None
    """The injected fault, if any."""
    range_start: int | None
    """First byte of an honoured ``Range`` request."""

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    @property
    def has_credentials(self) -> bool:
        """Whether the request carried Authorization, Proxy-Authorization, Cookie or X-API-Key."""
        return any(k.lower() in _SECRET_HEADERS for k, _ in self.headers)


@dataclass(frozen=True, slots=True)
class _Served:
    story_id: str
    ext: str
    width: int
    height: int
    size: int


class MediaCDN:
    """The media side of one :class:`~keyapi_async.testing.Emulator` (see :func:`media_cdn`)."""

    log: list[MediaRequestRecord]
    """Every media request in arrival order."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = weakref.ref(emulator)
        self.log = []
        self._outcomes: collections.Counter[tuple[int, MediaFault | None]] = collections.Counter()
        self._seen_config: MediaConfig | None = None
        self._seen_seed: int | None = None
        self._faults: FaultPicker[MediaFault] = FaultPicker()
        self._key = b""

    # -- configuration ----------------------------------------------------------------

    def _state(self) -> tuple[Emulator, MediaConfig]:
        emulator = self._emulator()
        if emulator is None:  # pragma: no cover - the app holds the emulator alive
            raise RuntimeError("the emulator is gone")
        config = emulator.config
        media: MediaConfig = config.media
        if media is not self._seen_config or config.seed != self._seen_seed:
            if config.seed != self._seen_seed:
                self._faults.reseed(f"keyapi-emulator-media-faults:{config.seed}")
                self._key = hashlib.sha256(f"keyapi-emulator-media:{config.seed}".encode()).digest()
            if self._seen_config is None or media.fault_script != self._seen_config.fault_script:
                self._faults.restart_scripts()
            self._faults.set_rates(MediaFault, media.fault_rates)
            self._seen_config, self._seen_seed = media, config.seed
        return emulator, media

    # -- URLs -------------------------------------------------------------------------

    def _signature(self, story_id: str, ext: str, width: int, height: int, exp: int) -> str:
        message = f"{story_id}\x00{ext}\x00{width}\x00{height}\x00{exp}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def url_for(
        self,
        story_id: str,
        ext: str,
        width: int,
        height: int,
        *,
        exp: int | None = None,
        base_url: str | None = None,
    ) -> str:
        """Return a signed URL for one rendition on this emulator.

        ``exp`` (Unix seconds) defaults to now + :attr:`MediaConfig.url_ttl`;
        ``base_url`` defaults to the emulator's own.
        """
        _check_ext(ext)
        emulator, media = self._state()
        base = emulator.base_url if base_url is None else base_url
        if not base:
            raise RuntimeError("the emulator has no base_url (serve it with run_emulator)")
        if exp is None:
            exp = math.floor(time.time() + media.url_ttl)
        sig = self._signature(story_id, ext, width, height, exp)
        name = quote(story_id, safe="")
        return f"{base}/media/{name}.{ext}?w={width}&h={height}&exp={exp}&sig={sig}"

    def expected_sha256(self, url: str) -> str:
        """Return the SHA-256 the file behind a media ``url`` of this CDN must have."""
        served = self._parse_url(url)
        _, media = self._state()
        return media_sha256(
            served.story_id, served.ext, served.width, served.height, sizes=media.sizes
        )

    def _parse_url(self, url: str) -> _Served:
        parts = urlsplit(url)
        name = parts.path.rpartition("/")[2]
        story_id, _, ext = unquote(name).rpartition(".")
        query = dict(parse_qsl(parts.query))
        width, height = int(query["w"]), int(query["h"])
        _, media = self._state()
        return _Served(
            story_id, ext, width, height, media_size(story_id, ext, width, height, media.sizes)
        )

    # -- inspection -------------------------------------------------------------------

    def count(self, *, status: int | None = None, fault: MediaFault | None = None) -> int:
        """Count media requests matching every given filter (``None`` = any value)."""
        return sum(
            n
            for (s, f), n in self._outcomes.items()
            if (status is None or s == status) and (fault is None or f is fault)
        )

    def requests_for(self, story_id: str) -> list[MediaRequestRecord]:
        """Return the logged requests for one story id."""
        return [r for r in self.log if r.story_id == story_id]

    # -- the API answer's URLs ----------------------------------------------------------

    def localize_body(self, body: bytes, path: str = ENDPOINT) -> bytes:
        """Rewrite a success envelope of ``path`` so its media URLs point at this CDN.

        Stories and highlight stories: every item's renditions (in
        ``data.data.items`` or each of ``data.data.reels``); a highlight
        tray: each cover (served as the JPEG of story id ``cover-<id>``).
        """
        try:
            envelope = msgspec.json.decode(body)
            reel = envelope["data"]["data"]
        # msgspec.DecodeError and bad UTF-8 (UnicodeDecodeError) are both ValueErrors.
        except (ValueError, KeyError, TypeError):
            return body
        if not isinstance(reel, dict):
            return body
        if path == TRAY_PATH:
            changed = self._localize_covers(reel.get("items"))
        else:
            reels = reel.get("reels")
            found = [reel] + (list(reels.values()) if isinstance(reels, dict) else [])
            # A hostile answer's items may be anything: only lists of items are localised.
            found = [r for r in found if isinstance(r, dict) and isinstance(r.get("items"), list)]
            for each in found:
                localize_media(each, self.url_for)
            changed = bool(found)
        return msgspec.json.encode(envelope) if changed else body

    def _localize_covers(self, entries: object) -> bool:
        if not isinstance(entries, list):
            return False
        changed = False
        for entry in entries:
            cover = entry.get("cover_media") if isinstance(entry, dict) else None
            image = cover.get("cropped_image_version") if isinstance(cover, dict) else None
            hid = entry.get("id") if isinstance(entry, dict) else None
            if isinstance(image, dict) and isinstance(hid, str) and hid:
                width, height = image.get("width"), image.get("height")
                if isinstance(width, int) and isinstance(height, int):
                    name = "cover-" + hid.removeprefix("highlight:")
                    image["url"] = self.url_for(name, "jpg", width, height)
                    changed = True
        return changed

    # -- serving ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve ``GET /media/<story_id>.<ext>`` (the aiohttp handler)."""
        arrived = time.monotonic()
        emulator, media = self._state()
        headers = tuple(
            (k, _REDACTED if k.lower() in _SECRET_HEADERS else v)
            for k, v in request.headers.items()
        )
        served, status, reason = self._validate(request, media)
        fault: MediaFault | None = None
        range_start: int | None = None
        response: web.StreamResponse
        if served is None:
            response = web.Response(status=status, text=reason)
        else:
            fault = self._faults.pick(media.fault_script.get(served.story_id), served.story_id)
            response, status, range_start = await self._answer(
                request, emulator, media, served, fault
            )
        record = MediaRequestRecord(
            seq=len(self.log) + 1,
            time=arrived,
            method=request.method,
            path=request.raw_path.partition("?")[0],
            query=types.MappingProxyType(dict(request.query)),
            headers=headers,
            story_id=None if served is None else served.story_id,
            status=status,
            fault=fault,
            range_start=range_start,
        )
        self.log.append(record)
        self._outcomes[status, fault] += 1
        return response

    def _validate(
        self, request: web.Request, media: MediaConfig
    ) -> tuple[_Served | None, int, str]:
        story_id, _, ext = request.match_info["name"].rpartition(".")
        if not story_id or ext not in _EXTENSIONS:
            return None, 404, "Not Found"
        query = request.query
        try:
            width, height, exp = int(query["w"]), int(query["h"]), int(query["exp"])
            sig = query["sig"]
        except (KeyError, ValueError):
            return None, 403, "URL signature missing"
        expected = self._signature(story_id, ext, width, height, exp)
        if not hmac.compare_digest(sig, expected):
            return None, 403, "URL signature mismatch"
        if time.time() >= exp:
            return None, 403, "URL signature expired"
        size = media_size(story_id, ext, width, height, media.sizes)
        return _Served(story_id, ext, width, height, size), 200, ""

    async def _answer(
        self,
        request: web.Request,
        emulator: Emulator,
        media: MediaConfig,
        served: _Served,
        fault: MediaFault | None,
    ) -> tuple[web.StreamResponse, int, int | None]:
        if fault is MediaFault.EXPIRED:
            return web.Response(status=403, text="URL signature expired"), 403, None
        if fault is MediaFault.GONE:
            return web.Response(status=410, text="Gone"), 410, None
        if fault is MediaFault.SERVER_ERROR:
            return web.Response(status=503, text="Service Unavailable"), 503, None
        if fault in (MediaFault.REDIRECT, MediaFault.REDIRECT_OFFSITE):
            base = media.offsite_base if fault is MediaFault.REDIRECT_OFFSITE else None
            location = self.url_for(
                served.story_id,
                served.ext,
                served.width,
                served.height,
                base_url=None if base is None else base.rstrip("/"),
            )
            return web.Response(status=302, headers={hdrs.LOCATION: location}), 302, None

        start, end, status = 0, served.size, 200
        headers = {hdrs.CONTENT_TYPE: _EXTENSIONS[served.ext]}
        if media.ranges:
            headers[hdrs.ACCEPT_RANGES] = "bytes"
            wanted = _parse_range(request.headers.get(hdrs.RANGE))
            if wanted is not None:
                first, last = wanted
                if first >= served.size:
                    headers[hdrs.CONTENT_RANGE] = f"bytes */{served.size}"
                    return web.Response(status=416, headers=headers), 416, first
                start, end, status = first, min(served.size, (last or served.size - 1) + 1), 206
                headers[hdrs.CONTENT_RANGE] = f"bytes {start}-{end - 1}/{served.size}"
        response = web.StreamResponse(status=status, headers=headers)
        span = end - start
        response.content_length = span + (
            max(1, span // 2) if fault is MediaFault.WRONG_LENGTH else 0
        )
        await response.prepare(request)

        cut = span
        if fault is MediaFault.TRUNCATED:
            cut = span // 2
        elif fault is MediaFault.RESET:
            cut = span // 4
        slow = fault is MediaFault.SLOW
        chunk = media.slow_chunk if slow else media.chunk_size
        pieces = _iter_range(
            served.story_id, served.ext, served.width, served.height, served.size,
            start, start + cut, chunk,
        )  # fmt: skip
        await _write_all(response, pieces, media.slow_delay if slow else 0.0)
        if fault in (MediaFault.TRUNCATED, MediaFault.WRONG_LENGTH, MediaFault.RESET):
            transport = request.transport
            if transport is not None:
                if fault is MediaFault.RESET:
                    transport.abort()
                else:
                    transport.close()  # flushes what was written, then FIN
            return response, 0, start if status == 206 else None
        return response, status, start if status == 206 else None


async def _write_all(response: web.StreamResponse, pieces: Iterator[bytes], delay: float) -> None:
    for piece in pieces:
        await response.write(piece)
        if delay:
            await asyncio.sleep(delay)


def _parse_range(value: str | None) -> tuple[int, int | None] | None:
    """Parse ``bytes=N-`` or ``bytes=N-M``; anything else is ignored (whole file)."""
    if not value or not value.startswith("bytes="):
        return None
    first, sep, last = value[6:].strip().partition("-")
    if not sep or "," in last or not first.isdigit() or (last and not last.isdigit()):
        return None
    start, stop = int(first), int(last) if last else None
    if stop is not None and stop < start:
        return None
    return start, stop


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_CDNS: weakref.WeakKeyDictionary[Emulator, MediaCDN] = weakref.WeakKeyDictionary()


def media_cdn(emulator: Emulator) -> MediaCDN:
    """Return the media CDN of ``emulator`` (created on first use, one per emulator)."""
    cdn = _CDNS.get(emulator)
    if cdn is None:
        cdn = _CDNS[emulator] = MediaCDN(emulator)
    return cdn


def install_media(app: web.Application, emulator: Emulator) -> None:
    """Serve ``emulator``'s media route on ``app`` and sign the API answers' media URLs."""
    cdn = media_cdn(emulator)
    app.router.add_get(MEDIA_ROUTE, cdn.handle, allow_head=False)

    @web.middleware
    async def localize(request: web.Request, handler: _Handler) -> web.StreamResponse:
        response = await handler(request)
        if (
            emulator.config.media.enabled
            and emulator.base_url
            and request.path in ENDPOINTS
            and response.status == 200
            and isinstance(response, web.Response)
            and not response.prepared
            and isinstance(response.body, bytes)
        ):
            response.body = cdn.localize_body(response.body, request.path)
        return response

    app.middlewares.append(localize)
