"""The audit log's copy in the repository: ``audit/<log id>/<seq:012d>``.

Each entry is one object, sealed in an envelope of kind ``audit`` with the
current data key (FORMAT.md section 18). Copies are written after the
catalog entry, best effort per target (a target that is down gets its
entries the next time); existing objects are never overwritten, so history
in the repository cannot be rewritten through backstop either. The copy
survives the loss of the catalog, and it is what exposes entries deleted
from the end of the catalog's chain, which the chain alone cannot show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from core.errors import BackstopError, StorageError
from core.repository.crypto import open_object, seal_object
from core.repository.repo import AUDIT_KIND, AUDIT_PREFIX, Repository
from core.security.audit import AuditEntry, AuditLog, verify_chain
from core.storage.base import Storage


def object_name(log_id: str, seq: int) -> str:
    return f"{AUDIT_PREFIX}{log_id}/{seq:012d}"


def _parse_name(name: str) -> tuple[str, int] | None:
    parts = name[len(AUDIT_PREFIX):].split("/")
    if len(parts) != 2 or len(parts[0]) != 32 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


async def push(repo: Repository, log: AuditLog) -> list[str]:
    """Copy entries the targets do not hold yet; returns warnings for targets that failed."""
    log_id = log.log_id
    if log_id is None:
        return []
    entries = log.entries()
    warnings: list[str] = []
    for st in repo.storages:
        try:
            have = {o.name for o in await st.list(f"{AUDIT_PREFIX}{log_id}/")}
            for e in entries:
                name = object_name(log_id, e.seq)
                if name not in have:
                    await st.put(name, seal_object(json.dumps(e.to_json()).encode(), AUDIT_KIND, repo.key))
        except StorageError as exc:
            warnings.append(f"audit log not copied to target '{st.name}' yet: {exc}")
    return warnings


async def read_copies(repo: Repository, st: Storage) -> dict[str, dict[int, AuditEntry]]:
    """Every audit entry on one target: log id -> seq -> entry (unreadable objects raise)."""
    out: dict[str, dict[int, AuditEntry]] = {}
    for obj in await st.list(AUDIT_PREFIX):
        parsed = _parse_name(obj.name)
        if parsed is None:
            continue
        log_id, seq = parsed
        try:
            doc = json.loads(open_object(await st.get(obj.name), AUDIT_KIND, repo.keys))
            entry = AuditEntry.from_json(doc)
        except (BackstopError, ValueError, KeyError, TypeError) as exc:
            raise StorageError(st.name, f"audit copy {obj.name} cannot be read: {exc}") from None
        if entry.seq != seq:
            raise StorageError(st.name, f"audit copy {obj.name} holds entry #{entry.seq}: it was moved")
        out.setdefault(log_id, {})[seq] = entry
    return out


def main_chain(copies: dict[str, dict[int, AuditEntry]]) -> tuple[str, list[AuditEntry]] | None:
    """The repository's audit log: of several chains, the one that began first.

    A repository has one chain; a catalog rebuilt after a loss continues it.
    A second chain appears only when a catalog's log was replaced (its chain
    id changed), so the older one is the real history and the newer a fork.
    """
    if not copies:
        return None
    log_id = min(copies, key=lambda k: (copies[k][min(copies[k])].ts, k))
    return log_id, [copies[log_id][s] for s in sorted(copies[log_id])]


@dataclass
class Heads:
    """The audit chains in the repository, from listings: log id -> highest sequence number on any target."""

    heads: dict[str, int] = field(default_factory=dict)
    main: str | None = None


async def chain_heads(repo: Repository) -> Heads:
    """Which chains the reachable targets hold and how far each goes (listings plus one entry per chain)."""
    found: dict[str, dict[int, Storage]] = {}
    for st in repo.storages:
        try:
            for obj in await st.list(AUDIT_PREFIX):
                parsed = _parse_name(obj.name)
                if parsed is not None:
                    found.setdefault(parsed[0], {}).setdefault(parsed[1], st)
        except StorageError:
            continue  # the other targets still tell
    out = Heads({log_id: max(seqs) for log_id, seqs in found.items()})
    starts: dict[str, float] = {}
    for log_id, seqs in found.items():
        first = await read_entry(repo, log_id, min(seqs))
        starts[log_id] = first.ts if first else float("inf")
    if starts:
        out.main = min(starts, key=lambda k: (starts[k], k))
    return out


async def read_entry(repo: Repository, log_id: str, seq: int) -> AuditEntry | None:
    """One entry's copy from any target that holds it readable."""
    for st in repo.storages:
        try:
            doc = json.loads(open_object(await st.get(object_name(log_id, seq)), AUDIT_KIND, repo.keys))
            entry = AuditEntry.from_json(doc)
        except (BackstopError, ValueError, KeyError, TypeError):
            continue
        if entry.seq == seq:
            return entry
    return None


@dataclass
class CopyComparison:
    """How one target's copy compares with the catalog's chain."""

    target: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    copied: int = 0


def compare(key: bytes, log_id: str | None, catalog: list[AuditEntry], st_name: str,
            copies: dict[str, dict[int, AuditEntry]]) -> CopyComparison:
    """Problems: entries the copy has that the catalog lost or changed, and a damaged copy."""
    res = CopyComparison(st_name)
    mine = copies.get(log_id or "", {})
    res.copied = len(mine)
    by_seq = {e.seq: e for e in catalog}
    if log_id is None and copies:
        n = sum(len(v) for v in copies.values())
        res.problems.append(f"the catalog has no audit log but target '{st_name}' holds {n} entries: "
                            "the catalog's log was deleted (run `backstop catalog rebuild` to restore it)")
        return res
    for seq in sorted(mine):
        theirs = mine[seq]
        ours = by_seq.get(seq)
        if ours is None:
            res.problems.append(f"audit entry #{seq} ({theirs.time}, {theirs.action}) is missing from the catalog: "
                                f"it was deleted (target '{st_name}' holds a copy)")
            return res
        if ours.mac != theirs.mac:
            res.problems.append(f"audit entry #{seq} in the catalog differs from the copy on target '{st_name}'")
            return res
    if log_id is not None and mine:
        chain = verify_chain(key, log_id, [mine[s] for s in sorted(mine)])
        if not chain.ok:
            res.problems.append(f"target '{st_name}': copy of the audit log is damaged: {chain.problem}")
    missing = len([s for s in by_seq if s not in mine])
    if missing:
        res.notes.append(f"{missing} entr{'y' if missing == 1 else 'ies'} not copied to target '{st_name}' yet")
    others = {k: len(v) for k, v in copies.items() if k != log_id}
    for other, n in others.items():
        res.notes.append(f"target '{st_name}' also holds audit log {other[:8]} ({n} entries) of another catalog")
    return res
