"""An asyncio event loop whose clock only moves when every task is waiting on a timer.

Instead of sleeping, the loop jumps its clock to the next timer. Code that
only waits on ``asyncio.sleep``/``call_at`` (the rate gate, aiolimiter,
retry delays) runs its whole schedule in milliseconds of real time, with
exact, repeatable timestamps: the way to test timing logic without
asserting on wall-clock speed.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self._virtual_now = 0.0
        real_select = self._selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> list[tuple[object, int]]:
            if timeout is None:
                raise RuntimeError("virtual-clock loop would block forever (waiting on real I/O)")
            # Every iteration costs a microsecond, as on a real loop: without
            # it, a timer re-armed a few ULPs ahead (aiolimiter does this when
            # float rounding leaves a sliver of level) would never be reached.
            self._virtual_now += max(timeout, 1e-6)
            return real_select(0)  # type: ignore[no-any-return]

        self._selector.select = select  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._virtual_now


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main())  # type: ignore[arg-type]
    finally:
        loop.close()
