"""The routes: pages rendered from templates, media files, metrics and the probes.

Every handler validates its query parameters (a bad one is a 400 naming
it), runs its archive query in a worker thread (the event loop does no
SQLite work) and renders a template; no handler writes anything.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal, cast

from aiohttp import web

from ..archive import ArchiveError
from .files import resolve_media
from .health import judge_ready
from .metrics import CONTENT_TYPE, render_metrics
from .queries import MediaKind, StoryRow
from .state import CONFIG, ENV, HEARTBEAT, READER, REGISTRY
from .templating import utc_day

__all__ = ["add_routes"]

_SORTS: Final = ("name", "stories", "latest", "polled")
_KINDS: Final = ("all", "image", "video")
_PAGE_HEADERS: Final = {"Cache-Control": "no-store"}


def _bad(name: str, value: str, expected: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f"bad {name} parameter {value!r}: expected {expected}\n")


def _choice(request: web.Request, name: str, choices: tuple[str, ...]) -> str:
    value = request.query.get(name, choices[0]) or choices[0]
    if value not in choices:
        raise _bad(name, value, " or ".join(choices))
    return value


def _date(request: web.Request, name: str) -> date | None:
    value = request.query.get(name, "")
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _bad(name, value, "a date YYYY-MM-DD") from None


def _midnight(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def _render(
    request: web.Request, template: str, status: int = 200, **context: object
) -> web.Response:
    env = request.app[ENV]
    config = request.app[CONFIG]
    text = env.get_template(template).render(
        watching=config.live.client is not None, request_path=request.path, **context
    )
    return web.Response(
        text=text, content_type="text/html", charset="utf-8", status=status, headers=_PAGE_HEADERS
    )


def _by_day(stories: list[StoryRow]) -> list[tuple[str, list[StoryRow]]]:
    return [
        (day, list(group))
        for day, group in itertools.groupby(stories, lambda s: utc_day(s.taken_at))
    ]


async def accounts_page(request: web.Request) -> web.Response:
    """``/``: every account, sortable, searchable by username."""
    sort = cast(Literal["name", "stories", "latest", "polled"], _choice(request, "sort", _SORTS))
    search = request.query.get("q", "").strip()
    reader = request.app[READER]
    accounts = await asyncio.to_thread(reader.accounts, search=search, sort=sort)
    latest = await asyncio.to_thread(reader.latest_seq)
    return _render(request, "accounts.html", accounts=accounts, sort=sort, q=search, latest=latest)


async def timeline_page(request: web.Request) -> web.Response:
    """``/a/{account}``: one account's stories by day, newest first, filtered, in pages."""
    account = request.match_info["account"]
    kind = cast(MediaKind, _choice(request, "kind", _KINDS))
    start, end = _date(request, "from"), _date(request, "to")
    if start is not None and end is not None and end < start:
        raise _bad("to", end.isoformat(), f"a date on or after from={start.isoformat()}")
    cursor = request.query.get("after") or None
    reader = request.app[READER]
    try:
        page = await asyncio.to_thread(
            reader.timeline,
            account,
            kind=kind,
            since=None if start is None else _midnight(start),
            until=None if end is None else _midnight(end + timedelta(days=1)),
            cursor=cursor,
            limit=request.app[CONFIG].page_size,
        )
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"bad after parameter: {exc}\n") from None
    if not page.stories and not await asyncio.to_thread(reader.has_account, account):
        raise web.HTTPNotFound(text="no such account in the archive\n")
    filters = {
        "kind": kind,
        "from": "" if start is None else start.isoformat(),
        "to": "" if end is None else end.isoformat(),
    }
    latest = await asyncio.to_thread(reader.latest_seq)
    albums = await asyncio.to_thread(reader.highlights, account) if cursor is None else []
    return _render(
        request,
        "timeline.html",
        albums=albums,
        account=account,
        days=_by_day(page.stories),
        count=len(page.stories),
        next_cursor=page.next_cursor,
        first_page=cursor is None,
        filters=filters,
        latest=latest,
    )


async def story_page(request: web.Request) -> web.Response:
    """``/s/{story_id}``: the player."""
    story_id = request.match_info["story_id"]
    reader = request.app[READER]
    details = await asyncio.to_thread(reader.story, story_id)
    if details is None:
        raise web.HTTPNotFound(text="no such story in the archive\n")
    latest = await asyncio.to_thread(reader.latest_seq)
    return _render(request, "story.html", d=details, s=details.story, latest=latest)


