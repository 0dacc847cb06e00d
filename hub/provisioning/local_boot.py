"""The child's init in a local "VM": the agent's first run (oneshot), then the child hub — only if
it succeeded. (The development QEMU guest's /init does the same in shell: hub.provisioning.guest.)

Mirrors the systemd units of the child image (deploy/systemd): first-run is `Before=` the hub,
and the hub `Requires=` it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hub.embedded.process import free_port


def _tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_boot", description=__doc__)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--federation-port", type=int, required=True)
    parser.add_argument("--spawn-mode", default="managed_child")
    args = parser.parse_args(argv)
    data_dir = args.work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    first_run = [_tool("powernode-child-agent"), "first-run", "--state-dir", str(data_dir / "agent")]
    first_run += ["--fw-cfg-root", str(args.work_dir / "by_name")]  # a local "VM" keeps it in a directory
    if args.spawn_mode == "cluster_member":
        first_run += [
            "--standby-dir",
            str(args.work_dir / "standby" / "pgdata"),
            "--standby-port",
            str(free_port()),
        ]
    print(f"[boot] first run: {' '.join(first_run[1:])}", flush=True)
    code = subprocess.call(first_run)
    if code != 0:
        print(f"[boot] first run failed (exit {code}); the child hub is not started", flush=True)
        return code
    serve = [
        _tool("powernode-hub"),
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(args.port),
        "--federation-port",
        str(args.federation_port),
    ]
    print(f"[boot] starting the child hub: {' '.join(serve[1:])}", flush=True)
    os.execv(serve[0], serve)
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
