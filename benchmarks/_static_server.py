"""A minimal, fast HTTP/1.1 server for throughput runs: pre-built answers, no per-request work.

``python -m benchmarks._static_server --api-key KEY`` listens on a free loopback
port, prints ``KEYAPI_BASE_URL=http://127.0.0.1:PORT`` and answers every
``GET /v1/instagram/fetch_user_stories?...`` carrying ``Authorization: Bearer
KEY`` with the seed example body (tests/data/seed_example.json) as a complete,
pre-serialised keep-alive response; anything else gets a pre-built 401/404.

With ``--realistic`` it serves :func:`realistic_bodies` instead: 20 emulator
reels of 0 to 3 items (about 11 KB on average), the one for a request chosen by
a CRC of its query string, so two clients asking for the same usernames get
the same bodies whatever the order of their requests.

It is a bare :class:`asyncio.Protocol` rather than the emulator (or
aiohttp.web) so that on a 2-core machine the server process is never the
bottleneck of a client throughput comparison: one response costs a buffer scan
and one ``transport.write``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import zlib
from pathlib import Path

from benchmarks._common import ENDPOINT, SEED_PATH

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n".encode()
        + b"Content-Type: "
        + content_type
        + b"\r\n"
        + f"Content-Length: {len(body)}\r\n".encode()
        + b"Connection: keep-alive\r\n\r\n"
    )
    return head + body


#: How many bodies of each item count :func:`realistic_bodies` picks; ``None``
#: stands for ``"data": null`` (an account without stories, the API's other way
#: of saying so). About the emulator's share of empty reels (20%).
REALISTIC_MIX: dict[int | None, int] = {None: 2, 0: 2, 1: 7, 2: 6, 3: 3}


def realistic_bodies() -> list[bytes]:
    """Whole success envelopes of 0-3 items, built from the emulator's synthetic reels.

    Deterministic (the emulator's data is a pure function of the target).
    Per item count the first reels in key order are taken, except for 3
    items, where the smallest are, so that no body passes about 20 KB:
    ``data: null`` is 78 bytes, 0 items 1.3 KB, 1 item 7-12 KB, 2 items
    16-19 KB, 3 items 19-20 KB; 11.8 KB on average.
    """
    from keyapi_async.testing._data import build_reel, encoded_reel

    found: dict[int | None, list[bytes]] = {count: [] for count in REALISTIC_MIX}
    for i in range(2_000):
        key = f"username:realistic_{i:05d}"
        data = build_reel(key)["data"]
        count = None if data is None else data["count"]
        if count in found:
            found[count].append(encoded_reel(key))
    bodies: list[bytes] = []
    for count, wanted in REALISTIC_MIX.items():
        candidates = found[count]
        if count == 3:
            candidates = sorted(candidates, key=len)
        for n, reel in enumerate(candidates[:wanted]):
            request_id = f"bench{count}{n:03d}".encode()
            bodies.append(
                b'{"code":0,"message":"success","data":'
                + reel
                + b',"requestId":"'
                + request_id
                + b'"}'
            )
    return bodies


class _Answers:
    __slots__ = ("auth", "ok", "oks", "path", "unauthorized", "unknown")

    def __init__(self, key: str, bodies: list[bytes]) -> None:
        self.path = f"GET {ENDPOINT}?".encode()
        self.auth = f"\r\nauthorization: bearer {key}\r\n".lower().encode()
        self.oks = [_response("200 OK", body) for body in bodies]
        self.ok = self.oks[0]
        self.unauthorized = _response(
            "401 Unauthorized", b'{"code":401,"data":null,"message":"apiKey is invalid"}'
        )
        self.unknown = _response("404 Not Found", b"not found", b"text/plain")


class _Protocol(asyncio.Protocol):
    __slots__ = ("_answers", "_buffer", "_transport")

    def __init__(self, answers: _Answers) -> None:
        self._answers = answers
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        answers = self._answers
        out: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(_HEAD_END, start)
            if end < 0:
                break
            head = buffer[start : end + 2]
            start = end + 4
            if not head.startswith(answers.path):
                out.append(answers.unknown)
            elif answers.auth not in head.lower():
                out.append(answers.unauthorized)
            elif len(answers.oks) == 1:
                out.append(answers.ok)
            else:
                query_end = head.find(b" ", len(answers.path))
                query = head[len(answers.path) : query_end]
                out.append(answers.oks[zlib.crc32(query) % len(answers.oks)])
        self._buffer = buffer[start:]
        if out and self._transport is not None:
            self._transport.write(b"".join(out) if len(out) > 1 else out[0])
        if len(self._buffer) > _MAX_HEAD and self._transport is not None:
            self._transport.close()


async def _serve(key: str, bodies: list[bytes]) -> None:
    answers = _Answers(key, bodies)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Protocol(answers), "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    sys.stdout.write(f"KEYAPI_BASE_URL=http://127.0.0.1:{port}\n")
    sys.stdout.flush()
    async with server:
        await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._static_server")
    parser.add_argument("--api-key", required=True, help="the one accepted Bearer token")
    parser.add_argument("--body", type=Path, default=SEED_PATH, help="JSON body to serve")
    parser.add_argument(
        "--realistic",
        action="store_true",
        help="serve realistic_bodies() (0-3 items, chosen per query) instead of --body",
    )
    args = parser.parse_args()
    bodies = realistic_bodies() if args.realistic else [args.body.read_bytes()]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.api_key, bodies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
