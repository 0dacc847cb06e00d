"""Operator commands over the API: spawn, children, findings, grants (DESIGN §11).

URL and token come from POWERNODE_URL / POWERNODE_TOKEN, else from the data dir that
`powernode-hub serve` wrote (`serve.json`, `operator-token`). Output is for people by default;
`--json` prints the API's `data` for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

API = "/api/v1/system/federation"
TOKENS_API = "/api/v1/system/operator_tokens"
STATUS_ORDER = ("proposed", "accepted", "enrolled", "active")


class CliError(Exception):
    """One line for the operator; the command exits non-zero."""


def printable(value: Any, *, keep_newlines: bool = False) -> str:
    """`value` as text that cannot drive the terminal: control, format (bidi) and separator
    characters a peer may have put into a name, URL or platform name are shown escaped."""
    text = "" if value is None else str(value)
    return "".join(
        c if c.isprintable() or (keep_newlines and c == "\n") else c.encode("unicode_escape").decode()
        for c in text
    )


def _connection(args: argparse.Namespace) -> tuple[str, str]:
    data_dir = Path(args.data_dir or os.environ.get("POWERNODE_DATA_DIR", ".powernode"))
    url = os.environ.get("POWERNODE_URL")
    if not url:
        try:
            url = json.loads((data_dir / "serve.json").read_text())["url"]
        except (OSError, ValueError, KeyError):
            raise CliError(f"no POWERNODE_URL and no running hub found in {data_dir}") from None
    token = os.environ.get("POWERNODE_TOKEN")
    if not token:
        try:
            token = (data_dir / "operator-token").read_text().strip()
        except OSError:
            raise CliError(f"no POWERNODE_TOKEN and no {data_dir}/operator-token") from None
    return url.rstrip("/"), token


def _call(
    args: argparse.Namespace, method: str, path: str, body: dict | None = None, params: dict | None = None
) -> dict[str, Any]:
    url, token = _connection(args)
    try:
        response = httpx.request(
            method,
            url + path,
            json=body,
            params=params,
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as e:
        raise CliError(f"cannot reach the hub at {url}: {type(e).__name__}") from None
    try:
        payload = response.json()
    except ValueError:
        raise CliError(f"{method} {path}: HTTP {response.status_code} (not JSON)") from None
    if not payload.get("success"):
        raise CliError(f"{printable(payload.get('error', 'request failed'))} (HTTP {response.status_code})")
    return payload


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[printable(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _print(args: argparse.Namespace, data: Any, human: str) -> None:
    # JSON escapes every control character itself; people get the escaped text.
    print(json.dumps(data, indent=2) if args.json else printable(human, keep_newlines=True))


def _child_lines(child: dict[str, Any]) -> str:
    keys = [
        "id",
        "name",
        "spawn_mode",
        "status",
        "template_id",
        "created_at",
        "last_heartbeat_at",
        "acceptance_pending",
        "acceptance_expires_at",
        "remote_instance_url",
        "emancipated",
    ]
    lines = [f"{k:>22}: {child.get(k)}" for k in keys]
    for grant in child.get("grants", []):
        lines.append(
            f"{'grant':>22}: {grant['direction']} {grant['resource_kind']} "
            f"{','.join(grant['permission_scopes'])} ({grant['state']})"
        )
    node = child.get("node_instance")
    if node:
        lines.append(f"{'node':>22}: {node['provider']} {node['state']} {node.get('error') or ''}".rstrip())
    cluster_pg = child.get("metadata", {}).get("cluster_pg")
    if cluster_pg:
        lines.append(f"{'cluster_pg':>22}: {cluster_pg.get('state')} slot={cluster_pg.get('slot_name')}")
    for finding in child.get("findings", []):
        lines.append(f"{'finding':>22}: {finding['kind']}: {finding['message']}")
    return "\n".join(printable(line) for line in lines)  # one line each, whatever a value holds


def cmd_spawn(args: argparse.Namespace) -> None:
    url, _ = _connection(args)
    body: dict[str, Any] = {
        "spawn_mode": args.mode,
        "parent_url": args.parent_url or _federation_url(args) or url,
        "spawn_target": {
            "template_id": args.template,
            "region": args.region,
            "manual_attach": args.manual_attach,
        },
        "token_ttl_seconds": args.ttl_days * 86400,
    }
    if args.name:
        body["name"] = args.name
    data = _call(args, "POST", f"{API}/children/spawn", body)["data"]
    child = data["child"]
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(printable(f"Spawned {child['spawn_mode']} child {child['id']} ({child['status']})"))
        print("Acceptance token (shown ONCE; it cannot be retrieved again):")
        print(f"  {printable(data['acceptance_token'])}")
    if args.wait:
        _wait_active(args, child["id"])


def _federation_url(args: argparse.Namespace) -> str | None:
    data_dir = Path(args.data_dir or os.environ.get("POWERNODE_DATA_DIR", ".powernode"))
    try:
        return json.loads((data_dir / "serve.json").read_text()).get("federation_url")
    except (OSError, ValueError):
        return None


def _wait_active(args: argparse.Namespace, child_id: str, timeout: float = 900) -> None:
    """Live display of proposed → accepted → enrolled → active."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child = _call(args, "GET", f"{API}/children/{child_id}")["data"]["child"]
        if child["status"] != seen:
            seen = child["status"]
            print(f"  {time.strftime('%H:%M:%S')}  {printable(seen)}", file=sys.stderr, flush=True)
        if seen == "active":
            return
        if seen == "revoked":
            raise CliError(f"child {child_id} was revoked")
        time.sleep(0.5)
    raise CliError(f"child {child_id} did not become active within {timeout:.0f}s (last: {seen})")


