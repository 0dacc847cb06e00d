"""Reading deploy/: its paths, the YAML files, what compose services mount and set."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SYSTEMD = DEPLOY / "systemd"
HUB_SERVICES = ("hub-migrate", "hub", "hub-worker")
# Images we do not build: official Docker images, and OpenBao's own.
UPSTREAM_IMAGES = {"postgres", "redis", "traefik", "openbao/openbao"}
CLIENT_CERT_HEADERS = {
    "X-Client-S-DN-CN",
    "X-Forwarded-TLS-Client-Cert-Subject",
    "X-Forwarded-Tls-Client-Cert",
    "X-Forwarded-Tls-Client-Cert-Info",
}


def load_yaml(path: Path) -> dict:
    with path.open() as handle:
        return yaml.safe_load(handle)


def mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume entry, short or long syntax."""
    pairs = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            pairs.append((entry["source"], entry["target"]))
        else:
            source, target = entry.split(":")[:2]
            pairs.append((source, target))
    return pairs


def is_bind(source: str) -> bool:
    return source.startswith((".", "/"))


def postgres_settings(compose: dict) -> dict[str, str]:
    """The `-c name=value` pairs of the postgres service's command."""
    command = compose["services"]["postgres"]["command"]
    assert command[0] == "postgres"
    pairs = [command[i + 1] for i, arg in enumerate(command) if arg == "-c"]
    return dict(pair.split("=", 1) for pair in pairs)


def hub_environment(compose: dict, name: str = "hub") -> dict[str, str]:
    return {key: str(value) for key, value in compose["services"][name]["environment"].items()}


def free_port(*, also_next: bool = False) -> int:
    """A free loopback port (and, when asked, the one after it too)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if not also_next:
            return port
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")
