"""Serve the emulator from the shell: ``python -m keyapi_async.testing``.

The same command as ``keyapi-stories emulator``: both are built from
:func:`add_emulator_arguments` and run by :func:`run_from_args`, so they take
the same options and print the same output. Once listening, exactly one line
``KEYAPI_BASE_URL=http://127.0.0.1:PORT`` is printed to stdout, so scripts can
capture the URL; stderr carries the status and the ``export`` line to paste
into another shell. The server then runs until SIGINT or SIGTERM and exits
with status 0. Example::

    python -m keyapi_async.testing --port 8089 --qps 10 --fault-rate server_error=0.05
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

from ..engine.validate import count_option, number_option
from ._config import DEFAULT_TEST_KEY, EmulatorConfig, Fault
from ._runner import run_emulator

__all__ = [
    "EXIT_CODES_HELP",
    "add_emulator_arguments",
    "build_parser",
    "config_from_args",
    "main",
    "run_from_args",
]

PROG = "python -m keyapi_async.testing"
_FAULT_NAMES = ", ".join(f.value for f in Fault)
#: Exit status for bad options or an address that cannot be served.
_USAGE = 2


def parse_fault_rates(text: str) -> list[tuple[Fault, float]]:
    """Parse ``NAME=P[,NAME=P...]`` into (fault, probability) pairs (ArgumentTypeError if bad)."""
    rates: list[tuple[Fault, float]] = []
    for part in text.split(","):
        name, sep, rate = part.strip().partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=P, got {part.strip()!r}")
        try:
            fault = Fault(name.strip().lower())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"unknown fault {name.strip()!r} (one of: {_FAULT_NAMES})"
            ) from None
        try:
            probability = float(rate)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"probability must be a number, got {rate!r}"
            ) from None
        if not 0 <= probability <= 1:
            raise argparse.ArgumentTypeError(f"probability must be in [0, 1], got {rate!r}")
        rates.append((fault, probability))
    return rates


class _DeprecatedFaults(argparse.Action):
    """``--faults``, the old name of ``--fault-rate`` in ``keyapi-stories emulator``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{parser.prog}: note: --faults is deprecated; use --fault-rate NAME=P",
            file=sys.stderr,
        )
        # A copy: appending in place would change the parser's shared default.
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or ()), values])


def add_emulator_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to ``parser`` (shared by both spellings of the command)."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (loopback)")
    parser.add_argument(
        "--port",
        type=count_option("--port"),
        default=0,
        help="TCP port; 0 picks a free one (default: 0)",
    )
    parser.add_argument(
        "--allow-non-loopback",
        action="store_true",
        help="permit binding a non-loopback host (the emulator accepts a well-known fake key)",
    )
    _add_behaviour_arguments(parser)


def _add_behaviour_arguments(parser: argparse.ArgumentParser) -> None:
    """How the emulator answers: its cap, credits, faults, latency, data and keys."""
    parser.add_argument(
        "--qps",
        type=number_option("--qps", positive=True),
        default=None,
        help="accepted requests per second; more get 429 (default: no cap)",
    )
    parser.add_argument(
        "--credits",
        type=count_option("--credits"),
        default=None,
        help="starting quota, 2 per success; then 402 (default: unlimited)",
    )
    parser.add_argument(
        "--no-retry-after",
        dest="retry_after",
        action="store_false",
        help="omit the Retry-After header on 429 answers",
    )
    _add_fault_arguments(parser)
    _add_data_arguments(parser)


