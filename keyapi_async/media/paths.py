"""Pure helpers of the media downloader: host allowlist, file names, name templates.

Nothing here does I/O or imports aiohttp, so every rule can be unit-tested
directly and reasoned about on its own.

A bad host entry or template is a bad argument: :class:`~keyapi_async.ConfigurationError`
(also a ``ValueError``, docs/errors.md#bad-arguments). A name that cannot be
made for one item (:meth:`NameTemplate.render`, :func:`inside`) is a plain
``ValueError``: the downloader reports that item ``rejected`` and goes on.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from .._errors import ConfigurationError

__all__ = [
    "DEFAULT_MEDIA_HOSTS",
    "DEFAULT_NAME_TEMPLATE",
    "HIGHLIGHT_NAME_TEMPLATE",
    "MEDIA_HOSTS_ENV",
    "TEMPLATE_FIELDS",
    "HostAllowlist",
    "NameTemplate",
    "inside",
    "media_host_entries",
    "media_hosts_from_env",
    "parse_host_entry",
    "sanitize_component",
    "template_fields",
]

DEFAULT_MEDIA_HOSTS: Final = ("*.cdninstagram.com", "*.fbcdn.net")
"""Instagram's CDN hosts: the only ones fetched (over https) unless the allowlist is extended."""

MEDIA_HOSTS_ENV: Final = "KEYAPI_MEDIA_HOSTS"
"""Environment variable with extra media hosts, comma separated (``host`` or ``host:port``)."""

DEFAULT_NAME_TEMPLATE: Final = "{username}/{taken_at:%Y%m%d_%H%M%S}_{story_id}.{ext}"
"""The default layout: ``DIR/<username>/<YYYYMMDD_HHMMSS>_<story_id>.<ext>`` (UTC)."""

HIGHLIGHT_NAME_TEMPLATE: Final = (
    "{username}/highlights/{highlight_title}/{taken_at:%Y%m%d_%H%M%S}_{story_id}.{ext}"
)
"""The default layout of a highlight's items: one folder per (sanitised) highlight title."""

TEMPLATE_FIELDS: Final = frozenset(
    {
        "username",
        "user_id",
        "story_id",
        "code",
        "taken_at",
        "date",
        "time",
        "timestamp",
        "ext",
        "media_type",
        "width",
        "height",
        "target",
        "highlight_id",
        "highlight_title",
    }
)
"""Names a ``name_template`` may use (see docs/media.md)."""

# A component must leave room for the ".part" suffix under the common 255-byte limit.
_MAX_COMPONENT_BYTES: Final = 200
_WINDOWS_RESERVED: Final = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in "123456789¹²³"}
    | {f"LPT{i}" for i in "123456789¹²³"}
)
_BAD_CHARS: Final = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_HOST_LABEL: Final = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


# -- allowlist --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _HostRule:
    host: str  # lower case; for wildcards the suffix without "*."
    port: int | None
    wildcard: bool
    explicit: bool  # listed by the user (may be fetched over plain http)

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.split(".")
    return all(_HOST_LABEL.match(label) for label in labels)


def parse_host_entry(entry: str) -> tuple[str, int | None]:
    """Parse one allowlist entry (``host``, ``host:port``, ``*.domain``, ``[v6]:port``).

    Returns ``(host, port)`` with the host lower-cased (a wildcard keeps its
    ``*.`` prefix). Raises :class:`~keyapi_async.ConfigurationError` for anything else, e.g. a URL.
    """
    text = entry.strip().lower()
    if not text or "/" in text or "@" in text:
        raise ConfigurationError(f"not a media host entry (want host or host:port): {entry!r}")
    port: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigurationError(f"not a media host entry: {entry!r}")
        port_text = rest[1:] if rest else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigurationError(f"bad port in media host entry: {entry!r}")
        port = int(port_text)
    host = host.rstrip(".")
    bare = host[2:] if host.startswith("*.") else host
    if not bare or "*" in bare or not _valid_host(bare):
        raise ConfigurationError(f"not a media host entry: {entry!r}")
    return host, port


