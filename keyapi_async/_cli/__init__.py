"""``keyapi-stories``: the command-line interface (also ``python -m keyapi_async``).

Subcommands: ``fetch`` (targets → resumable JSONL ledger), ``demo`` (the same
engine against the embedded emulator) and ``emulator`` (serve the emulator).
Module map: ``_args`` (argparse), ``_inputs`` (target lines), ``_ledger``
(JSONL write/read/resume), ``_apikey`` (key sources, redaction), ``_fetch``
(the run), ``_progress`` (bar, lines, summary), ``_signals`` (Ctrl-C),
``_logs`` (``-v``), ``_invocation`` (how to print commands that run as pasted),
``_demo`` and ``_emulator`` (the other subcommands), ``_exit`` (statuses).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from ._exit import CLIError, ExitCode

__all__ = ["ExitCode", "main"]


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:  # either does not exist (yet)
        return False


def _run_fetch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ._apikey import Redactor, resolve_api_key
    from ._fetch import (
        FetchSettings,
        dry_run_report,
        execute,
        make_client,
        prepare_job,
        resume_command,
    )
    from ._inputs import read_input
    from ._ledger import scan_ledger

    if not args.dry_run and not args.output:
        raise CLIError("-o/--output OUT is required (or use --dry-run)")
    if args.output == "-":
        raise CLIError("-o - is not supported: the ledger must be a file, to append to and resume")
    if args.output and args.input != "-" and _same_file(args.input, args.output):
        raise CLIError("-o must not be the input file")
    settings = FetchSettings(
        qps=args.qps,
        concurrency=args.concurrency,
        max_credits=args.max_credits,
        timeout=args.timeout,
        retries=args.retries,
        base_url=args.base_url,
        progress=args.progress,
        progress_interval=args.progress_interval,
        grace=args.grace,
        fsync=args.fsync,
        quiet=args.quiet,
        verbose=args.verbose,
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
        if args.output and not (args.resume or args.overwrite) and os.path.lexists(args.output):
            print(
                f"note: {args.output!r} exists; the real run needs --resume or --overwrite",
                file=sys.stderr,
            )
        return code
    assert key is not None
    client = make_client(settings, key)
    job = prepare_job(
        plan, args.output, resume=args.resume, overwrite=args.overwrite, fsync=args.fsync
    )
    hint = resume_command(argv)
    if args.input == "-":
        hint += "   # with the same targets on stdin"
    return asyncio.run(execute(client, job, settings, redact=Redactor(key), resume_hint=hint))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``keyapi-stories`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    from ._args import build_parser

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
            from ._demo import run_demo

            return run_demo(args)
        if args.command == "emulator":
            from ._emulator import run_emulator_command

            return run_emulator_command(args)
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
