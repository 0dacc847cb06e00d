"""The console's pages and forms under /console (server-rendered; a little JavaScript polls)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from starlette.datastructures import FormData

from hub.console import session as console_session
from hub.console import views
from hub.console.api_client import ApiError, ConsoleApi
from hub.console.session import ConsoleSession, CsrfRejected, SignInRequired
from hub.federation.findings.service import HEARTBEAT_STALE
from hub.federation.peers.models import FederationPeer
from hub.operators import permissions as perms

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/console", include_in_schema=False)
Session = Annotated[ConsoleSession, Depends(console_session.current)]

CHILDREN = "/system/federation/children"
PAGE_SIZE = 20
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Outcomes shown after a redirect: the query names one of these, never free text.
DONE = {
    "revoked": "The child was revoked: its token and certificate are dead and its grants revoked.",
    "grant-revoked": "The grant was revoked.",
    "retried": "The replication setup was queued again.",
    "reissued": "A new replication credential was issued; the old one is dead.",
    "policy-created": "The policy was created.",
    "policy-updated": "The policy was saved.",
    "policy-deleted": "The policy was deleted.",
    "signed-out": "You are signed out.",
}


def install(app: FastAPI) -> None:
    """Mount the console on `app`: pages, static assets, `/` → `/console`, its two error pages."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/console", status_code=303)

    @app.exception_handler(SignInRequired)
    async def _sign_in(request: Request, exc: SignInRequired) -> Response:
        if request.url.path.endswith("/rows"):
            return Response("signed out", status_code=401, media_type="text/plain")
        response = RedirectResponse("/console/login" + ("?expired=1" if exc.expired else ""), status_code=303)
        if exc.expired:
            console_session.clear_cookie(request, response, console_session.SESSION_COOKIE)
        return response

    @app.exception_handler(CsrfRejected)
    async def _csrf(request: Request, exc: CsrfRejected) -> Response:
        return templates.TemplateResponse(
            request,
            "message.html",
            {
                "title": "Form refused",
                "message": "This form did not come from a page of your console session (its CSRF "
                "check failed), so nothing was done. Reload the page and try again.",
                "session": None,
            },
            status_code=403,
        )


