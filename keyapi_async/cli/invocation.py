"""How this process was started, so that printed commands work when pasted.

After ``python3 -m venv .venv && .venv/bin/pip install ...`` the script lives
in ``.venv/bin`` and is not on ``PATH``: a hint saying ``keyapi-stories fetch
...`` would fail with "command not found". Hints are therefore built from the
actual invocation: the bare name only when ``PATH`` finds this very script,
otherwise the path it was started by (relative to the working directory when
it lies below it), or ``python -m keyapi_async`` with this interpreter.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence

__all__ = ["PROG", "command_prefix", "shell_command"]

PROG = "keyapi-stories"
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _display_path(path: str) -> str:
    """``path`` relative to the working directory if it lies below it, else absolute."""
    absolute = os.path.abspath(path)
    try:
        relative = os.path.relpath(absolute)
    except ValueError:  # another drive (Windows)
        return absolute
    if relative.startswith(os.pardir):
        return absolute
    # "./x" rather than "x": a bare relative name would be looked up on PATH.
    return relative if os.sep in relative else os.curdir + os.sep + relative


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def command_prefix(argv0: str | None = None) -> list[str]:
    """The words that start this program again, e.g. ``[".venv/bin/keyapi-stories"]``.

    ``argv0`` defaults to ``sys.argv[0]``. Run as ``python -m keyapi_async``
    it is ``[<this interpreter>, "-m", "keyapi_async"]``; called in-process
    (tests, embedding) with an unrelated ``argv[0]``, the bare name.
    """
    first = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(first)
    if name == "__main__.py" and _same_file(os.path.dirname(first) or os.curdir, _PACKAGE):
        return [_display_path(sys.executable), "-m", "keyapi_async"]
    stem = os.path.splitext(name)[0]  # keyapi-stories.exe on Windows
    if stem != PROG:
        return [PROG]
    if os.path.dirname(first) == "":  # the shell found it on PATH
        return [PROG]
    found = shutil.which(PROG)
    if found is not None and _same_file(found, first):
        return [PROG]
    return [_display_path(first)]


def shell_command(args: Sequence[str], argv0: str | None = None) -> str:
    """``args`` after :func:`command_prefix`, quoted for a POSIX shell."""
    return shlex.join([*command_prefix(argv0), *args])