def cmd_children_list(args: argparse.Namespace) -> None:
    params = {
        k: v
        for k, v in {
            "spawn_mode": args.mode,
            "status": args.status,
            "limit": args.limit,
            "cursor": args.cursor,
        }.items()
        if v
    }
    payload = _call(args, "GET", f"{API}/children", params=params)
    children = payload["data"]["children"]
    human = _table(children, ["id", "name", "spawn_mode", "status", "last_heartbeat_at", "created_at"])
    if payload.get("meta", {}).get("next_cursor"):
        human += f"\nmore: --cursor {printable(payload['meta']['next_cursor'])}"
    _print(args, payload["data"] | {"meta": payload.get("meta")}, human)


def cmd_children_show(args: argparse.Namespace) -> None:
    child = _call(args, "GET", f"{API}/children/{args.id}")["data"]["child"]
    _print(args, child, _child_lines(child))


def cmd_children_revoke(args: argparse.Namespace) -> None:
    child = _call(args, "POST", f"{API}/children/{args.id}/revoke", {"reason": args.reason})["data"]["child"]
    _print(args, child, f"Revoked {child['id']} ({child['status']})")


def cmd_children_rotate(args: argparse.Namespace) -> None:
    body = {"token_ttl_seconds": args.ttl_days * 86400} if args.ttl_days else {}
    data = _call(args, "POST", f"{API}/children/{args.id}/rotate_token", body)["data"]
    _print(
        args,
        data,
        f"New acceptance token (shown ONCE; the old one no longer works):\n  {data['acceptance_token']}",
    )


def cmd_children_console(args: argparse.Namespace) -> None:
    params = {"lines": args.lines}
    console = _call(args, "GET", f"{API}/children/{args.id}/console", params=params)["data"]["console"]
    if console["node_instance_id"] is None:
        _print(args, console, f"Child {args.id} has no node (attached manually): no console")
        return
    boot = console["boot_seconds"]
    head = f"# node {console['node_instance_id']} ({console['provider']}): {console['state']}"
    head += f", booted in {boot:.1f} s" if boot is not None else ""
    _print(args, console, "\n".join([head, *console["lines"]]))


def cmd_children_destroy_node(args: argparse.Namespace) -> None:
    console = _call(args, "DELETE", f"{API}/children/{args.id}/node")["data"]["console"]
    _print(args, console, f"Powered off and removed node {console['node_instance_id']} ({console['state']})")


def cmd_findings_list(args: argparse.Namespace) -> None:
    params = {k: v for k, v in {"state": args.state, "kind": args.kind, "peer_id": args.peer}.items() if v}
    findings = _call(args, "GET", f"{API}/findings", params=params)["data"]["findings"]
    rows = [f | {"state": "resolved" if f["resolved_at"] else "open"} for f in findings]
    _print(args, findings, _table(rows, ["kind", "peer_id", "state", "last_seen", "message"]))


def cmd_grants_list(args: argparse.Namespace) -> None:
    params = {
        k: v
        for k, v in {
            "resource_kind": args.kind,
            "peer_id": args.peer,
            "state": args.state,
            "direction": args.direction,
        }.items()
        if v
    }
    grants = _call(args, "GET", f"{API}/grants", params=params)["data"]["grants"]
    rows = [g | {"scopes": ",".join(g["permission_scopes"])} for g in grants]
    columns = ["id", "peer_id", "direction", "resource_kind", "scopes", "state", "expires_at"]
    _print(args, grants, _table(rows, columns))


def cmd_grants_revoke(args: argparse.Namespace) -> None:
    grant = _call(args, "POST", f"{API}/grants/{args.id}/revoke", {"reason": args.reason})["data"]["grant"]
    _print(args, grant, f"Revoked grant {grant['id']} ({grant['state']}; kept until {grant['purge_after']})")


