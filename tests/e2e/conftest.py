"""One real parent hub per module; children are booted by its local provisioner and halted after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.hubs import Hub, halt_node


@pytest.fixture(scope="module")
def parent(harness_dir: Path, request: pytest.FixtureRequest) -> Iterator[Hub]:
    data_dir = harness_dir / f"parent-{request.module.__name__.rsplit('.', 1)[-1]}"
    hub = Hub(data_dir).start()
    try:
        yield hub
    finally:
        for node in hub.node_dirs():
            halt_node(node)
        hub.stop()
