"""Annotated dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from hub.config import Settings
from hub.operators import service as operators_service
from hub.runtime import HubRuntime


async def get_runtime(request: Request) -> HubRuntime:  # async: no thread-pool hop per request
    return request.app.state.runtime


RuntimeDep = Annotated[HubRuntime, Depends(get_runtime)]


async def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_session(runtime: RuntimeDep) -> AsyncIterator[AsyncSession]:
    async with runtime.sessionmaker() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def require(permission: str) -> Callable[..., Coroutine[Any, Any, operators_service.Operator]]:
    """A dependency: the calling operator, 401 without a valid token, 403 without `permission`."""

    async def dependency(request: Request, runtime: RuntimeDep) -> operators_service.Operator:
        async with runtime.sessionmaker() as session, session.begin():
            operator = await operators_service.authenticate(
                session, bearer=operators_service.bearer_of(request.headers.get("authorization", ""))
            )
        operator.require(permission)
        return operator

    return dependency


OperatorT = operators_service.Operator
