"""``keyapi-stories demo``: the real fetch engine against the embedded emulator.

The README's first command, so it must work on a fresh install with no key
and no network: the emulator runs in this process on a free loopback port,
and the client is given the emulator's own fake key and URL explicitly, so
``KEYAPI_API_KEY`` and ``KEYAPI_BASE_URL`` are never read.

The emulator serves the stories' media too, so the demo also shows the
capture side: every story is recorded in an archive and its photo or video
downloaded (into a temporary directory unless ``--download DIR`` is given),
with the emulator's loopback address as the only extra allowed media host.
Then the highlights pass of ``fetch --highlights`` runs over the first
:data:`DEMO_HIGHLIGHT_ACCOUNTS` accounts: their trays, each highlight's items
and cover in ``DIR/<username>/highlights/<title>/``, and a story each account
keeps from its active ones, which is not downloaded a second time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence

from ..testing import (
    DEFAULT_TEST_KEY,
    EmulatorConfig,
    Fault,
    HighlightConfig,
    MediaConfig,
    MediaFault,
    run_emulator,
)
from .apikey import Redactor
from .args import DEMO_OUTPUT
from .capture import CaptureSettings, capture_settings, open_capture
from .client import FetchSettings, make_client, open_client
from .exit import CLIError, ExitCode
from .fetch import execute, prepare_job
from .highlights import exit_status, save_with_progress, summary_line
from .inputs import InputPlan, parse_lines
from .invocation import shell_command
from .progress import make_reporter

__all__ = ["DEMO_FAULTS", "DEMO_HIGHLIGHT_ACCOUNTS", "DEMO_MEDIA_FAULTS", "run_demo"]

#: Accounts whose highlights the demo saves (a few seconds at the demo's rate).
DEMO_HIGHLIGHT_ACCOUNTS = 40
#: The demo's highlights: small trays, and each account's newest active story kept.
_DEMO_HIGHLIGHTS = HighlightConfig(max_highlights=2, max_items=3, keep_active=True)

#: Faults the demo injects, so retries show up in the summary.
DEMO_FAULTS = {Fault.SERVER_ERROR: 0.03, Fault.RESET: 0.01, Fault.TRUNCATED: 0.01}
#: Media faults: a cut-off body is resumed with Range, so the demo still saves everything.
DEMO_MEDIA_FAULTS = {MediaFault.TRUNCATED: 0.02}
#: The client runs this much faster than the emulator allows, to provoke
#: (and show the handling of) 429 answers.
_OVERDRIVE = 1.2
#: Per-answer delay, a rough stand-in for the real API's latency.
_LATENCY = 0.15


def run_demo(args: argparse.Namespace) -> int:
    """Serve the emulator, fetch ``args.accounts`` synthetic accounts from it, summarise."""
    output: str = args.output or DEMO_OUTPUT
    # The default file is the demo's own artefact, replaced on every run so
    # the README command can be repeated; a path the user chose is protected.
    overwrite = args.output is None or args.overwrite
    if not overwrite and os.path.lexists(output):
        # Before the emulator starts; and demo has no --resume to suggest.
        raise CLIError(f"{output!r} already exists: add --overwrite to replace it")
    names = [f"demo_user_{number:04d}" for number in range(1, args.accounts + 1)]
    plan = parse_lines(names)
    with contextlib.ExitStack() as stack:
        directory: str = args.download or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="keyapi-demo-")
        )
        code, written = asyncio.run(_demo(args, plan, output, overwrite, directory))
    if not args.quiet:
        # Spelled the way this process was started, so it runs as pasted
        # even when the script's directory (.venv/bin) is not on PATH.
        fetch = shell_command(["fetch", "targets.txt", "-o", "stories.jsonl"])
        print(f"Ledger: {os.path.abspath(output)} ({written} lines)")
        if args.download:
            print(f"Media and archive: {os.path.abspath(directory)}")
        else:
            print(
                "Media and archive: a temporary directory, removed now "
                "(keep them with --download DIR)"
            )
        print(f"Next: export KEYAPI_API_KEY=...  then  {fetch}")
        print("       (add --download DIR to save the photos and videos as well)")
    return code


async def _demo(
    args: argparse.Namespace, plan: InputPlan, output: str, overwrite: bool, directory: str
) -> tuple[int, int]:
    config = EmulatorConfig(
        qps=args.qps,
        fault_rates=DEMO_FAULTS,
        latency=_LATENCY,
        media=MediaConfig(enabled=True, fault_rates=DEMO_MEDIA_FAULTS),
        highlights=_DEMO_HIGHLIGHTS,
    )
    async with run_emulator(config) as emulator:
        settings = FetchSettings(
            qps=args.qps * _OVERDRIVE,
            concurrency=16,
            timeout=10.0,
            retries=4,
            base_url=emulator.base_url,
            progress=args.progress,
            progress_interval=args.progress_interval,
            grace=5.0,
            quiet=args.quiet,
            verbose=args.verbose,
        )
        capture = capture_settings(
            download=directory,
            archive=None,
            # The emulator's CDN is on loopback over plain http: allowed only
            # because it is listed explicitly, by host and port.
            extra_hosts=[emulator.base_url.removeprefix("http://")],
            # A throwaway directory: flushing every file to disk buys nothing.
            fsync=False,
        )
        faults = ", ".join(f"{rate:.0%} {fault.value}" for fault, rate in DEMO_FAULTS.items())
        if not args.quiet:
            print(
                f"demo: emulator at {emulator.base_url} (QPS cap {args.qps:g}; faults: {faults}); "
                f"fetching {args.accounts} synthetic accounts at up to {settings.qps:g} req/s "
                f"and saving their media in {directory}",
                file=sys.stderr,
                flush=True,
            )
        client = make_client(settings, DEFAULT_TEST_KEY)
        async with open_capture(capture) as opened, open_client(client):
            job = prepare_job(plan, output, resume=False, overwrite=overwrite, fsync=False)
            code = await execute(
                client, job, settings, redact=Redactor(None), resume_hint=None, capture=opened
            )
        if code in (ExitCode.OK, ExitCode.FAILED):  # not after Ctrl-C
            code = max(code, await _highlights(args, settings, capture, plan.targets))
        if not args.quiet:
            print(
                f"emulator saw {emulator.requests_total} requests: "
                f"{emulator.count(status=200, body_code=0)} successful, "
                f"{emulator.count(status=429)} answered 429, "
                f"{sum(emulator.count(fault=fault) for fault in Fault)} with injected faults",
                file=sys.stderr,
            )
    return code, job.writer.written


async def _highlights(
    args: argparse.Namespace,
    settings: FetchSettings,
    capture: CaptureSettings,
    targets: Sequence[str],
) -> int:
    """The highlights pass of ``fetch --highlights`` over the first accounts; its summary."""
    subset = targets[:DEMO_HIGHLIGHT_ACCOUNTS]
    if not args.quiet:
        print(
            f"demo: saving the highlights of {len(subset)} accounts "
            "(only changed ones are fetched; kept stories are not downloaded twice)",
            file=sys.stderr,
            flush=True,
        )
    reporter = make_reporter(
        args.progress, total=len(subset), interval=args.progress_interval, quiet=args.quiet
    )
    run, media = await save_with_progress(settings, DEFAULT_TEST_KEY, capture, subset, reporter)
    if not args.quiet:
        print(summary_line(run, None if media is None else media.counts()), file=sys.stderr)
    return exit_status(run, media)
