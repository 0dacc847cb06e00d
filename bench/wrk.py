"""Driving `wrk` (Debian's; a Python load generator cannot reach these rates on 2 cores)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_LATENCY = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class WrkRun:
    requests: int
    rate: float
    latency_ms: dict[int, float]  # percentile → milliseconds
    errors: int  # non-2xx answers plus socket errors
    output: str

    @property
    def p50(self) -> float:
        return self.latency_ms[50]

    @property
    def p99(self) -> float:
        return self.latency_ms[99]


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: apt-get update && apt-get install -y wrk")
    return found


def run_wrk(
    url: str,
    script: Path,
    *,
    threads: int,
    connections: int,
    seconds: int,
    script_args: list[str] | None = None,
) -> WrkRun:
    """One wrk run against a loopback URL (the only place load may go)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"load generators target 127.0.0.1 only, not {url}")
    argv = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
        *(["--", *script_args] if script_args else []),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout[-500:]}")
    return parse(done.stdout)


def parse(output: str) -> WrkRun:
    requests = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if requests is None or rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    latency = {int(p): float(v) * _UNITS[u] for p, v, u in _LATENCY.findall(output)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in sockets.groups()) if sockets else 0
    )
    return WrkRun(int(requests.group(1)), float(rate.group(1)), latency, errors, output)


def rotating_header_script(
    path: Path,
    *,
    header: str,
    values: list[str],
    body: str,
    threads: int = 2,
    delay_ms: float | None = None,
) -> Path:
    """A wrk script POSTing `body` with `header` cycling through `values` (read from a file beside
    the script: 100,000 of them are too many constants for one Lua chunk). Thread k of T sends
    values k, k+T, k+2T, … so threads never send the same value at once; with `delay_ms`, each
    connection waits that long between requests (a paced load rather than a flood)."""
    listing = path.with_suffix(".values")
    listing.write_text("\n".join(values) + "\n")
    # The pause may be given anew per run as the script's second argument (`soak` corrects it).
    pacing = "function delay()\n  return pause\nend\n" if delay_ms is not None else ""
    path.write_text(
        f"""local values = {{}}
for line in io.lines("{listing}") do values[#values + 1] = line end
local n = #values
local threads = 0
local i = 0

function setup(thread)
  thread:set("first", threads)
  threads = threads + 1
end

function init(args)
  step = {threads}
  i = first
  pause = tonumber(args[2] or "{delay_ms or 0}")
end

wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"

function request()
  i = (i + step) % n
  return wrk.format(nil, nil, {{["{header}"] = values[i + 1]}})
end
{pacing}"""
    )
    return path
