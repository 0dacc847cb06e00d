"""soak: 100,000 children heartbeating every 30 s (≈ 3,300/s) against one parent for 10 minutes,
while its findings sweep, slot janitor and an operator reading the children list keep running.

`python -m bench.soak` (`make soak`; SOAK_SECONDS and SOAK_PEERS shorten it). The load is wrk,
paced: each connection waits between requests so the fleet beats at PEERS / 30 per second, each
thread walking its share of the peers in order, every window picking up where the last left off.
Per 30 s window it records p50/p99 (wrk), the parent's RSS and its CPU per heartbeat; at the end,
that every peer's `last_heartbeat_at` advanced and none went `degraded`, and how long each findings
sweep over the fleet took (the hub's own job log). Writes .bench/soak.svg.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from bench import calibration, plots
from bench.common import BENCH_ROOT, ROOT, hub_database_url, median, running_hub, workdir
from bench.heartbeat import BODY, CN_HEADER, database_now, insert_peers
from bench.machine import cpu_window
from bench.wrk import rotating_header_script, run_wrk
from hub.federation.peering.router import HEARTBEAT_PATH

PEERS = int(os.environ.get("SOAK_PEERS", "100000"))
DURATION = int(os.environ.get("SOAK_SECONDS", "600"))
INTERVAL = 30.0  # every child beats once per interval
WINDOW = 30  # seconds per wrk run (one measurement point)
THREADS, CONNECTIONS = 2, 100
STALE_SECONDS = 90  # three missed intervals: stricter than the default, so a lapse shows
TARGET_P99_MS = 25.0
TARGET_TREND = 1.25  # p99 of the last third / p99 of the first third
TARGET_RSS_GROWTH = 1.2  # RSS at the end / RSS after the first window
TARGET_SWEEP_SECONDS = 1.0
HUB_ENV = {
    "POWERNODE_FEDERATION_TRUSTED_PROXIES": '["127.0.0.1/32"]',
    "POWERNODE_FEDERATION_CLIENT_CERT_HEADER": CN_HEADER,
    "POWERNODE_PROVISIONER": "manual",
    "POWERNODE_FEDERATION_HEARTBEAT_STALE_SECONDS": str(STALE_SECONDS),
    "POWERNODE_FEDERATION_FINDINGS_INTERVAL_SECONDS": "30",
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def fleet_state(database_url: str, since: object) -> tuple[int, int, int]:
    """(peers beaten since `since`, peers degraded, open stale-heartbeat findings)."""
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            "SELECT count(*) FILTER (WHERE last_heartbeat_at > $1) AS beaten, "
            "count(*) FILTER (WHERE status = 'degraded') AS degraded FROM federation_peer "
            "WHERE name LIKE 'bench-heartbeat-%'",
            since,
        )
        stale = await connection.fetchval(
            "SELECT count(*) FROM finding WHERE kind = 'peer_heartbeat_stale' AND resolved_at IS NULL"
        )
    finally:
        await connection.close()
    return int(row["beaten"]), int(row["degraded"]), int(stale)


def sweep_durations(log: Path, since: datetime) -> list[float]:
    """Durations of the findings sweeps the hub ran after `since` (its own structured job log)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"federation_findings_sweep"' not in line or "duration_seconds" not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        at = datetime.fromisoformat(str(entry.get("time", "1970-01-01T00:00:00+00:00")))
        if entry.get("function") == "federation_findings_sweep" and at >= since:
            found.append(float(entry["duration_seconds"]))
    return found


class ListReader(threading.Thread):
    """An operator reading the first page of the children list every 5 s during the soak."""

    def __init__(self, url: str, headers: dict[str, str]):
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.latencies: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30) as client:
            while not self.stop.wait(5):
                began = time.perf_counter()
                response = client.get(f"{ROOT}/federation/children", params={"limit": "50"})
                self.latencies.append((time.perf_counter() - began) * 1000)
                self.failures += response.status_code != 200


