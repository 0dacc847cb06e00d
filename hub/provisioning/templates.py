"""The NodeTemplate catalog and the rule that a template must fit the spawn mode."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.exceptions import Unprocessable
from hub.provisioning.base import TemplateSpec
from hub.provisioning.models import NodeTemplate


class TemplateMismatch(Unprocessable):
    code = "TEMPLATE_MISMATCH"


def _has(template: NodeTemplate, module: str) -> bool:
    return any(m == module or m.endswith(f"-{module}") for m in template.modules)


async def get_all(session: AsyncSession) -> list[NodeTemplate]:
    return list((await session.scalars(select(NodeTemplate).order_by(NodeTemplate.id))).all())


async def get_or_raise(session: AsyncSession, *, template_id: str) -> NodeTemplate:
    template = await session.get(NodeTemplate, template_id)
    if template is None:
        raise Unprocessable(f"Unknown template {template_id!r}", code="UNKNOWN_TEMPLATE")
    return template


def fits(template: NodeTemplate, *, spawn_mode: str) -> bool:
    """cluster_member needs pg-replica and no postgres; the other modes need postgres."""
    has_replica, has_postgres = _has(template, "pg-replica"), _has(template, "postgres")
    if spawn_mode == "cluster_member":
        return has_replica and not has_postgres
    return has_postgres and not has_replica


async def check_fits(session: AsyncSession, template: NodeTemplate, *, spawn_mode: str) -> None:
    """422 naming the templates that would fit, so an operator knows what to pick instead."""
    if fits(template, spawn_mode=spawn_mode):
        return
    if spawn_mode == "cluster_member":
        why = "it needs the pg-replica module and must not run its own postgres"
    else:
        why = "it needs its own postgres module and no pg-replica"
    fitting = [t.id for t in await get_all(session) if fits(t, spawn_mode=spawn_mode)]
    pick = f"templates that fit: {', '.join(fitting)}" if fitting else "no template here fits it"
    raise TemplateMismatch(
        f"Template {template.id!r} cannot host a {spawn_mode}: {why}; {pick}",
        details={"template_id": template.id, "spawn_mode": spawn_mode, "fitting_templates": fitting},
    )


def spec(template: NodeTemplate) -> TemplateSpec:
    return TemplateSpec(id=template.id, modules=tuple(template.modules), vm=dict(template.vm or {}))
