"""``keyapi-stories emulator``: the same command as ``python -m keyapi_async.testing``.

The options are defined once (:func:`keyapi_async.testing.__main__.add_emulator_arguments`,
added to this subcommand by ``_args``) and served by the same runner, so the
two spellings take the same flags and print the same output.
"""

from __future__ import annotations

import argparse

from ..testing.__main__ import run_from_args
from .invocation import PROG

__all__ = ["run_emulator_command"]


def run_emulator_command(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; return the exit status."""
    return run_from_args(args, prog=f"{PROG} emulator")