def main() -> int:
    print(calibration.line(), flush=True)
    base = workdir("soak")
    rate = PEERS / INTERVAL
    delay_ms = max(0.0, CONNECTIONS / rate * 1000 - 1.0)
    windows: list[dict[str, float]] = []
    with running_hub(base / "parent", HUB_ENV) as hub:
        database_url = hub_database_url(hub)
        ids = asyncio.run(insert_peers(database_url, PEERS))
        values = [f"fed:{i}" for i in ids]
        script = rotating_header_script(
            base / "soak.lua", header=CN_HEADER, values=values, body=BODY, threads=THREADS, delay_ms=delay_ms
        )
        # The offset argument lets each window continue where the previous one stopped.
        script.write_text(
            script.read_text().replace("  i = first\n", "  i = first + tonumber(args[1] or 0)\n")
        )
        pid = hub.process.pid if hub.process else 0
        since = asyncio.run(database_now(database_url))
        started = time.monotonic()
        started_at = datetime.now(UTC)
        print(
            f"{PEERS:,} enrolled peers, one heartbeat each per {INTERVAL:.0f}s (target {rate:,.0f}/s): wrk "
            f"-t{THREADS} -c{CONNECTIONS}, {delay_ms:.1f} ms pause per connection; {DURATION}s in "
            f"{WINDOW}s windows; stale threshold {STALE_SECONDS}s, findings sweep every 30s",
            flush=True,
        )
        reader = ListReader(hub.url, hub.headers)
        reader.start()
        sent = 0
        try:
            while time.monotonic() - started < DURATION:
                with cpu_window(watch=pid) as cpu:
                    run = run_wrk(
                        hub.url + HEARTBEAT_PATH,
                        script,
                        threads=THREADS,
                        connections=CONNECTIONS,
                        seconds=WINDOW,
                        script_args=[str(sent // THREADS * THREADS), f"{delay_ms:.1f}"],
                    )
                sent += run.requests
                # wrk's connections are closed loops: each waits for its answer, then pauses. Give the
                # next window the pause that, after this window's answer times, beats at the fleet's rate.
                answer_ms = max(0.0, CONNECTIONS / max(run.rate, 1.0) * 1000 - delay_ms)
                delay_ms = max(0.0, CONNECTIONS / rate * 1000 - answer_ms)
                window = {
                    "t": time.monotonic() - started,
                    "rate": run.rate,
                    "p50": run.p50,
                    "p99": run.p99,
                    "rss_mb": rss_mb(pid),
                    "cpu_us": cpu.watched * 1e6 / max(run.requests, 1),
                    "errors": run.errors,
                }
                windows.append(window)
                print(
                    f"  {window['t']:6.0f}s  {run.rate:7,.0f}/s  p50 {run.p50:6.2f} ms  "
                    f"p99 {run.p99:6.2f} ms  "
                    f"RSS {window['rss_mb']:6.1f} MiB  hub CPU {window['cpu_us']:4.0f} µs/heartbeat  "
                    f"errors {run.errors}  next pause {delay_ms:.1f} ms  "
                    f"(other work on the machine: {cpu.foreign_share:.0%})",
                    flush=True,
                )
        finally:
            reader.stop.set()
            reader.join()
        beaten, degraded, stale = asyncio.run(fleet_state(database_url, since))
        sweeps = sweep_durations(hub.log, started_at)
    third = max(1, len(windows) // 3)
    trend = median([w["p99"] for w in windows[-third:]]) / median([w["p99"] for w in windows[:third]])
    growth = windows[-1]["rss_mb"] / windows[0]["rss_mb"]
    worst_p99 = max(w["p99"] for w in windows)
    errors = sum(int(w["errors"]) for w in windows)
    checks = [
        (f"every peer's heartbeat advanced: {beaten:,}/{PEERS:,}", beaten == PEERS),
        (f"no peer degraded: {degraded} degraded, {stale} open stale findings", degraded == 0 and stale == 0),
        (f"no failed heartbeat: {errors}", errors == 0),
        (f"p99 per window < {TARGET_P99_MS:g} ms: worst {worst_p99:.2f} ms", worst_p99 < TARGET_P99_MS),
        (
            f"no upward p99 trend (last third / first third ≤ {TARGET_TREND}): {trend:.2f}",
            trend <= TARGET_TREND,
        ),
        (f"flat RSS (end / first window ≤ {TARGET_RSS_GROWTH}): {growth:.2f}", growth <= TARGET_RSS_GROWTH),
        (
            f"findings sweep over the fleet < {TARGET_SWEEP_SECONDS:g}s: {len(sweeps)} sweeps, worst "
            f"{max(sweeps, default=float('nan')):.3f}s",
            bool(sweeps) and max(sweeps) < TARGET_SWEEP_SECONDS,
        ),
        (
            f"children list during the soak: {len(reader.latencies)} reads, p50 "
            f"{median(reader.latencies) if reader.latencies else float('nan'):.1f} ms, "
            f"{reader.failures} failed",
            bool(reader.latencies) and reader.failures == 0,
        ),
    ]
    rate_median = median([w["rate"] for w in windows])
    cpu_median = median([w["cpu_us"] for w in windows])
    print(
        f"\nsoak: {len(windows)} windows; median rate {rate_median:,.0f}/s; "
        f"hub CPU {cpu_median:.0f} µs per heartbeat (median of windows)"
    )
    for label, passed in checks:
        print(f"  {'PASS' if passed else 'MISS'}  {label}")
    plotted = plots.soak(windows, BENCH_ROOT / "soak.svg", target_p99_ms=TARGET_P99_MS)
    (BENCH_ROOT / "soak.json").write_text(json.dumps(windows, indent=1))
    if plotted:
        print(f"plot: {plotted}; figures: {BENCH_ROOT / 'soak.json'}")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