def cmd_tokens_list(args: argparse.Namespace) -> None:
    tokens = _call(args, "GET", TOKENS_API)["data"]["tokens"]
    columns = ["id", "name", "role", "state", "created_at", "last_used_at", "expires_at"]
    _print(args, tokens, _table(tokens, columns))


def cmd_tokens_revoke(args: argparse.Namespace) -> None:
    token = _call(args, "POST", f"{TOKENS_API}/{args.id}/revoke")["data"]["token"]
    _print(args, token, f"Revoked operator token {token['id']} ({printable(token['name'])})")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--data-dir", help="where `serve` wrote serve.json and operator-token")
    return common


def register_token_commands(token_sub: argparse._SubParsersAction) -> None:
    """`operator-token list|revoke`, over the API like the other operator commands."""
    common = _common()
    ls = token_sub.add_parser(
        "list", parents=[common], help="list operator tokens (never their secrets), with last use"
    )
    ls.set_defaults(func=cmd_tokens_list)
    revoke = token_sub.add_parser("revoke", parents=[common], help="revoke an operator token at once")
    revoke.add_argument("id")
    revoke.set_defaults(func=cmd_tokens_revoke)


def register(sub: argparse._SubParsersAction) -> None:
    common = _common()

    spawn = sub.add_parser("spawn", parents=[common], help="spawn a child platform")
    spawn.add_argument(
        "--mode", required=True, choices=["managed_child", "autonomous_peer", "cluster_member"]
    )
    spawn.add_argument("--template", required=True, help="NodeTemplate id, e.g. powernode-hub")
    spawn.add_argument("--region")
    spawn.add_argument("--name")
    spawn.add_argument("--ttl-days", type=int, default=7, help="acceptance token TTL, 1-30 (default 7)")
    spawn.add_argument("--parent-url", help="URL the child calls back (default: this hub's federation URL)")
    spawn.add_argument("--manual-attach", action="store_true", help="provision nothing (out of band)")
    spawn.add_argument("--wait", action="store_true", help="follow proposed → accepted → enrolled → active")
    spawn.set_defaults(func=cmd_spawn)

    children = sub.add_parser("children", help="list, show, revoke children or rotate their token")
    csub = children.add_subparsers(dest="children_command", required=True)
    ls = csub.add_parser("list", parents=[common])
    ls.add_argument("--mode")
    ls.add_argument("--status", help="comma-separated statuses")
    ls.add_argument("--limit", type=int)
    ls.add_argument("--cursor")
    ls.set_defaults(func=cmd_children_list)
    show = csub.add_parser("show", parents=[common])
    show.add_argument("id")
    show.set_defaults(func=cmd_children_show)
    revoke = csub.add_parser("revoke", parents=[common])
    revoke.add_argument("id")
    revoke.add_argument("--reason")
    revoke.set_defaults(func=cmd_children_revoke)
    rotate = csub.add_parser("rotate-token", parents=[common])
    rotate.add_argument("id")
    rotate.add_argument("--ttl-days", type=int)
    rotate.set_defaults(func=cmd_children_rotate)
    console = csub.add_parser("console", parents=[common], help="the node's console tail, secrets redacted")
    console.add_argument("id")
    console.add_argument("--lines", type=int, default=100, help="how many lines (default 100)")
    console.set_defaults(func=cmd_children_console)
    destroy = csub.add_parser("destroy-node", parents=[common], help="power the child's node off, remove it")
    destroy.add_argument("id")
    destroy.set_defaults(func=cmd_children_destroy_node)

    findings = sub.add_parser("findings", help="federation findings")
    fsub = findings.add_subparsers(dest="findings_command", required=True)
    fls = fsub.add_parser("list", parents=[common])
    fls.add_argument("--state", choices=["open", "resolved"])
    fls.add_argument("--kind")
    fls.add_argument("--peer")
    fls.set_defaults(func=cmd_findings_list)

    grants = sub.add_parser("grants", help="federation grants: list, revoke (emancipation)")
    gsub = grants.add_subparsers(dest="grants_command", required=True)
    gls = gsub.add_parser("list", parents=[common])
    gls.add_argument("--kind", help="resource kind, e.g. managed_child_operator")
    gls.add_argument("--peer", help="peer id")
    gls.add_argument("--state", choices=["active", "expired", "revoked", "archived"])
    gls.add_argument("--direction", choices=["held", "granted"])
    gls.set_defaults(func=cmd_grants_list)
    grevoke = gsub.add_parser("revoke", parents=[common])
    grevoke.add_argument("id")
    grevoke.add_argument("--reason")
    grevoke.set_defaults(func=cmd_grants_revoke)
