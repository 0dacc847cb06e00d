"""Property-based fuzzing of the whole API from the hub's own OpenAPI (schemathesis), against a
hub serving on a real port: as an operator, as a live peer (its client-certificate CN from a
trusted proxy), and statefully along the document's links (spawn → the child's operations, grants
→ revoke, peers → revoke, policies → show/update/delete). Every answer is below 500, and every
error is the one JSON envelope. The number of examples is bounded to keep `make test` short.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
import uvicorn
from schemathesis.checks import not_a_server_error

from hub.config import DatabaseSettings, FederationSettings, RedisSettings, Settings, VaultSettings
from hub.main import create_app
from hub.operators.permissions import ALL_PERMISSIONS
from hub.operators.service import create_operator_token
from hub.runtime import HubRuntime
from hub.supervision.serve import bind_listener
from tests.hub.helpers import ACCEPT, SPAWN, spawn_body

EXAMPLES = 6
FUZZ = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)


@dataclass(frozen=True)
class Served:
    url: str
    operator: dict[str, str]
    peer: dict[str, str]


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@pytest.fixture(scope="module")
def served(databases, migrated_template, redis_server, openbao, harness_dir: Path) -> Iterator[Served]:
    """The hub in a thread of its own (its own event loop and runtime), seeded with an accepted and
    enrolled managed_child: a grant, a peer and a child for the links to lead to."""
    box: dict[str, Any] = {}
    started = threading.Event()

    async def main() -> None:
        name = databases.new_name("fuzz")
        settings = Settings(
            data_dir=Path(harness_dir) / name,
            database=DatabaseSettings(url=await databases.create(name, template=migrated_template)),
            redis=RedisSettings(url=redis_server.url(db=0)),
            vault=VaultSettings(addr=openbao.addr, token=openbao.token),
            provisioner="manual",
            federation=FederationSettings(
                trusted_proxies=["127.0.0.1/32"], client_cert_header="X-Client-S-DN-CN"
            ),
        )
        runtime = await HubRuntime.open(settings)
        try:
            async with runtime.sessionmaker() as session:
                _, token = await create_operator_token(session, name="fuzz", permissions=ALL_PERMISSIONS)
                await session.commit()
            app = create_app(settings, runtime)
            operator = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://hub"
            ) as http:
                spawned = (await http.post(SPAWN, json=spawn_body("managed_child"), headers=operator)).json()
                peer_id = spawned["data"]["child"]["id"]
                body = {"acceptance_token": spawned["data"]["acceptance_token"], "contract_version": 1}
                assert (await http.post(ACCEPT, json=body)).status_code == 200
            sock = bind_listener("127.0.0.1", 0)
            server = _Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
            box.update(server=server, operator=operator, peer={"X-Client-S-DN-CN": f"fed:{peer_id}"})
            box["url"] = f"http://127.0.0.1:{sock.getsockname()[1]}"
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            started.set()
            await serving
        finally:
            started.set()
            await runtime.close()
            await databases.drop(name)

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:  # the test reports it
            box["error"] = e

    thread = threading.Thread(target=run, name="fuzzed-hub", daemon=True)
    thread.start()
    assert started.wait(120), "the hub did not start in 120 s"
    if "error" in box:
        raise box["error"]
    try:
        yield Served(box["url"], box["operator"], box["peer"])
    finally:
        box["server"].should_exit = True
        thread.join(60)


@pytest.fixture(scope="module")
def api(served: Served) -> Any:
    return schemathesis.openapi.from_url(served.url + "/openapi.json")


@schemathesis.check
def error_envelope(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool | None:
    """Every error answers the one envelope: {"success": false, "error": "...", "code": "..."}."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict), body
    assert body.get("success") is False, body
    assert isinstance(body.get("error"), str) and body["error"], body
    assert isinstance(body.get("code"), str) and body["code"], body
    return True


CHECKS = [not_a_server_error, error_envelope]


def fuzz(schema: Any, served: Served, headers: dict[str, str]) -> list[str]:
    """Each operation in turn (hypothesis, bounded); the failures, one line per operation."""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @FUZZ
        @hypothesis.given(case=operation.as_strategy())
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=served.url, headers=headers, checks=CHECKS)

        try:
            run()
        except Exception as e:  # every operation gets its turn; all failures are reported
            failures.append(f"{operation.method.upper()} {operation.path}: {str(e)[:2000]}")
    return failures


def test_every_operation_as_an_operator(api: Any, served: Served) -> None:
    assert fuzz(api, served, served.operator) == []


def test_every_federation_operation_as_a_live_peer(api: Any, served: Served) -> None:
    assert fuzz(api.include(path_regex="/federation_api/"), served, served.peer) == []


def test_stateful_along_the_links(api: Any, served: Served) -> None:
    class Workflow(api.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": served.url, "headers": served.operator}

        def validate_response(
            self, response: schemathesis.Response, case: schemathesis.Case, **kwargs: Any
        ) -> None:
            case.validate_response(response, checks=CHECKS)

    Workflow.run(
        settings=hypothesis.settings(
            max_examples=10,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
            phases=[hypothesis.Phase.generate],
        )
    )