def media_hosts_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Return the entries of ``KEYAPI_MEDIA_HOSTS`` (comma separated), validated.

    Empty items are ignored. ``environ`` defaults to :data:`os.environ`.

    Raises:
        ConfigurationError: An invalid entry; the message names the variable and the entry.

    """
    raw = (os.environ if environ is None else environ).get(MEDIA_HOSTS_ENV, "")
    return media_host_entries(raw, source=MEDIA_HOSTS_ENV)


def media_host_entries(text: str, *, source: str) -> tuple[str, ...]:
    """The comma-separated allowlist entries of ``text``, validated; empty items ignored.

    Raises:
        ConfigurationError: An invalid entry; the message names ``source`` (the
            variable or option ``text`` came from) and the entry.

    """
    entries = tuple(item.strip() for item in text.split(",") if item.strip())
    for item in entries:
        try:
            parse_host_entry(item)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{source}: {exc}") from None
    return entries


class HostAllowlist:
    """Which media URLs may be fetched: https on the default CDN hosts plus listed hosts.

    A listed entry without a port matches any port. Plain ``http`` is allowed
    only for hosts listed explicitly (not wildcards, not the defaults).
    """

    __slots__ = ("_rules",)

    def __init__(self, extra: Iterable[str] = (), *, defaults: Iterable[str] = DEFAULT_MEDIA_HOSTS):
        rules = []
        for entries, explicit in ((defaults, False), (extra, True)):
            if isinstance(entries, str):
                raise TypeError("host entries must be a collection of strings, not one string")
            for entry in entries:
                host, port = parse_host_entry(entry)
                wildcard = host.startswith("*.")
                rules.append(_HostRule(host[2:] if wildcard else host, port, wildcard, explicit))
        self._rules = tuple(rules)

    def check(self, url: str) -> str | None:
        """Return ``None`` if ``url`` may be fetched, else the reason it may not."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").rstrip(".")
            port = parts.port
        except ValueError:
            return "malformed media URL"
        scheme = parts.scheme.lower()
        if scheme not in ("https", "http"):
            return f"media URL scheme {scheme or '(none)'!r} is not allowed"
        if not host:
            return "media URL has no host"
        if parts.username is not None or parts.password is not None:
            return "media URL carries credentials"
        if port is None:
            port = 443 if scheme == "https" else 80
        label = f"{host}:{port}"
        for rule in self._rules:
            if rule.matches(host, port):
                if scheme == "http" and not (rule.explicit and not rule.wildcard):
                    return f"plain http is not allowed for media host {label}"
                return None
        return f"media host {label} is not in the allowed hosts"


# -- names ------------------------------------------------------------------------------


