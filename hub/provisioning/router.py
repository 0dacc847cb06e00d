"""Operator API: the NodeTemplate catalog."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from hub.dependencies import OperatorT, SessionDep, require
from hub.operators import permissions
from hub.provisioning import templates as templates_service
from hub.wire import Envelope, envelope

router = APIRouter(prefix="/system/federation/templates", tags=["templates"])


class TemplateView(BaseModel):
    id: str
    name: str
    description: str
    modules: list[str]
    provisioner: str | None
    vm: dict[str, Any]
    spawn_modes: list[str]


def _modes(template: Any) -> list[str]:
    modes = ("managed_child", "autonomous_peer", "cluster_member")
    return [mode for mode in modes if templates_service.fits(template, spawn_mode=mode)]


@router.get("", response_model=Envelope[dict[str, list[TemplateView]]])
async def list_templates(
    session: SessionDep, operator: Annotated[OperatorT, Depends(require(permissions.CHILDREN_READ))]
) -> dict:
    """The NodeTemplate catalog, with the spawn modes each template can host."""
    templates = await templates_service.get_all(session)
    views = [
        TemplateView(
            id=t.id,
            name=t.name,
            description=t.description,
            modules=t.modules,
            provisioner=t.provisioner,
            vm=t.vm,
            spawn_modes=_modes(t),
        )
        for t in templates
    ]
    return envelope({"templates": views})
