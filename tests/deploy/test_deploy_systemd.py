"""The child image's systemd units: `systemd-analyze verify`, the boot order, and the CLIs they run."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from child_agent.__main__ import build_parser as agent_parser
from child_agent.state import RESULT_FILE_NAME
from hub.cli import build_parser as hub_parser
from tests.deploy.files import SYSTEMD

HUB_UNITS = ("powernode-hub.service", "powernode-hub-worker.service")
FIRST_RUN = "powernode-first-run.service"


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section → key → every value given (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_words(unit: dict, section: str, key: str) -> set[str]:
    return {word for value in unit.get(section, {}).get(key, []) for word in value.split()}


def unit_value(unit: dict, key: str, section: str = "Service") -> str:
    (value,) = unit[section][key]
    return value


def unit_environment(unit: dict) -> dict[str, str]:
    assignments = [a for value in unit["Service"].get("Environment", []) for a in shlex.split(value)]
    return dict(assignment.split("=", 1) for assignment in assignments)


def expand(command: str, environment: dict[str, str]) -> list[str]:
    """A unit's command line with ${VAR} replaced, split like systemd does."""
    return shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: environment[m.group(1)], command))


VARIANTS = {
    "full-stack": ("powernode-postgres.service", ()),
    "cluster-member": ("cluster-member/powernode-pg-replica.service", ("powernode-postgres.service",)),
}
BASE_UNITS = (FIRST_RUN, *HUB_UNITS, "powernode-postgres.service")


@pytest.fixture(scope="session")
def systemd_tools() -> None:
    """systemd-analyze and systemctl, installed from Debian when the machine lacks them."""
    if shutil.which("systemd-analyze") and shutil.which("systemctl"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "systemd"]):
        try:
            result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.fail(f"systemd-analyze is missing and `{shlex.join(argv)}` could not run: {e}")
        if result.returncode != 0:
            pytest.fail(
                f"systemd-analyze is missing and `{shlex.join(argv)}` failed: {result.stderr[-2000:]}"
            )
    if not shutil.which("systemd-analyze"):
        pytest.fail("installed Debian's systemd package but systemd-analyze is still not on PATH")


def variant_units(variant: str) -> list[Path]:
    database, dropped = VARIANTS[variant]
    return [SYSTEMD / name for name in BASE_UNITS if name not in dropped] + [SYSTEMD / database]