def sanitize_component(text: str, *, keep_suffix: str = "") -> str:
    """Turn any string into one safe path component on Linux, macOS and Windows.

    Separators, control and Windows-forbidden characters become ``_``;
    trailing dots and spaces are dropped; ``.``/``..``/empty become ``_``;
    Windows device names (``CON``, ``com1.txt``) get a ``_`` prefix; the result
    is NFC-normalised and cut to 200 UTF-8 bytes, keeping ``keep_suffix``
    (an extension such as ``".jpg"``) at the end.
    """
    text = unicodedata.normalize("NFC", text)
    text = _BAD_CHARS.sub("_", text).rstrip(". ")
    if keep_suffix and text.endswith(keep_suffix):
        stem, suffix = text[: -len(keep_suffix)], keep_suffix
    else:
        stem, suffix = text, ""
    budget = _MAX_COMPONENT_BYTES - len(suffix.encode())
    encoded = stem.encode()
    if len(encoded) > budget:
        stem = encoded[:budget].decode(errors="ignore").rstrip(". ")
    text = stem + suffix
    if not text.strip(". "):
        return "_" + suffix if suffix and stem else "_"
    if text.split(".")[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        text = "_" + text
    return text


class NameTemplate:
    """A ``str.format``-style template for the path of a saved file below the download dir.

    Only the template's own ``/`` make directories: every field value is
    rendered with its format spec and then has path separators replaced, and
    each resulting component goes through :func:`sanitize_component`. Fields
    are the names in :data:`TEMPLATE_FIELDS`; attribute or index access
    (``{x.y}``, ``{x[0]}``) and conversions are rejected at construction.
    ``name`` is what error messages call the template: the argument or
    option it came from (``highlight_template``, ``--name-template``).
    """

    __slots__ = ("_name", "_parts", "template")

    def __init__(
        self, template: str = DEFAULT_NAME_TEMPLATE, *, name: str = "name_template"
    ) -> None:
        if not isinstance(template, str) or not template.strip():
            raise ConfigurationError(f"{name} must be a non-empty string")
        parts: list[tuple[str, str | None, str]] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigurationError(f"bad {name} {template!r}: {exc}") from None
        for literal, field, spec, conversion in parsed:
            if field is None:
                parts.append((literal, None, ""))
                continue
            if field not in TEMPLATE_FIELDS:
                known = ", ".join(sorted(TEMPLATE_FIELDS))
                raise ConfigurationError(f"{name}: unknown field {{{field}}} (known: {known})")
            if conversion or (spec and "{" in spec):
                raise ConfigurationError(f"{name}: conversions and nested fields are not supported")
            parts.append((literal, field, spec or ""))
        if template.startswith("/") or "\\" in "".join(p[0] for p in parts):
            raise ConfigurationError(f"{name} must be a relative path using '/' separators")
        if not any(field == "story_id" for _, field, _ in parts):
            raise ConfigurationError(f"{name} must contain {{story_id}} so names are unique")
        self.template = template
        self._name = name
        self._parts = tuple(parts)

    def __repr__(self) -> str:
        return f"NameTemplate({self.template!r})"

    def render(self, fields: Mapping[str, object]) -> tuple[str, ...]:
        """Return the sanitised path components for one file (last one is the file name)."""
        pieces: list[str] = []
        for literal, field, spec in self._parts:
            pieces.append(literal)
            if field is not None:
                try:
                    value = format(fields[field], spec)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{self._name} field {{{field}}}: {exc}") from None
                pieces.append(value.replace("/", "_").replace("\\", "_"))
        raw = [c for c in "".join(pieces).split("/") if c]
        if not raw:
            raise ValueError(f"{self._name} rendered an empty path")
        ext = fields.get("ext")
        suffix = f".{ext}" if isinstance(ext, str) and ext else ""
        *dirs, name = raw
        return (
            *(sanitize_component(d) for d in dirs),
            sanitize_component(name, keep_suffix=suffix),
        )


def template_fields(
    *,
    story_id: str,
    username: str,
    user_id: str,
    code: str,
    taken_at: int | None,
    ext: str,
    media_type: str,
    width: int,
    height: int,
    target: str,
    highlight_id: str = "",
    highlight_title: str | None = None,
) -> dict[str, object]:
    """Build the field mapping :meth:`NameTemplate.render` takes for one item.

    A highlight without a title is filed under its id; the title is made
    safe like every other field (emoji kept; ``/``, ``..``, NUL, device names not).
    """
    when = datetime.fromtimestamp(taken_at or 0, tz=UTC)
    return {
        "story_id": story_id,
        "username": username,
        "user_id": user_id,
        "code": code,
        "taken_at": when,
        "date": when.strftime("%Y%m%d"),
        "time": when.strftime("%H%M%S"),
        "timestamp": taken_at or 0,
        "ext": ext,
        "media_type": media_type,
        "width": width,
        "height": height,
        "target": target,
        "highlight_id": highlight_id,
        "highlight_title": highlight_title or highlight_id,
    }


def inside(root: Path, components: tuple[str, ...]) -> Path:
    """Join ``components`` below ``root`` and prove the resolved path stays inside it.

    ``root`` must already be resolved. Raises :class:`ValueError` when a
    symlink (or anything else) would lead outside.
    """
    candidate = root.joinpath(*components)
    # The file may not exist yet, so resolve its directory (following any symlink in it).
    resolved = candidate.parent.resolve() / candidate.name
    if resolved != root and root not in resolved.parents:
        raise ValueError("the file would land outside the download directory")
    return resolved
