"""`backstop key ...`: list, rotate (KEK and/or DEK), re-encrypt and retire data keys (FORMAT.md 5.5, 5.6)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.context import EngineContext
from core.errors import KeyInUse, UsageError
from core.format import config_duration, iso_at
from core.jobs import run_job
from core.repository import keyring
from core.repository.keyring import KeyStatus, KeyUsage
from core.repository.reencrypt import ReencryptReport, reencrypt
from core.repository.repo import Repository
from core.security.gate import Action, Identity, default_identity
from core.security.guard import Acting, Guard, act
from core.storage.immutability import is_append_only


@dataclass(frozen=True)
class KeyRow:
    status: KeyStatus
    usage: KeyUsage | None


@dataclass(frozen=True)
class RotationResult:
    rotated: bool
    reason: str
    kek_id: str | None = None
    dek_version: int | None = None
    keys_copied: list[str] = field(default_factory=list)


async def key_list(ctx: EngineContext, usage: bool = True) -> list[KeyRow]:
    """DEK versions with their dates and (optionally) what each still protects."""
    repo = await ctx.open_repository(require_all=False)
    statuses = await keyring.key_status(repo)
    scan = await keyring.scan_key_usage(repo) if usage else None
    return [KeyRow(s, scan.usage.get(s.version) if scan else None) for s in statuses]


async def rotate_keys(ctx: EngineContext, who: Identity | None = None, kek: bool = True, dek: bool = True,
                      if_due: bool = False) -> RotationResult:
    """Rotate the KEK (re-wrap, no data uploaded) and/or add a DEK version.

    With ``if_due`` the rotation happens only when ``encryption.rotate_every``
    says so, and needs no code: the policy in the config is the approval
    (changing it is itself audited); this is what the scheduler runs.
    """
    who = who or default_identity()
    every = ctx.config.encryption.rotate_every
    if if_due and every is None:
        raise UsageError("--if-due needs a policy: set encryption.rotate_every (e.g. 90d) in the config")
    what = "+".join(k for k, on in (("kek", kek), ("dek", dek)) if on)
    vaults = [t.name for t in ctx.config.targets if getattr(t, "append_only", False)]
    if kek and vaults:
        # A KEK rotation rewrites every key object in place, which an append-only target refuses (FORMAT.md 23).
        raise UsageError(f"target '{vaults[0]}' is append-only and a KEK rotation rewrites the key objects; "
                         "rotate with --dek only, or set append_only: false for that run on its host")
    async with Guard(ctx).session(who, require_all=True) as sec:
        approval = None
        if if_due:
            assert every is not None
            statuses = await keyring.key_status(sec.repo)
            policy = config_duration(every.total_seconds())
            if not keyring.rotation_due(statuses, every):
                last = iso_at(keyring.last_rotation(statuses).timestamp())
                return RotationResult(False, f"not due: keys last rotated {last}, policy every {policy}")
            approval = f"encryption.rotate_every={policy} policy is due"
        passphrase = ctx.config.encryption.passphrase()
        async with act(sec, who, Action.KEY_ROTATE, what, approved_by=approval) as acting:
            copied = await keyring.sync_key_objects(sec.repo)
            kek_id = await keyring.rotate_kek(sec.repo, passphrase) if kek else None
            new = await keyring.rotate_dek(sec.repo, passphrase) if dek else None
            acting.detail.update(kek_id=kek_id, dek_version=new.version if new else None, keys_copied=copied)
    return RotationResult(True, "rotated" + (" (policy due)" if if_due else ""), kek_id,
                          new.version if new else None, copied)


async def _reencrypt(ctx: EngineContext, acting: Acting, versions: set[int]) -> ReencryptReport:
    """Re-encrypt under the exclusive lock the caller holds, keeping catalog and audit log in step."""

    async def renamed(old: str, new: str) -> None:
        if ctx.catalog.has_snapshot(new):
            ctx.catalog.delete_snapshot(old)
        else:
            ctx.catalog.rename_snapshot(old, new)
        acting.record("snapshot.renamed", f"{old[:8]} -> {new[:8]}", "succeeded", old=old, new=new,
                      reason="manifest re-sealed with the current data key")

    async with run_job(ctx.bus, "reencrypt", None, f"re-encryption of data key(s) {sorted(versions)}") as job:
        job.phase("reencrypt")
        report = await reencrypt(acting.repo, versions, ctx.pool, renamed, on_progress=job.progress)
        job.result = _summary(report)
        return report


def _summary(report: ReencryptReport) -> dict[str, object]:
    return {k: v for k, v in report.to_json().items() if k != "snapshots"}


def _refuse_immutable_targets(repo: Repository, what: str) -> None:
    """Re-encryption and retirement delete what they replace: refused up front where a target keeps everything."""
    for st in repo.storages:
        if is_append_only(st) or getattr(getattr(st, "config", None), "object_lock", None) is not None:
            raise UsageError(f"{what} deletes the objects it replaces, and target '{st.name}' never deletes "
                             "(object_lock or append_only); it is not possible on this repository")


async def reencrypt_keys(ctx: EngineContext, who: Identity | None = None,
                         versions: set[int] | None = None) -> ReencryptReport:
    """Move everything sealed with old DEK versions (default: all but the current) to the current one."""
    who = who or default_identity()
    async with Guard(ctx).session(who, require_all=True) as sec:
        _refuse_immutable_targets(sec.repo, "re-encryption")
        current = sec.repo.key.version
        versions = set(versions) if versions else set(sec.repo.keys) - {current}
        subject = f"data key(s) {sorted(versions)} -> {current}"
        async with act(sec, who, Action.KEY_REENCRYPT, subject, lock=("exclusive", "re-encryption")) as acting:
            report = await _reencrypt(ctx, acting, versions)
            acting.detail.update(_summary(report))
    return report


async def retire_key(ctx: EngineContext, version: int, who: Identity | None = None,
                     reencrypt_first: bool = False) -> ReencryptReport | None:
    """Delete a DEK version for good; refused while anything still needs it (unless re-encrypted first)."""
    who = who or default_identity()
    async with Guard(ctx).session(who, require_all=True) as sec:
        repo = sec.repo
        _refuse_immutable_targets(repo, "key retirement")
        if version not in repo.keys:
            raise UsageError(f"there is no data key {version}; see `backstop key list`")
        if version == repo.key.version:
            raise UsageError(f"data key {version} is the current key; rotate first (`backstop key rotate --dek`)")
        report = None
        async with act(sec, who, Action.KEY_RETIRE, f"data key {version}",
                       lock=("exclusive", f"retirement of data key {version}")) as acting:
            acting.detail["reencrypted"] = acting.failure_detail["reencrypted"] = reencrypt_first
            if reencrypt_first:
                report = await _reencrypt(ctx, acting, {version})
            usage = (await keyring.scan_key_usage(repo)).usage.get(version)
            if usage is not None and usage.total:
                raise KeyInUse(f"data key {version} still protects {usage.describe()}; run `backstop key reencrypt` "
                               f"first (or `backstop key retire {version} --reencrypt`)")
            await keyring.retire_key(repo, version)
    return report
