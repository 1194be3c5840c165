"""`backstop sync`: copy to each target every repository object it lacks, from a copy that verifies (FORMAT.md 12.4).

A target left out of a quorum write (targets_policy), or added to the config
later, catches up here. Every copy is checked before it is written: objects
named by their SHA-256 against their name, keys by unwrapping them, sealed
records by opening their envelope, WAL objects by their own SHA-256 header.
What is written is read back and compared. Nothing is deleted or replaced:
an object a target holds, intact or not, is `check` and `repair`'s business.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field

from core.context import EngineContext
from core.errors import BackstopError, IntegrityError, StorageError
from core.jobs import run_job
from core.repository.copies import commit_groups, commit_order, listing, verifier
from core.repository.manifest import SNAPSHOT_PREFIX
from core.repository.repo import CONFIG_NAME, Repository
from core.storage.base import Storage

_PARALLEL = 4


@dataclass
class TargetSync:
    """What sync did (or would do) on one target."""

    target: str
    objects: int = 0
    bytes: int = 0
    snapshots: list[str] = field(default_factory=list)  # manifests copied: the snapshots now complete there
    skipped: str | None = None  # why the target was not synced (unreachable, damaged)
    problems: list[str] = field(default_factory=list)  # objects no target holds an intact copy of


@dataclass
class SyncReport:
    """The result of `backstop sync`."""

    dry_run: bool
    targets: list[TargetSync]
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.skipped is None and not t.problems for t in self.targets)

    def to_json(self) -> dict[str, object]:
        return {"dry_run": self.dry_run, "ok": self.ok, "targets": [asdict(t) for t in self.targets],
                "notes": self.notes}


async def sync(ctx: EngineContext, target: str | None = None, dry_run: bool = False) -> SyncReport:
    """Copy to every target (or ``target``) each object it lacks, from a copy that verifies."""
    label = "sync" + (f" to {target}" if target else "") + (" (dry run)" if dry_run else "")
    async with run_job(ctx.bus, "sync", None, label) as job:
        repo = await ctx.open_repository(require_all=False)
        passphrase = ctx.config.encryption.passphrase()
        dests = ctx.storages(target)
        async with repo.lock("shared", label):
            job.phase("list")
            sources = list(repo.storages)
            listings = dict(zip([s.name for s in sources],
                                await asyncio.gather(*(listing(s) for s in sources)), strict=True))
            known = {s.id for s in ctx.catalog.snapshots()}
            report = SyncReport(dry_run, [])
            everything = set().union(*listings.values())
            # A manifest the catalog does not list may be one forgotten while this target was away:
            # copying it back would undo the forget. `catalog rebuild` first makes the catalog whole.
            unknown = {n for n in everything if n.startswith(SNAPSHOT_PREFIX) and n[len(SNAPSHOT_PREFIX):] not in known}
            if unknown:
                report.notes.append(f"{len(unknown)} snapshot manifest(s) held by some targets are not in the catalog "
                                    "and were not copied (they may have been forgotten); `backstop catalog rebuild` "
                                    "lists them if they should stay")
            job.phase("copy")
            for dest in dests:
                ts = TargetSync(dest.name)
                report.targets.append(ts)
                if dest.name in repo.damaged:
                    ts.skipped = f"{repo.damaged[dest.name]}"
                    continue
                try:
                    have = listings[dest.name] if dest.name in listings else await listing(dest)
                except StorageError as exc:
                    ts.skipped = str(exc)
                    continue
                lacking = sorted(everything - have - unknown, key=commit_order)
                if CONFIG_NAME in have:
                    lacking = [n for n in lacking if n != CONFIG_NAME]
                try:
                    await _copy(repo, passphrase, listings, dest, lacking, ts, dry_run)
                except StorageError as exc:  # it went away meanwhile: the rest of the targets still get theirs
                    ts.skipped = str(exc)
            if not dry_run:
                _update_catalog(ctx, report)
        job.result = report.to_json()
        return report


async def _copy(repo: Repository, passphrase: bytes, listings: dict[str, set[str]], dest: Storage,
                lacking: list[str], ts: TargetSync, dry_run: bool) -> None:
    """Copy ``lacking`` to ``dest`` in order, a few at once within one prefix; config strictly last."""
    sem = asyncio.Semaphore(_PARALLEL)
    by_name = {s.name: s for s in repo.storages}

    async def one(name: str) -> None:
        async with sem:
            check = verifier(name, repo.params, repo.keys, passphrase)
            errors: list[str] = []
            for src_name, names in listings.items():
                if name not in names or src_name == dest.name:
                    continue
                src = by_name[src_name]
                try:
                    data = await src.get(name)
                    await asyncio.to_thread(check, data)
                except (BackstopError, ValueError) as exc:
                    errors.append(f"target '{src.name}': {exc}" if not str(exc).startswith("target") else str(exc))
                    continue
                if not dry_run:
                    await dest.put(name, data)
                    # Compared byte for byte: two SHA-256 passes on the event loop cost more and prove less.
                    if await dest.get(name) != data:
                        raise IntegrityError(f"target '{dest.name}': read-back of {name} does not match what was "
                                             "written")
                ts.objects += 1
                ts.bytes += len(data)
                if name.startswith(SNAPSHOT_PREFIX):
                    ts.snapshots.append(name[len(SNAPSHOT_PREFIX):])
                return
            ts.problems.append(f"{name}: no target holds a copy that verifies ({'; '.join(errors)})")

    for group in commit_groups(lacking):
        if group[0] == CONFIG_NAME and ts.problems:
            # A new target counts as initialised once config is there: not while something is missing.
            ts.problems.append("config not written: the objects above are missing there")
            return
        results = await asyncio.gather(*(one(n) for n in group), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r


def _update_catalog(ctx: EngineContext, report: SyncReport) -> None:
    """Snapshots whose manifest reached a target are held there now."""
    added: dict[str, set[str]] = {}
    for ts in report.targets:
        for sid in ts.snapshots:
            added.setdefault(sid, set()).add(ts.target)
    if not added:
        return
    for rec in ctx.catalog.snapshots():
        if rec.id in added:
            ctx.catalog.set_snapshot_targets(rec.id, sorted(set(rec.targets) | added[rec.id]))
