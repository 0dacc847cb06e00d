"""POWERNODE_ENVIRONMENT=production refuses what is only fit for development, before starting anything;
and the command lines document every option they take."""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from child_agent.__main__ import build_parser as agent_parser
from hub.cli import build_parser as hub_parser
from hub.cli import environment_help
from hub.config import MIN_SECRET_BITS, Settings, secret_strength_bits
from hub.localhub import hub_command, hub_env

PREFIX = "powernode-hub: error: refusing to start with POWERNODE_ENVIRONMENT=production: "
PASSWORD = secrets.token_hex(16)
PRODUCTION = {
    "POWERNODE_ENVIRONMENT": "production",
    "POWERNODE_PUBLIC_URL": "https://hub.example.org",
    "DATABASE_URL": f"postgresql://powernode:{PASSWORD}@127.0.0.1:1/powernode",
    "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0",
    "VAULT_ADDR": "http://127.0.0.1:1",
    "VAULT_TOKEN": secrets.token_hex(16),
}
# name -> (what changes in the production environment above, the one problem reported)
REFUSALS: dict[str, tuple[dict[str, str | None], str]] = {
    "local secret store": (
        {"VAULT_ADDR": None},
        "VAULT_ADDR is not set (the embedded local secret store is for development)",
    ),
    "embedded postgres": (
        {"DATABASE_URL": None},
        "DATABASE_URL is not set (the embedded PostgreSQL is for development)",
    ),
    "embedded redis": ({"REDIS_URL": None}, "REDIS_URL is not set (the embedded Redis is for development)"),
    "placeholder vault token": ({"VAULT_TOKEN": "changeme"}, "VAULT_TOKEN is a placeholder"),
    "empty vault token": ({"VAULT_TOKEN": ""}, "VAULT_TOKEN is a placeholder"),
    "placeholder db password": (
        {"DATABASE_URL": "postgresql://powernode:password@db:5432/powernode"},
        "the password in DATABASE_URL is a placeholder",
    ),
    "placeholder redis password": (
        {"REDIS_URL": "redis://:Secret@cache:6379/0"},
        "the password in REDIS_URL is a placeholder",
    ),
    "plain http federation": (
        {"POWERNODE_PUBLIC_URL": "http://hub.example.org"},
        "POWERNODE_PUBLIC_URL must be an https:// URL (federation carries tokens)",
    ),
    "no public url": (
        {"POWERNODE_PUBLIC_URL": None},
        "POWERNODE_PUBLIC_URL must be an https:// URL (federation carries tokens)",
    ),
}
# Issue 11 #13: each alone in-process, all at once under a real `serve` (one process, not six).
MORE_REFUSALS: dict[str, tuple[dict[str, str | None], str]] = {
    "trust every address ipv4": (
        {"POWERNODE_FEDERATION_TRUSTED_PROXIES": '["10.0.0.10/32", "0.0.0.0/0"]'},
        "POWERNODE_FEDERATION_TRUSTED_PROXIES must not contain 0.0.0.0/0 (it trusts every address)",
    ),
    "trust every address ipv6": (
        {"POWERNODE_FEDERATION_TRUSTED_PROXIES": '["::/0"]'},
        "POWERNODE_FEDERATION_TRUSTED_PROXIES must not contain ::/0 (it trusts every address)",
    ),
    "redis without a password": (
        {"REDIS_URL": "redis://cache.internal:6379/0"},
        "REDIS_URL has no password (Redis must require one)",
    ),
    "advertised redis without a password": (
        {"REDIS_ADVERTISED_URL": "redis://10.0.0.5:6379/0"},
        "REDIS_ADVERTISED_URL has no password (Redis must require one)",
    ),
    "low entropy vault token": (
        {"VAULT_TOKEN": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
        "VAULT_TOKEN is too weak (about 0 bits, under 64: use `openssl rand -hex 32`)",
    ),
    "short db password": (
        {"DATABASE_URL": "postgresql://powernode:Tr0ub4dor@db:5432/powernode"},
        "the password in DATABASE_URL is too weak (about 27 bits, under 64: use `openssl rand -hex 32`)",
    ),
}
COMMANDS = {"serve": ["serve", "--port", "1"], "worker": ["worker"]}
WORKER_REFUSALS = ("local secret store", "plain http federation")  # the same check; two suffice


def _env(changes: dict[str, str | None]) -> dict[str, str]:
    merged = {**PRODUCTION, **changes}
    return hub_env({k: v for k, v in merged.items() if v is not None})


@pytest.fixture(scope="module")
def refusals(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[tuple[str, str], tuple[Path, subprocess.CompletedProcess[str]]]]:
    """Every refusal, under `serve` and `worker`, started at once (each is a fresh interpreter)."""
    started = {}
    for command, args in COMMANDS.items():
        for name, (changes, _) in REFUSALS.items():
            if command == "worker" and name not in WORKER_REFUSALS:
                continue
            data_dir = tmp_path_factory.mktemp("refusal") / "data"
            process = subprocess.Popen(
                [*hub_command(), *args],
                cwd=data_dir.parent,  # no stray .env
                env=_env(changes) | {"POWERNODE_DATA_DIR": str(data_dir)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            started[(command, name)] = (data_dir, process)
    results = {}
    for key, (data_dir, process) in started.items():
        stdout, stderr = process.communicate(timeout=120)
        results[key] = (
            data_dir,
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr),
        )
    yield results


@pytest.mark.parametrize(
    ("command", "refusal"),
    [("serve", name) for name in REFUSALS] + [("worker", name) for name in WORKER_REFUSALS],
)
def test_production_refuses_to_start_with_one_clear_line(refusals, command, refusal):
    data_dir, result = refusals[(command, refusal)]

    assert result.returncode == 1
    assert result.stderr == PREFIX + REFUSALS[refusal][1] + "\n"
    assert result.stdout == ""
    assert not data_dir.exists(), "nothing may be started or written before the refusal"


@pytest.mark.parametrize("refusal", MORE_REFUSALS)
def test_production_refuses_open_proxies_redis_without_password_and_weak_secrets(monkeypatch, refusal):
    changes, problem = MORE_REFUSALS[refusal]
    for name, value in _env(changes).items():
        monkeypatch.setenv(name, value)

    assert Settings(_env_file=None).production_problems() == [problem]


def test_a_real_serve_names_all_of_them_and_starts_nothing(tmp_path):
    changes = {k: v for changes, _ in MORE_REFUSALS.values() for k, v in changes.items()}
    changes["POWERNODE_FEDERATION_TRUSTED_PROXIES"] = '["0.0.0.0/0", "::/0"]'
    result = subprocess.run(
        [*hub_command(), "serve", "--port", "1"],
        env=_env(changes) | {"POWERNODE_DATA_DIR": str(tmp_path / "data")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(PREFIX)
    named = result.stderr[len(PREFIX) :].strip().split("; ")
    assert set(named) == {problem for _, problem in MORE_REFUSALS.values()}
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "secret",
    ["Password123Password123", "abcabcabcabcabcabcabcabcabcabc", "hunter2", "0123456789012345"],
)
def test_weak_secrets_are_judged_by_entropy_not_a_list(secret):
    assert secret_strength_bits(secret) < MIN_SECRET_BITS
    assert secret_strength_bits(secrets.token_hex(16)) >= MIN_SECRET_BITS
    assert secret_strength_bits(secrets.token_urlsafe(24)) >= MIN_SECRET_BITS


def test_a_wildcard_trusted_proxy_is_refused_in_every_environment(tmp_path):
    result = subprocess.run(
        [*hub_command(), "serve", "--port", "1", "--data-dir", str(tmp_path / "data")],
        env=hub_env({"POWERNODE_FEDERATION_TRUSTED_PROXIES": '["*"]'}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr == (
        "powernode-hub: error: invalid setting trusted_proxies: Value error, "
        "'*' is not allowed: list the proxies' addresses or CIDRs\n"
    )
    assert not (tmp_path / "data").exists()


def test_every_problem_is_named_at_once(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("POWERNODE_", "DATABASE_", "REDIS_", "VAULT_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("POWERNODE_ENVIRONMENT", "production")

    problems = Settings(_env_file=None).production_problems()

    assert len(problems) == 4
    assert [p.split()[0] for p in problems] == [
        "DATABASE_URL",
        "REDIS_URL",
        "VAULT_ADDR",
        "POWERNODE_PUBLIC_URL",
    ]


def test_a_sound_production_configuration_and_development_pass(monkeypatch):
    for name, value in _env({}).items():
        monkeypatch.setenv(name, value)

    assert Settings(_env_file=None).production_problems() == []
    monkeypatch.delenv("VAULT_ADDR")
    assert Settings(_env_file=None, environment="development").production_problems() == []


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


@pytest.mark.parametrize("build", [hub_parser, agent_parser], ids=["powernode-hub", "powernode-child-agent"])
def test_every_help_lists_every_option_and_subcommand(build):
    for parser in _parsers(build()):
        text = parser.format_help()
        for action in parser._actions:
            assert action.help != argparse.SUPPRESS, f"{parser.prog}: {action.dest} is hidden"
            for option in action.option_strings:
                assert option in text, f"{parser.prog} --help does not list {option}"
            if isinstance(action, argparse._SubParsersAction):
                assert all(name in text for name in action.choices), f"{parser.prog} hides a subcommand"


def test_serve_and_worker_help_list_every_setting():
    listed = environment_help()
    names = [line.split()[0] for line in listed.splitlines()[1:]]

    assert {"POWERNODE_ENVIRONMENT", "POWERNODE_LOG_FORMAT", "DATABASE_URL", "VAULT_TOKEN"} <= set(names)
    assert "POWERNODE_FEDERATION_FINDINGS_INTERVAL_SECONDS" in names and "POWERNODE_DATABASE" not in names
    for command in ("serve", "worker"):
        assert listed in _help(command)


def _help(command: str) -> str:
    result = subprocess.run([*hub_command(), command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    return result.stdout


def test_serve_without_its_worker_needs_an_external_database_and_redis(tmp_path):
    data_dir = tmp_path / "data"

    result = subprocess.run(
        [*hub_command(), "serve", "--no-worker", "--data-dir", str(data_dir)],
        env=hub_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr == (
        "powernode-hub: error: --no-worker needs DATABASE_URL and REDIS_URL (for a `worker` to run jobs)\n"
    )
    assert not data_dir.exists()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_a_worker_will_not_serve_its_unauthenticated_metrics_beyond_loopback_when_a_token_is_required(
    tmp_path, host
):
    """The worker's metrics server has no token check of its own: with one required it stays local."""
    env = hub_env(
        {
            "POWERNODE_METRICS_REQUIRE_TOKEN": "true",
            "DATABASE_URL": "postgresql://powernode:x@127.0.0.1:1/powernode",
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "POWERNODE_DATA_DIR": str(tmp_path / "data"),
        }
    )
    result = subprocess.run(
        [*hub_command(), "worker", "--metrics-port", "9", "--metrics-host", host],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2
    assert result.stderr == (
        f"--metrics-host {host} would serve the worker's metrics without a token; "
        "POWERNODE_METRICS_REQUIRE_TOKEN is on: use a loopback address (127.0.0.1 or ::1)\n"
    )
