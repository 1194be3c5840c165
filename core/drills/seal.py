"""A drill report's keyed MAC and its sealed copy in the repository (FORMAT.md 18.4).

The catalog keeps each report as JSON, which anyone who can write the SQLite
file can edit. So each report also carries

    K   = HKDF-SHA256(ikm = id_key, salt = bytes(repo_id), info = "backstop:drill-mac/v1")
    mac = "<DEK version>:" + hex HMAC-SHA256(K, canonical JSON of the report)

(canonical: keys sorted, compact separators, UTF-8), which only the holder
of the repository passphrase can compute, and a copy sealed into the
repository as ``drills/<report id>`` on every target, which survives the
catalog. :func:`verify` checks both and names what differs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from core.context import EngineContext
from core.drills.model import DrillReport
from core.errors import BackstopError, IntegrityError, ObjectNotFound, StorageError
from core.repository.crypto import open_object, seal_object
from core.repository.repo import DRILL_KIND, DRILL_PREFIX, Repository, sha256_hex
from core.security.derive import derive_key
from core.storage.base import Storage

MAC_PURPOSE = "drill-mac/v1"
SEALED_FORMAT = "backstop-drill-report"

log = logging.getLogger("backstop.drills")


def object_name(drill_id: str) -> str:
    """The repository object holding a report's sealed copy."""
    return f"{DRILL_PREFIX}{drill_id}"


def canonical(report: DrillReport | dict[str, Any]) -> bytes:
    """The bytes the MAC covers: the report's JSON with sorted keys and compact separators."""
    doc = report.to_json() if isinstance(report, DrillReport) else report
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _mac_key(repo: Repository, version: int) -> bytes:
    # id_key is the same in every DEK version (FORMAT.md 5.1): a report sealed under a retired version still
    # verifies with the current one, so the version only says which key was used.
    dek = repo.keys.get(version) or repo.key
    return derive_key(dek.id_key, repo.params.repo_id, MAC_PURPOSE)


def compute_mac(repo: Repository, report: DrillReport | dict[str, Any]) -> str:
    """``<key version>:<hex HMAC-SHA256>`` of the report's canonical JSON, with the current data key's version."""
    version = repo.key.version
    return f"{version}:{hmac.new(_mac_key(repo, version), canonical(report), hashlib.sha256).hexdigest()}"


def mac_verifies(repo: Repository, report: DrillReport | dict[str, Any], mac: str | None) -> bool:
    """Whether ``mac`` is the MAC of ``report`` under this repository's key."""
    if not mac or ":" not in mac:
        return False
    version, _, digest = mac.partition(":")
    try:
        key = _mac_key(repo, int(version))
    except ValueError:
        return False
    return hmac.compare_digest(hmac.new(key, canonical(report), hashlib.sha256).hexdigest(), digest)


def seal(repo: Repository, report: DrillReport, mac: str) -> bytes:
    """The sealed object: an envelope of kind ``drill`` around the report, its MAC and the MAC's key."""
    payload = {"format": SEALED_FORMAT, "version": 1, "report": report.to_json(), "mac": mac,
               "mac_purpose": MAC_PURPOSE, "mac_key_version": int(mac.split(":", 1)[0])}
    return seal_object(json.dumps(payload, sort_keys=True).encode(), DRILL_KIND, repo.key,
                       repo.params.compression_level)


@dataclass(frozen=True)
class SealedCopy:
    """A sealed copy as read from one target: the report as JSON and its MAC."""

    report: dict[str, Any]
    mac: str

    def drill(self) -> DrillReport:
        return DrillReport.from_json(self.report)


def open_sealed(data: bytes, repo: Repository, name: str) -> SealedCopy:
    """Open a sealed copy; IntegrityError when it does not authenticate or is not a drill report."""
    doc = json.loads(open_object(data, DRILL_KIND, repo.keys))
    if not isinstance(doc, dict) or doc.get("format") != SEALED_FORMAT or not isinstance(doc.get("report"), dict):
        raise IntegrityError(f"{name} is not a sealed drill report")
    if object_name(str(doc["report"].get("id"))) != name:
        raise IntegrityError(f"{name} holds the report of another drill ({doc['report'].get('id')})")
    return SealedCopy(doc["report"], str(doc.get("mac", "")))