def _add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """What goes wrong, and how slowly: faults and latency."""
    parser.add_argument(
        "--fault-rate",
        type=parse_fault_rates,
        action="append",
        default=[],
        metavar="NAME=P",
        help=(
            "inject fault NAME with probability P per request (repeatable; "
            f"NAME=P,NAME=P also works); names: {_FAULT_NAMES}"
        ),
    )
    parser.add_argument(
        "--faults",
        dest="fault_rate",
        type=parse_fault_rates,
        action=_DeprecatedFaults,
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--latency",
        type=number_option("--latency"),
        default=0.0,
        metavar="SECONDS",
        help="delay before every answer (default: 0)",
    )
    parser.add_argument(
        "--slow-seconds",
        type=number_option("--slow-seconds"),
        default=2.0,
        metavar="SECONDS",
        help="delay of the 'slow' fault (default: 2)",
    )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """What the emulator answers with, for whom, and how much it remembers."""
    parser.add_argument(
        "--empty-ratio",
        type=number_option("--empty-ratio"),
        default=0.2,
        metavar="RATIO",
        help="share of accounts with no active stories (default: 0.2)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic data and faults (default: 0)"
    )
    parser.add_argument(
        "--api-key",
        dest="api_keys",
        action="append",
        default=[],
        metavar="KEY",
        help=f"accepted key (repeatable; default: {DEFAULT_TEST_KEY})",
    )
    parser.add_argument(
        "--max-log",
        type=count_option("--max-log", minimum=1),
        default=None,
        metavar="N",
        help="bound the in-memory request log (default: unbounded)",
    )


#: The exit statuses of both spellings of the emulator command, shown in their --help.
EXIT_CODES_HELP = """\
exit status:
  0    stopped by Ctrl-C (SIGINT) or SIGTERM
  2    bad arguments, a non-loopback host without --allow-non-loopback, or the
       address cannot be bound
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser of ``python -m keyapi_async.testing``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Serve an offline emulator of keyapi.ai's Instagram fetch_user_stories API\n"
            "(the same command as `keyapi-stories emulator`)."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    add_emulator_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Build an :class:`EmulatorConfig` from parsed arguments (``ValueError`` if invalid)."""
    rates: dict[Fault, float] = {}
    for group in args.fault_rate:
        rates.update(group)
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
        # there as KeyboardInterrupt, which run_from_args turns into a clean exit.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    async with run_emulator(
        config,
        host=args.host,
        port=args.port,
        max_log=args.max_log,
        allow_non_loopback=args.allow_non_loopback,
    ) as emulator:
        faults = ", ".join(f"{fault.value}={rate:g}" for fault, rate in config.fault_rates.items())
        # A key given with --api-key is the user's own: never echoed.
        key = DEFAULT_TEST_KEY if DEFAULT_TEST_KEY in config.api_keys else "<your --api-key>"
        print(
            f"keyapi emulator listening on {emulator.base_url} "
            f"(qps cap: {'none' if config.qps is None else f'{config.qps:g}'}, "
            f"credits: {config.credits if config.credits is not None else 'unlimited'}, "
            f"faults: {faults or 'none'}); Ctrl-C to stop. In another shell:\n"
            f"  export KEYAPI_BASE_URL={emulator.base_url} KEYAPI_API_KEY={key}",
            file=sys.stderr,
            flush=True,
        )
        # stdout carries only the one line a script may capture.
        sys.stdout.write(f"KEYAPI_BASE_URL={emulator.base_url}\n")
        sys.stdout.flush()
        await stop.wait()
        print(
            f"emulator stopped after {emulator.requests_total} requests "
            f"({emulator.credits_spent} credits spent)",
            file=sys.stderr,
            flush=True,
        )


def run_from_args(args: argparse.Namespace, *, prog: str = PROG) -> int:
    """Serve as ``args`` (from :func:`add_emulator_arguments`) say until SIGINT/SIGTERM.

    Returns the exit status: 0 after a signal, 2 for invalid settings or an
    address that cannot be served (the reason is printed on stderr).
    """
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return _USAGE
    try:
        asyncio.run(_serve(config, args))
    except KeyboardInterrupt:
        # Ctrl-C is how one stops a server run from a shell: a clean exit.
        return 0
    except ValueError as exc:  # a non-loopback host without --allow-non-loopback
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return _USAGE
    except OSError as exc:
        print(
            f"{prog}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return _USAGE
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM; return the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error (already printed)
        return exc.code if isinstance(exc.code, int) else _USAGE
    return run_from_args(args, prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
