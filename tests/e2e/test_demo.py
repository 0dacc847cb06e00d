"""`make demo` (`python -m hub.demo`): a parent and one child per mode reach `active`, the table
shows both sides' grants, the member's standby streams, and nothing it started is left running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.processes import processes_in

pytestmark = pytest.mark.e2e


def test_the_demo_brings_every_mode_to_active_and_leaves_nothing_running(scratch_dir: Path):
    data_dir = scratch_dir / "demo"

    done = subprocess.run(
        [sys.executable, "-m", "hub.demo", "--data-dir", str(data_dir), "--timeout", "600"],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    [header] = [i for i, line in enumerate(lines) if line.startswith("MODE")]
    rows = {line.split()[0]: line.split() for line in lines[header + 1 : header + 4]}
    assert set(rows) == {"managed_child", "autonomous_peer", "cluster_member"}
    assert all(row[1] == "active" for row in rows.values())
    assert "held managed_child_operator" in lines[header + 1 + list(rows).index("managed_child")]
    assert "granted managed_child_operator" in lines[header + 1 + list(rows).index("managed_child")]
    assert any("standby streaming: row" in line and "read back on the member" in line for line in lines)
    assert "All children active" in done.stdout
    assert processes_in(data_dir) == []
