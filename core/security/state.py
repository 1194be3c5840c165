"""The catalog's security state kept equal to the repository's: operators and the audit log.

``open_session`` is what every gated action starts with: it binds the gate
and the audit log to the repository's derived keys, takes operators and the
audit chain back into a catalog that has none, and compares the catalog with
the repository (``core.security.consistency``). ``rebuild`` is the catalog
rebuild's security half.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from core.catalog.base import Catalog
from core.config import BackstopConfig
from core.errors import BackstopError, CatalogDisagrees
from core.repository.repo import Repository
from core.security import audit_copy, operator_copy
from core.security.audit import AuditEntry, AuditLog, verify_chain
from core.security.consistency import FORK_ACTION, REBUILD_HINT, acknowledged_forks, disagreements, removed_operators
from core.security.derive import SecurityKeys
from core.security.gate import Gate, Identity
from core.security.operators import OperatorStore

# Config sections whose changes are audited even when made by editing the file.
AUDITED_SECTIONS = ("encryption", "security", "schedules", "retention")


@dataclass
class SecuritySession:
    """The gate, the audit log and the operators of one repository, for one command."""

    repo: Repository
    gate: Gate
    keys: SecurityKeys
    disagreements: list[str] = field(default_factory=list)
    # False keeps new audit entries out of the repository (audit verify found damage: copy nothing on top).
    copy_audit: bool = True

    @property
    def audit(self) -> AuditLog:
        return self.gate.audit

    @property
    def operators(self) -> OperatorStore:
        return self.gate.operators


def _stores(catalog: Catalog, keys: SecurityKeys) -> tuple[AuditLog, OperatorStore]:
    return AuditLog(catalog, keys.audit_mac), OperatorStore(catalog, keys)


async def open_session(catalog: Catalog, config: BackstopConfig, repo: Repository, who: Identity,
                       enforce: bool = True) -> SecuritySession:
    """Gate and audit log bound to the repository's derived keys.

    A catalog that disagrees with the repository raises CatalogDisagrees
    with ``enforce``; otherwise its problems are in ``disagreements``.
    """
    keys = SecurityKeys.derive(repo.id_key, repo.params.repo_id)
    audit, ops = _stores(catalog, keys)
    problems = catalog.schema_problems()
    if not problems:
        await adopt_if_empty(repo, audit, ops)
        problems = await disagreements(repo, catalog, audit, ops)
    if problems and enforce:
        raise CatalogDisagrees(f"the catalog disagrees with the repository: {problems[0]}"
                               f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; {REBUILD_HINT}")
    gate = Gate(ops, audit, config.security)
    if not problems:
        # Appending to a catalog that disagrees would fork the log: only a rebuilt one is written.
        note_settings(catalog, config, gate, who)
    return SecuritySession(repo, gate, keys, problems)


def note_settings(catalog: Catalog, config: BackstopConfig, gate: Gate, who: Identity) -> None:
    """Audit changes to encryption/security/schedule/retention settings, even those made in the file."""
    for section in AUDITED_SECTIONS:
        value = getattr(config, section, None)
        if value is None:
            continue  # not configurable in this build (schedules, retention)
        doc = json.loads(json.dumps(value.model_dump(mode="json") if hasattr(value, "model_dump") else value,
                                    default=str, sort_keys=True))
        stored = catalog.security_value(f"settings:{section}")
        before = json.loads(stored) if stored else None
        if before == doc:
            continue
        gate.record(who, f"settings.{section}", "config file", "recorded" if before is None else "changed",
                    before=before, after=doc)
        catalog.set_security_value(f"settings:{section}", json.dumps(doc, sort_keys=True))


async def adopt_if_empty(repo: Repository, audit: AuditLog, ops: OperatorStore) -> tuple[int, int]:
    """Take the audit log and the operators back from the repository into a catalog that has none.

    A new or lost catalog thus keeps its history and its operators, and the
    log never forks into two chains for one repository. Operators the
    (adopted) audit log shows as removed stay removed even if a copy of their
    record survived on a target. Returns (entries, operators) imported.
    """
    entries = 0
    if audit.is_empty():
        chain = audit_copy.main_chain(await all_copies(repo))
        entries = audit.adopt(*chain) if chain else 0
    operators = 0
    if ops.count() == 0:
        gone = removed_operators(audit)
        records = [r for r in await operator_copy.load(repo) if str(r["name"]) not in gone]
        if records:
            operators = ops.import_records(records)
            replay_attempt_state(ops, audit)
    return entries, operators


async def rebuild(catalog: Catalog, config: BackstopConfig, repo: Repository, who: Identity) -> list[str]:
    """Make the catalog's schema, audit log and operators equal to the repository's; returns what changed.

    The catalog's chain is kept where it is the repository's chain and
    agrees with it (it may be ahead: copies are pushed after each action);
    one that is behind is extended from the repository; any other is
    replaced by the repository's, and the replacement is itself audited.
    Chains in the repository beside the main one (a catalog's log was
    replaced) are recorded in the log as forks. Operators are taken from the
    repository's records, with their attempt state replayed from the log.
    """
    done = catalog.repair_schema()
    keys = SecurityKeys.derive(repo.id_key, repo.params.repo_id)
    audit, ops = _stores(catalog, keys)
    copies = await all_copies(repo)
    chain = audit_copy.main_chain(copies)
    gate = Gate(ops, audit, config.security)
    if chain is not None:
        main, theirs = chain
        done += _take_chain(gate, who, main, theirs)
        for other in sorted(set(copies) - {main} - acknowledged_forks(audit)):
            fork = copies[other]
            actions: dict[str, int] = {}
            for e in fork.values():
                actions[e.action] = actions.get(e.action, 0) + 1
            gate.record(who, FORK_ACTION, f"audit log {other[:8]}", "recorded", log_id=other, entries=len(fork),
                        first=fork[min(fork)].time, last=fork[max(fork)].time, actions=actions)
            done.append(f"second audit log {other[:8]} ({len(fork)} entries) recorded as a fork")
    gone = removed_operators(audit)
    records = [r for r in await operator_copy.load(repo) if str(r["name"]) not in gone]
    before = {o.name: o.role for o in ops.list()}
    ops.clear()
    if records:
        ops.import_records(records)
        replay_attempt_state(ops, audit)
    after = {o.name: o.role for o in ops.list()}
    if before != after:
        done.append(f"operators taken from the repository: {', '.join(sorted(after)) or 'none'}")
    await audit_copy.push(repo, audit)
    return done


def _take_chain(gate: Gate, who: Identity, main: str, theirs: list[AuditEntry]) -> list[str]:
    """Keep, extend or replace the catalog's chain so that it is the repository's ``main`` chain."""
    audit = gate.audit
    ours = audit.entries()
    agrees = audit.log_id == main and audit.verify().ok and all(
        e.mac == ours[e.seq - 1].mac for e in theirs if e.seq <= len(ours))
    if agrees:
        if len(theirs) <= len(ours):
            return []
        n = audit.extend(theirs[len(ours):])
        return [f"audit log extended with {n} entr{'y' if n == 1 else 'ies'} from the repository"]
    old_id, dropped = audit.log_id, audit.discard()
    audit.adopt(main, theirs)
    if dropped or old_id:
        gate.record(who, "audit.rebuild", f"catalog log {(old_id or 'none')[:8]}", "replaced",
                    discarded_log_id=old_id, discarded_entries=dropped,
                    reason="the catalog's audit log disagreed with the repository's")
    return [f"audit log {main[:8]} ({len(theirs)} entries) taken from the repository"]


async def all_copies(repo: Repository) -> dict[str, dict[int, AuditEntry]]:
    """Every audit chain on the reachable targets, each from the target holding its longest valid copy."""
    key = SecurityKeys.derive(repo.id_key, repo.params.repo_id).audit_mac
    found: dict[str, list[dict[int, AuditEntry]]] = {}
    for st in repo.storages:
        try:
            for log_id, entries in (await audit_copy.read_copies(repo, st)).items():
                found.setdefault(log_id, []).append(entries)
        except BackstopError:
            continue  # this target's copy is unreadable: the others may do
    best: dict[str, dict[int, AuditEntry]] = {}
    for log_id, candidates in found.items():
        candidates.sort(key=len, reverse=True)
        valid = [c for c in candidates if verify_chain(key, log_id, [c[s] for s in sorted(c)]).ok]
        best[log_id] = (valid or candidates)[0]
    return best


def replay_attempt_state(ops: OperatorStore, audit: AuditLog) -> None:
    """Last accepted step, failures and lockout of imported operators, from their audited code checks."""
    state: dict[str, tuple[int, int, float]] = {}
    for e in audit.entries():
        if e.action != "mfa.verify":
            continue
        d = e.details
        last_step = state.get(e.operator, (-1, 0, 0.0))[0]
        if e.outcome == "ok" and isinstance(d.get("step"), int):
            last_step = max(last_step, int(d["step"]))
        state[e.operator] = (last_step, int(d.get("failures") or 0), float(d.get("locked_until") or 0.0))
    for op in ops.list():
        if op.name in state:
            ops.set_attempt_state(op.name, *state[op.name])
