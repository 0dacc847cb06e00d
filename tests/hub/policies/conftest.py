"""These tests call the federation API as a peer behind a trusted proxy (the CN header path)."""

from __future__ import annotations

import pytest

from hub.config import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    federation = settings.federation.model_copy(
        update={"trusted_proxies": ["127.0.0.1/32"], "client_cert_header": "X-Client-S-DN-CN"}
    )
    return settings.model_copy(update={"federation": federation})
