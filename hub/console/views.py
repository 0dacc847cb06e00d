"""Shaping API answers for the pages: table rows, recency, timelines (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

RECENT = timedelta(seconds=90)  # the guide's "Verify" step: a heartbeat within the last 90 s
MODES = ("managed_child", "autonomous_peer", "cluster_member")
STATUSES = ("proposed", "accepted", "enrolled", "active", "degraded", "suspended", "revoked")

MODE_HELP = {
    "managed_child": "Parent-administered child: this hub keeps an operator-scope grant "
    "(read/write/admin, 365 days) on it. For a dev/test sandbox, a branch deployment or a fleet "
    "one team operates. The child can emancipate itself later.",
    "autonomous_peer": "Equal peers after the handshake: no grants. For a partner platform you will "
    "federate with but not administer.",
    "cluster_member": "HA cluster member: a streaming hot standby of this hub's PostgreSQL primary, "
    "using this hub's Redis. For horizontal scale and high availability.",
}

DECISION_TREE = (
    "Provisioning it for another team, org or customer? autonomous_peer. "
    "Will you administer it going forward? managed_child. "
    "Should it stream from your primary (HA, scale-out)? cluster_member. "
    "Unsure: managed_child, the easiest to emancipate later."
)


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ago(value: Any, now: datetime | None = None) -> str:
    at = parse_time(value)
    if at is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - at).total_seconds())
    if seconds < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def is_recent(value: Any, now: datetime | None = None) -> bool:
    at = parse_time(value)
    return at is not None and (now or datetime.now(UTC)) - at <= RECENT


@dataclass(frozen=True)
class ChildRow:
    id: str
    name: str
    mode: str
    status: str
    instance_url: str
    last_heartbeat: str
    heartbeat_ago: str
    recent: bool
    grants: list[str]
    cluster_pg: str


def child_row(child: dict[str, Any], now: datetime | None = None) -> ChildRow:
    grants = [
        f"{g['direction']} {g['resource_kind']} ({g['state']})"
        for g in child.get("grants", [])
        if isinstance(g, dict)
    ]
    cluster_pg = (child.get("metadata") or {}).get("cluster_pg") or {}
    return ChildRow(
        id=str(child["id"]),
        name=str(child.get("name") or ""),
        mode=str(child.get("spawn_mode") or ""),
        status=str(child.get("status") or ""),
        instance_url=str(child.get("remote_instance_url") or ""),
        last_heartbeat=str(child.get("last_heartbeat_at") or ""),
        heartbeat_ago=ago(child.get("last_heartbeat_at"), now),
        recent=is_recent(child.get("last_heartbeat_at"), now),
        grants=grants,
        cluster_pg=str(cluster_pg.get("state") or "") if isinstance(cluster_pg, dict) else "",
    )


def timeline_svg(
    children: list[dict[str, Any]], stale: dict[str, list[dict[str, Any]]], now: datetime | None = None
) -> Markup:
    """One row per child over the last hour, drawn from what the hub keeps: when the child came
    up, its last heartbeat, and the periods a stale-heartbeat finding was open."""
    now = now or datetime.now(UTC)
    start = now - timedelta(hours=1)
    left, width, row_h = 170, 560, 22
    height = 30 + row_h * max(1, len(children))

    def x(at: datetime) -> float:
        clamped = min(max(at, start), now)
        return left + width * (clamped - start).total_seconds() / 3600

    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" '
        f'viewBox="0 0 {left + width + 10} {height}" aria-label="Heartbeat timeline of the last hour">',
        f'<text x="{left}" y="14" class="axis">60 min ago</text>',
        f'<text x="{left + width}" y="14" class="axis" text-anchor="end">now</text>',
    ]
    if not children:
        parts.append(f'<text x="{left}" y="40" class="axis">No children yet.</text>')
    for i, child in enumerate(children):
        y = 24 + i * row_h
        name = escape(str(child.get("name") or child.get("id")))[:24]
        parts.append(f'<text x="0" y="{y + 12}" class="label">{name}</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{width}" height="12" class="t-none"/>')
        up = parse_time(child.get("activated_at")) or parse_time(child.get("enrolled_at"))
        last = parse_time(child.get("last_heartbeat_at"))
        if up and last and last > start:
            parts.append(
                f'<rect x="{x(up):.1f}" y="{y + 3}" width="{max(1.0, x(last) - x(up)):.1f}" height="12" '
                f'class="t-up"><title>heartbeating</title></rect>'
            )
        for finding in stale.get(str(child.get("id")), []):
            opened = parse_time(finding.get("first_seen"))
            closed = parse_time(finding.get("resolved_at")) or now
            if opened and closed > start:
                parts.append(
                    f'<rect x="{x(opened):.1f}" y="{y + 3}" width="{max(1.0, x(closed) - x(opened)):.1f}" '
                    f'height="12" class="t-stale"><title>heartbeats stale</title></rect>'
                )
        if last and last > start:
            parts.append(
                f'<circle cx="{x(last):.1f}" cy="{y + 9}" r="3" class="t-last"><title>last heartbeat'
                f"</title></circle>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated string above is escaped


def counts_svg(counts: dict[str, dict[str, int]]) -> Markup:
    """Children by mode, one stacked bar per mode, a segment per status."""
    colors = {
        "proposed": "#9aa5b1", "accepted": "#f0b429", "enrolled": "#62b0e8", "active": "#3ebd93",
        "degraded": "#ef8e58", "suspended": "#8e6ad8", "revoked": "#cf1124",
    }  # fmt: skip
    total = max([sum(v.values()) for v in counts.values()] + [1])
    left, width = 130, 420
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="counts" viewBox="0 0 {left + width + 60} '
        f'{20 + 26 * len(MODES)}" role="img" aria-label="Children by mode and status">'
    ]
    for i, mode in enumerate(MODES):
        y = 10 + i * 26
        parts.append(f'<text x="0" y="{y + 13}" class="label">{mode}</text>')
        offset = float(left)
        for status in STATUSES:
            n = counts.get(mode, {}).get(status, 0)
            if n:
                w = width * n / total
                parts.append(
                    f'<rect x="{offset:.1f}" y="{y}" width="{w:.1f}" height="16" fill="{colors[status]}">'
                    f"<title>{status}: {n}</title></rect>"
                )
                offset += w
        parts.append(
            f'<text x="{offset + 6:.1f}" y="{y + 13}" class="axis">{sum(counts.get(mode, {}).values())}'
            f"</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - only numbers and fixed names are interpolated
