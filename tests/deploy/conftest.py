"""The parsed deploy/ configuration, shared by the deploy tests."""

import pytest

from tests.deploy.files import DEPLOY, load_yaml


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yaml")


@pytest.fixture(scope="module")
def dynamic() -> dict:
    return load_yaml(DEPLOY / "traefik" / "dynamic.yaml")
