"""``/metrics``: Prometheus text format from prometheus_client, on a registry of its own.

Nothing is counted twice: every value is read at scrape time from where it
already lives, the archive (stories, media by outcome, the watch schedule,
credits in the rolling day) and, under ``watch --serve``, the running
client's and watcher's counters. A custom collector on a private
:class:`~prometheus_client.CollectorRegistry` does that, so two apps in one
process (tests) never share or collide on the global registry, and the
exposition (names, escaping, ``# TYPE`` lines) is prometheus_client's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..engine.fetch import ClientStats
from ..watch import WatchStats
from .queries import ArchiveReader, StatusReport

__all__ = ["CONTENT_TYPE", "LiveStats", "build_registry", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of the Prometheus text format."""


@dataclass(frozen=True, slots=True)
class LiveStats:
    """Where a running watch's counters come from (both ``None`` for a quiet archive)."""

    client: Callable[[], ClientStats] | None = None
    """A snapshot of the API client's counters (``client.stats``)."""
    watch: Callable[[], WatchStats] | None = None
    """The watcher's counters (``watcher.stats``)."""


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def client_metrics(stats: ClientStats) -> Iterator[Metric]:
    """The API client's counters as metric families (pure)."""
    requests = CounterMetricFamily(
        "keyapi_requests",
        "API requests that ended, by outcome: ok (a reel, 2 credits), 429, error (after retries)",
        labels=["status"],
    )
    requests.add_metric(["ok"], stats.successes)
    requests.add_metric(["429"], stats.rate_limited)
    requests.add_metric(["error"], stats.failures)
    yield requests
    yield _counter(
        "keyapi_requests_sent", "Requests put on the wire, retries included", stats.requests_sent
    )
    yield _counter("keyapi_rate_limited", "429 answers", stats.rate_limited)
    yield _counter("keyapi_retries", "Sends beyond each target's first", stats.retries)
    yield _counter(
        "keyapi_credits_spent", "Credits spent by this process's client", stats.credits_spent
    )
    yield _gauge("keyapi_requests_in_flight", "Requests sent and not answered yet", stats.in_flight)
    if stats.current_qps is not None:
        yield _gauge("keyapi_current_qps", "The rate the gate paces at now", stats.current_qps)


def watch_metrics(stats: WatchStats) -> Iterator[Metric]:
    """The watcher's counters as metric families (pure)."""
    yield _counter("keyapi_watch_polls", "Polls that ended, whatever the outcome", stats.polls)
    yield _counter("keyapi_watch_poll_errors", "Polls that ended in an error", stats.errors)
    yield _counter(
        "keyapi_new_stories",
        "Stories new to the archive since the watch started",
        stats.new_stories,
    )
    yield _counter(
        "keyapi_watch_budget_waits", "Times a poll waited for the daily budget", stats.budget_waits
    )
    yield _gauge("keyapi_watch_polls_in_flight", "Polls running now", stats.in_flight)


def archive_metrics(report: StatusReport) -> Iterator[Metric]:
    """What the archive holds as metric families (pure)."""
    yield _gauge("keyapi_archive_stories", "Story items in the archive", report.stories)
    yield _gauge("keyapi_archive_accounts", "Accounts in the archive", report.accounts)
    files = GaugeMetricFamily("keyapi_media_files", "Media records by outcome", labels=["outcome"])
    for outcome, count in sorted(report.media.files.items()):
        files.add_metric([outcome], count)
    yield files
    size = GaugeMetricFamily(
        "keyapi_media_bytes", "Bytes of media files by outcome", labels=["outcome"]
    )
    for outcome, total in sorted(report.media.bytes.items()):
        size.add_metric([outcome], total)
    yield size
    success = GaugeMetricFamily(
        "keyapi_account_last_success_timestamp_seconds",
        "When a fetch of the account last succeeded (Unix seconds)",
        labels=["account"],
    )
    for account, at in sorted(report.last_success.items()):
        success.add_metric([account], at)
    yield success
    if report.watched:
        yield _gauge(
            "keyapi_poll_lag_seconds", "How far the most overdue poll is behind", report.max_lag
        )
        yield _gauge(
            "keyapi_watch_accounts",
            "Accounts the watch follows",
            sum(1 for p in report.polls if p.active),
        )
        yield _gauge(
            "keyapi_watch_credits_24h",
            "Credits the watch spent in the last 24 h",
            report.credits_24h,
        )
        if report.daily_cap is not None:
            yield _gauge("keyapi_watch_daily_cap", "The rolling 24 h credit cap", report.daily_cap)


class _Collector(Collector):
    def __init__(self, reader: ArchiveReader, live: LiveStats) -> None:
        self._reader = reader
        self._live = live

    def collect(self) -> Iterable[Metric]:
        live = self._live
        if live.client is not None:
            yield from client_metrics(live.client())
        if live.watch is not None:
            yield from watch_metrics(live.watch())
        yield from archive_metrics(self._reader.status())


def build_registry(reader: ArchiveReader, live: LiveStats) -> CollectorRegistry:
    """A registry of its own whose one collector reads ``reader`` and ``live`` at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(reader, live))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format (blocking: reads the archive)."""
    return generate_latest(registry)
