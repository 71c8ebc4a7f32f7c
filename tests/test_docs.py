"""Every code example in the documentation runs, against the emulator.

Collected examples:

* each fenced ``python`` block of ``docs/*.md`` and ``README.md``;
* each Python literal block (the indented block after ``::``) in the
  docstrings of the public objects that ``docs/api.md`` renders.

Examples are written the way users write them: ``KeyAPIClient()`` reads the
key from ``KEYAPI_API_KEY`` and the server from ``KEYAPI_BASE_URL``. Each one
runs in its own Python process (so ``asyncio.run(main())`` gets a fresh event
loop, and a crash cannot take the test run with it), in a temporary working
directory, with both variables pointing at one emulator served by
``python -m keyapi_async.testing`` on loopback for the whole module. A block
may also use top-level ``await``/``async with``, as the docstring examples do.

A block titled like a pytest module (```` ```python title="test_x.py" ````) is
saved under that name and run with pytest. Blocks that must not run are fenced
as ``text`` or ``console``.

More checks keep the prose honest: every page is in the navigation, every
test and file path named in the docs exists, the architecture page lists every
module of the package, the API reference renders every public name, the CLI
reference describes every option of the real ``--help`` (and shell examples use
only real options), and the build-time hooks of ``docs/hooks.py`` behave.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import re
import secrets
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
README = ROOT / "README.md"

#: Wall-clock bounds, in seconds: no example may hang the suite.
EMULATOR_START_TIMEOUT = 20.0
EXAMPLE_TIMEOUT = 30.0

#: Public objects whose docstrings (and whose members' docstrings) api.md renders.
DOCSTRING_MODULES = (
    "keyapi_async",
    "keyapi_async.models",
    "keyapi_async.testing",
    "keyapi_async.archive",
    "keyapi_async.export",
    "keyapi_async.media",
)

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")
_TITLE = re.compile(r"""\btitle=["']?([^"'\s]+)""")
_PYTEST_MODULE = re.compile(r"test_\w+\.py")
_PYTHON_INFO = {"python", "py", "python3"}

# Runs one example file: plain scripts as they are, blocks with top-level
# ``await`` inside a fresh event loop (like ``python -m asyncio``).
_RUNNER = """\
import ast, asyncio, inspect, sys
path = sys.argv[1]
with open(path, encoding="utf-8") as handle:
    source = handle.read()
code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
if code.co_flags & inspect.CO_COROUTINE:
    asyncio.run(eval(code, namespace))
else:
    exec(code, namespace)
"""


@dataclass(frozen=True)
class Example:
    """One runnable code example and where it was found.

    ``filename`` is the block's ``title`` when it names a pytest module
    (``test_*.py``): such a block is run with pytest instead of as a script.
    """

    origin: str
    line: int
    source: str
    filename: str = "example.py"

    @property
    def id(self) -> str:
        return f"{self.origin}:{self.line}"


# -- collecting ---------------------------------------------------------------------


def fenced_blocks(text: str) -> Iterator[tuple[str, str, int, str]]:
    """Yield ``(language, title, first line number, code)`` for each fenced block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        info = opening["info"].strip().strip("{}").lstrip(".")
        language = info.split()[0].lower() if info else ""
        title = _TITLE.search(info)
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            stripped = lines[j].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        code = textwrap.dedent("\n".join(body)) + "\n"
        yield language, title.group(1) if title else "", i + 2, code
        i = j + 1


def markdown_examples() -> list[Example]:
    examples = []
    for path in [*PAGES, README]:
        if not path.exists():
            continue
        name = path.relative_to(ROOT).as_posix()
        for language, title, line, code in fenced_blocks(path.read_text(encoding="utf-8")):
            if language in _PYTHON_INFO:
                pytest_module = _PYTEST_MODULE.fullmatch(title) is not None
                filename = title if pytest_module else "example.py"
                examples.append(Example(name, line, code, filename))
    return examples


def literal_blocks(docstring: str) -> Iterator[str]:
    """Yield the reST literal blocks (indented, after a line ending in ``::``) of a docstring."""
    lines = docstring.splitlines()
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        base = len(line) - len(line.lstrip())
        body: list[str] = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= base:
                break
            body.append(following)
        code = textwrap.dedent("\n".join(body)).strip("\n")
        if code:
            yield code + "\n"


def is_python_example(code: str) -> bool:
    """Whether a literal block is Python that does something (not a diagram or bare data)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return False
    return any(
        not (isinstance(node, ast.Expr) and not isinstance(node.value, ast.Call | ast.Await))
        for node in tree.body
    )


def public_docstrings() -> Iterator[tuple[str, str, str]]:
    """``(module, dotted name, docstring)`` of the rendered modules, exports and members."""
    seen: set[int] = set()
    for module_name in DOCSTRING_MODULES:
        module = importlib.import_module(module_name)
        objects: list[tuple[str, object]] = [(module_name, module)]
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            objects.append((f"{module_name}.{name}", value))
            if inspect.isclass(value):
                for member, attr in vars(value).items():
                    if not member.startswith("_"):
                        objects.append((f"{module_name}.{name}.{member}", attr))
        for dotted, value in objects:
            doc = getattr(value, "__doc__", None)
            if isinstance(doc, str) and id(value) not in seen:
                seen.add(id(value))
                yield module_name, dotted, inspect.cleandoc(doc)


def docstring_examples() -> list[Example]:
    # Like doctest, an example sees the public names of the module it documents.
    return [
        Example(dotted, index + 1, f"from {module} import *  # noqa: F403\n\n{code}")
        for module, dotted, doc in public_docstrings()
        for index, code in enumerate(literal_blocks(doc))
        if is_python_example(code)
    ]


MARKDOWN_EXAMPLES = markdown_examples()
DOCSTRING_EXAMPLES = docstring_examples()


# -- the emulator and the runner ----------------------------------------------------------


@pytest.fixture(scope="module")
def example_env() -> Iterator[dict[str, str]]:
    """The environment examples run in: a served emulator and a fake key for it."""
    key = "sk_test_docs_" + secrets.token_hex(8)
    # stderr goes to a file, not a pipe nobody drains, so the server can never block on it.
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in the finally
    server = subprocess.Popen(
        [sys.executable, "-m", "keyapi_async.testing", "--port", "0", "--api-key", key],
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
    )
    stdout = server.stdout
    assert stdout is not None
    first_line: list[str] = []
    reader = threading.Thread(target=lambda: first_line.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(EMULATOR_START_TIMEOUT)
    try:
        line = first_line[0].strip() if first_line else ""
        if not line.startswith("KEYAPI_BASE_URL="):
            server.kill()
            server.wait(EMULATOR_START_TIMEOUT)
            errors.seek(0)
            pytest.fail(f"emulator did not start: {line!r} {errors.read()}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYAPI_")}
        env.update(
            KEYAPI_API_KEY=key,
            KEYAPI_BASE_URL=line.partition("=")[2],
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
        )
        yield env
    finally:
        server.terminate()
        try:
            server.communicate(timeout=EMULATOR_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
        errors.close()


def run_example(example: Example, env: dict[str, str], workdir: Path) -> None:
    script = workdir / example.filename
    script.write_text(example.source, encoding="utf-8")
    if example.filename == "example.py":
        runner = workdir / "_run_example.py"
        runner.write_text(_RUNNER, encoding="utf-8")
        command = [sys.executable, str(runner), str(script)]
    else:
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", script.name]
    try:
        done = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXAMPLE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{example.id}: still running after {EXAMPLE_TIMEOUT} s\n{exc.stdout}")
    assert done.returncode == 0, (
        f"{example.id} exited {done.returncode}\n--- code\n{example.source}"
        f"--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    )


@pytest.mark.parametrize("example", MARKDOWN_EXAMPLES, ids=lambda e: e.id)
def test_markdown_example_runs(
    example: Example, example_env: dict[str, str], tmp_path: Path
) -> None:
    run_example(example, example_env, tmp_path)


@pytest.mark.parametrize("example", DOCSTRING_EXAMPLES, ids=lambda e: e.id)
def test_docstring_example_runs(
    example: Example, example_env: dict[str, str], tmp_path: Path
) -> None:
    run_example(example, example_env, tmp_path)


# -- the prose stays true -------------------------------------------------------------------


def test_examples_are_collected() -> None:
    pages = {e.origin for e in MARKDOWN_EXAMPLES}
    for page in ("docs/index.md", "docs/testing.md", "docs/errors.md", "docs/credits.md"):
        assert page in pages, f"{page} has no python example"
    assert {e.origin for e in DOCSTRING_EXAMPLES} >= {"keyapi_async", "keyapi_async.testing"}


def test_fence_parser() -> None:
    text = (
        "x\n```python\na = 1\n```\n\n!!! note\n    ```py\n    b = 2\n    ```\n"
        '```python title="test_x.py"\nc = 3\n```\n````text\n```\n````\n'
    )
    assert list(fenced_blocks(text)) == [
        ("python", "", 3, "a = 1\n"),
        ("py", "", 8, "b = 2\n"),
        ("python", "test_x.py", 11, "c = 3\n"),
        ("text", "", 14, "```\n"),
    ]


def test_every_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r":\s*([\w./-]+\.md)\s*$", config, flags=re.MULTILINE))
    assert listed == {p.name for p in PAGES}


def _all_docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in PAGES)


