"""What we remember about an embedded cluster, and the configuration files we write into it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from hub.embedded.process import LOOPBACK, EmbeddedError, read_json, write_private

HOST = LOOPBACK
SHARED_TMP = Path("/tmp")  # noqa: S108 - socket dirs there are 0700 and owned by the server user
# sun_path holds 107 bytes; the socket name adds "/.s.PGSQL.65535.lock".
_MAX_SOCKET_DIR = 80


@dataclass
class ClusterState:
    """Kept in a 0600 file beside the data dir, never inside it (pg_basebackup would copy it)."""

    port: int
    superuser: str
    password: str = field(repr=False)
    socket_dir: str
    durable: bool = True
    replication: bool = True
    # The hub's own login (no superuser): the owner of its database (hub/dbroles.py).
    owner: str | None = None
    owner_password: str | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: Path) -> ClusterState | None:
        saved = read_json(path)
        if saved is None:
            return None
        try:
            return cls(**saved)
        except TypeError as e:
            raise EmbeddedError(f"{path} is not a cluster state file") from e

    def save(self, path: Path) -> None:
        write_private(path, json.dumps(asdict(self), indent=2) + "\n")

    def copy(self, *, port: int, socket_dir: Path) -> ClusterState:
        return replace(self, port=port, socket_dir=str(socket_dir))


def socket_dir_for(data_dir: Path) -> Path:
    """`D.run` beside the data dir, or a private dir in /tmp when that path is too long."""
    beside = data_dir.with_name(data_dir.name + ".run")
    if len(str(beside)) <= _MAX_SOCKET_DIR:
        return beside
    return SHARED_TMP / f"pn-pg-{hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]}"


def hba_text(replication: bool) -> str:
    lines = [
        "# Written by powernode-hub: password (SCRAM) logins over loopback only.",
        "local all all scram-sha-256",
        f"host all all {HOST}/32 scram-sha-256",
    ]
    if replication:
        # `all`, so that replication roles created later (one per cluster_member) can stream.
        lines.append(f"host replication all {HOST}/32 scram-sha-256")
    return "\n".join(lines) + "\n"


def conf_text(state: ClusterState) -> str:
    settings = {
        "listen_addresses": f"'{HOST}'",
        "port": str(state.port),
        "unix_socket_directories": f"'{state.socket_dir}'",
    }
    if state.replication:
        settings |= {
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "hot_standby": "on",
            # An abandoned slot must not fill the disk; slot hygiene reports it long before this.
            "max_slot_wal_keep_size": "'4GB'",
        }
    if not state.durable:
        settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    body = "".join(f"{key} = {value}\n" for key, value in settings.items())
    return "# Written by powernode-hub on every start; put your settings in postgresql.conf.\n" + body
