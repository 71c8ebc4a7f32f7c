"""The gallery in a real browser: Debian's headless Chromium driven by Playwright (issue 20).

One archive, one gallery (on 127.0.0.1, in a thread with its own event loop)
and one browser for the whole module; each test opens its own page. The
browser is ``/usr/bin/chromium`` (``.ci/run`` installs Debian's package):
Playwright never downloads one. Without Chromium or Playwright the tests
skip, saying which is missing.

``KEYAPI_UPDATE_SCREENSHOT=1`` makes the screenshot test write
``docs/img/gallery.png`` (the picture in the README).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keyapi_async.archive import StoryArchive
from keyapi_async.models import Reel
from keyapi_async.web import GalleryConfig, running_gallery
from tests.test_web import (
    DAY,
    HOSTILE,
    JS_URL,
    T0,
    Story,
    _item,
    timeline_stories,
    video_bytes,
    write_archive,
)

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).parent.parent / "docs" / "img" / "gallery.png"

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need playwright (pip install -e '.[dev]')"
)
pytest.importorskip("av", reason="the browser tests make their video with PyAV (the dev extra)")
if not CHROMIUM.exists():
    pytest.skip(
        f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)",
        allow_module_level=True,
    )

ALICE = timeline_stories("alice", 24, per_day=8)
EVIL = Story(
    "evil",
    "mallory",
    T0 + 5 * DAY,
    caption=HOSTILE,
    mentions=(HOSTILE, "friend"),
    music=("Artist", HOSTILE),
    username=HOSTILE,
    links=(JS_URL, "https://example.org/ok"),
)
OTHERS = [
    *timeline_stories("bob", 5),
    EVIL,
    Story("c1", "carol", T0 + DAY, highlights=(("17901", "Trips"),)),
    Story("c2", "carol", T0 + DAY + 60, highlights=(("17901", "Trips"),)),
]


def run_in_thread(make: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine to its end in a thread (Playwright's sync API owns this thread's loop)."""
    failed: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(make())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if failed:
        raise failed[0]


def newest_first(stories: list[Story]) -> list[str]:
    return [s.id for s in sorted(stories, key=lambda s: -(s.taken_at or 0))]


