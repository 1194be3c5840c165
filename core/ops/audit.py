"""`backstop audit list|verify`: the keyed hash chain, its repository copies, and the catalog's agreement."""

from __future__ import annotations

from dataclasses import dataclass

from core.context import EngineContext
from core.errors import BackstopError
from core.security import audit_copy
from core.security.audit import AuditEntry, AuditLog
from core.security.gate import Identity, default_identity
from core.security.guard import Guard


@dataclass(frozen=True)
class AuditVerification:
    """Result of `audit verify`."""

    entries: int
    problems: list[str]
    notes: list[str]
    copies: dict[str, int]  # target -> entries held

    @property
    def ok(self) -> bool:
        return not self.problems


def audit_entries(ctx: EngineContext, since: float | None = None, limit: int | None = None) -> list[AuditEntry]:
    """Audit log entries, oldest first (reading needs no key)."""
    return AuditLog(ctx.catalog).entries(since=since, limit=limit)


async def check_audit(ctx: EngineContext, who: Identity | None = None) -> AuditVerification:
    """Check the chain in the catalog, compare it with every reachable target's copy and with the repository."""
    who = who or default_identity()
    async with Guard(ctx).session(who, require_all=False, enforce=False) as sec:
        problems = list(sec.disagreements)
        if ctx.catalog.schema_problems():
            return AuditVerification(0, problems, [], {})
        repo, log = sec.repo, sec.audit
        report = log.verify()
        if report.problem:
            problems.insert(0, report.problem)
        notes: list[str] = []
        copies: dict[str, int] = {}
        entries = log.entries()
        for st in repo.storages:
            try:
                found = await audit_copy.read_copies(repo, st)
            except BackstopError as exc:
                problems.append(str(exc))
                continue
            cmp = audit_copy.compare(sec.keys.audit_mac, log.log_id, entries, st.name, found)
            problems += [p for p in cmp.problems if p not in problems]
            notes += cmp.notes
            copies[st.name] = cmp.copied
        notes += [f"target '{name}' not compared: {msg}" for name, msg in repo.unreachable.items()]
        # Copy nothing on top of evidence: the repository copy is what shows the damage.
        sec.copy_audit = not problems
        return AuditVerification(len(entries), problems, notes, copies)