async def album_page(request: web.Request) -> web.Response:
    """``/h/{highlight_id}``: one highlight as an album, in the highlight's order."""
    reader = request.app[READER]
    found = await asyncio.to_thread(reader.highlight, request.match_info["highlight_id"])
    if found is None:
        raise web.HTTPNotFound(text="no such highlight in the archive\n")
    latest = await asyncio.to_thread(reader.latest_seq)
    album, stories = found
    return _render(request, "album.html", album=album, stories=stories, latest=latest)


async def new_page(request: web.Request) -> web.Response:
    """``/new?after=N``: stories recorded after the browser's last visit."""
    text = request.query.get("after", "0") or "0"
    if not text.isdigit():
        raise _bad("after", text, "a story number >= 0")
    reader = request.app[READER]
    stories = await asyncio.to_thread(reader.new_since, int(text))
    latest = await asyncio.to_thread(reader.latest_seq)
    groups = [
        (acc, list(g))
        for acc, g in itertools.groupby(
            sorted(stories, key=lambda s: (s.account, -s.seq)), lambda s: s.account
        )
    ]
    return _render(
        request, "new.html", groups=groups, count=len(stories), after=int(text), latest=latest
    )


async def status_page(request: web.Request) -> web.Response:
    """``/status``: schedule, credits, errors, media outcomes (and a watch's live counters)."""
    reader = request.app[READER]
    report = await asyncio.to_thread(reader.status)
    live = request.app[CONFIG].live
    client = None if live.client is None else live.client()
    watch = None if live.watch is None else live.watch()
    latest = await asyncio.to_thread(reader.latest_seq)
    return _render(request, "status.html", r=report, client=client, watch=watch, latest=latest)


async def media_file(request: web.Request) -> web.StreamResponse:
    """``/media/{story_id}``: the story's saved file, if it is safely inside DIR (Range works)."""
    story_id = request.match_info["story_id"]
    recorded = await asyncio.to_thread(request.app[READER].media_path, story_id)
    if recorded is None:
        raise web.HTTPNotFound(text="no saved media for this story\n")
    target = await asyncio.to_thread(resolve_media, request.app[CONFIG].media_root, recorded)
    if target is None:
        raise web.HTTPNotFound(text="no saved media for this story\n")
    return web.FileResponse(target, headers={"Cache-Control": "private, max-age=86400"})


async def metrics(request: web.Request) -> web.Response:
    """``/metrics``: Prometheus text format."""
    body = await asyncio.to_thread(render_metrics, request.app[REGISTRY])
    return web.Response(
        body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
    )


async def healthz(request: web.Request) -> web.Response:
    """``/healthz``: 200 while the event loop beats, 503 once it stalled."""
    beat = request.app[HEARTBEAT]
    healthy = beat.healthy()
    return web.json_response(
        {"status": "ok" if healthy else "stalled", "loop_lag_seconds": round(beat.lag, 3)},
        status=200 if healthy else 503,
    )


async def readyz(request: web.Request) -> web.Response:
    """``/readyz``: 200 when the archive answers and (for a watch) the API answered recently."""
    app = request.app
    error = None
    try:
        await asyncio.to_thread(app[READER].latest_seq)
    except ArchiveError as exc:
        error = str(exc)
    beat, live = app[HEARTBEAT], app[CONFIG].live
    verdict = judge_ready(
        archive_ok=error is None,
        archive_error=error,
        watching=live.client is not None,
        now=beat.clock(),
        started=beat.started,
        last_answer=beat.last_answer,
        sent=0 if live.client is None else live.client().requests_sent,
        reachable_within=app[CONFIG].reachable_within,
    )
    return web.json_response(
        {"status": "ready" if verdict.ready else "not ready", "reason": verdict.reason},
        status=200 if verdict.ready else 503,
    )


def add_routes(app: web.Application) -> None:
    """Register every route of the gallery on ``app``."""
    app.router.add_get("/", accounts_page)
    app.router.add_get("/a/{account}", timeline_page)
    app.router.add_get("/s/{story_id}", story_page)
    app.router.add_get("/h/{highlight_id}", album_page)
    app.router.add_get("/new", new_page)
    app.router.add_get("/status", status_page)
    app.router.add_get("/media/{story_id}", media_file)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
