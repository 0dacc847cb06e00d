"""The agent's state directory: what lives where, and reading it back on a re-run.

Layout of ``<state-dir>`` (0700; default ``/var/lib/powernode/agent``):

- ``client.key``            EC P-256 private key, PKCS#8 PEM, 0600; created once, reused on re-runs
- ``client.crt``            the client certificate the parent signed (CN ``fed:<peer_id>``), 0644
- ``ca.pem``                the parent's CA chain, 0644
- ``identity.json``         peer_id, parent, agreed contract version, certificate fingerprint, 0600
- ``accept-response.json``  the parent's accept answer without the replication password, 0600;
                            a re-run resumes from it instead of spending the token again; removed
                            once the result is written (it holds the grant's bearer, like the result)
- ``first-run-result.json`` the hand-over to the child hub (``FirstRunResult``), 0600
- ``promotion.json``        written by ``promote`` once the standby became a primary, 0600
"""

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared_contract._files import write_private
from shared_contract.accept import AcceptResponseData
from shared_contract.first_run import FirstRunResult

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/powernode/agent")
RESULT_FILE_NAME = "first-run-result.json"


class StatePaths:
    """The files of one state directory; the result file may be put elsewhere."""

    def __init__(self, root: Path, result_file: Path | None = None) -> None:
        self.root = root
        self.key = root / "client.key"
        self.cert = root / "client.crt"
        self.ca = root / "ca.pem"
        self.identity = root / "identity.json"
        self.accept_response = root / "accept-response.json"
        self.promotion = root / "promotion.json"
        # cluster_member: the credential the member's hub writes to the parent's primary with; the
        # hub moves it into its own secret store and deletes this file.
        self.platform_database = root / "platform-database.json"
        self.result = result_file or root / RESULT_FILE_NAME

    def __repr__(self) -> str:
        return f"StatePaths(root='{self.root}', result='{self.result}')"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a small JSON document atomically, mode 0600."""
    write_private(path, (json.dumps(data, indent=2) + "\n").encode())


def read_json(path: Path) -> dict[str, Any] | None:
    """Return the JSON object in path, or None when it is missing or unreadable."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return None
    return data if isinstance(data, dict) else None


def read_result(path: Path) -> FirstRunResult | None:
    """Return the first-run result, or None when there is none yet (or it does not validate)."""
    if not path.exists():
        return None
    try:
        return FirstRunResult.read(path)
    except (OSError, ValueError) as e:
        # Written atomically, so this is damage, not a crash midway: redo the first run.
        reason = f"{len(e.errors())} invalid fields" if isinstance(e, ValidationError) else str(e)
        log.warning("ignoring unusable first-run result %s (%s)", path, reason)
        return None


def save_accept(paths: StatePaths, data: AcceptResponseData) -> None:
    """Keep the parent's answer so that a re-run need not redeem the token again."""
    stored = data.model_copy(update={"cluster_pg": data.cluster_pg and data.cluster_pg.without_password()})
    write_json(paths.accept_response, stored.to_wire())


def load_accept(paths: StatePaths) -> AcceptResponseData | None:
    """Return the accept answer of an earlier run, or None."""
    saved = read_json(paths.accept_response)
    if saved is None:
        return None
    try:
        return AcceptResponseData.model_validate(saved)
    except ValidationError:
        log.warning("ignoring unusable %s; accepting again", paths.accept_response)
        return None
