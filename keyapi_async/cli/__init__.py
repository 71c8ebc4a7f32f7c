"""``keyapi-stories``: the command-line interface (also ``python -m keyapi_async``).

Subcommands: ``fetch`` (targets → resumable JSONL ledger, and with
``--archive``/``--download`` a story archive and the media files), ``demo``
(the same engine against the embedded emulator), ``emulator`` (serve the
emulator), ``export`` and ``import-ledger`` (the archive).
Each subcommand has its own module (``fetch``, ``demo``, ``watch``, ``export``,
``emulator``); the fetch run's steps are ``client`` (the client from the
settings), ``job`` (the ledger and the dry run), ``batch_loop`` (one batch),
``capture`` (the archive and downloads of a run) and ``report`` (exit status
and summary). docs/architecture.md has the whole map.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .exit import CLIError, ExitCode

__all__ = ["ExitCode", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``keyapi-stories`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    from .args import build_parser

    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    try:
        if args.command == "fetch":
            from .fetch import run_fetch

            return run_fetch(args, arguments)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        if args.command == "watch":
            from .watch import run_watch

            return run_watch(args)
        if args.command == "status":
            from .watch import run_status

            return run_status(args)
        if args.command == "serve":
            from .serve import run_serve

            return run_serve(args)
        if args.command == "emulator":
            from .emulator import run_emulator_command

            return run_emulator_command(args)
        if args.command == "export":
            from .export import run_export

            return run_export(args)
        if args.command == "import-ledger":
            from .export import run_import_ledger

            return run_import_ledger(args)
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    except CLIError as exc:
        print(f"{parser.prog}: error: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        # Only reachable where signal handlers cannot be installed, or before
        # they are (while reading the input): nothing is half-written then.
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
