"""Where the spawn payload comes from: the fw_cfg sysfs tree, or the JSON fallback file."""

from pathlib import Path

from child_agent.errors import PayloadInvalid
from shared_contract.payload import (
    FALLBACK_PAYLOAD_PATH,
    FW_CFG_PREFIX,
    GUEST_FW_CFG_ROOT,
    PayloadError,
    SpawnPayload,
    read_fw_cfg_tree,
    read_payload_file,
)

DEFAULT_FW_CFG_ROOT = Path(GUEST_FW_CFG_ROOT)
DEFAULT_PAYLOAD_FILE = Path(FALLBACK_PAYLOAD_PATH)


def read_payload(*, fw_cfg_root: Path | None = None, payload_file: Path | None = None) -> SpawnPayload:
    """Read the payload and check it is usable for a first run; PayloadInvalid (one line) if not.

    A payload without ``parent_url`` is valid: it means "not a spawned child".
    """
    try:
        payload = _read(fw_cfg_root, payload_file)
        payload.validate_for_first_run()
    except PayloadError as e:
        raise PayloadInvalid(str(e)) from e
    except OSError as e:
        raise PayloadInvalid(f"cannot read the spawn payload: {e.strerror or e}: {e.filename}") from e
    return payload


def _read(fw_cfg_root: Path | None, payload_file: Path | None) -> SpawnPayload:
    if payload_file is not None:
        return read_payload_file(payload_file)
    if fw_cfg_root is not None:
        if not fw_cfg_root.is_dir():
            raise PayloadError(f"fw_cfg root {fw_cfg_root} is not a directory")
        return read_fw_cfg_tree(fw_cfg_root)
    # Outside QEMU (or with the qemu_fw_cfg module not loaded) the fallback file carries the payload.
    if not (DEFAULT_FW_CFG_ROOT / FW_CFG_PREFIX).is_dir() and DEFAULT_PAYLOAD_FILE.is_file():
        return read_payload_file(DEFAULT_PAYLOAD_FILE)
    # Like the original agent: missing entries read as empty, so no tree means "not a spawned child".
    return read_fw_cfg_tree(DEFAULT_FW_CFG_ROOT)
