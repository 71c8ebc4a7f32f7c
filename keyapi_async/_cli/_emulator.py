"""``keyapi-stories emulator``: serve the offline emulator from the shell until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from ..testing import DEFAULT_TEST_KEY, EmulatorConfig, Fault, run_emulator
from ._exit import CLIError, ExitCode

__all__ = ["run_emulator_command"]


def _config(args: argparse.Namespace) -> EmulatorConfig:
    rates: dict[Fault, float] = {}
    for group in args.faults:
        rates.update(group)
    try:
        return EmulatorConfig(
            qps=args.qps,
            credits=args.credits,
            fault_rates=rates,
            latency=args.latency,
            seed=args.seed,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from None


async def run_emulator_command(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; print ready ``export`` lines on stdout."""
    config = _config(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Where the loop cannot take signal handlers (Windows), Ctrl-C arrives
        # as KeyboardInterrupt, which main() turns into a clean exit.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        try:
            emulator = await stack.enter_async_context(
                run_emulator(config, host=args.host, port=args.port)
            )
        except ValueError as exc:  # a non-loopback host
            raise CLIError(str(exc)) from None
        except OSError as exc:
            raise CLIError(
                f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
            ) from None
        faults = ", ".join(f"{fault.value}={rate:g}" for fault, rate in config.fault_rates.items())
        print(
            f"keyapi emulator listening on {emulator.base_url} "
            f"(qps cap: {'none' if config.qps is None else f'{config.qps:g}'}, "
            f"credits: {config.credits if config.credits is not None else 'unlimited'}, "
            f"faults: {faults or 'none'}); Ctrl-C to stop. In your shell:",
            file=sys.stderr,
            flush=True,
        )
        # stdout carries only the lines a script may eval or grep.
        print(f"export KEYAPI_BASE_URL={emulator.base_url}")
        print(f"export KEYAPI_API_KEY={DEFAULT_TEST_KEY}", flush=True)
        await stop.wait()
        print(
            f"emulator stopped after {emulator.requests_total} requests "
            f"({emulator.credits_spent} credits spent)",
            file=sys.stderr,
        )
    return ExitCode.OK
