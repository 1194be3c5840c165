"""Changes to schedules, retention or encryption settings made through backstop: gated and audited."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from core.context import EngineContext
from core.errors import UsageError
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard

SETTINGS_ACTIONS = (Action.SCHEDULE_CHANGE, Action.RETENTION_CHANGE, Action.ENCRYPTION_CHANGE)


async def change_settings(ctx: EngineContext, action: Action, subject: str,
                          apply: Callable[[], Awaitable[None] | None], who: Identity | None = None) -> None:
    """Gate and audit a settings change; ``apply`` makes it, only once the gate allowed it.

    Front ends that edit settings call this, so they never decide alone; a
    failure of ``apply`` is audited too.
    """
    if action not in SETTINGS_ACTIONS:
        raise UsageError(f"{action.value} is not a settings change")
    async with Guard(ctx).action(who or default_identity(), action, subject, require_all=False):
        result = apply()
        if inspect.isawaitable(result):
            await result
