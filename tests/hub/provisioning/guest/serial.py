"""Read back what the guest's /init printed, and lay it out as the guest's fw_cfg sysfs tree."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from tests.hub.provisioning.guest.initramfs import BEGIN, DONE, END


def parse_serial(text: str) -> dict[str, bytes]:
    """Return key to the exact bytes the guest read; AssertionError if the framing is broken."""
    entries: dict[str, bytes] = {}
    key: str | None = None
    chunks: list[str] = []
    for line in (raw.strip() for raw in text.splitlines()):  # the serial line ends in \r\n
        if key is None and line.startswith(f"{BEGIN} "):
            key, chunks = line.removeprefix(f"{BEGIN} "), []
        elif key is not None and line == f"{END} {key}":
            entries[key] = _decode(key, chunks)
            key = None
        elif key is not None:
            chunks.append(line)
    assert key is None, f"serial log ends inside entry {key!r}"
    assert DONE in text, "the guest never finished reading fw_cfg"
    return entries


def _decode(key: str, chunks: list[str]) -> bytes:
    try:
        return base64.b64decode("".join(chunks), validate=True)
    except binascii.Error as e:
        raise AssertionError(f"entry {key!r} is not clean base64 on the serial console") from e


def write_sysfs_tree(entries: dict[str, bytes], root: Path) -> Path:
    """Write <root>/opt/com.powernode/<key>/raw for each entry, as the guest saw them; return root."""
    for key, value in entries.items():
        raw = root / "opt" / "com.powernode" / key / "raw"
        raw.parent.mkdir(parents=True)
        raw.write_bytes(value)
    return root