def test_every_test_named_in_the_docs_exists() -> None:
    named = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", _all_docs_text()))
    assert named, "the docs name no tests"
    missing = []
    for path, name in sorted(named):
        file = ROOT / path
        pattern = rf"^\s*(?:async\s+)?def {name}\b"
        if not file.exists() or not re.search(pattern, file.read_text("utf-8"), re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs name tests that do not exist: {missing}"


def test_every_path_named_in_the_docs_exists() -> None:
    named = set(re.findall(r"`((?:keyapi_async|tests|benchmarks)/[\w./]*\w)`", _all_docs_text()))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    # Benchmark results appear only once the benchmarks have run.
    missing = [p for p in missing if not p.startswith("benchmarks/results/")]
    assert not missing, f"docs name paths that do not exist: {missing}"


def test_architecture_lists_every_module() -> None:
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "keyapi_async"
    modules = sorted(
        p.relative_to(ROOT).as_posix()
        for p in package.rglob("*.py")
        if "__pycache__" not in p.parts and p.name != "__init__.py"
    )
    unlisted = [m for m in modules if f"`{m}`" not in text]
    assert not unlisted, f"docs/architecture.md does not list: {unlisted}"


def _load_hooks() -> Any:
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_results_are_included_at_build_time(tmp_path: Path) -> None:
    hooks = _load_hooks()
    assert hooks.MARKER in (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    assert "No benchmark results" in hooks.results_markdown(tmp_path / "missing")

    (tmp_path / "chart.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "results.md").write_text(
        "# Title\n\n![chart](chart.png)\n\nSee [the code](../bench_decode.py) and "
        '[a site](https://example.org/ "t").\n\n```text\n# not a heading\n```\n\n## Sub\n',
        encoding="utf-8",
    )
    markdown = hooks.results_markdown(tmp_path)
    assert "Title" not in markdown and "\n### Sub" in markdown
    assert "\n# not a heading\n" in markdown  # code blocks are left alone
    assert "![chart](assets/benchmarks/chart.png)" in markdown
    assert markdown.count("chart.png") == 1  # not embedded twice
    assert 'See the code and [a site](https://example.org/ "t")' in markdown


_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
CLI_SUBCOMMANDS = (
    "fetch", "demo", "emulator", "export", "import-ledger", "watch", "status", "serve",
)  # fmt: skip


# Subcommands with a page of their own, which describes their options there.
CLI_PAGES = {"watch": "watch.md", "status": "watch.md", "serve": "serve.md"}
# Subcommands that take positional arguments only.
CLI_WITHOUT_OPTIONS = {"status"}


@pytest.mark.parametrize("subcommand", CLI_SUBCOMMANDS)
def test_cli_reference_covers_every_option(subcommand: str) -> None:
    page = CLI_PAGES.get(subcommand, "cli.md")
    # The options a subcommand shares with fetch are described once, in cli.md.
    documented = "".join((DOCS / name).read_text(encoding="utf-8") for name in {"cli.md", page})
    options = set(_OPTION.findall(_load_hooks().cli_help(subcommand))) - {"--help"}
    if subcommand in CLI_WITHOUT_OPTIONS:
        assert not options, f"`keyapi-stories {subcommand}` has options now: document them"
        return
    assert options, f"no options found in `keyapi-stories {subcommand} --help`"
    missing = sorted(o for o in options if f"`{o}" not in documented)
    assert not missing, f"docs/{page} does not describe {subcommand} options {missing}"


def test_cli_examples_use_real_options() -> None:
    hooks = _load_hooks()
    known = {sub: set(_OPTION.findall(hooks.cli_help(sub))) for sub in CLI_SUBCOMMANDS}
    wrong = []
    for page in PAGES:
        for language, _, line, code in fenced_blocks(page.read_text(encoding="utf-8")):
            if language not in ("console", "shell", "bash", "sh"):
                continue
            for command in re.findall(r"keyapi-stories\s+([\w-]+)([^\n#|]*)", code):
                subcommand, rest = command
                if subcommand not in known:
                    wrong.append(f"{page.name}:{line}: unknown subcommand {subcommand!r}")
                    continue
                wrong += [
                    f"{page.name}:{line}: {subcommand} has no {option}"
                    for option in _OPTION.findall(rest)
                    if option not in known[subcommand]
                ]
    assert not wrong, wrong


def test_one_benchmark_section_can_be_quoted(tmp_path: Path) -> None:
    hooks = _load_hooks()
    (tmp_path / "results.md").write_text(
        "# All\n\nintro\n\n## Rate cap\n\nfigures\n\n### Detail\n\nmore\n\n## Memory\n\nmb\n",
        encoding="utf-8",
    )
    quoted = hooks.results_markdown(tmp_path, section="Rate cap")
    assert quoted == "figures\n\n#### Detail\n\nmore\n"
    assert "No benchmark results" in hooks.results_markdown(tmp_path, section="Missing")


def test_api_reference_renders_every_public_name() -> None:
    import keyapi_async
    import keyapi_async.models

    text = (DOCS / "api.md").read_text(encoding="utf-8")
    assert "::: keyapi_async.models" in text and "::: keyapi_async.testing" in text
    missing = [
        name
        for name in keyapi_async.__all__
        if f"::: keyapi_async.{name}\n" not in text
        and name not in keyapi_async.models.__all__
        and f"`keyapi_async.{name}`" not in text
    ]
    assert not missing, f"docs/api.md does not render {missing}"
