"""Griffe extension: render the library's reST-flavoured docstrings as clean Markdown.

The docstrings are prose written with Sphinx habits: roles such as
``:class:`~keyapi_async.KeyAPIError``` and ``::`` introducing a literal block.
mkdocstrings would show those verbatim, so before the docstrings are parsed
this extension rewrites

* every role into an optional cross-reference (a link when the target is
  documented on the site, plain code otherwise, never a build warning), with
  relative names resolved the way Sphinx would: ``.module.name`` against the
  package, bare names against the object's own scope;
* a trailing ``::`` into ``:`` (the indented block after it already renders
  as a code block in Markdown).

Registered in ``mkdocs.yml`` under the python handler's ``extensions``.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

__all__ = ["RstToMarkdown"]

_ROLE = re.compile(r":(?:py:)?(class|meth|func|attr|mod|data|exc|obj|const):`([^`]+)`")
_EXPLICIT = re.compile(r"(?s)(.*?)\s*<([^>]+)>")
_LITERAL_INTRO = re.compile(r"(?m)(\S)::[ \t]*$")
_BARE_LITERAL_INTRO = re.compile(r"(?m)^[ \t]*::[ \t]*$\n?")
_CALLABLE_ROLES = frozenset({"meth", "func"})


def _package_of(obj: griffe.Object) -> griffe.Object:
    """The package a relative ``.name`` reference in ``obj``'s docstring starts from."""
    module = obj.module
    if module.is_package or module.parent is None:
        return module
    return module.parent


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full dotted path of ``target`` as seen from ``obj``, or ``None``."""
    if target.startswith("."):
        dots = len(target) - len(target.lstrip("."))
        base: griffe.Object | None = _package_of(obj)
        for _ in range(dots - 1):
            base = base.parent if base is not None else None
        if base is None:
            return None
        return f"{base.path}.{target[dots:]}"
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            resolved = scope.resolve(head)
        except (griffe.NameResolutionError, KeyError, AttributeError):
            scope = scope.parent
            continue
        return f"{resolved}.{rest}" if rest else resolved
    # Not a name in scope: an absolute path (``keyapi_async.X``, ``asyncio.sleep``).
    return target


def _replace_role(obj: griffe.Object, match: re.Match[str]) -> str:
    role, text = match.group(1), match.group(2).strip()
    explicit = _EXPLICIT.fullmatch(text)
    if explicit is not None:
        title, target = explicit.group(1).strip(), explicit.group(2).strip()
    else:
        target = text
        shorten = target.startswith("~")
        target = target.lstrip("~")
        title = target.rsplit(".", 1)[-1] if shorten else target.lstrip(".")
        if role in _CALLABLE_ROLES:
            title += "()"
    path = _resolve(obj, target)
    code = f"<code>{html.escape(title)}</code>"
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def rewrite(text: str, obj: griffe.Object) -> str:
    """Turn one docstring's reST roles and ``::`` markers into Markdown."""
    text = _ROLE.sub(lambda match: _replace_role(obj, match), text)
    text = _BARE_LITERAL_INTRO.sub("", text)
    return _LITERAL_INTRO.sub(r"\1:", text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring once the object tree is complete (names resolve then)."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring in place."""
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value, obj)
