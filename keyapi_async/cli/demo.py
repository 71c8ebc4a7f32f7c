"""``keyapi-stories demo``: the real fetch engine against the embedded emulator.

The README's first command, so it must work on a fresh install with no key
and no network: the emulator runs in this process on a free loopback port,
and the client is given the emulator's own fake key and URL explicitly, so
``KEYAPI_API_KEY`` and ``KEYAPI_BASE_URL`` are never read.

The emulator serves the stories' media too, so the demo also shows the
capture side: every story is recorded in an archive and its photo or video
downloaded (into a temporary directory unless ``--download DIR`` is given),
with the emulator's loopback address as the only extra allowed media host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile

from ..testing import DEFAULT_TEST_KEY, EmulatorConfig, Fault, MediaConfig, MediaFault, run_emulator
from .apikey import Redactor
from .args import DEMO_OUTPUT
from .capture import capture_settings, open_capture
from .client import FetchSettings, make_client, open_client
from .fetch import execute, prepare_job
from .inputs import InputPlan, parse_lines
from .invocation import shell_command

__all__ = ["DEMO_FAULTS", "DEMO_MEDIA_FAULTS", "run_demo"]

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
        if not args.quiet:
            print(
                f"emulator saw {emulator.requests_total} requests: "
                f"{emulator.count(status=200, body_code=0)} successful, "
                f"{emulator.count(status=429)} answered 429, "
                f"{sum(emulator.count(fault=fault) for fault in Fault)} with injected faults",
                file=sys.stderr,
            )
    return code, job.writer.written
