"""Schema version negotiation on a heartbeat, in the original's shape.

The original resolves an operator override, then a seeded default, then the implicit rule; this
hub has no compatibility matrix, so the answer's source is always "implicit": the same major
version and a minor version at most one apart are compatible, anything else (or no version, or one
that does not parse) is not, with a note saying why.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from shared_contract.version import CONTRACT_VERSION, PLATFORM_VERSION

_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+.].*)?$")


def _parts(version: str) -> tuple[int, int] | None:
    match = _VERSION.match(version.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


@lru_cache(maxsize=256)
def _verdict(local: str, remote: str | None) -> tuple[str, str | None]:
    if not remote:
        return "incompatible", "the peer didn't report a platform_version"
    theirs, ours = _parts(remote), _parts(local)
    if theirs is None or ours is None:
        return "incompatible", f"platform_version {remote!r} is unparseable"
    if theirs[0] != ours[0]:
        return "incompatible", f"major version differs ({remote} vs {local})"
    if abs(theirs[1] - ours[1]) > 1:
        return "incompatible", f"minor delta > 1 ({remote} vs {local})"
    return "compatible", None


def schema_compatibility(remote_version: str | None, local_version: str = PLATFORM_VERSION) -> dict[str, Any]:
    """The heartbeat answer's `schema_compatibility` (plus this hub's earlier two fields)."""
    status, notes = _verdict(local_version, remote_version or None)
    return {
        "status": status,
        "source": "implicit",
        "local_version": local_version,
        "remote_version": remote_version or None,
        "notes": notes,
        "contract_version": CONTRACT_VERSION,
        "compatible": status == "compatible",
    }
