"""Drive a hub running as a local process: start `powernode-hub serve`, call its operator API.

Used by `make demo` and the end-to-end tests; the `local` provisioner's children are halted
the way the provisioner does it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from hub.embedded.process import free_port, wait_until
from hub.provisioning import local as local_provisioner

API = "/api/v1/system/federation"
_CONFIG_PREFIXES = ("DATABASE_", "REDIS_", "VAULT_", "POWERNODE_")


def hub_command() -> list[str]:
    script = Path(sys.executable).with_name("powernode-hub")
    return [str(script)] if script.exists() else [shutil.which("powernode-hub") or "powernode-hub"]


def serve_command(data_dir: Path, port: int, federation_port: int) -> list[str]:
    return [
        *hub_command(),
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--federation-port",
        str(federation_port),
    ]


def hub_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment without hub configuration: the embedded default, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CONFIG_PREFIXES)}
    return env | (extra or {})


class LocalHub:
    """One `powernode-hub serve` on the embedded default in `data_dir`."""

    def __init__(self, data_dir: Path, *, port: int | None = None, federation_port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.federation_port = federation_port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir.with_name(data_dir.name + ".log")

    def __repr__(self) -> str:
        return f"LocalHub({str(self.data_dir)!r}, port={self.port})"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def federation_url(self) -> str:
        return f"https://127.0.0.1:{self.federation_port}"

    def start(self, env: dict[str, str] | None = None, timeout: float = 90) -> LocalHub:
        command = serve_command(self.data_dir, self.port, self.federation_port)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=hub_env(env),
                start_new_session=True,
            )
        if not wait_until(self._ready, timeout, interval=0.2):
            raise RuntimeError(f"{self} did not become ready; see {self.log}")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self} exited:\n{self.log.read_text()[-3000:]}")
        return (self.data_dir / "serve.json").exists() and (self.data_dir / "operator-token").exists()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    @property
    def headers(self) -> dict[str, str]:
        token = (self.data_dir / "operator-token").read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.url + path, headers=self.headers, timeout=30, **kwargs)

    def spawn(
        self, mode: str, template: str = "powernode-hub", parent_url: str | None = None
    ) -> dict[str, Any]:
        body = {
            "spawn_mode": mode,
            "parent_url": parent_url or self.federation_url,
            "spawn_target": {"template_id": template},
        }
        response = self.api("POST", f"{API}/children/spawn", json=body)
        if response.status_code != 201:
            raise RuntimeError(f"spawn failed: {response.status_code} {response.text}")
        return response.json()["data"]

    def child(self, child_id: str) -> dict[str, Any]:
        response = self.api("GET", f"{API}/children/{child_id}")
        response.raise_for_status()
        return response.json()["data"]["child"]

    def wait_for(self, child_id: str, status: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        child: dict[str, Any] = {}
        while time.monotonic() < deadline:
            child = self.child(child_id)
            if child["status"] == status:
                return child
            time.sleep(0.2)
        node = (child.get("node_instance") or {}).get("details", {}).get("work_dir", "/nonexistent")
        console = Path(node) / "console.log"
        tail = console.read_text()[-3000:] if console.exists() else ""
        raise RuntimeError(f"child {child_id} stayed {child.get('status')}, not {status}:\n{tail}")

    def findings(self, **params: str) -> list[dict[str, Any]]:
        response = self.api("GET", f"{API}/findings", params=params)
        response.raise_for_status()
        return response.json()["data"]["findings"]

    def node_dirs(self) -> list[Path]:
        nodes = self.data_dir / "nodes"
        return sorted(nodes.glob("*")) if nodes.exists() else []

    def halt_children(self) -> None:
        for node in self.node_dirs():
            halt_node(node)


def halt_node(node_dir: Path, timeout: float = 60) -> None:
    """Stop a local "VM" as the provisioner does."""
    local_provisioner.halt(node_dir, timeout)


def serve_state(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "serve.json").read_text())
