"""Console sign-in: the operator token in an HttpOnly, SameSite=Strict cookie; CSRF on every form.

The session cookie holds the operator token itself (no server-side session to lose or replicate
across processes); every request re-authenticates it exactly as the API does, so a token revoked
through the API ends its console sessions at once. A form's CSRF value is an HMAC of the token:
a page from this console can carry it, another site cannot compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import FormData
from starlette.responses import Response

from hub.exceptions import Unauthorized
from hub.operators import service as operators_service

SESSION_COOKIE = "pn_console"
LOGIN_COOKIE = "pn_console_login"
COOKIE_PATH = "/console"


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in page, fragments answer 401."""

    def __init__(self, expired: bool = False):
        super().__init__("sign in required")
        self.expired = expired


class CsrfRejected(Exception):
    """A form without this console's CSRF value: refused, nothing done."""


def csrf_for(bearer: str) -> str:
    return hmac.new(bearer.encode(), b"powernode-console-csrf", hashlib.sha256).hexdigest()


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


def set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None = None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name, path=COOKIE_PATH, httponly=True, secure=request.url.scheme == "https", samesite="strict"
    )


@dataclass(frozen=True)
class ConsoleSession:
    bearer: str
    operator: operators_service.Operator
    csrf: str

    def can(self, permission: str) -> bool:
        return permission in self.operator.permissions


async def authenticate(request: Request, bearer: str | None) -> operators_service.Operator:
    runtime = request.app.state.runtime
    async with runtime.sessionmaker() as session, session.begin():
        return await operators_service.authenticate(session, bearer=bearer)


async def current(request: Request) -> ConsoleSession:
    bearer = request.cookies.get(SESSION_COOKIE)
    if not bearer:
        raise SignInRequired()
    try:
        operator = await authenticate(request, bearer)
    except Unauthorized as e:
        raise SignInRequired(expired=True) from e
    return ConsoleSession(bearer=bearer, operator=operator, csrf=csrf_for(bearer))


async def checked_form(request: Request, session: ConsoleSession) -> FormData:
    """The posted form, once its CSRF value proves it came from a page of this session."""
    form = await request.form()
    sent = form.get("csrf")
    if not isinstance(sent, str) or not hmac.compare_digest(sent, session.csrf):
        raise CsrfRejected()
    return form
