"""``watch --serve``: the status page and ``/metrics`` of a running watch agree with its archive.

The real ``watch`` runs in a subprocess against a loopback emulator (media
CDN included) with ``--serve 127.0.0.1:0``; the test scrapes ``/metrics``
while it runs and compares it with the archive, read in between two equal
scrapes (no poll ran meanwhile), then stops the watch with Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from keyapi_async.testing import EmulatorConfig, MediaConfig, run_emulator

NAMES = [f"served{n}" for n in range(4)]


def samples(text: str) -> dict[str, float]:
    """Unlabelled samples by name, labelled ones as ``name{k=v}``."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return found


def archived(db: Path) -> tuple[int, int, int]:
    """(stories, credits the watch recorded, saved media) in one read-only snapshot."""
    with sqlite3.connect(db.resolve().as_uri() + "?mode=ro", uri=True) as conn:
        stories = conn.execute("SELECT count(*) FROM stories").fetchone()[0]
        credits = conn.execute("SELECT coalesce(sum(credits), 0) FROM watch_credits").fetchone()[0]
        saved = conn.execute("SELECT count(*) FROM media WHERE status = 'saved'").fetchone()[0]
    conn.close()
    return stories, credits, saved


async def test_metrics_of_a_running_watch_agree_with_the_archive(tmp_path: Path) -> None:
    key = "sk_test_" + secrets.token_hex(16)
    config = EmulatorConfig(
        api_keys=frozenset({key}), empty_ratio=0.0, media=MediaConfig(enabled=True)
    )
    accounts = tmp_path / "accounts.txt"
    accounts.write_text("\n".join(NAMES) + "\n")
    db, media = tmp_path / "w.db", tmp_path / "media"
    async with run_emulator(config) as emu:
        host = emu.base_url.removeprefix("http://")
        args = [
            "watch", str(accounts), "--every", "4s", "--archive", str(db), "--download", str(media),
            "--base-url", emu.base_url, "--media-hosts", host, "--qps", "50",
            "--serve", "127.0.0.1:0",
        ]  # fmt: skip
        env = {**os.environ, "KEYAPI_API_KEY": key}
        env.pop("KEYAPI_BASE_URL", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "keyapi_async", *args, env=env, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stderr is not None
        seen: list[str] = []
        try:
            while True:
                line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
                assert line, "".join(seen)
                seen.append(line)
                if line.startswith("status page: "):
                    url = line.split()[2].removesuffix("/status")
                    break
            async with aiohttp.ClientSession() as http:

                async def scrape() -> tuple[dict[str, float], str]:
                    async with http.get(url + "/metrics") as response:
                        assert response.status == 200
                        assert key not in str(response.headers)
                        text = await response.text()
                    return samples(text), text

                deadline = time.monotonic() + 40
                while True:
                    assert time.monotonic() < deadline, "no quiet moment after 8 polls"
                    first, text = await scrape()
                    stories, credits, saved = archived(db)
                    second, _ = await scrape()
                    quiet = first == second and first["keyapi_watch_polls_in_flight"] == 0
                    if quiet and first["keyapi_watch_polls_total"] >= 2 * len(NAMES):
                        break
                    await asyncio.sleep(0.2)
                assert key not in text
                assert first["keyapi_credits_spent_total"] == credits > 0
                assert (
                    first["keyapi_credits_spent_total"]
                    == 2 * first["keyapi_requests_total{status=ok}"]
                )
                assert first["keyapi_new_stories_total"] == stories > 0
                assert first["keyapi_archive_stories"] == stories
                assert first["keyapi_media_files{outcome=saved}"] == saved
                assert first["keyapi_watch_accounts"] == len(NAMES)
                assert first["keyapi_watch_credits_24h"] == credits
                for name in NAMES:
                    assert (
                        f"keyapi_account_last_success_timestamp_seconds{{account={name}}}" in first
                    )
                billed = sum(1 for r in emu.log if r.status == 200)
                assert first["keyapi_credits_spent_total"] == 2 * billed
                async with http.get(url + "/status") as response:
                    page = await response.text()
                    assert response.status == 200 and key not in page
                    shown = page.split('<td id="live-credits">', 1)[1].split("<", 1)[0]
                    assert int(shown) >= credits  # a poll may have ended since
                for probe in ("/healthz", "/readyz"):
                    async with http.get(url + probe) as response:
                        assert response.status == 200, (probe, await response.text())
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        stderr = "".join(seen) + err.decode()
        assert proc.returncode == 0, stderr
        assert key not in stderr
