"""mkdocs hooks: generate the parts of pages that must never go stale, at build time.

**CLI help.** A marker ``<!-- cli-help: SUBCOMMAND -->`` (or ``<!-- cli-help -->``
for the top level) is replaced with the real ``keyapi-stories SUBCOMMAND
--help`` output, produced by the installed CLI at a fixed width
(:func:`cli_help`), so the reference always matches the code.

**Benchmark results.** ``python -m benchmarks`` writes ``benchmarks/results/`` (``results.md``,
``chart.png``, ``results.json``). mkdocs only serves files under ``docs/``, so
instead of keeping copies there (which would go stale the next time the
benchmarks run) this hook

* adds every published file of ``benchmarks/results/`` to the site under
  ``assets/benchmarks/`` (:func:`on_files`), and
* replaces the marker ``<!-- benchmark-results -->`` in a page with the
  current ``results.md``: its title dropped, headings moved one level down, links to result files
  pointed at their published copies, and any other relative link reduced to
  its text (:func:`on_page_markdown`);
* replaces ``<!-- benchmark-results: TITLE -->`` with just the body of the
  ``## TITLE`` section of ``results.md`` (the rate-limit page quotes the
  ``Rate cap`` figures this way).

Without results (a fresh clone), the marker becomes a note saying how to
produce them, and the build stays warning-free.

Registered in ``mkdocs.yml`` under ``hooks``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER",
    "cli_help",
    "on_config",
    "on_files",
    "on_page_markdown",
    "results_markdown",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ASSETS = "assets/benchmarks"
MARKER = "<!-- benchmark-results -->"
_PUBLISHED = frozenset({".png", ".svg", ".json", ".csv"})
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)((?:\s+\"[^\"]*\")?)\)")
_HEADING = re.compile(r"^(#{1,5}) ", flags=re.MULTILINE)
_RESULTS_MARKER = re.compile(r"<!-- benchmark-results(?::\s*([^>]*?))?\s*-->")
_CLI_MARKER = re.compile(r"<!-- cli-help(?::\s*([\w-]+))?\s*-->")
#: Terminal width the help texts are rendered at (argparse reads ``COLUMNS``).
HELP_COLUMNS = 88

_NO_RESULTS = """\
!!! note "No benchmark results in this build"
    `benchmarks/results/` holds no results yet. Run `python -m benchmarks`
    (see [Benchmarks](benchmarks.md)) and rebuild the site to publish them here.
"""


def _published(results: Path) -> list[Path]:
    if not results.is_dir():
        return []
    return sorted(p for p in results.iterdir() if p.is_file() and p.suffix in _PUBLISHED)


def _rewrite_link(match: re.Match[str], names: set[str]) -> str:
    bang, text, target, title = match.groups()
    if re.match(r"[a-z][a-z0-9+.-]*:|#|/", target):
        return match.group(0)  # absolute URL, anchor or site-absolute: leave it
    name = target.split("#", 1)[0]
    if name in names:
        return f"{bang}[{text}]({ASSETS}/{target}{title})"
    return text  # a relative path that does not exist on the site


def _demote_headings(markdown: str) -> str:
    # Only outside fenced code blocks: a "# comment" in a code block is no heading.
    parts = re.split(r"(^(?:```|~~~).*?^(?:```|~~~)[^\n]*$)", markdown, flags=re.M | re.S)
    for index in range(0, len(parts), 2):
        parts[index] = _HEADING.sub(r"#\1 ", parts[index])
    return "".join(parts)


def _section(markdown: str, title: str) -> str:
    """The body of the ``## title`` section of ``markdown`` ("" if there is none)."""
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    return match.group(1).strip() + "\n" if match else ""


def results_markdown(results: Path = RESULTS, section: str | None = None) -> str:
    """The Markdown for a results marker: the report (or one section), or a note if absent."""
    published = _published(results)
    names = {p.name for p in published}
    report = results / "results.md"
    parts: list[str] = []
    body = report.read_text(encoding="utf-8") if report.is_file() else ""
    if section is not None:
        body = _section(body, section)
        if not body:
            return _NO_RESULTS
        return _demote_headings(_LINK.sub(lambda match: _rewrite_link(match, names), body))
    if "chart.png" in names and "chart.png" not in body:
        parts.append(f"![Benchmark chart]({ASSETS}/chart.png)")
    if body:
        # The page has its own title: drop the report's, nest its sections under the page's.
        body = re.sub(r"\A\s*# [^\n]*\n", "", body)
        body = _LINK.sub(lambda match: _rewrite_link(match, names), body)
        parts.append(_demote_headings(body))
    if not parts:
        return _NO_RESULTS
    return "\n\n".join(parts)


def cli_help(subcommand: str | None = None) -> str:
    """The ``--help`` text of ``keyapi-stories [SUBCOMMAND]``, as the installed CLI prints it."""
    import contextlib
    import io
    import os

    from keyapi_async.cli import main

    argv = [subcommand, "--help"] if subcommand else ["--help"]
    out = io.StringIO()
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    try:
        with contextlib.redirect_stdout(out):
            status = main(argv)
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    if status != 0 or not out.getvalue().startswith("usage:"):
        raise RuntimeError(f"`keyapi-stories {' '.join(argv)}` failed (exit {status})")
    return out.getvalue().rstrip() + "\n"


def _help_block(match: re.Match[str]) -> str:
    return f"```text\n{cli_help(match.group(1))}```"


def on_config(config: Any, **kwargs: Any) -> Any:
    """Let ``mkdocs serve`` rebuild when the benchmark results change."""
    if RESULTS.is_dir():
        config.watch.append(str(RESULTS))
    return config


def on_files(files: Any, config: Any, **kwargs: Any) -> Any:
    """Add the published result files to the site under ``assets/benchmarks/``."""
    from mkdocs.structure.files import File

    for path in _published(RESULTS):
        files.append(File.generated(config, f"{ASSETS}/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """Replace the CLI help markers and :data:`MARKER` with their current content."""
    markdown = _CLI_MARKER.sub(_help_block, markdown)
    return _RESULTS_MARKER.sub(lambda match: results_markdown(section=match.group(1)), markdown)
