"""`DIR/serve.json`: where a running `serve` answers, for the operator commands and for the
processes sharing its data dir (a bare `worker` enrolls with the federation URL it finds here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hub.embedded.process import write_private

SERVE_FILE = "serve.json"


def write(data_dir: Path, state: dict[str, Any]) -> None:
    write_private(data_dir / SERVE_FILE, json.dumps(state) + "\n")


def clear(data_dir: Path) -> None:
    (data_dir / SERVE_FILE).unlink(missing_ok=True)


def federation_url(data_dir: Path) -> str | None:
    """The HTTPS listener `serve` announced (None when no `serve` runs here yet)."""
    try:
        url = json.loads((data_dir / SERVE_FILE).read_text()).get("federation_url")
    except (OSError, ValueError):
        return None
    return str(url) if url else None
