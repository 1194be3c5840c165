"""`backstop agents register`: let a login role act as a fleet agent for named databases (admin, with a code)."""

from __future__ import annotations

import re

from core.context import EngineContext
from core.errors import UsageError
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard

# Its wake-up channel, backstop_agent_NAME, must fit PostgreSQL's 63 characters.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def register_agent(ctx: EngineContext, name: str, role: str, databases: list[str], *,
                         create_role: bool = False, who: Identity | None = None) -> None:
    """Register (or re-register) agent ``name`` as login role ``role``, serving ``databases``; audited."""
    from core.fleet.routing import control_plane

    if not _NAME.fullmatch(name):
        raise UsageError(f"agent name {name!r}: letters, digits, '.', '_' and '-', up to 48")
    if not _ROLE.fullmatch(role):
        raise UsageError(f"role {role!r}: lower-case letters, digits and '_', up to 63 (a PostgreSQL role name)")
    known = {d.name for d in ctx.config.databases}
    unknown = sorted(set(databases) - known)
    if unknown:
        raise UsageError(f"database {unknown[0]!r} is not in this config's databases: ({', '.join(sorted(known))})")
    plane = control_plane(ctx, "registering an agent")
    who = who or default_identity()
    subject = f"{name} as {role}: {', '.join(sorted(databases)) or 'no databases'}"
    async with Guard(ctx).action(who, Action.AGENT_REGISTER, subject, require_all=False) as acting:
        if create_role:
            plane.create_agent_role(role)
        plane.register_agent(name, role, databases)
        acting.detail.update(agent=name, role=role, databases=sorted(databases), created_role=create_role)