def executables(units: list[Path]) -> set[str]:
    """The programs the units' Exec*= lines run (after systemd's -@:+! prefixes)."""
    found = set()
    for path in units:
        for key, values in read_unit(path)["Service"].items():
            if key.startswith("Exec"):
                found.update(shlex.split(value)[0].lstrip("-@:+!") for value in values)
    return found


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def image_root(request, systemd_tools, tmp_path_factory) -> tuple[str, Path]:
    """A child image's root as README.md installs it: the variant's units, enabled.

    `systemd-analyze verify` checks that every Exec*= program exists, and the real ones
    (/usr/local/bin/powernode-hub, PostgreSQL's pg_ctl …) are not on this machine. So the units
    are verified inside a throw-away root (`--root`): the host's system units (for targets like
    network-online.target), our units in /etc/systemd/system, enabled with `systemctl --root`
    like on an image, and an executable stub at every path the units run.
    """
    variant = request.param
    root = tmp_path_factory.mktemp(variant)
    host_units = Path("/usr/lib/systemd/system")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True)
    units = variant_units(variant)
    for unit in units:
        shutil.copy(unit, installed)
    for program in executables(units):
        stub = root / program.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    result = subprocess.run(
        ["systemctl", f"--root={root}", "enable", *(u.name for u in units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return variant, root


def test_child_units_pass_systemd_analyze_verify(image_root):
    variant, root = image_root
    names = [unit.name for unit in variant_units(variant)]
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", *names],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        f"{variant}: {result.stdout}{result.stderr}"
    )


def test_enabled_hub_units_require_the_variants_database(image_root):
    variant, root = image_root
    database = Path(VARIANTS[variant][0]).name
    for hub_unit in HUB_UNITS:
        required = {p.name for p in (root / "etc/systemd/system" / f"{hub_unit}.requires").iterdir()}
        assert database in required, f"{variant}: {hub_unit} does not require {database}"
    if variant == "cluster-member":
        assert not list(root.joinpath("etc").rglob("powernode-postgres.service"))


def test_first_run_is_a_oneshot_before_the_hub_units_after_fw_cfg_and_network():
    unit = read_unit(SYSTEMD / FIRST_RUN)
    assert unit_value(unit, "Type") == "oneshot"
    assert unit_value(unit, "RemainAfterExit") == "yes"
    assert set(HUB_UNITS) <= unit_words(unit, "Unit", "Before")
    assert {"network-online.target", "systemd-modules-load.service"} <= unit_words(unit, "Unit", "After")
    assert "network-online.target" in unit_words(unit, "Unit", "Wants")
    modules = [
        line
        for line in (SYSTEMD / "powernode-fw-cfg.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert modules == ["qemu_fw_cfg"]


def test_hub_units_start_only_after_a_successful_first_run_hardened_as_powernode():
    for name in HUB_UNITS:
        unit = read_unit(SYSTEMD / name)
        assert FIRST_RUN in unit_words(unit, "Unit", "Requires")
        assert FIRST_RUN in unit_words(unit, "Unit", "After")
        assert unit_value(unit, "User") == "powernode"
        assert unit_value(unit, "NoNewPrivileges") == "yes"
        assert unit_value(unit, "ProtectSystem") == "strict"
        assert unit_value(unit, "PrivateTmp") == "yes"
        assert unit_words(unit, "Service", "ReadWritePaths") == {unit_environment(unit)["POWERNODE_DATA_DIR"]}


def test_database_units_order_themselves_before_the_hub_units_and_join_their_requires():
    for name in ("powernode-postgres.service", "cluster-member/powernode-pg-replica.service"):
        unit = read_unit(SYSTEMD / name)
        assert set(HUB_UNITS) <= unit_words(unit, "Unit", "Before"), name
        assert set(HUB_UNITS) <= unit_words(unit, "Install", "RequiredBy"), name
        assert unit_value(unit, "User") == "postgres"
    assert sorted(p.name for p in (SYSTEMD / "cluster-member").iterdir()) == ["powernode-pg-replica.service"]


def test_unit_command_lines_match_the_agent_and_hub_clis(compose):
    first_run = read_unit(SYSTEMD / FIRST_RUN)
    argv = shlex.split(unit_value(first_run, "ExecStart"))
    assert argv[0] == "/usr/local/bin/powernode-child-agent"
    agent = agent_parser().parse_args(argv[1:])
    assert (agent.command, agent.state_dir) == ("first-run", Path("/var/lib/powernode/agent"))

    replica = read_unit(SYSTEMD / "cluster-member" / "powernode-pg-replica.service")
    assert Path(unit_environment(replica)["PGDATA"]) == agent.standby_dir
    assert "pg_ctl start" in unit_value(replica, "ExecStart")
    pg_bin = dict(
        line.split("=", 1)
        for line in (SYSTEMD / "postgresql.env").read_text().splitlines()
        if line and not line.startswith("#")
    )["PG_BIN"]
    # A cluster_member's standby runs the parent primary's major version.
    parent_major = compose["services"]["postgres"]["image"].split(":")[1].split(".")[0]
    assert pg_bin == f"/usr/lib/postgresql/{parent_major}/bin"

    for name, subcommand in (("powernode-hub.service", "serve"), ("powernode-hub-worker.service", "worker")):
        unit = read_unit(SYSTEMD / name)
        environment = unit_environment(unit)
        command = expand(unit_value(unit, "ExecStart"), environment)
        assert command[0] == "/usr/local/bin/powernode-hub"
        assert hub_parser().parse_args(command[1:]).command == subcommand
        assert Path(environment["POWERNODE_FIRST_RUN_RESULT"]) == agent.state_dir / RESULT_FILE_NAME