async def publish(ctx: EngineContext, report: DrillReport) -> tuple[str, str]:
    """Record the report in the catalog, seal it into the repository on every target, keep its MAC; (mac, object).

    Written with the repository's put-all and read back on every target, as
    snapshot objects are; a target that cannot be opened now gets its copy
    from `backstop sync` later (``drills/`` objects are wanted everywhere).
    """
    # In the catalog first: a report whose sealing fails is still listed, and `drill verify` says it is unsealed.
    ctx.catalog.add_drill(report)
    repo = await ctx.open_repository(require_all=False)
    mac = compute_mac(repo, report)
    name = object_name(report.id)
    data = await asyncio.to_thread(seal, repo, report, mac)
    # One target failing the write must not cost the report its seal on the others (sync completes it later).
    repo.write_check = lambda left: None if left else "no target took the sealed drill report"
    await repo.put_all(name, data)
    await repo.verify_all(name, sha256_hex(data))
    ctx.catalog.set_drill_seal(report.id, mac, name)
    for target, why in {**repo.unreachable, **repo.damaged, **repo.dropped}.items():
        log.warning(f"drill report {report.id} not sealed on target '{target}' ({why}); `backstop sync` copies it "
                    "there once it is back")
    return mac, name


# -- verification --------------------------------------------------------------------------------------------


@dataclass
class DrillVerification:
    """What `drill verify` found: ok when the MAC verifies and every target's sealed copy matches."""

    drill_id: str
    problems: list[str] = field(default_factory=list)
    sealed_on: list[str] = field(default_factory=list)  # targets whose sealed copy opens and matches
    from_catalog: bool = True  # False: the catalog has no row; verified from the sealed copies alone

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"drill_id": self.drill_id, "ok": self.ok, "problems": self.problems, "sealed_on": self.sealed_on,
                "from_catalog": self.from_catalog}


