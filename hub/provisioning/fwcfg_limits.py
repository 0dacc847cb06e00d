"""QEMU's fw_cfg limits and the one staging step shared by the QEMU command line and libvirt XML.

Limits, each refused with a ProvisionError before anything is staged or started:

- Names: at most ``FW_CFG_NAME_MAX`` (55) bytes including the ``opt/`` prefix; QEMU's file directory
  holds 56 bytes with the NUL. User entries must live under ``opt/`` or QEMU warns and the firmware
  may ignore them.
- Entry count: QEMU 7.2 (Debian 12, default ``pc`` machine, ``-accel tcg``) has 32 file slots and
  fills the rest itself; measured: 19 user entries boot with ``-kernel``/``-initrd`` (with or without
  a disk and a user-mode NIC), 20 without a kernel, and one more aborts QEMU with
  ``Assertion `index < fw_cfg_file_slots(s)' failed``. We allow 19 in every configuration.
- Total size: 64 KiB. The guest's ``qemu_fw_cfg`` driver reads ``raw`` through the byte-wide I/O
  port, and its read time grows with the square of the size; a spawn payload is a few KiB.

Staged files are mode 0600 in a 0700 directory: only the hypervisor's user (the hub's) can read the
acceptance token in them.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from hub.provisioning.base import ProvisionError
from shared_contract.payload import FW_CFG_NAME_MAX, SpawnPayload, stage_qemu_files

FW_CFG_MAX_USER_ENTRIES = 19
FW_CFG_MAX_TOTAL_BYTES = 64 * 1024
FW_CFG_USER_PREFIX = "opt/"
FW_CFG_DIR_MODE = 0o700


def check_fw_cfg_limits(sizes: Mapping[str, int]) -> None:
    """Refuse fw_cfg entries (name to size in bytes) that QEMU or the guest driver cannot carry."""
    for name in sizes:
        if not name.startswith(FW_CFG_USER_PREFIX):
            raise ProvisionError(f"fw_cfg name {name!r} must start with {FW_CFG_USER_PREFIX!r}")
        if len(name.encode()) > FW_CFG_NAME_MAX:
            raise ProvisionError(f"fw_cfg name {name!r} is longer than {FW_CFG_NAME_MAX} characters")
    if len(sizes) > FW_CFG_MAX_USER_ENTRIES:
        raise ProvisionError(
            f"{len(sizes)} fw_cfg entries exceed QEMU's limit of {FW_CFG_MAX_USER_ENTRIES} user entries"
        )
    total = sum(sizes.values())
    if total > FW_CFG_MAX_TOTAL_BYTES:
        raise ProvisionError(f"fw_cfg payload is {total} bytes, over the {FW_CFG_MAX_TOTAL_BYTES}-byte cap")


def payload_sizes(payload: SpawnPayload) -> dict[str, int]:
    """Return fw_cfg name to value size for the payload's non-empty keys."""
    try:
        entries = payload.to_fw_cfg_entries()
    except ValueError as e:  # the message names the key, never a value
        raise ProvisionError(f"Cannot inject the payload through fw_cfg: {e}") from e
    return {name: len(value) for name, value in entries.items()}


def staged_sizes(files: Mapping[str, Path]) -> dict[str, int]:
    """Return fw_cfg name to file size for staged files; a missing file is a ProvisionError."""
    try:
        return {name: path.stat().st_size for name, path in files.items()}
    except FileNotFoundError as e:
        raise ProvisionError(f"Staged fw_cfg file {e.filename} is missing") from e


def stage_fw_cfg(payload: SpawnPayload, directory: Path) -> dict[str, Path]:
    """Check the limits, then write one 0600 file per non-empty key in a 0700 directory."""
    check_fw_cfg_limits(payload_sizes(payload))
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(FW_CFG_DIR_MODE)  # an existing directory keeps its old mode otherwise
    return stage_qemu_files(payload, directory)


def remove_staged(directory: Path) -> None:
    """Remove the staged files (they hold the acceptance token) and their directory."""
    shutil.rmtree(directory, ignore_errors=True)
