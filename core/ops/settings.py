"""Changes to schedules, retention or encryption settings: approving the file's edits, gated and audited."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core.context import EngineContext
from core.errors import AuthError, RepositoryError, UsageError
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Guard, act
from core.security.operators import role_at_least
from core.settings import approved as store
from core.settings.approved import Approved
from core.settings.effective import STORED_KEY, resolve
from core.settings.sections import SectionChange

# The audit action of a refused approval, whose entry carries the diff (the gate's own entry does not).
APPROVE_ACTION = "settings.approve"
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


@dataclass(frozen=True)
class Approval:
    """What `settings approve` did: the sections it put in force (none: nothing was pending)."""

    changes: list[SectionChange]
    version: int | None = None
    warnings: list[str] = field(default_factory=list)
    enforced: bool = True


def _strictest(changes: list[SectionChange]) -> Action:
    """The action among ``changes`` that needs the highest role (encryption needs an admin)."""
    return max((c.action for c in changes), key=lambda a: role_at_least(a.required_role, "admin"))


async def approve_settings(ctx: EngineContext, data: object, path: Path, who: Identity | None = None) -> Approval:
    """Put the file's schedules/retention/encryption sections in force, gated (role and fresh code) and audited.

    The diff goes into the audit log with the approval, and with every
    refused attempt; the approved record is sealed into the repository
    before the catalog's copy changes.
    """
    who = who or default_identity()
    async with Guard(ctx).session(who) as sec:
        eff = await resolve(ctx.catalog, ctx.storages(), data, path, verify=True)
        if not eff.enforced or not eff.pending:
            return Approval([], eff.record.version if eff.record else None, eff.notes, eff.enforced)
        changes = eff.pending
        subject = ", ".join(c.section for c in changes)
        diff_doc = [c.to_json() for c in changes]
        base = eff.record.version if eff.record else 0
        try:
            async with act(sec, who, _strictest(changes), subject) as acting:
                rec = Approved(eff.written, True, base + 1, time.time(), who.operator, "approved")
                warnings = await store.save(sec.repo, rec)
                if len(warnings) == len(sec.repo.storages):
                    raise RepositoryError("the approved settings could not be written to any target ("
                                          + "; ".join(warnings) + "); check the targets and approve again")
                store.cache(ctx.catalog, rec)
                if not warnings:
                    ctx.catalog.set_security_value(STORED_KEY, str(rec.version))
                acting.detail.update(version=rec.version, diff=diff_doc)
        except AuthError as exc:
            sec.gate.record(who, APPROVE_ACTION, subject, "refused", error=str(exc), diff=diff_doc)
            raise
    return Approval(changes, rec.version, warnings + eff.notes)


def retention_removals(ctx: EngineContext, changes: list[SectionChange],
                       now: datetime | None = None) -> dict[str, list[str]]:
    """For each pending retention change: the snapshot ids its new rules would remove now (database -> ids).

    A change that removes a database's rules removes nothing (without rules
    everything is kept); rules that do not validate are left out (the
    config error says why).
    """
    from pydantic import ValidationError

    from core.config import RetentionConfig
    from core.ops.retention import plan_for

    now = now or datetime.now(UTC)
    out: dict[str, list[str]] = {}
    for c in changes:
        db = c.database
        if db is None:
            continue
        if c.after is None:
            out[db] = []
            continue
        try:
            rules = RetentionConfig.model_validate(c.after)
        except ValidationError:
            continue
        out[db] = plan_for(ctx, db, rules, now).remove
    return out
