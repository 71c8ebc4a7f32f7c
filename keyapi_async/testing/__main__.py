"""Serve the emulator from the shell: ``python -m keyapi_async.testing``.

Once listening, exactly one line ``KEYAPI_BASE_URL=http://127.0.0.1:PORT`` is
printed to stdout, so scripts can capture the URL; the server then runs until
SIGINT or SIGTERM and exits with status 0. Example::

    python -m keyapi_async.testing --port 8089 --qps 10 --fault-rate server_error=0.05
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from ._config import DEFAULT_TEST_KEY, EmulatorConfig, Fault
from ._runner import run_emulator

__all__ = ["build_parser", "config_from_args", "main"]


def _fault_rate(text: str) -> tuple[Fault, float]:
    name, sep, rate = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=P, got {text!r}")
    try:
        fault = Fault(name.strip().lower())
    except ValueError:
        names = ", ".join(f.value for f in Fault)
        raise argparse.ArgumentTypeError(f"unknown fault {name!r} (one of: {names})") from None
    try:
        return fault, float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"probability must be a number, got {rate!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``python -m keyapi_async.testing``."""
    parser = argparse.ArgumentParser(
        prog="python -m keyapi_async.testing",
        description="Serve an offline emulator of keyapi.ai's Instagram fetch_user_stories API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (loopback)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--allow-non-loopback", action="store_true", help="permit binding a non-loopback host"
    )
    parser.add_argument("--qps", type=float, default=None, help="accepted requests per second")
    parser.add_argument("--credits", type=int, default=None, help="quota; 2 per success")
    parser.add_argument(
        "--no-retry-after",
        dest="retry_after",
        action="store_false",
        help="omit the Retry-After header on 429 answers",
    )
    parser.add_argument(
        "--fault-rate",
        type=_fault_rate,
        action="append",
        default=[],
        metavar="NAME=P",
        help="inject fault NAME with probability P per request (repeatable)",
    )
    parser.add_argument("--latency", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--slow-seconds", type=float, default=2.0, help="delay of the 'slow' fault")
    parser.add_argument("--empty-ratio", type=float, default=0.2, help="share of empty targets")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, faults and ids")
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=[],
        metavar="KEY",
        help=f"accepted key (repeatable; default: {DEFAULT_TEST_KEY})",
    )
    parser.add_argument("--max-log", type=int, default=None, help="bound the in-memory request log")
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build an :class:`EmulatorConfig` from parsed arguments (``ValueError`` if invalid)."""
    rates: dict[Fault, float] = {}
    for fault, rate in args.fault_rate:
        rates[fault] = rate
    return EmulatorConfig(
        api_keys=frozenset(args.api_keys or (DEFAULT_TEST_KEY,)),
        qps=args.qps,
        retry_after=args.retry_after,
        credits=args.credits,
        fault_rates=rates,
        slow_seconds=args.slow_seconds,
        latency=args.latency,
        seed=args.seed,
        empty_ratio=args.empty_ratio,
    )


async def _serve(config: EmulatorConfig, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Windows' event loops have no add_signal_handler; Ctrl-C still arrives
        # there as KeyboardInterrupt, which main() turns into a clean exit.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    async with run_emulator(
        config,
        host=args.host,
        port=args.port,
        max_log=args.max_log,
        allow_non_loopback=args.allow_non_loopback,
    ) as emulator:
        sys.stdout.write(f"KEYAPI_BASE_URL={emulator.base_url}\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        if args.max_log is not None and args.max_log < 1:
            raise ValueError("max_log must be >= 1")
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(config, args))
    except KeyboardInterrupt:
        # Ctrl-C is how one stops a server run from a shell: a clean exit.
        return 0
    except OSError as exc:
        print(f"{parser.prog}: cannot serve: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
