"""An offline emulator of keyapi.ai's Instagram ``fetch_user_stories`` API and its highlights.

``fetch_user_highlights`` and ``fetch_highlight_stories`` are answered too,
through the same keys, QPS window, credits and faults (:class:`HighlightConfig`).

A real :mod:`aiohttp.web` server on a loopback port that answers
``GET /v1/instagram/fetch_user_stories`` like the real service: Bearer-key
authentication, parameter validation, a QPS window, a credit quota and
deterministic synthetic story reels, plus injectable faults (5xx, HTML error
pages, error codes inside HTTP 200, truncated or empty bodies, connection
resets, slow answers, and hostile answers: non-UTF-8 bytes, Latin-1 error
messages, schema drift, a reel without items, a 503 with ``Retry-After``),
403 for forbidden keys and 404 for missing accounts. Use it for offline
tests, demos and benchmarks::

    import aiohttp
    from keyapi_async.testing import DEFAULT_TEST_KEY, EmulatorConfig, Fault, run_emulator

    config = EmulatorConfig(qps=5, fault_script={"username:javan": [Fault.SERVER_ERROR]})
    async with run_emulator(config) as emu, aiohttp.ClientSession() as session:
        url = f"{emu.base_url}/v1/instagram/fetch_user_stories"
        headers = {"Authorization": f"Bearer {DEFAULT_TEST_KEY}"}
        async with session.get(url, params={"username": "javan"}, headers=headers) as resp:
            assert resp.status == 500  # scripted; the next request succeeds
        assert emu.count(status=500) == 1

:class:`EmulatorTransport` runs the same emulator in memory, without sockets,
for ``KeyAPIClient(transport=...)`` on a virtual-clock event loop.

From the shell, ``python -m keyapi_async.testing --qps 10`` prints
``KEYAPI_BASE_URL=http://127.0.0.1:PORT`` and serves until interrupted.
"""

from ._answers import Answer
from ._app import Emulator, RequestRecord
from ._churn import ChurnConfig
from ._config import BILLED_FAULTS, DEFAULT_TEST_KEY, EmulatorConfig, Fault, MediaConfig, MediaFault
from ._highlights import HighlightConfig
from ._runner import run_emulator
from ._transport import EmulatorTransport

__all__ = [
    "BILLED_FAULTS",
    "DEFAULT_TEST_KEY",
    "Answer",
    "ChurnConfig",
    "Emulator",
    "EmulatorConfig",
    "EmulatorTransport",
    "Fault",
    "HighlightConfig",
    "MediaConfig",
    "MediaFault",
    "RequestRecord",
    "run_emulator",
]
