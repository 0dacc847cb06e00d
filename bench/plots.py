"""Pictures where people would rather look than read: verdict ratios, and the soak over time.

matplotlib (the `bench` extra) draws SVGs into `.bench/`; without it the figures are only printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import Result


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no plots drawn")
        return None
    return plt


def ratios(results: Sequence[Result], path: Path) -> Path | None:
    """One bar per verdict: its ratio divided by its target, so 1 is the line to cross (bars are
    oriented so that longer is better whichever side the target is on)."""
    checks = [(r.name, c) for r in results for c in r.checks]
    plt = _pyplot()
    if plt is None or not checks:
        return None
    labels = [f"{name}: {c.label}" for name, c in checks]
    margins = [c.margin for _, c in checks]
    colors = ["#3ebd93" if c.passed else "#cf1124" for _, c in checks]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(checks) + 1.2))
    ax.barh(labels, margins, color=colors)
    ax.axvline(1.0, color="#102a43", linestyle="--", linewidth=1)
    for y, (margin, (_, c)) in enumerate(zip(margins, checks, strict=True)):
        side = "≥" if c.at_least else "≤"
        ax.text(margin, y, f"  {c.value:.2f}x ({side} {c.target:g}x)", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("margin: measured ratio / target ratio (> 1 passes)")
    ax.set_title("make bench: every verdict against a baseline measured in the same run")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.savefig(path.with_suffix(".png"), dpi=90)
    plt.close(fig)
    return path


def soak(windows: Sequence[dict[str, float]], path: Path, *, target_p99_ms: float) -> Path | None:
    """Latency (p50, p99) and the parent's RSS over the soak, one point per window."""
    plt = _pyplot()
    if plt is None or not windows:
        return None
    minutes = [w["t"] / 60 for w in windows]
    fig, (lat, rss) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    lat.plot(minutes, [w["p50"] for w in windows], label="p50", color="#2680c2")
    lat.plot(minutes, [w["p99"] for w in windows], label="p99", color="#cf1124")
    lat.axhline(
        target_p99_ms, color="#102a43", linestyle="--", linewidth=1, label=f"p99 target {target_p99_ms:g} ms"
    )
    lat.set_ylabel("heartbeat latency (ms)")
    lat.legend(loc="upper right")
    rss.plot(minutes, [w["rss_mb"] for w in windows], color="#3ebd93")
    rss.set_ylabel("parent hub RSS (MiB)")
    rss.set_xlabel("minutes into the soak")
    rss.set_ylim(bottom=0)
    fig.suptitle("soak: 100,000 children heartbeating every 30 s")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    fig.savefig(path.with_suffix(".png"), dpi=90)
    plt.close(fig)
    return path
