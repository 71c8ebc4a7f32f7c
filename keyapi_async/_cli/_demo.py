"""``keyapi-stories demo``: the real fetch engine against the embedded emulator.

The README's first command, so it must work on a fresh install with no key
and no network: the emulator runs in this process on a free loopback port,
and the client is given the emulator's own fake key and URL explicitly, so
``KEYAPI_API_KEY`` and ``KEYAPI_BASE_URL`` are never read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from ..testing import DEFAULT_TEST_KEY, EmulatorConfig, Fault, run_emulator
from ._apikey import Redactor
from ._args import DEMO_OUTPUT
from ._fetch import FetchSettings, Job, execute, make_client, prepare_job
from ._inputs import parse_lines
from ._invocation import shell_command

__all__ = ["DEMO_FAULTS", "run_demo"]

#: Faults the demo injects, so retries show up in the summary.
DEMO_FAULTS = {Fault.SERVER_ERROR: 0.03, Fault.RESET: 0.01, Fault.TRUNCATED: 0.01}
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
    job = prepare_job(parse_lines(names), output, resume=False, overwrite=overwrite, fsync=False)
    code = asyncio.run(_demo(args, job))
    if not args.quiet:
        # Spelled the way this process was started, so it runs as pasted
        # even when the script's directory (.venv/bin) is not on PATH.
        fetch = shell_command(["fetch", "targets.txt", "-o", "stories.jsonl"])
        print(f"Ledger: {os.path.abspath(output)} ({job.writer.written} lines)")
        print(f"Next: export KEYAPI_API_KEY=...  then  {fetch}")
    return code


async def _demo(args: argparse.Namespace, job: Job) -> int:
    config = EmulatorConfig(qps=args.qps, fault_rates=DEMO_FAULTS, latency=_LATENCY)
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
        faults = ", ".join(f"{rate:.0%} {fault.value}" for fault, rate in DEMO_FAULTS.items())
        if not args.quiet:
            print(
                f"demo: emulator at {emulator.base_url} (QPS cap {args.qps:g}; faults: {faults}); "
                f"fetching {args.accounts} synthetic accounts at up to {settings.qps:g} req/s",
                file=sys.stderr,
                flush=True,
            )
        client = make_client(settings, DEFAULT_TEST_KEY)
        code = await execute(client, job, settings, redact=Redactor(None), resume_hint=None)
        if not args.quiet:
            print(
                f"emulator saw {emulator.requests_total} requests: "
                f"{emulator.count(status=200, body_code=0)} successful, "
                f"{emulator.count(status=429)} answered 429, "
                f"{sum(emulator.count(fault=fault) for fault in Fault)} with injected faults",
                file=sys.stderr,
            )
    return code
