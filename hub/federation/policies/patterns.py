"""Action names and the patterns that match them (intervention policies, grant allowlists).

An action is dotted lowercase segments: `system.spawn`, `system.peer.read`. A pattern is an action
(exact), a prefix wildcard `system.*` (every action below `system.`, at any depth), or `*` (all).
"""

from __future__ import annotations

import re

ACTION_RE = r"^[a-z0-9_]+(\.[a-z0-9_]+)*$"
PATTERN_RE = r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$"
_PATTERN = re.compile(PATTERN_RE)


def is_pattern(value: str) -> bool:
    return bool(_PATTERN.match(value))


def matches(pattern: str, action: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return action.startswith(pattern[:-1])
    return pattern == action


def specificity(pattern: str) -> tuple[int, int]:
    """Higher is more specific: an exact action beats any wildcard, a longer prefix a shorter one."""
    if pattern == "*":
        return (0, 0)
    if pattern.endswith(".*"):
        return (0, pattern.count("."))
    return (1, pattern.count(".") + 1)


def is_system(pattern: str) -> bool:
    """Patterns about `system.*` actions: what a parent cascades to the children it manages."""
    return pattern.startswith("system.")
