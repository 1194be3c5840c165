"""`backstop unlock`: list the repository's locks; remove those a crashed process on another host left."""

from __future__ import annotations

from core.context import EngineContext
from core.errors import UsageError
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard, act


async def list_locks(ctx: EngineContext) -> list[dict[str, object]]:
    """The repository's locks (first reachable target), with whether each is stale."""
    return await (await ctx.open_repository(require_all=False)).locks()


def _matches(lock_name: str, wanted: list[str]) -> bool:
    short = lock_name.removeprefix("locks/")
    return any(short.startswith(w.removeprefix("locks/")) for w in wanted)


async def unlock(ctx: EngineContext, names: list[str], who: Identity | None = None) -> list[str]:
    """Remove locks by id or id prefix (``["all"]``: every lock); an operator with a one-time code."""
    who = who or default_identity()
    async with Guard(ctx).session(who, require_all=False) as sec:
        present = await sec.repo.locks()
        chosen = present if names == ["all"] else [lk for lk in present if _matches(str(lk["name"]), names)]
        if not chosen:
            raise UsageError("no such lock; `backstop unlock` without arguments lists them")
        subject = ", ".join(f"{str(lk['name'])[6:14]} ({lk['kind']}, {lk['purpose']}, pid {lk['pid']} on "
                            f"{lk['host']})" for lk in chosen)
        async with act(sec, who, Action.UNLOCK, subject):
            await sec.repo.remove_locks([str(lk["name"]) for lk in chosen])
    return [str(lk["name"]) for lk in chosen]
