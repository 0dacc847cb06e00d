"""guest: spawn → `active` with a real QEMU guest, against the same guest's bare boot, in one run.

Measured, alternating, ROUNDS times each (median):
  bare boot   QEMU started → the development guest's init says it booted (modules loaded, the
              project's 9p shares mounted, network up); the init then powers off. The same kernel,
              memory, vCPUs, shares and network as a spawned child's guest: boot to a shell.
  spawn       `POST children/spawn` with the `qemu` provisioner → the parent shows the child
              `active`: the guest's boot, the agent's first run reading fw_cfg and accepting
              through the forward, the child hub's start (its own PostgreSQL, Redis, migrations),
              enroll and the first heartbeat. Each round also shows how long the spawn request
              took (the parent prepares the guest: its initramfs, for a managed_child the child's
              database, and starts QEMU) and the guest's uptime when it booted, started the
              agent's first run and started the child hub.
Verdict, a ratio so machines of different speed compare: (spawn - bare boot) / bare boot, what the
handshake and the child's start add relative to the boot itself; target < 1 (DESIGN §8).
Without KVM this is TCG: every guest instruction is emulated, so Python's start-up in the guest
dominates what spawn adds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from bench.common import Result, median, running_hub, workdir
from hub.provisioning import guest, qemu

ROUNDS = int(os.environ.get("BENCH_GUEST_ROUNDS", "3"))
TARGET_RATIO = 1.0
TIMEOUT_S = 1800.0  # a bound for a hang under TCG on a loaded machine, not an expectation
TEMPLATE_VM = {"memory_mb": 2048, "cpus": 2}  # the powernode-hub template's vm settings
FAST = {"POWERNODE_FEDERATION_HEARTBEAT_INTERVAL_SECONDS": "1", "POWERNODE_PROVISIONER": "qemu"}


def bare_boot(base: Path, kernel: guest.GuestKernel, index: int) -> float:
    """Seconds from starting QEMU until the bare guest's init says it booted."""
    initrd = guest.build_initramfs(
        kernel,
        base / "bare.cpio",
        cache=guest.cache_dir(base),
        mode="managed_child",
        env={},
        relay_ports=[],
        bare=True,
    )
    serial = base / f"bare-{index}.log"
    command = [
        "qemu-system-x86_64",
        *("-accel", "tcg", "-m", str(TEMPLATE_VM["memory_mb"]), "-smp", str(TEMPLATE_VM["cpus"])),
        *("-display", "none", "-monitor", "none", "-serial", f"file:{serial}", "-no-reboot"),
        *("-kernel", str(kernel.path), "-initrd", str(initrd), "-append", qemu.DEVELOPMENT_APPEND),
        *guest.virtfs_args(guest.shared_dirs()),
        *guest.network_args(forwards=[], hostfwd={}),
    ]
    began = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        while guest.BOOTED not in (serial.read_text(errors="replace") if serial.exists() else ""):
            if process.poll() is not None or time.monotonic() - began > TIMEOUT_S:
                raise RuntimeError(f"the bare guest never booted; see {serial}")
            time.sleep(0.05)
        booted = time.monotonic() - began
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return booted


_MARKS = {
    "booted": re.compile(re.escape(guest.BOOTED) + r" ([0-9.]+) s"),
    "first run": re.compile(r"\[boot\] first run \(uptime ([0-9.]+) s\)"),
    "hub": re.compile(r"\[boot\] starting the child hub \(uptime ([0-9.]+) s\)"),
}


def console_marks(work_dir: Path) -> dict[str, float]:
    """The guest's uptime at each mark its console shows (booted, first run, hub start)."""
    text = qemu.console_text(work_dir)
    return {name: float(m.group(1)) for name, pattern in _MARKS.items() if (m := pattern.search(text))}


def spawn_to_active(hub: object) -> tuple[float, float, dict[str, float]]:
    """Seconds from the spawn request to `active`; of those, the spawn request itself (the parent
    prepares and starts the guest); and the guest's uptime marks from its console."""
    from hub.localhub import LocalHub

    assert isinstance(hub, LocalHub)
    began = time.monotonic()
    child = hub.spawn("managed_child")["child"]
    answered = time.monotonic() - began
    child = hub.wait_for(child["id"], "active", timeout=TIMEOUT_S)
    took = time.monotonic() - began
    marks = console_marks(Path(child["node_instance"]["details"]["work_dir"]))
    hub.api("DELETE", f"/api/v1/system/federation/children/{child['id']}/node").raise_for_status()
    return took, answered, marks


def run() -> Result:
    result = Result("guest")
    kernel = guest.find_kernel()
    if shutil.which("qemu-system-x86_64") is None or kernel is None or not guest.BUSYBOX.is_file():
        result.error = "needs qemu-system-x86_64, a kernel in /boot and busybox-static"
        return result
    base = workdir("guest")
    result.say(f"TCG (no KVM), {TEMPLATE_VM['cpus']} vCPUs, {TEMPLATE_VM['memory_mb']} MiB, {ROUNDS} rounds")
    bare: list[float] = []
    spawned: list[float] = []
    with running_hub(base / "parent", FAST) as hub:
        for index in range(ROUNDS):
            bare.append(bare_boot(base, kernel, index))
            result.say(f"round {index + 1}: bare boot to shell {bare[-1]:.1f} s")
            took, answered, marks = spawn_to_active(hub)
            spawned.append(took)
            shown = ", ".join(f"{name} {at:.1f} s" for name, at in marks.items())
            result.say(
                f"round {index + 1}: spawn → active {took:.1f} s (spawn answered in {answered:.1f} s; "
                f"guest uptime at: {shown})"
            )
    bare_s, spawn_s = median(bare), median(spawned)
    result.say(f"median bare boot {bare_s:.1f} s, median spawn → active {spawn_s:.1f} s")
    result.ratio("(spawn→active - boot) / bare boot", spawn_s - bare_s, bare_s, TARGET_RATIO,
                 at_least=False, unit="s", baseline_name="bare boot to shell")  # fmt: skip
    return result
