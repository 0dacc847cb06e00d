"""Hub API tests stage payloads with the `manual` provisioner unless a test says otherwise."""

from __future__ import annotations

import pytest

from hub.config import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"provisioner": "manual"})
