"""What every benchmark shares: results and targets, percentiles, hubs, the hub's own database."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hub.embedded.postgres import PostgresServer
from hub.embedded.process import pid_alive, wait_until
from hub.localhub import LocalHub

BENCH_ROOT = Path(__file__).resolve().parent.parent / ".bench"
ROOT = "/api/v1/system"


@dataclass(frozen=True)
class Check:
    """One verdict: a ratio `value` (ours / a baseline measured in the same run) against `target`,
    where `at_least` says which side passes; `basis` says what was divided by what, in figures."""

    label: str
    value: float
    target: float
    at_least: bool
    basis: str = ""

    @property
    def passed(self) -> bool:
        return self.value >= self.target if self.at_least else self.value <= self.target

    @property
    def margin(self) -> float:
        """How far inside the target (> 1) or outside it (< 1) the measurement is."""
        if self.at_least:
            return self.value / self.target
        return self.target / self.value if self.value else float("inf")

    def __str__(self) -> str:
        side = "≥" if self.at_least else "≤"
        verdict = "PASS" if self.passed else "MISS"
        return (
            f"{self.label:<40} {self.value:7.2f}x  target {side} {self.target:g}x  {verdict}  ({self.basis})"
        )


@dataclass
class Result:
    name: str
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def say(self, line: str) -> None:
        """Print a figure as soon as it is known: benchmarks take a while."""
        print(f"  {line}", flush=True)

    def ratio(
        self,
        label: str,
        ours: float,
        baseline: float,
        target: float,
        *,
        at_least: bool,
        unit: str,
        baseline_name: str,
        value: float | None = None,
    ) -> Check:
        """A verdict on ours / baseline, both measured in this run; the absolute figures go with it.
        `value` overrides the plain quotient (e.g. a median of paired per-round ratios)."""
        if value is None:
            value = ours / baseline if baseline else float("inf")
        basis = f"{fmt(ours)} {unit} vs {baseline_name} {fmt(baseline)} {unit}"
        check = Check(label, value, target, at_least, basis)
        self.checks.append(check)
        print(f"  {check}", flush=True)
        return check

    @property
    def verdict(self) -> str:
        if self.error is not None:
            return "ERROR"
        return "PASS" if self.checks and all(c.passed for c in self.checks) else "MISS"


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 200 samples is the 198th)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def workdir(name: str) -> Path:
    """A fresh `.bench/<name>`; what a previous run left there is removed first."""
    path = BENCH_ROOT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@contextmanager
def running_hub(data_dir: Path, env: dict[str, str]) -> Iterator[LocalHub]:
    """A `powernode-hub serve` on the embedded default, stopped (children first) however we leave."""
    hub = LocalHub(data_dir)
    try:
        yield hub.start(env, timeout=120)
    finally:
        hub.halt_children()
        hub.stop()


def hub_database_url(hub: LocalHub) -> str:
    """The hub's embedded PostgreSQL, as its superuser: for loading data beside the API."""
    return PostgresServer(hub.data_dir / "postgres").url("powernode")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGINT to the process we started, SIGKILL to its group if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_answer(process: subprocess.Popen[bytes], probe: Callable[[], bool], timeout: float = 30) -> None:
    """Until `probe()` is true; fail at once if the process died."""

    def ready() -> bool:
        if not pid_alive(process.pid) or process.poll() is not None:
            raise RuntimeError(f"process {process.args!r} exited with {process.returncode}")
        try:
            return probe()
        except httpx.TransportError:
            return False

    if not wait_until(ready, timeout, interval=0.1):
        raise RuntimeError(f"process {process.args!r} did not answer within {timeout:.0f}s")


class Stopwatch:
    """perf_counter seconds since start."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def start_baseline(
    module: str, args: list[str], log: Path, *, uvloop: bool
) -> tuple[subprocess.Popen[bytes], str]:
    """A baseline server (`python -m <module> --port P <args>`) on a free port, logging to `log`."""
    from hub.embedded.process import free_port

    port = free_port()
    argv = [sys.executable, "-m", module, "--port", str(port), *args, *(["--uvloop"] if uvloop else [])]
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"
