"""Does the catalog agree with the repository on who the operators are and what the audit log says?

The repository is the root of trust (DESIGN.md 2): its sealed operator
records and audit copies can only be written with the repository key. The
catalog is an SQLite file that anyone with write access to it can edit, roll
back to an older copy, or fit with triggers. Every gated action therefore
first compares the two; any disagreement stops it until `backstop catalog
rebuild` makes the catalog equal to the repository again:

- the catalog's schema: a dropped table, or a trigger or view backstop never
  creates (a trigger can swallow re-imported operator rows);
- the audit log: the catalog must hold the repository's chain (the one that
  began first), be no shorter than the repository's copy, and agree with it
  at the copy's last entry; a second chain in the repository means a
  catalog's log was replaced, and stays a problem until a rebuild records it;
- the operators: the same names with the same roles on both sides.
"""

from __future__ import annotations

from core.catalog.base import Catalog
from core.repository.repo import Repository
from core.security import audit_copy, operator_copy
from core.security.audit import AuditLog
from core.security.operators import OperatorStore

FORK_ACTION = "audit.fork"
REBUILD_HINT = ("gated actions are refused until `backstop catalog rebuild` takes the operators and the audit log "
                "back from the repository")


def removed_operators(audit: AuditLog) -> set[str]:
    """Operators whose last successful operator change in the audit log is a removal."""
    last: dict[str, str] = {}
    for e in audit.entries():
        if e.action.startswith("operator.") and e.outcome == "succeeded" and "name" in e.details:
            last[str(e.details["name"])] = e.action
    return {n for n, action in last.items() if action == "operator.remove"}


def acknowledged_forks(audit: AuditLog) -> set[str]:
    """Chain ids a rebuild has recorded as forks in the audit log itself."""
    return {str(e.details.get("log_id")) for e in audit.entries() if e.action == FORK_ACTION}


async def disagreements(repo: Repository, catalog: Catalog, audit: AuditLog, ops: OperatorStore) -> list[str]:
    """Every way the catalog's security state differs from the repository's (empty when they agree)."""
    problems = catalog.schema_problems()
    if problems:
        return problems  # queries on an altered schema cannot be trusted
    heads = await audit_copy.chain_heads(repo)
    log_id = audit.log_id
    main = heads.main
    if main is not None:
        n = heads.heads[main]
        if log_id is None:
            problems.append(f"the catalog has no audit log, but the repository holds audit log {main[:8]} "
                            f"({n} entries)")
        elif log_id != main:
            problems.append(f"the catalog's audit log {log_id[:8]} is not the repository's ({main[:8]}, {n} entries): "
                            "the catalog's audit history was replaced or erased")
        else:
            last = audit.last()
            if last is None or last.seq < n:
                problems.append(f"the catalog's audit log ends at entry #{last.seq if last else 0} but the "
                                f"repository's copy goes on to #{n}: the catalog was rolled back to an older copy "
                                "or entries were deleted")
            else:
                theirs = await audit_copy.read_entry(repo, main, n)
                ours = audit.entry(n)
                if theirs is not None and (ours is None or ours.mac != theirs.mac):
                    problems.append(f"the catalog's audit entry #{n} differs from the repository's copy")
            known = acknowledged_forks(audit)
            for other, count in sorted(heads.heads.items()):
                if other != main and other not in known:
                    problems.append(f"the repository holds a second audit log {other[:8]} ({count} entries) beside "
                                    f"{main[:8]}: a catalog's audit log was replaced")
    gone = removed_operators(audit)
    theirs_ops = {str(r["name"]): str(r["role"]) for r in await operator_copy.load(repo) if r["name"] not in gone}
    ours_ops = {o.name: o.role for o in ops.list()}
    for name in sorted(set(theirs_ops) | set(ours_ops)):
        if name not in ours_ops:
            problems.append(f"operator '{name}' ({theirs_ops[name]}) is enrolled in the repository but missing from "
                            "the catalog")
        elif name not in theirs_ops:
            problems.append(f"operator '{name}' is in the catalog but has no record in the repository")
        elif ours_ops[name] != theirs_ops[name]:
            problems.append(f"operator '{name}' is {ours_ops[name]} in the catalog but {theirs_ops[name]} in the "
                            "repository")
    return problems
