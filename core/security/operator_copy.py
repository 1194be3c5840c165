"""Operator records in the repository: ``operators/<name>``, so a lost catalog does not lose who may act.

Each record is the operator's name, role, sealed TOTP secret and enrolment
facts, in an envelope of kind ``operator`` (FORMAT.md 18.2). They are
written when an operator is enrolled or changed and deleted when one is
removed; a catalog without operators takes them back from here (together
with the audit log, which says which operators were removed meanwhile).
Attempt state (last accepted step, failures, lockout) is not copied: it
changes with every code and is local to a catalog.
"""

from __future__ import annotations

import json
from typing import Any

from core.errors import BackstopError, StorageError
from core.repository.crypto import open_object, seal_object
from core.repository.repo import OPERATOR_KIND, OPERATOR_PREFIX, Repository


def object_name(name: str) -> str:
    return f"{OPERATOR_PREFIX}{name}"


async def save(repo: Repository, record: dict[str, Any]) -> list[str]:
    """Write one operator record to every target; returns warnings for targets that failed."""
    data = seal_object(json.dumps(record, sort_keys=True).encode(), OPERATOR_KIND, repo.key)
    warnings = []
    for st in repo.storages:
        try:
            await st.put(object_name(record["name"]), data)
        except StorageError as exc:
            warnings.append(f"operator record not copied to target '{st.name}': {exc}")
    return warnings


async def drop(repo: Repository, name: str) -> list[str]:
    warnings = []
    for st in repo.storages:
        try:
            await st.delete(object_name(name))
        except StorageError as exc:
            warnings.append(f"operator record not deleted on target '{st.name}': {exc}")
    return warnings


async def load(repo: Repository) -> list[dict[str, Any]]:
    """Every operator record on any reachable target; of several copies, the newest."""
    found: dict[str, dict[str, Any]] = {}
    for st in repo.storages:
        try:
            objs = await st.list(OPERATOR_PREFIX)
            for obj in objs:
                rec = json.loads(open_object(await st.get(obj.name), OPERATOR_KIND, repo.keys))
                if not isinstance(rec, dict) or object_name(str(rec.get("name"))) != obj.name:
                    continue  # renamed or not a record: ignore it
                if rec["name"] not in found or rec.get("updated_at", 0) > found[rec["name"]].get("updated_at", 0):
                    found[rec["name"]] = rec
        except (BackstopError, ValueError, KeyError):
            continue  # an unreadable target: the others may do
    return [found[n] for n in sorted(found)]
