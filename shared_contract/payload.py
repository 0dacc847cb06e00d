"""The spawn payload the provisioner injects through QEMU fw_cfg (or the JSON fallback file).

Readers behave like the original Go agent: values are trimmed of surrounding whitespace, a missing
(or empty) entry is "" (contract_version alone defaults to "v1"), unknown entries are ignored, and an
empty ``parent_url`` means "not a spawned child". Writers write values exactly as given and skip
empty ones, so a round trip compares trimmed values (a PEM loses its trailing newline).
"""

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared_contract._files import write_private
from shared_contract.version import CONTRACT_VERSION_LABEL, parse_contract_version

FW_CFG_PREFIX = "opt/com.powernode/"
FW_CFG_NAME_MAX = 55  # QEMU's FW_CFG_MAX_FILE_PATH is 56 bytes including the NUL
FALLBACK_PAYLOAD_PATH = "/etc/powernode/federation-payload.json"
GUEST_FW_CFG_ROOT = "/sys/firmware/qemu_fw_cfg/by_name"
SPAWN_MODES = ("managed_child", "autonomous_peer", "cluster_member")
PLAIN_HTTP_PROVISIONERS = ("local", "dev")
PEM_CERTIFICATE_BEGIN = "-----BEGIN CERTIFICATE-----"
PEM_CERTIFICATE_END = "-----END CERTIFICATE-----"


class PayloadError(ValueError):
    """The payload cannot be read or is not usable for a first run; the message is one line."""


def fw_cfg_name(key: str) -> str:
    """Return the fw_cfg entry name of a payload key, refusing names QEMU cannot carry."""
    if not key or "/" in key or "," in key:
        raise ValueError(f"Invalid fw_cfg key {key!r}: must be non-empty without '/' or ','")
    name = FW_CFG_PREFIX + key
    if len(name.encode()) > FW_CFG_NAME_MAX:
        raise ValueError(f"fw_cfg name {name!r} is longer than {FW_CFG_NAME_MAX} bytes")
    return name