class ServedGallery:
    """A gallery on 127.0.0.1 in a thread of its own (sync Playwright owns the main one)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = ""
        self.responses: list[tuple[str, int, str | None]] = []
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gallery", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        config = GalleryConfig(archive=self.root / "archive.sqlite3", media_root=self.root)
        async with running_gallery(config, "127.0.0.1", 0) as url:
            self.url = url
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(30), "the gallery did not start"
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedGallery]:
    root = tmp_path_factory.mktemp("browser") / "dl"
    clip = video_bytes()
    run_in_thread(lambda: write_archive(root, [*ALICE, *OTHERS], video=clip))
    gallery = ServedGallery(root)
    gallery.start()
    yield gallery
    gallery.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--autoplay-policy=no-user-gesture-required"],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, served: ServedGallery) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    tab = context.new_page()
    dialogs: list[str] = []
    tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    tab.on(
        "response",
        lambda r: served.responses.append((r.url, r.status, r.request.headers.get("range"))),
    )
    tab.dialogs = dialogs
    yield tab
    context.close()
    assert not dialogs, f"a dialog opened: {dialogs}"


def tile_ids(page: Any) -> list[str]:
    return [
        str(x) for x in page.eval_on_selector_all(".tile", "els => els.map(e => e.dataset.story)")
    ]


def test_timeline_player_keys_and_taps(page: Any, served: ServedGallery) -> None:
    expected = newest_first(ALICE)
    page.goto(served.url + "/a/alice")
    assert tile_ids(page) == expected
    assert page.locator(".day h2").all_inner_texts() == sorted(
        {datetime.fromtimestamp(s.taken_at or 0, tz=UTC).date().isoformat() for s in ALICE},
        reverse=True,
    )
    page.locator(f'.tile[data-story="{expected[0]}"]').click()
    page.wait_for_url(f"**/s/{expected[0]}")
    page.keyboard.press("ArrowRight")
    page.wait_for_url(f"**/s/{expected[1]}")
    page.keyboard.press("ArrowRight")
    page.wait_for_url(f"**/s/{expected[2]}")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(f"**/s/{expected[1]}")
    page.locator("#next").click()  # a tap on the right of the stage
    page.wait_for_url(f"**/s/{expected[2]}")
    page.locator("#prev").click()
    page.wait_for_url(f"**/s/{expected[1]}")
    assert "alice" in page.locator(".about h1").inner_text()
    page.keyboard.press("Escape")
    page.wait_for_url("**/a/alice")


def test_a_video_plays_pauses_and_seeks_with_range(page: Any, served: ServedGallery) -> None:
    video = next(s for s in ALICE if s.video)
    page.goto(served.url + f"/s/{video.id}")
    page.wait_for_function(
        "() => document.getElementById('media').currentTime > 0.3", timeout=15_000
    )
    page.keyboard.press(" ")
    page.wait_for_function("() => document.getElementById('media').paused")
    paused_at = page.evaluate("() => document.getElementById('media').currentTime")
    page.evaluate(
        """() => new Promise(done => {
             const v = document.getElementById('media');
             v.addEventListener('seeked', done, {once: true});
             v.currentTime = 2.5;
           })"""
    )
    assert page.evaluate("() => document.getElementById('media').currentTime") >= 2.4 > paused_at
    page.keyboard.press(" ")
    page.wait_for_function("() => !document.getElementById('media').paused")
    ranged = [r for r in served.responses if f"/media/{video.id}" in r[0] and r[1] == 206]
    assert ranged and all(r[2] and r[2].startswith("bytes=") for r in ranged)


def test_filters_change_what_is_shown(page: Any, served: ServedGallery) -> None:
    page.goto(served.url + "/a/alice")
    page.select_option("#kind", "video")  # applies at once (gallery.js)
    page.wait_for_url("**kind=video**")
    assert tile_ids(page) == newest_first([s for s in ALICE if s.video])
    day = datetime.fromtimestamp(T0 + DAY, tz=UTC).date().isoformat()
    page.select_option("#kind", "all")
    page.wait_for_url("**kind=all**")
    page.fill("#from", day)
    page.fill("#to", day)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(f"**from={day}**")
    assert tile_ids(page) == newest_first(
        [s for s in ALICE if (s.taken_at or 0) // DAY == (T0 + DAY) // DAY]
    )


def test_a_hostile_story_renders_as_text_and_runs_nothing(page: Any, served: ServedGallery) -> None:
    for path in ("/", "/a/mallory", "/s/evil", "/new?after=0"):
        page.goto(served.url + path)
        assert page.evaluate("() => typeof window.__pwned") == "undefined", path
    page.goto(served.url + "/s/evil")
    assert page.locator(".caption").inner_text() == HOSTILE
    assert HOSTILE in page.locator(".about h1").inner_text()
    assert HOSTILE in page.locator(".music").inner_text()
    assert f"@{HOSTILE}" in page.locator(".mentions").inner_text()
    assert page.locator(".links .inert").inner_text() == JS_URL
    hrefs = page.eval_on_selector_all("a", "els => els.map(e => e.getAttribute('href'))")
    assert not [h for h in hrefs if h and h.lower().startswith("javascript")]
    assert "https://example.org/ok" in hrefs
    page.locator(".links .inert").click()  # text, not a link: nothing happens
    assert page.evaluate("() => typeof window.__pwned") == "undefined"
    assert page.evaluate("() => document.querySelectorAll('script').length") == 1


def test_highlight_album(page: Any, served: ServedGallery) -> None:
    page.goto(served.url + "/a/carol")
    page.locator('.album[data-highlight="17901"]').click()
    page.wait_for_url("**/h/17901")
    assert tile_ids(page) == ["c1", "c2"]


def test_screenshot_of_the_gallery(page: Any, served: ServedGallery, tmp_path: Path) -> None:
    page.goto(served.url + "/a/alice")
    page.wait_for_function(
        "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
    )
    shot = page.screenshot(full_page=False)
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 10_000
    if os.environ.get("KEYAPI_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(shot)


def test_new_since_the_last_visit(browser: Any, served: ServedGallery) -> None:
    context = browser.new_context()
    try:
        first = context.new_page()
        first.goto(served.url + "/")
        assert not first.locator("#new-link.has-new").count()
        first.close()

        async def more() -> None:
            async with StoryArchive.open(served.root / "archive.sqlite3", keep_raw=True) as archive:
                items = tuple(_item(Story(f"z{n}", "zed", T0 + 9 * DAY + n)) for n in range(2))
                await archive.record_reel("zed", Reel(items=items), fetched_at=T0 + 9 * DAY)

        run_in_thread(more)
        second = context.new_page()  # a new visit: same localStorage, new session
        second.goto(served.url + "/")
        second.locator("#new-link.has-new").click()
        second.wait_for_url("**/new?after=**")
        assert sorted(tile_ids(second)) == ["z0", "z1"]
        second.locator("#mark-seen").click()
        second.wait_for_load_state()
        assert tile_ids(second) == []
    finally:
        context.close()


def test_autoplay_moves_on_when_a_video_ends(page: Any, served: ServedGallery) -> None:
    order = newest_first(ALICE)
    video = next(s for s in order if next(a for a in ALICE if a.id == s).video)
    page.goto(served.url + f"/s/{video}")
    page.check("#autoplay")  # remembered in localStorage
    page.wait_for_function("() => document.getElementById('media').readyState >= 1")
    page.evaluate("() => { document.getElementById('media').currentTime = 2.8; }")
    page.wait_for_url(f"**/s/{order[order.index(video) + 1]}", timeout=15_000)
    assert page.is_checked("#autoplay")
