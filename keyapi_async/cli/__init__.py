"""``keyapi-stories``: the command-line interface (also ``python -m keyapi_async``).

Subcommands: ``fetch`` (targets → resumable JSONL ledger, and with
``--archive``/``--download`` a story archive and the media files), ``demo``
(the same engine against the embedded emulator), ``emulator`` (serve the
emulator), ``export`` and ``import-ledger`` (the archive).
Module map: ``_args`` (argparse), ``_inputs`` (target lines), ``_ledger``
(JSONL write/read/resume), ``_apikey`` (key sources, redaction), ``engine.fetch``
(the run), ``_capture`` (archive and downloads of a run), ``_export``
(``export``, ``import-ledger``), ``_progress`` (bar, lines, summary), ``_signals`` (Ctrl-C),
``_logs`` (``-v``), ``_invocation`` (how to print commands that run as pasted),
``_demo`` and ``_emulator`` (the other subcommands), ``_exit`` (statuses).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from .exit import CLIError, ExitCode

__all__ = ["ExitCode", "main"]


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:  # either does not exist (yet)
        return False


def _run_fetch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .apikey import Redactor, resolve_api_key
    from .capture import capture_settings
    from .fetch import (
        dry_run_report,
        make_client,
        resume_command,
        run_job,
        settings_from_args,
    )
    from .highlights import dry_run_lines, highlight_mode, run_highlights
    from .inputs import read_input
    from .ledger import scan_ledger

    highlights = highlight_mode(args)
    if not args.dry_run and not args.output and highlights != "only":
        raise CLIError("-o/--output OUT is required (or use --dry-run)")
    if args.output == "-":
        raise CLIError("-o - is not supported: the ledger must be a file, to append to and resume")
    if args.output and args.input != "-" and _same_file(args.input, args.output):
        raise CLIError("-o must not be the input file")
    settings = settings_from_args(args)
    capture = capture_settings(
        download=args.download,
        archive=args.archive,
        name_template=args.name_template,
        media_hosts=args.media_hosts,
        max_media_bytes=args.max_media_bytes,
        media_concurrency=args.media_concurrency,
        refresh_expired=args.refresh_expired,
    )
    # The key is checked before reading the input: a missing key should not
    # cost a long read from stdin first. --dry-run sends nothing, needs none.
    key = None if args.dry_run else resolve_api_key(args.api_key_file)
    if args.input == "-" and sys.stdin is not None and sys.stdin.isatty() and not args.quiet:
        print("reading targets from the terminal; end with Ctrl-D", file=sys.stderr)
    plan = read_input(args.input, user_ids=args.user_ids)
    if args.dry_run:
        state = scan_ledger(args.output, repair=False) if args.resume and args.output else None
        report, code = dry_run_report(plan, state, args.max_credits)
        print(report, flush=True)
        if highlights != "off":
            print("\n".join(dry_run_lines(plan.targets)), flush=True)
        if args.output and not (args.resume or args.overwrite) and os.path.lexists(args.output):
            print(
                f"note: {args.output!r} exists; the real run needs --resume or --overwrite",
                file=sys.stderr,
            )
        return code
    assert key is not None
    if highlights == "only":
        return run_highlights(settings, key, capture, plan.targets)
    client = make_client(settings, key)
    hint = resume_command(argv)
    if args.input == "-":
        hint += "   # with the same targets on stdin"
    code = asyncio.run(
        run_job(
            client,
            plan,
            args.output,
            settings,
            capture,
            resume=args.resume,
            overwrite=args.overwrite,
            redact=Redactor(key),
            resume_hint=hint,
        )
    )
    if highlights == "also" and code in (ExitCode.OK, ExitCode.FAILED):
        # After 401/402/403 or Ctrl-C (exit 3, 130) nothing more is sent.
        code = max(code, run_highlights(settings, key, capture, plan.targets))
    return code


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
            return _run_fetch(args, arguments)
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        if args.command == "watch":
            from .watch import run_watch

            return run_watch(args)
        if args.command == "status":
            from .watch import run_status

            return run_status(args)
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
