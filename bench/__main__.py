"""`python -m bench [name ...]`: run the benchmarks (all by default) and print a summary table.

Exit status 0 when every target is met, 1 when one is missed or a benchmark could not run.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable

from bench import accept, calibration, children_list, guest, handshake, heartbeat, plots, replica
from bench.common import BENCH_ROOT, Result

BENCHMARKS: dict[str, Callable[[], Result]] = {
    "accept": accept.run,
    "heartbeat": heartbeat.run,
    "handshake": handshake.run,
    "replica": replica.run,
    "children_list": children_list.run,
    "guest": guest.run,
}


def run_one(name: str) -> Result:
    print(f"\n== {name}", flush=True)
    began = time.monotonic()
    try:
        result = BENCHMARKS[name]()
    except Exception as e:  # one broken benchmark must not hide the others' figures
        traceback.print_exc()
        result = Result(name, error=f"{type(e).__name__}: {e}".splitlines()[0][:200])
    result.seconds = time.monotonic() - began
    return result


def summary(results: list[Result]) -> str:
    rows = [("BENCHMARK", "CHECK", "RATIO", "TARGET", "VERDICT", "MEASURED (same run)")]
    for result in results:
        if result.error is not None:
            rows.append((result.name, "-", "-", "-", "ERROR", result.error))
        for check in result.checks:
            side = "≥" if check.at_least else "≤"
            rows.append(
                (
                    result.name,
                    check.label,
                    f"{check.value:.2f}x",
                    f"{side} {check.target:g}x",
                    "PASS" if check.passed else "MISS",
                    check.basis,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    seconds = sum(r.seconds for r in results)
    lines.append(
        f"\n{len(results)} benchmark(s) in {seconds:.0f}s: "
        + ", ".join(f"{r.name} {r.verdict}" for r in results)
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="name", help=f"any of: {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    print(calibration.line(), flush=True)
    results = [run_one(name) for name in args.names or list(BENCHMARKS)]
    print("\n" + summary(results))
    plotted = plots.ratios(results, BENCH_ROOT / "ratios.svg")
    if plotted:
        print(f"plot of every verdict against its target: {plotted}")
    return 0 if all(r.verdict == "PASS" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
