"""The one door to gated actions: catalog check, gate, audited outcome, copy to the repository.

Every destructive operation runs inside ``guard.action(...)`` (or, when it
must look at the repository before asking for a code, ``guard.session(...)``
then ``act(...)``), so none of them repeats the sequence:

1. open the repository and compare the catalog with it (a catalog that
   disagrees stops here: ``core.security.state``);
2. take the repository lock the action needs, *before* the code is checked,
   so a command refused by a lock does not use up its one-time code;
3. ask the gate (role, code, lockout), which audits allowed and refused;
4. run the block, and audit how it ended: "failed" with the error, or
   "succeeded" with what the block put into ``Acting.detail``;
5. copy the new audit entries to every reachable target, whatever happened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.security import audit_copy
from core.security.gate import Action, Identity
from core.security.state import SecuritySession, open_session

if TYPE_CHECKING:
    from core.context import EngineContext
    from core.repository.repo import Repository

Lock = tuple[str, str]  # (kind, purpose) of a repository lock


@dataclass
class Acting:
    """An allowed action in progress: what it records when it ends."""

    session: SecuritySession
    who: Identity
    action: Action
    subject: str
    detail: dict[str, object] = field(default_factory=dict)  # recorded with the outcome
    failure_detail: dict[str, object] = field(default_factory=dict)  # recorded only when it fails

    @property
    def repo(self) -> Repository:
        return self.session.repo

    def record(self, action: str, subject: str, outcome: str, **detail: object) -> None:
        """An extra audit entry written while the action runs (e.g. a snapshot renamed)."""
        self.session.gate.record(self.who, action, subject, outcome, **detail)


class Guard:
    """Gated actions of one engine context."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    @asynccontextmanager
    async def session(self, who: Identity, require_all: bool = True,
                      enforce: bool = True) -> AsyncIterator[SecuritySession]:
        """The repository and the gate; new audit entries are copied to the repository afterwards."""
        repo = await self.ctx.open_repository(require_all=require_all)
        sec = await open_session(self.ctx.catalog, self.ctx.config, repo, who, enforce)
        try:
            yield sec
        finally:
            if sec.copy_audit and not sec.disagreements:
                await audit_copy.push(repo, sec.audit)

    @asynccontextmanager
    async def action(self, who: Identity, action: Action, subject: str, *, require_all: bool = True,
                     lock: Lock | None = None, enrol_role: str | None = None,
                     approved_by: str | None = None) -> AsyncIterator[Acting]:
        """Authorize ``action`` on ``subject`` for ``who`` (see :func:`act`), run the block, audit its outcome."""
        async with self.session(who, require_all) as sec:
            async with act(sec, who, action, subject, lock=lock, enrol_role=enrol_role,
                           approved_by=approved_by) as acting:
                yield acting


@asynccontextmanager
async def act(sec: SecuritySession, who: Identity, action: Action, subject: str, *, lock: Lock | None = None,
              enrol_role: str | None = None, approved_by: str | None = None) -> AsyncIterator[Acting]:
    """Steps 2 to 4 inside an open session.

    ``approved_by`` replaces the code check with a standing approval (a
    policy in the config, e.g. `key rotate --if-due`): it is recorded as the
    reason the action was allowed.
    """
    async with sec.repo.lock(*lock) if lock else nullcontext():
        if approved_by is None:
            await sec.gate.authorize(action, who, subject, enrol_role=enrol_role)
        else:
            sec.gate.record(who, action.value, subject, "allowed", reason=approved_by)
        acting = Acting(sec, who, action, subject)
        try:
            yield acting
        except BaseException as exc:
            sec.gate.record(who, action.value, subject, "failed", error=str(exc) or type(exc).__name__,
                            **acting.failure_detail)
            raise
        sec.gate.record(who, action.value, subject, "succeeded", **acting.detail)
