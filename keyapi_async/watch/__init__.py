"""Watch mode: poll a list of accounts forever, capturing every new story once.

A :class:`Watcher` polls each account once per period (``every``), spreading
the polls evenly across the period (1,000 accounts every 12 h is one poll
every 43.2 s) instead of fetching everything at once, records each reel in a
:class:`~keyapi_async.archive.StoryArchive` and yields a :class:`StoryEvent`
for every story id the archive did not hold before::

    from keyapi_async import KeyAPIClient
    from keyapi_async.watch import Watcher, open_watch_archive

    async with KeyAPIClient() as client, open_watch_archive("stories.sqlite3") as archive:
        watcher = Watcher(client, archive, ["javan", "nasa"], every=12 * 3600)
        async for event in watcher.events():
            print(event.target, event.story_id)

Design choices (each rule has one module):

* **The schedule lives in the archive** (table ``watch_accounts``, added
  through the archive's :class:`~keyapi_async.archive.SchemaExtension`
  mechanism, :mod:`.schema`; every statement on it in :mod:`.store`), so a
  restart polls nothing before it is due and a crash costs at most the polls
  that were in flight (they are simply due again).
* **Due times stay on a grid; catching up is paced** (:mod:`.schedule`, pure).
  An account's next poll is its previous due time plus ``every``; accounts
  that fell behind are polled at up to twice the even rate until caught up.
* **The daily budget is a rolling 24-hour window** kept in the archive
  (``watch_credits``; :mod:`.budget`): a poll that would exceed it waits,
  with a log line saying until when, and is never dropped. The window
  survives restarts.
* **New stories' files are saved by the one capture pipeline**
  (:class:`keyapi_async.capture.MediaRecorder`), as ``fetch --download`` saves them.
* **Accounts are re-read every cycle** (at most every ``reload_every``
  seconds), so editing the list takes effect without a restart.
* **Stopping is graceful:** :meth:`Watcher.stop` starts no new poll, lets
  the polls in flight finish (recording and downloading what they found) and
  then ends :meth:`Watcher.events` (the loop: :mod:`.watcher`).

The clock is injectable (``clock``, Unix seconds); sleeping uses the running
event loop, so on a virtual-clock loop days of watching run in milliseconds.
"""

from __future__ import annotations

from .accounts import AccountsSource
from .events import StoryEvent, WatchStats
from .schema import (
    CREDITS_PER_POLL,
    DAY,
    WATCH_SCHEMA,
    forecast_credits_per_day,
    open_watch_archive,
)
from .store import WatchStatus, read_status
from .watcher import Watcher

__all__ = [
    "CREDITS_PER_POLL",
    "DAY",
    "WATCH_SCHEMA",
    "AccountsSource",
    "StoryEvent",
    "WatchStats",
    "WatchStatus",
    "Watcher",
    "forecast_credits_per_day",
    "open_watch_archive",
    "read_status",
]