async def _read_copy(st: Storage, repo: Repository, name: str) -> SealedCopy | str:
    """One target's sealed copy, or why it is not usable."""
    try:
        data = await st.get(name)
    except ObjectNotFound:
        return f"the sealed copy {name} is missing on target '{st.name}'"
    except StorageError as exc:
        return f"the sealed copy {name} could not be read on target '{st.name}' ({exc})"
    try:
        return open_sealed(data, repo, name)
    except (BackstopError, ValueError) as exc:
        return f"the sealed copy {name} on target '{st.name}' is damaged ({exc}); `backstop repair` rewrites it"


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The fields in which two reports differ, with both values where they are short."""
    parts = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, (list, dict)) or isinstance(y, (list, dict)):
            parts.append(key)
        else:
            parts.append(f"{key} ({x!r} in the catalog, {y!r} sealed)")
    return ", ".join(parts) or "nothing visible"


async def verify(ctx: EngineContext, drill_id: str) -> DrillVerification:
    """Check a report: the catalog copy against its MAC, and every target's sealed copy against the catalog.

    With no catalog row (the catalog was lost), the sealed copies are checked
    on their own: each must open, carry a MAC that verifies, and agree.
    """
    repo = await ctx.open_repository(require_all=False)
    name = object_name(drill_id)
    out = DrillVerification(drill_id)
    for target, why in repo.unreachable.items():
        out.problems.append(f"target '{target}' could not be opened ({why}): its sealed copy was not checked")
    stores = [*repo.storages, *repo.damaged_storages]
    copies = await asyncio.gather(*(_read_copy(st, repo, name) for st in stores))
    row = ctx.catalog.drill(drill_id)
    reference: SealedCopy | None = None
    if row is None:
        out.from_catalog = False
        intact = [c for c in copies if isinstance(c, SealedCopy) and mac_verifies(repo, c.report, c.mac)]
        if not intact:
            out.problems.append(f"report {drill_id} is not in the catalog and no target holds a sealed copy whose "
                                "MAC verifies")
        reference = intact[0] if intact else None
    else:
        report, mac, sealed = row
        doc = report.to_json()
        if mac is None or sealed is None:
            out.problems.append(f"report {drill_id} was never sealed (no MAC in the catalog): the drill's publish "
                                "step failed")
        elif not mac_verifies(repo, doc, mac):
            out.problems.append(f"report {drill_id}: the catalog's copy does not match its MAC (the report or the "
                                "MAC was edited in the catalog)")
        reference = SealedCopy(doc, mac or "")
    for st, copy in zip(stores, copies, strict=True):
        if isinstance(copy, str):
            out.problems.append(copy)
            continue
        if not mac_verifies(repo, copy.report, copy.mac):
            out.problems.append(f"the sealed copy {name} on target '{st.name}' does not match its own MAC")
            continue
        if reference is None:
            continue
        if copy.report != reference.report:
            out.problems.append(f"report {drill_id} differs from the sealed copy on target '{st.name}' in "
                                f"{_differences(reference.report, copy.report)}")
            continue
        if copy.mac != reference.mac:
            out.problems.append(f"report {drill_id}: the MAC in the catalog differs from the sealed copy's on target "
                                f"'{st.name}' (the MAC was edited in the catalog)")
            continue
        out.sealed_on.append(st.name)
    return out


async def load_all(repo: Repository) -> tuple[dict[str, SealedCopy], list[str]]:
    """Every sealed report on any target whose MAC verifies (report id -> copy), and warnings for the others."""
    found: dict[str, SealedCopy] = {}
    bad: dict[str, str] = {}
    for st in repo.storages:
        try:
            names = sorted(o.name for o in await st.list(DRILL_PREFIX))
        except StorageError as exc:
            bad[f"target '{st.name}'"] = str(exc)
            continue
        for name in names:
            drill_id = name[len(DRILL_PREFIX):]
            if drill_id in found:
                continue
            copy = await _read_copy(st, repo, name)
            if isinstance(copy, str):
                bad.setdefault(drill_id, copy)
            elif not mac_verifies(repo, copy.report, copy.mac):
                bad.setdefault(drill_id, f"the sealed copy {name} on target '{st.name}' does not match its own MAC")
            else:
                found[drill_id] = copy
    warnings = [f"drill report {k} left out: {why}" for k, why in sorted(bad.items()) if k not in found]
    return found, warnings


async def adopt(ctx: EngineContext, drill_id: str) -> DrillReport:
    """Index one drill another host ran (a fleet agent) from its sealed copy in the repository, whose MAC must
    verify: the control plane takes the repository's word, not the agent's. IntegrityError when none does."""
    repo = await ctx.open_repository(require_all=False)
    name = object_name(drill_id)
    why = "no target holds it"
    for st in repo.storages:
        copy = await _read_copy(st, repo, name)
        if isinstance(copy, str):
            why = copy
            continue
        if not mac_verifies(repo, copy.report, copy.mac):
            why = f"the sealed copy {name} on target '{st.name}' does not match its own MAC"
            continue
        report = copy.drill()
        ctx.catalog.add_drill(report)
        ctx.catalog.set_drill_seal(drill_id, copy.mac, name)
        return report
    raise IntegrityError(f"drill report {drill_id}: {why}")


async def rebuild(ctx: EngineContext, repo: Repository) -> tuple[int, list[str]]:
    """Every sealed report (with its MAC) back into the catalog where missing or different; (count, warnings)."""
    found, warnings = await load_all(repo)
    restored = 0
    for drill_id, copy in sorted(found.items()):
        row = ctx.catalog.drill(drill_id)
        name = object_name(drill_id)
        if row is not None and row[0].to_json() == copy.report and row[1] == copy.mac and row[2] == name:
            continue
        try:
            report = copy.drill()
        except (TypeError, ValueError, KeyError) as exc:
            warnings.append(f"drill report {drill_id} left out: its sealed copy does not read as a report ({exc})")
            continue
        ctx.catalog.add_drill(report)
        ctx.catalog.set_drill_seal(drill_id, copy.mac, name)
        restored += 1
    return restored, warnings
