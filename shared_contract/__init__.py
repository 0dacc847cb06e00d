"""Every model that crosses a process boundary between a parent hub, a child agent and a child hub.

Depends only on pydantic and the standard library. The JSON Schema tooling lives in
``shared_contract.schemas`` (run it with ``python -m shared_contract.schemas --check``).
"""

from shared_contract.accept import (
    AcceptRequest,
    AcceptResponseData,
    ChildInfo,
    ClusterPgBlock,
    Endpoint,
    GrantInfo,
)
from shared_contract.enroll import EnrollRequest, EnrollResponseData
from shared_contract.envelope import ErrorEnvelope, PageMeta, SuccessEnvelope
from shared_contract.first_run import FirstRunResult, StandbyInfo
from shared_contract.heartbeat import HeartbeatRequest, HeartbeatResponseData
from shared_contract.payload import (
    FALLBACK_PAYLOAD_PATH,
    FW_CFG_NAME_MAX,
    FW_CFG_PREFIX,
    GUEST_FW_CFG_ROOT,
    SPAWN_MODES,
    PayloadError,
    SpawnPayload,
    fw_cfg_name,
    qemu_fw_cfg_args,
    read_fw_cfg_tree,
    read_payload_file,
    stage_qemu_files,
    write_fw_cfg_tree,
)
from shared_contract.replication import ReplicationCredential
from shared_contract.version import (
    CONTRACT_VERSION,
    CONTRACT_VERSION_LABEL,
    SCHEMA_VERSION,
    SUPPORTED_CONTRACT_VERSIONS,
    UnsupportedContractVersion,
    negotiate,
    parse_contract_version,
)

__all__ = [
    "CONTRACT_VERSION",
    "CONTRACT_VERSION_LABEL",
    "FALLBACK_PAYLOAD_PATH",
    "FW_CFG_NAME_MAX",
    "FW_CFG_PREFIX",
    "GUEST_FW_CFG_ROOT",
    "SCHEMA_VERSION",
    "SPAWN_MODES",
    "SUPPORTED_CONTRACT_VERSIONS",
    "AcceptRequest",
    "AcceptResponseData",
    "ChildInfo",
    "ClusterPgBlock",
    "Endpoint",
    "EnrollRequest",
    "EnrollResponseData",
    "ErrorEnvelope",
    "FirstRunResult",
    "GrantInfo",
    "HeartbeatRequest",
    "HeartbeatResponseData",
    "PageMeta",
    "PayloadError",
    "ReplicationCredential",
    "SpawnPayload",
    "StandbyInfo",
    "SuccessEnvelope",
    "UnsupportedContractVersion",
    "fw_cfg_name",
    "negotiate",
    "parse_contract_version",
    "qemu_fw_cfg_args",
    "read_fw_cfg_tree",
    "read_payload_file",
    "stage_qemu_files",
    "write_fw_cfg_tree",
]
