"""Which agent gets a job (the live one registered for the job's database), and the control plane to ask."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import ConfigError
from core.fleet.queue import AgentRow, ControlPlane

if TYPE_CHECKING:
    from core.context import EngineContext

# An agent counts as alive while its last heartbeat is this recent.
ALIVE_S = 90.0


def pick_agent(agents: list[AgentRow], db: str | None, now: float, alive_s: float = ALIVE_S) -> AgentRow | None:
    """The live agent that serves ``db`` (any live agent for work without a database), freshest first."""
    live = [a for a in agents if a.heartbeat_at is not None and now - a.heartbeat_at.timestamp() <= alive_s]
    if db is not None:
        live = [a for a in live if db in a.databases]
    live.sort(key=lambda a: a.heartbeat_at.timestamp() if a.heartbeat_at else 0.0, reverse=True)
    return live[0] if live else None


def control_plane(ctx: EngineContext, what: str = "the fleet") -> ControlPlane:
    """The queue on this engine's catalog; ``what`` needs it, and a catalog on SQLite is told how to move."""
    conn = getattr(ctx.catalog, "connection", None)
    if not ctx.config.catalog.is_postgres or conn is None:
        raise ConfigError(f"{what} needs the catalog on PostgreSQL (catalog.url: postgresql://...); move it with"
                          " `backstop catalog migrate --to URL`")
    return ControlPlane(conn.raw)
