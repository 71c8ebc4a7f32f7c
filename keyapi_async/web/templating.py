"""The Jinja2 environment of the gallery and its filters (pure functions, tested directly).

Autoescape is on for every template, whatever its name, and undefined
names are errors: an API text (username, caption, sticker URL, song title)
always reaches a page as escaped text. :func:`web_link` is the one place a
URL from the API may become a link: only ``http`` and ``https`` ones do
(``javascript:``, ``data:`` and the rest stay text).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final
from urllib.parse import quote, urlsplit

import jinja2

__all__ = [
    "duration_text",
    "human_bytes",
    "make_environment",
    "path_segment",
    "utc_day",
    "utc_time",
    "web_link",
]

_UNITS: Final = ("B", "KB", "MB", "GB", "TB")


def utc_time(at: float | None) -> str:
    """``2026-03-10 02:13Z`` for Unix seconds (``-`` when unknown)."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%MZ")


def utc_day(at: float | None) -> str:
    """The UTC date of Unix seconds, ``2026-03-10`` (``unknown date`` when unknown)."""
    if at is None:
        return "unknown date"
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d")


def duration_text(seconds: float | None) -> str:
    """``0:07`` for a video's length (empty when unknown)."""
    if seconds is None or seconds < 0:
        return ""
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def human_bytes(size: float) -> str:
    """``1.5 MB`` for 1,500,000 bytes (decimal units)."""
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1000 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def path_segment(text: str) -> str:
    """``text`` percent-encoded as one URL path segment (``/`` and ``?`` included)."""
    return quote(text, safe="")


def web_link(url: object) -> str | None:
    """``url`` when it is an absolute http(s) URL with a host, else ``None`` (pure)."""
    if not isinstance(url, str) or any(ord(c) < 0x21 for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def make_environment() -> jinja2.Environment:
    """The gallery's Jinja2 environment: package templates, autoescape on, strict undefined."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("keyapi_async.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        utc_time=utc_time,
        utc_day=utc_day,
        duration=duration_text,
        human_bytes=human_bytes,
        web_link=web_link,
        segment=path_segment,
    )
    return env