class SpawnPayload(BaseModel):
    """One string per fw_cfg key; keys are the field names, and every value defaults to ""."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    parent_url: str = ""
    acceptance_token: str = Field(default="", repr=False)
    spawn_mode: str = ""
    parent_peer_id: str = ""
    contract_version: str = CONTRACT_VERSION_LABEL
    instance_uuid: str = ""
    instance_name: str = ""
    ca_pem: str = ""
    platform_url: str = ""
    child_template_id: str = ""
    token_expires_at: str = ""
    provisioner: str = ""
    region: str = ""
    # The operator who spawned the child (the original records the initiating user's id).
    initiated_by_user_id: str = ""

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Return every payload key, in field order."""
        return tuple(cls.model_fields)

    @property
    def is_spawned_child(self) -> bool:
        """Whether this payload asks for a first run (the original: parent_url is non-empty)."""
        return bool(self.parent_url.strip())

    @property
    def allows_plain_http(self) -> bool:
        """Whether the agent may talk to the parent over plain http (local/dev provisioners only)."""
        return self.provisioner.strip() in PLAIN_HTTP_PROVISIONERS

    def token_expiry(self) -> datetime | None:
        """Return token_expires_at as a datetime, or None when absent."""
        value = self.token_expires_at.strip()
        return datetime.fromisoformat(value) if value else None

    def trimmed(self) -> "SpawnPayload":
        """Return a copy read the way the original agent reads: values trimmed, empty = default."""
        return _build({k: v.strip() for k, v in self.model_dump().items() if v.strip()})

    def non_empty(self) -> dict[str, str]:
        """Return the keys that carry a value; only these are written to fw_cfg."""
        return {key: value for key, value in self.model_dump().items() if value}

    def to_fw_cfg_entries(self) -> dict[str, bytes]:
        """Map fw_cfg entry name to the UTF-8 bytes of each non-empty field."""
        return {fw_cfg_name(key): value.encode() for key, value in self.non_empty().items()}

    def to_json(self) -> str:
        """Serialise as the JSON fallback file: one object with every key."""
        return json.dumps(self.model_dump(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "SpawnPayload":
        """Parse the JSON fallback object exactly (missing or null keys are ""); PayloadError if bad."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PayloadError(
                f"Payload is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
            ) from e
        if not isinstance(data, dict):
            raise PayloadError(f"Payload JSON must be an object, not {type(data).__name__}")
        return _build({k: v for k, v in data.items() if v is not None})

    def validate_for_first_run(self) -> None:
        """Raise PayloadError naming every problem that would make the first run fail.

        A payload that is not a spawned child (empty parent_url) has nothing to validate.
        """
        if not self.is_spawned_child:
            return
        payload = self.trimmed()
        problems = [problem for check in _FIRST_RUN_CHECKS if (problem := check(payload))]
        if problems:
            raise PayloadError("Invalid spawn payload: " + "; ".join(problems))


def _build(values: dict[str, Any]) -> SpawnPayload:
    """Validate payload values, turning a pydantic error into a one-line PayloadError."""
    try:
        return SpawnPayload.model_validate(values)
    except ValidationError as e:
        keys = ", ".join(str(err["loc"][0]) for err in e.errors())
        raise PayloadError(f"Payload values must be strings: {keys}") from e


def _check_token(payload: SpawnPayload) -> str | None:
    return None if payload.acceptance_token else "acceptance_token is empty"


def _check_spawn_mode(payload: SpawnPayload) -> str | None:
    if payload.spawn_mode in SPAWN_MODES:
        return None
    return f"spawn_mode {payload.spawn_mode!r} is not one of {', '.join(SPAWN_MODES)}"


def _check_parent_url(payload: SpawnPayload) -> str | None:
    try:
        parts = urlsplit(payload.parent_url)
        absolute = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        absolute = False
    if not absolute:
        return f"parent_url {payload.parent_url!r} is not an absolute http(s) URL"
    if parts.scheme == "http" and not payload.allows_plain_http:
        return f"parent_url uses plain http but provisioner {payload.provisioner!r} is not local/dev"
    return None


def _check_contract_version(payload: SpawnPayload) -> str | None:
    try:
        parse_contract_version(payload.contract_version)
    except ValueError:
        return f"contract_version {payload.contract_version!r} is not a version like 'v1'"
    return None


def _check_ca_pem(payload: SpawnPayload) -> str | None:
    pem = payload.ca_pem
    if not pem or (PEM_CERTIFICATE_BEGIN in pem and PEM_CERTIFICATE_END in pem):
        return None
    return "ca_pem is not a PEM certificate block"


def _check_token_expiry(payload: SpawnPayload) -> str | None:
    try:
        payload.token_expiry()
    except ValueError:
        return f"token_expires_at {payload.token_expires_at!r} is not an ISO-8601 timestamp"
    return None


_FIRST_RUN_CHECKS: tuple[Callable[[SpawnPayload], str | None], ...] = (
    _check_token,
    _check_spawn_mode,
    _check_parent_url,
    _check_contract_version,
    _check_ca_pem,
    _check_token_expiry,
)


def _write_entries(payload: SpawnPayload, path_of: Callable[[str], Path]) -> dict[str, Path]:
    """Write each non-empty key to path_of(key) (0600, atomic); remove files of empty keys."""
    values = payload.non_empty()
    written: dict[str, Path] = {}
    for key in SpawnPayload.keys():
        path = path_of(key)
        if key in values:
            write_private(path, values[key].encode())
            written[fw_cfg_name(key)] = path
        else:
            path.unlink(missing_ok=True)
    return written


def write_fw_cfg_tree(payload: SpawnPayload, root: Path) -> dict[str, Path]:
    """Write the guest's sysfs view, <root>/opt/com.powernode/<key>/raw, for non-empty keys."""
    return _write_entries(payload, lambda key: root / fw_cfg_name(key) / "raw")


def stage_qemu_files(payload: SpawnPayload, directory: Path) -> dict[str, Path]:
    """Write <directory>/opt_com.powernode_<key> files for QEMU; return fw_cfg name to path."""
    return _write_entries(payload, lambda key: directory / fw_cfg_name(key).replace("/", "_"))


def qemu_fw_cfg_args(staged: dict[str, Path]) -> list[str]:
    """Return the QEMU command-line arguments that inject staged files (commas escaped)."""
    args: list[str] = []
    for name, path in staged.items():
        args += ["-fw_cfg", f"name={name},file={str(path).replace(',', ',,')}"]
    return args


def _read_entry(root: Path, key: str) -> str:
    """Return the trimmed value of one fw_cfg entry, "" when the file is missing."""
    try:
        raw = (root / fw_cfg_name(key) / "raw").read_bytes()
    except FileNotFoundError:
        return ""
    try:
        return raw.decode().strip()  # UTF-8, Python's default
    except UnicodeDecodeError as e:
        raise PayloadError(f"fw_cfg entry {key!r} is not valid UTF-8") from e


def read_fw_cfg_tree(root: Path = Path(GUEST_FW_CFG_ROOT)) -> SpawnPayload:
    """Read the payload from the guest's fw_cfg sysfs tree the way the original agent does."""
    values = {key: _read_entry(root, key) for key in SpawnPayload.keys()}
    return _build({key: value for key, value in values.items() if value})


def read_payload_file(path: Path = Path(FALLBACK_PAYLOAD_PATH)) -> SpawnPayload:
    """Read the JSON fallback file, trimmed like fw_cfg values; PayloadError if unusable."""
    try:
        text = path.read_bytes().decode()  # UTF-8, Python's default
    except UnicodeDecodeError as e:
        raise PayloadError(f"Payload file {path} is not valid UTF-8") from e
    return SpawnPayload.from_json(text).trimmed()
