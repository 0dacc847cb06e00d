"""OpenAPI links: how the id one operation returns feeds the operations that take it.

They document the API (a client learns that `spawn` answers the `child_id` that `show`, `revoke`
and `rotate_token` take) and let a stateful API fuzzer reach those operations with real ids.
"""

from __future__ import annotations

from typing import Any

CHILDREN = "/api/v1/system/federation/children"
CHILD = CHILDREN + "/{child_id}"
GRANTS = "/api/v1/system/federation/grants"
PEERS = "/api/v1/system/federation/peers"
POLICIES = "/api/v1/system/intervention_policies"
POLICY = POLICIES + "/{policy_id}"

_CHILD_OPERATIONS = [
    ("get", CHILD),
    ("post", CHILD + "/revoke"),
    ("post", CHILD + "/rotate_token"),
    ("get", CHILD + "/remote/{resource}"),
    ("post", CHILD + "/replication/retry"),
    ("post", CHILD + "/replication/reissue"),
]
_POLICY_OPERATIONS = [("get", POLICY), ("patch", POLICY), ("delete", POLICY)]

# (method, path, status) of the source → (parameter, where the value is in its response, targets)
LINKS: dict[tuple[str, str, str], tuple[str, str, list[tuple[str, str]]]] = {
    ("post", CHILDREN + "/spawn", "201"): ("child_id", "/data/child/id", _CHILD_OPERATIONS),
    ("get", CHILDREN, "200"): ("child_id", "/data/children/0/id", _CHILD_OPERATIONS),
    ("get", GRANTS, "200"): ("grant_id", "/data/grants/0/id", [("post", GRANTS + "/{grant_id}/revoke")]),
    ("get", PEERS, "200"): ("peer_id", "/data/peers/0/id", [("post", PEERS + "/{peer_id}/revoke")]),
    ("post", POLICIES, "201"): ("policy_id", "/data/policy/id", _POLICY_OPERATIONS),
}


def add_links(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the links above to a FastAPI OpenAPI document (in place); unknown operations are skipped."""
    paths = schema.get("paths", {})
    for (method, path, status), (parameter, pointer, targets) in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        links = response.setdefault("links", {})
        for target_method, target_path in targets:
            operation = paths.get(target_path, {}).get(target_method)
            if operation is None or "operationId" not in operation:
                continue
            links[operation["operationId"]] = {
                "operationId": operation["operationId"],
                "parameters": {parameter: f"$response.body#{pointer}"},
            }
    return schema
