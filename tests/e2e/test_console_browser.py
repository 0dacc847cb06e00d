"""The operator console in a real headless Chromium against real hubs (Debian's chromium, driven by
Playwright). Screenshots of each page go to test-artifacts/console/ (or $POWERNODE_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from hub.embedded.postgres import PostgresServer
from hub.localhub import serve_state
from hub.operators.permissions import VIEWER_PERMISSIONS
from hub.secrets import tokens
from tests.e2e.hubs import Hub

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # the test extra not installed
    sync_playwright = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None or sync_playwright is None:
    pytest.skip("console browser tests not run: Debian's chromium is not installed", allow_module_level=True)

ARTIFACTS = Path(os.environ.get("POWERNODE_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
SHOTS = ARTIFACTS / "console"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    yield opened
    context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, base_url: str, token: str) -> None:
    page.goto(base_url + "/console")
    expect(page).to_have_url(base_url + "/console/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(base_url + "/console/children")


def operator_token(data_dir: Path) -> str:
    return (data_dir / "operator-token").read_text().strip()


def viewer_token(data_dir: Path) -> str:
    """A viewer token minted straight into the hub's database (as `operator-token create` would)."""
    issued = tokens.issue(tokens.OPERATOR_TOKEN_PREFIX)

    async def insert() -> None:
        connection = await asyncpg.connect(PostgresServer(data_dir / "postgres").url("powernode"))
        try:
            await connection.execute(
                "INSERT INTO operator_token (id, name, role, permissions, public_id, token_hash) "
                "VALUES (gen_random_uuid(), 'viewer', 'viewer', $1::jsonb, $2, $3)",
                json.dumps(VIEWER_PERMISSIONS),
                issued.public_id,
                issued.secret_hash,
            )
        finally:
            await connection.close()

    # Playwright's sync API runs an event loop in this thread: the insert gets a thread of its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, insert()).result()
    return issued.plaintext


def node_dir(parent: Hub, child_id: str) -> Path:
    return Path(parent.child(child_id)["node_instance"]["details"]["work_dir"])


def test_spawn_from_the_modal_and_watch_the_row_reach_active(parent: Hub, page: Page):
    sign_in(page, parent.url, operator_token(parent.data_dir))
    shot(page, "01-children-empty")

    page.click("#open-spawn")
    expect(page.locator("#spawn-dialog")).to_be_visible()
    expect(page.locator("input[name=spawn_mode][value=managed_child]")).to_be_checked()
    page.check("input[name=spawn_mode][value=cluster_member]")
    expect(page.locator("#template_id option:checked")).to_have_attribute("data-modes", "cluster_member")
    page.check("input[name=spawn_mode][value=managed_child]")
    page.fill("#name", "browser-child")
    page.fill("#region", "lab-1")
    shot(page, "02-spawn-modal")
    page.click("#spawn-submit")

    expect(page.locator("#token-dialog")).to_be_visible()
    token = page.input_value("#acceptance-token")
    assert token.startswith("pnat_")
    shot(page, "03-token-once")
    page.click("#token-dialog [data-forget]")
    expect(page.locator("#token-dialog")).to_have_count(0)
    assert token not in page.content()

    page.evaluate("window.__notReloaded = true")
    row = page.locator("#children-rows tr", has_text="browser-child")
    expect(row.locator(".status")).to_have_text("active", timeout=120_000)
    assert page.evaluate("window.__notReloaded") is True  # live updates, no reload
    expect(row).to_contain_text("recent")
    shot(page, "04-children-active")

    page.reload()
    assert token not in page.content()
    page.click("#children-rows a:has-text('browser-child')")
    expect(page.locator("tr.grant[data-kind=managed_child_operator]")).to_contain_text("held")
    expect(page.locator("#child-status")).to_have_text("active")
    assert token not in page.content()
    shot(page, "05-child-detail")

    page.goto(parent.url + "/console")
    expect(page.locator("svg.timeline")).to_contain_text("browser-child")
    shot(page, "06-overview")


def test_emancipation_on_the_childs_console_shows_on_the_parents(parent: Hub, page: Page):
    made = parent.spawn("managed_child")
    child_id = made["child"]["id"]
    parent.wait_for(child_id, "active", timeout=120)
    child_data = node_dir(parent, child_id) / "data"
    child_url = serve_state(child_data)["url"]

    sign_in(page, child_url, operator_token(child_data))
    page.goto(child_url + "/console/grants?resource_kind=managed_child_operator")
    grant = page.locator("tr.grant[data-kind=managed_child_operator]")
    expect(grant).to_have_count(1)
    grant.locator("input[name=reason]").fill("mine now")
    page.once("dialog", lambda dialog: dialog.accept())
    shot(page, "07-child-grants-editor")
    grant.locator("button.danger").click()
    expect(page.locator(".notice.ok")).to_contain_text("The grant was revoked")
    expect(page.locator("tr.grant[data-kind=managed_child_operator]")).to_contain_text("revoked")
    shot(page, "08-child-emancipated")

    page.context.clear_cookies()
    sign_in(page, parent.url, operator_token(parent.data_dir))
    page.goto(f"{parent.url}/console/children/{child_id}")
    page.click("#read-remote")
    expect(page.locator("#remote-result")).to_contain_text("refused the call")
    page.goto(parent.url + "/console/findings")
    expect(page.locator("tr.finding[data-kind=peer_grant_revoked]")).to_have_count(1)
    shot(page, "09-parent-findings")


def test_a_viewer_gets_no_spawn_button_and_forged_posts_are_refused(parent: Hub, page: Page):
    sign_in(page, parent.url, viewer_token(parent.data_dir))
    expect(page.locator("#open-spawn")).to_have_count(0)
    shot(page, "10-viewer-children")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    form: dict[str, Any] = {
        "spawn_mode": "managed_child",
        "parent_url": parent.federation_url,
        "template_id": "powernode-hub",
        "ttl_days": "7",
    }

    forged = page.request.post(parent.url + "/console/children/spawn", form=form | {"csrf": csrf})
    no_csrf = page.request.post(parent.url + "/console/children/spawn", form=form)

    assert forged.status == 403 and "lacks the system.children.spawn permission" in forged.text()
    assert no_csrf.status == 403 and "CSRF" in no_csrf.text()
    before = {
        c["id"] for c in parent.api("GET", "/api/v1/system/federation/children").json()["data"]["children"]
    }
    page.goto(parent.url + "/console/policies")
    shot(page, "11-viewer-policies")
    after = {
        c["id"] for c in parent.api("GET", "/api/v1/system/federation/children").json()["data"]["children"]
    }
    assert before == after