def page(
    request: Request, name: str, session: ConsoleSession | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    done = DONE.get(request.query_params.get("done", ""))
    return templates.TemplateResponse(
        request,
        name,
        {"session": session, "perms": perms, "views": views, "done": done, **context},
        status_code=status_code,
        headers=NO_STORE,
    )


def api(request: Request, session: ConsoleSession) -> ConsoleApi:
    return ConsoleApi(request.app, session.bearer)


def text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


# Sign-in ---------------------------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    nonce = console_session.new_login_nonce()
    expired = request.query_params.get("expired") == "1"
    response = page(request, "login.html", None, nonce=nonce, expired=expired, error=None)
    console_session.set_cookie(request, response, console_session.LOGIN_COOKIE, nonce, max_age=1800)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    nonce = request.cookies.get(console_session.LOGIN_COOKIE, "")
    sent = form.get("csrf")
    if not nonce or not isinstance(sent, str) or sent != nonce:
        raise CsrfRejected()
    token = text(form, "token")
    try:
        await console_session.authenticate(request, token or None)
    except Exception as e:  # Unauthorized, or the database away: the page says which
        message = getattr(e, "message", "The hub could not check the token right now.")
        fresh = console_session.new_login_nonce()
        refused = page(
            request, "login.html", None, nonce=fresh, expired=False, error=message, status_code=401
        )
        console_session.set_cookie(request, refused, console_session.LOGIN_COOKIE, fresh, max_age=1800)
        return refused
    response = RedirectResponse("/console/children", status_code=303)
    console_session.set_cookie(request, response, console_session.SESSION_COOKIE, token)
    console_session.clear_cookie(request, response, console_session.LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, session: Session) -> Response:
    await console_session.checked_form(request, session)
    response = RedirectResponse("/console/login?done=signed-out", status_code=303)
    console_session.clear_cookie(request, response, console_session.SESSION_COOKIE)
    return response


# Overview --------------------------------------------------------------------------------------


@router.get("")
async def overview(request: Request, session: Session) -> HTMLResponse:
    if not session.can(perms.CHILDREN_READ):
        return page(
            request, "overview.html", session, counts=None, counts_svg=None, timeline=None, error=None
        )
    runtime = request.app.state.runtime
    async with runtime.sessionmaker() as db:
        rows = await db.execute(
            select(FederationPeer.spawn_mode, FederationPeer.status, func.count())
            .where(FederationPeer.spawn_role == "parent")
            .group_by(FederationPeer.spawn_mode, FederationPeer.status)
        )
        counts: dict[str, dict[str, int]] = {}
        for mode, status, n in rows:
            counts.setdefault(mode, {})[status] = n
    error = None
    timeline = None
    async with api(request, session) as client:
        try:
            recent = (await client.get(CHILDREN, limit=12))["children"]
            details = await asyncio.gather(*(client.get(f"{CHILDREN}/{c['id']}") for c in recent))
            stale: dict[str, list[dict[str, Any]]] = {}
            if session.can(perms.FINDINGS_READ):
                found = await client.get("/system/federation/findings", kind=HEARTBEAT_STALE, limit=1000)
                for finding in found["findings"]:
                    stale.setdefault(str(finding.get("peer_id")), []).append(finding)
            timeline = views.timeline_svg([d["child"] for d in details], stale)
        except ApiError as e:
            error = e
    return page(
        request,
        "overview.html",
        session,
        counts=counts,
        counts_svg=views.counts_svg(counts),
        timeline=timeline,
        error=error,
    )


# Children --------------------------------------------------------------------------------------


def _filters(request: Request) -> dict[str, str]:
    q = request.query_params
    return {
        "spawn_mode": q.get("spawn_mode", "") if q.get("spawn_mode") in views.MODES else "",
        "status": q.get("status", "") if q.get("status") in views.STATUSES else "",
        "cursor": q.get("cursor", "")[:200],
    }


async def _children(client: ConsoleApi, filters: dict[str, str]) -> tuple[list[views.ChildRow], str | None]:
    body = await client.call(
        "GET",
        CHILDREN,
        params={
            "spawn_mode": filters["spawn_mode"],
            "status": filters["status"],
            "cursor": filters["cursor"],
            "limit": PAGE_SIZE,
        },
    )
    listed = body["data"]["children"]
    details = await asyncio.gather(*(client.get(f"{CHILDREN}/{c['id']}") for c in listed))
    return [views.child_row(d["child"]) for d in details], body.get("meta", {}).get("next_cursor")


def _parent_url(request: Request) -> str:
    """The URL children must use: an https public URL (a proxy in front), else this hub's own
    federation listener, else whatever URL this hub calls itself."""
    settings = request.app.state.runtime.settings
    public = str(settings.public_url or "")
    if public.lower().startswith("https://"):
        return public
    try:
        state = json.loads((settings.data_dir / "serve.json").read_text())
        if state.get("federation_url"):
            return str(state["federation_url"])
    except (OSError, ValueError):
        pass
    return public or str(request.base_url).rstrip("/")


async def _children_page(
    request: Request,
    session: ConsoleSession,
    *,
    spawn_error: ApiError | None = None,
    spawn_form: dict[str, str] | None = None,
    spawned: dict[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    filters = _filters(request)
    rows: list[views.ChildRow] = []
    next_cursor = None
    error = None
    templates_list: list[dict[str, Any]] = []
    async with api(request, session) as client:
        try:
            rows, next_cursor = await _children(client, filters)
            if session.can(perms.CHILDREN_SPAWN):
                templates_list = (await client.get("/system/federation/templates"))["templates"]
        except ApiError as e:
            error = e
    if spawn_error is not None and not session.can(perms.CHILDREN_SPAWN):
        error = spawn_error  # no spawn dialog to show it in
    query = urlencode({k: v for k, v in filters.items() if v and k != "cursor"})
    return page(
        request,
        "children.html",
        session,
        rows=rows,
        filters=filters,
        query=query,
        next_cursor=next_cursor,
        error=error,
        templates_list=templates_list,
        parent_url=_parent_url(request),
        spawn_error=spawn_error,
        spawn_form=spawn_form or {},
        spawned=spawned,
        status_code=status_code,
    )


@router.get("/children")
async def children(request: Request, session: Session) -> HTMLResponse:
    return await _children_page(request, session)


@router.get("/children/rows")
async def children_rows(request: Request, session: Session) -> HTMLResponse:
    """The table body alone, for the page's live updates."""
    async with api(request, session) as client:
        try:
            rows, _ = await _children(client, _filters(request))
        except ApiError as e:
            return HTMLResponse(e.message, status_code=e.status, headers=NO_STORE)
    return page(request, "children_rows.html", session, rows=rows)


@router.post("/children/spawn")
async def spawn(request: Request, session: Session) -> HTMLResponse:
    form = await console_session.checked_form(request, session)
    fields = {
        k: text(form, k) for k in ("spawn_mode", "parent_url", "template_id", "region", "ttl_days", "name")
    }
    try:
        days = int(fields["ttl_days"] or "7")
    except ValueError:
        days = 0
    if not 1 <= days <= 30:
        error = ApiError(400, "VALIDATION_FAILED", "Token TTL must be a whole number of days from 1 to 30.")
        return await _children_page(request, session, spawn_error=error, spawn_form=fields, status_code=400)
    body: dict[str, Any] = {
        "spawn_mode": fields["spawn_mode"] or "managed_child",
        "parent_url": fields["parent_url"],
        "spawn_target": {"template_id": fields["template_id"], "region": fields["region"] or None},
        "token_ttl_seconds": days * 86400,
    }
    if fields["name"]:
        body["name"] = fields["name"]
    async with api(request, session) as client:
        try:
            spawned = await client.post(f"{CHILDREN}/spawn", body)
        except ApiError as e:
            return await _children_page(
                request, session, spawn_error=e, spawn_form=fields, status_code=e.status
            )
    return await _children_page(request, session, spawned=spawned, status_code=201)


async def _child_page(
    request: Request,
    session: ConsoleSession,
    child_id: str,
    *,
    token: dict[str, Any] | None = None,
    action_error: ApiError | None = None,
    remote: dict[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    async with api(request, session) as client:
        try:
            child = (await client.get(f"{CHILDREN}/{child_id}"))["child"]
        except ApiError as e:
            return page(
                request,
                "message.html",
                session,
                title="Child",
                message=e.message,
                hint=e.hint,
                status_code=e.status,
            )
        audit: list[dict[str, Any]] = []
        try:
            audit = (await client.get("/system/audit_events", target=child["id"], limit=50))["events"]
        except ApiError:
            audit = []
    return page(
        request,
        "child.html",
        session,
        child=child,
        row=views.child_row(child),
        audit=audit,
        token=token,
        action_error=action_error,
        remote=remote,
        status_code=status_code,
    )


@router.get("/children/{child_id}")
async def child(request: Request, session: Session, child_id: str) -> HTMLResponse:
    return await _child_page(request, session, child_id)


@router.post("/children/{child_id}/rotate-token")
async def rotate_token(request: Request, session: Session, child_id: str) -> HTMLResponse:
    form = await console_session.checked_form(request, session)
    try:
        days = int(text(form, "ttl_days") or "7")
    except ValueError:
        days = 7
    async with api(request, session) as client:
        try:
            rotated = await client.post(
                f"{CHILDREN}/{child_id}/rotate_token", {"token_ttl_seconds": min(30, max(1, days)) * 86400}
            )
        except ApiError as e:
            return await _child_page(request, session, child_id, action_error=e, status_code=e.status)
    return await _child_page(request, session, child_id, token=rotated)


@router.post("/children/{child_id}/revoke")
async def revoke(request: Request, session: Session, child_id: str) -> Response:
    form = await console_session.checked_form(request, session)
    if text(form, "confirm") != "yes":
        error = ApiError(400, "VALIDATION_FAILED", "Tick the confirmation box to revoke this child.")
        return await _child_page(request, session, child_id, action_error=error, status_code=400)
    async with api(request, session) as client:
        try:
            await client.post(f"{CHILDREN}/{child_id}/revoke", {"reason": text(form, "reason") or None})
        except ApiError as e:
            return await _child_page(request, session, child_id, action_error=e, status_code=e.status)
    return RedirectResponse(f"/console/children/{child_id}?done=revoked", status_code=303)


@router.post("/children/{child_id}/replication/{action}")
async def replication(request: Request, session: Session, child_id: str, action: str) -> Response:
    await console_session.checked_form(request, session)
    if action not in ("retry", "reissue"):
        error = ApiError(404, "NOT_FOUND", "Unknown replication action.")
        return await _child_page(request, session, child_id, action_error=error, status_code=404)
    async with api(request, session) as client:
        try:
            await client.post(f"{CHILDREN}/{child_id}/replication/{action}")
        except ApiError as e:
            return await _child_page(request, session, child_id, action_error=e, status_code=e.status)
    done = "retried" if action == "retry" else "reissued"
    return RedirectResponse(f"/console/children/{child_id}?done={done}", status_code=303)


@router.post("/children/{child_id}/remote")
async def read_remote(request: Request, session: Session, child_id: str) -> HTMLResponse:
    """Read the child through the grant we hold on it (a managed_child's `peer` resource)."""
    await console_session.checked_form(request, session)
    async with api(request, session) as client:
        try:
            data = await client.get(f"/system/federation/children/{child_id}/remote/peer")
            remote = {"ok": True, "data": data}
        except ApiError as e:
            remote = {"ok": False, "error": e}
    return await _child_page(request, session, child_id, remote=remote)


# Grants ----------------------------------------------------------------------------------------

GRANT_FILTERS = {"resource_kind": 64, "direction": 8, "state": 16}


@router.get("/grants")
async def grants(request: Request, session: Session) -> HTMLResponse:
    filters = {k: request.query_params.get(k, "")[:n] for k, n in GRANT_FILTERS.items()}
    rows: list[dict[str, Any]] = []
    error = None
    async with api(request, session) as client:
        try:
            rows = (await client.get("/system/federation/grants", **filters))["grants"]
        except ApiError as e:
            error = e
    return page(request, "grants.html", session, rows=rows, filters=filters, error=error)


@router.post("/grants/{grant_id}/revoke")
async def revoke_grant(request: Request, session: Session, grant_id: str) -> Response:
    form = await console_session.checked_form(request, session)
    async with api(request, session) as client:
        try:
            await client.post(
                f"/system/federation/grants/{grant_id}/revoke", {"reason": text(form, "reason") or None}
            )
        except ApiError as e:
            return page(
                request,
                "message.html",
                session,
                title="Grant not revoked",
                message=e.message,
                hint=e.hint,
                status_code=e.status,
            )
    return RedirectResponse("/console/grants?done=grant-revoked", status_code=303)


# Findings and policies -------------------------------------------------------------------------


@router.get("/findings")
async def findings(request: Request, session: Session) -> HTMLResponse:
    state = request.query_params.get("state", "open")
    state = state if state in ("open", "resolved", "all") else "open"
    rows: list[dict[str, Any]] = []
    error = None
    async with api(request, session) as client:
        try:
            rows = (await client.get("/system/federation/findings", state=None if state == "all" else state))[
                "findings"
            ]
        except ApiError as e:
            error = e
    return page(request, "findings.html", session, rows=rows, state=state, error=error)


POLICIES = "/system/intervention_policies"


async def _policies_page(
    request: Request, session: ConsoleSession, *, form_error: ApiError | None = None, status_code: int = 200
) -> HTMLResponse:
    rows: list[dict[str, Any]] = []
    error = None
    evaluation = None
    action = request.query_params.get("evaluate", "")[:200]
    async with api(request, session) as client:
        try:
            rows = (await client.get(POLICIES))["policies"]
            if action:
                evaluation = await client.get(f"{POLICIES}/evaluate", action=action)
        except ApiError as e:
            error = e
    return page(
        request,
        "policies.html",
        session,
        rows=rows,
        error=error,
        form_error=form_error,
        evaluation=evaluation,
        action=action,
        status_code=status_code,
    )


@router.get("/policies")
async def policies(request: Request, session: Session) -> HTMLResponse:
    return await _policies_page(request, session)


def _policy_body(form: FormData) -> dict[str, Any]:
    tags = [t.strip() for t in text(form, "scope_tags").split(",") if t.strip()]
    return {
        "action_pattern": text(form, "action_pattern"),
        "decision": text(form, "decision"),
        "scope_tags": tags,
        "description": text(form, "description"),
    }


@router.post("/policies")
async def create_policy(request: Request, session: Session) -> Response:
    form = await console_session.checked_form(request, session)
    async with api(request, session) as client:
        try:
            await client.post(POLICIES, _policy_body(form))
        except ApiError as e:
            return await _policies_page(request, session, form_error=e, status_code=e.status)
    return RedirectResponse("/console/policies?done=policy-created", status_code=303)


@router.post("/policies/{policy_id}")
async def update_policy(request: Request, session: Session, policy_id: str) -> Response:
    form = await console_session.checked_form(request, session)
    async with api(request, session) as client:
        try:
            if text(form, "delete") == "yes":
                await client.call("DELETE", f"{POLICIES}/{policy_id}")
                return RedirectResponse("/console/policies?done=policy-deleted", status_code=303)
            await client.call("PATCH", f"{POLICIES}/{policy_id}", json=_policy_body(form))
        except ApiError as e:
            return await _policies_page(request, session, form_error=e, status_code=e.status)
    return RedirectResponse("/console/policies?done=policy-updated", status_code=303)
