"""`backstop init`: create the repository on every target, or repair a target's identity objects."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.context import EngineContext
from core.repository.repo import Repository
from core.security import audit_copy
from core.security.gate import Identity, default_identity
from core.security.state import open_session


@dataclass(frozen=True)
class InitResult:
    repo_id: str
    created_on: list[str]
    existing_on: list[str]
    repaired_on: dict[str, str] = field(default_factory=dict)  # target -> what init rewrote there


async def init(ctx: EngineContext, who: Identity | None = None) -> InitResult:
    """Create the repository on every target (idempotent)."""
    stores = ctx.storages()
    # Every target first: a bucket that cannot lock objects must stop init before anything is written anywhere.
    for st in stores:
        await st.check_capabilities()
    for st in stores:
        await st.prepare()
    repo, created = await Repository.init(stores, ctx.config.encryption.passphrase(), ctx.config.repository)
    await _audit_key_events(ctx, repo, created, repo.repaired, who or default_identity())
    return InitResult(repo.params.repo_id, created, [s.name for s in stores if s.name not in created], repo.repaired)


async def _audit_key_events(ctx: EngineContext, repo: Repository, created: list[str], repaired: dict[str, str],
                            who: Identity) -> None:
    """New key objects on targets, and key objects rewritten, are key events: audited."""
    if not created and not repaired:
        return
    sec = await open_session(ctx.catalog, ctx.config, repo, who, enforce=False)
    if sec.disagreements:
        return  # never append to a catalog that disagrees; `catalog rebuild` first
    if created:
        sec.gate.record(who, "key.create", f"repository {repo.params.repo_id[:8]}", "succeeded",
                        versions=sorted(repo.keys), targets=created)
    for target, what in sorted(repaired.items()):
        sec.gate.record(who, "key.repair", f"target {target}", "succeeded", detail=what)
    await audit_copy.push(repo, sec.audit)
