"""The engine's guarded half: operators, the audit log, keys, forget/prune, restore over a database.

``AdminMixin`` is mixed into :class:`core.engine.Engine`, so the CLI and the
TUI call these as engine methods. Every destructive method takes an
:class:`~core.security.gate.Identity` and asks the one gate
(``core.security.gate``) before it changes anything; every decision and
outcome lands in the audit log, which is copied to the repository when the
method returns (refused or not).
"""

from __future__ import annotations

import hmac
import inspect
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

from core.errors import AuthError, BackstopError, CatalogDisagrees, KeyInUse, UsageError
from core.jobs import run_job
from core.security import operator_copy
from core.security.audit import AuditEntry, AuditLog
from core.security.derive import SecurityKeys
from core.security.gate import Action, Gate, Identity, default_identity
from core.security.operators import Operator, OperatorStore, check_name, check_role
from core.security.totp import provisioning_uri, secret_base32

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from core.catalog.store import Catalog
    from core.config import BackstopConfig
    from core.engine import RestoreResult
    from core.events import EventBus
    from core.repository.gc import PruneReport
    from core.repository.keyring import KeyStatus, KeyUsage
    from core.repository.reencrypt import ReencryptReport
    from core.repository.repo import Repository

# Config sections whose changes are audited even when made by editing the file.
_AUDITED_SECTIONS = ("encryption", "security", "schedules", "retention")


@dataclass(frozen=True)
class Enrolment:
    """A new operator: the URI holds the TOTP secret and is shown this once."""

    name: str
    role: str
    uri: str
    secret_base32: str


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


@dataclass(frozen=True)
class KeyRow:
    status: "KeyStatus"
    usage: "KeyUsage | None"


@dataclass(frozen=True)
class RotationResult:
    rotated: bool
    reason: str
    kek_id: str | None = None
    dek_version: int | None = None
    keys_copied: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OverwriteResult:
    """A restore over an existing database: what replaced what."""

    restore: "RestoreResult"
    replaced_by_restore: bool  # False: the database did not exist, it was simply created
    aside: str | None  # where the previous database now is


@dataclass
class _Security:
    repo: "Repository"
    gate: Gate
    keys: SecurityKeys
    disagreements: list[str] = field(default_factory=list)


def _side_name(base: str, suffix: str) -> str:
    """``base + suffix`` within PostgreSQL's 63-byte name limit (the base is shortened)."""
    room = 63 - len(suffix.encode())
    cut = base.encode()[:room].decode(errors="ignore")
    return cut + suffix


class AdminMixin:
    """Guarded operations of the engine (see the module docstring)."""

    config: "BackstopConfig"
    catalog: "Catalog"
    bus: "EventBus"
    pool: "ThreadPoolExecutor"

    if TYPE_CHECKING:
        async def open_repository(self, require_all: bool = True, target: str | None = None) -> "Repository": ...

        async def restore(self, db_name: str, into: str, snapshot: str = "latest",
                          tables: list[str] | None = None, target: str | None = None) -> "RestoreResult": ...

    # -- security context ----------------------------------------------------------

    async def _security(self, repo: "Repository", who: Identity, enforce: bool = True) -> _Security:
        """Gate and audit log bound to the repository's derived keys.

        A catalog that disagrees with the repository (see
        ``core.security.consistency``) raises CatalogDisagrees with ``enforce``;
        otherwise its problems are in ``_Security.disagreements``.
        """
        from core.security.consistency import REBUILD_HINT, disagreements

        keys = SecurityKeys.derive(repo.id_key, repo.params.repo_id)
        conn = self.catalog.connection
        audit = AuditLog(conn, keys.audit_mac)
        ops = OperatorStore(conn, keys)
        problems = self.catalog.schema_problems()
        if not problems:
            await self.restore_security_state(repo, audit, ops)
            problems = await disagreements(repo, self.catalog, audit, ops)
        if problems and enforce:
            raise CatalogDisagrees(f"the catalog disagrees with the repository: {problems[0]}"
                                   f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}; {REBUILD_HINT}")
        gate = Gate(ops, audit, self.config.security)
        if not problems:
            # Appending to a catalog that disagrees would fork the log: only a rebuilt one is written.
            self._note_settings(gate, who)
        return _Security(repo, gate, keys, problems)

    async def restore_security_state(self, repo: "Repository", audit: AuditLog | None = None,
                                     ops: OperatorStore | None = None) -> tuple[int, int]:
        """Take the audit log and the operators back from the repository into a catalog that has none.

        A new or lost catalog thus keeps its history and its operators, and
        the log never forks into two chains for one repository. Operators the
        (adopted) audit log shows as removed stay removed even if a copy of
        their record survived on a target. Returns (entries, operators) imported.
        """
        from core.security import audit_copy, operator_copy
        from core.security.consistency import removed_operators

        if audit is None or ops is None:
            keys = SecurityKeys.derive(repo.id_key, repo.params.repo_id)
            audit = audit or AuditLog(self.catalog.connection, keys.audit_mac)
            ops = ops or OperatorStore(self.catalog.connection, keys)
        entries = 0
        if audit.is_empty():
            chain = await _repository_chain(repo)
            entries = audit.adopt(*chain) if chain else 0
        operators = 0
        if ops.count() == 0:
            gone = removed_operators(audit)
            records = [r for r in await operator_copy.load(repo) if str(r["name"]) not in gone]
            if records:
                operators = ops.import_records(records)
                _replay_attempt_state(ops, audit)
        return entries, operators

    async def rebuild_security_state(self, repo: "Repository", who: Identity | None = None) -> list[str]:
        """Make the catalog's schema, audit log and operators equal to the repository's; returns what changed.

        The catalog's chain is kept where it is the repository's chain and
        agrees with it (it may be ahead: copies are pushed after each
        action); one that is behind is extended from the repository; any other
        is replaced by the repository's, and the replacement is itself audited.
        Chains in the repository beside the main one (a catalog's log was
        replaced) are recorded in the log as forks. Operators are taken from
        the repository's records, with their attempt state replayed from the log.
        """
        from core.security import audit_copy, operator_copy
        from core.security.consistency import FORK_ACTION, acknowledged_forks, removed_operators

        who = who or default_identity()
        done = self.catalog.repair_schema()
        keys = SecurityKeys.derive(repo.id_key, repo.params.repo_id)
        conn = self.catalog.connection
        audit = AuditLog(conn, keys.audit_mac)
        ops = OperatorStore(conn, keys)
        copies = await _all_copies(repo)
        chain = audit_copy.main_chain(copies)
        gate = Gate(ops, audit, self.config.security)
        if chain is not None:
            main, theirs = chain
            ours = audit.entries()
            ours_ok = audit.log_id == main and audit.verify().ok
            if ours_ok and all(e.mac == (ours[e.seq - 1].mac if e.seq <= len(ours) else e.mac) for e in theirs):
                if len(theirs) > len(ours):
                    n = audit.extend(theirs[len(ours):])
                    done.append(f"audit log extended with {n} entr{'y' if n == 1 else 'ies'} from the repository")
            else:
                old_id, dropped = audit.log_id, audit.discard()
                audit.adopt(main, theirs)
                done.append(f"audit log {main[:8]} ({len(theirs)} entries) taken from the repository")
                if dropped or old_id:
                    gate.record(who, "audit.rebuild", f"catalog log {(old_id or 'none')[:8]}", "replaced",
                                discarded_log_id=old_id, discarded_entries=dropped,
                                reason="the catalog's audit log disagreed with the repository's")
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
            _replay_attempt_state(ops, audit)
        after = {o.name: o.role for o in ops.list()}
        if before != after:
            done.append(f"operators taken from the repository: {', '.join(sorted(after)) or 'none'}")
        await audit_copy.push(repo, audit)
        return done

    @asynccontextmanager
    async def _guarded(self, who: Identity, require_all: bool = True) -> AsyncIterator[_Security]:
        """Open the repository and the gate; copy new audit entries to the repository afterwards."""
        from core.security import audit_copy

        repo = await self.open_repository(require_all=require_all)
        sec = await self._security(repo, who)
        try:
            yield sec
        finally:
            await audit_copy.push(repo, sec.gate.audit)

    def _note_settings(self, gate: Gate, who: Identity) -> None:
        """Audit changes to encryption/security/schedule/retention settings, even those made in the file."""
        conn = self.catalog.connection
        for section in _AUDITED_SECTIONS:
            value = getattr(self.config, section, None)
            if value is None and section in ("schedules", "retention"):
                continue  # not configurable in this build
            doc = json.loads(json.dumps(value.model_dump(mode="json") if hasattr(value, "model_dump") else value,
                                        default=str, sort_keys=True))
            row = conn.execute("SELECT value FROM security_state WHERE key=?", (f"settings:{section}",)).fetchone()
            before = json.loads(row[0]) if row else None
            if before == doc:
                continue
            gate.record(who, f"settings.{section}", "config file", "recorded" if before is None else "changed",
                        before=before, after=doc)
            conn.execute("INSERT OR REPLACE INTO security_state (key, value) VALUES (?, ?)",
                         (f"settings:{section}", json.dumps(doc, sort_keys=True)))

    async def _after_init(self, repo: "Repository", created: list[str], repaired: dict[str, str] | None = None,
                          who: Identity | None = None) -> None:
        """Audit the creation of a repository's keys on targets, and key objects rewritten (key events)."""
        from core.security import audit_copy

        if not created and not repaired:
            return
        who = who or default_identity()
        sec = await self._security(repo, who, enforce=False)
        if sec.disagreements:
            return  # never append to a catalog that disagrees; `catalog rebuild` first
        if created:
            sec.gate.record(who, "key.create", f"repository {repo.params.repo_id[:8]}", "succeeded",
                            versions=sorted(repo.keys), targets=created)
        for target, what in sorted((repaired or {}).items()):
            sec.gate.record(who, "key.repair", f"target {target}", "succeeded", detail=what)
        await audit_copy.push(repo, sec.gate.audit)

    async def change_settings(self, action: Action, subject: str, apply: Callable[[], Awaitable[None] | None],
                              who: Identity | None = None) -> None:
        """Gate and audit a change to schedules, retention or encryption settings made through backstop.

        ``apply`` makes the change (writes the config, updates a schedule) and
        runs only once the gate allowed it; its failure is audited too. Front
        ends that edit settings call this, so they never decide alone.
        """
        if action not in (Action.SCHEDULE_CHANGE, Action.RETENTION_CHANGE, Action.ENCRYPTION_CHANGE):
            raise UsageError(f"{action.value} is not a settings change")
        who = who or default_identity()
        async with self._guarded(who, require_all=False) as sec:
            await sec.gate.authorize(action, who, subject)
            try:
                result = apply()
                if inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                sec.gate.record(who, action.value, subject, "failed", error=str(exc))
                raise
            sec.gate.record(who, action.value, subject, "succeeded")

    # -- operators -------------------------------------------------------------------

    def list_operators(self) -> list[Operator]:
        """Enrolled operators (no secrets; reading needs no key)."""
        return OperatorStore(self.catalog.connection, None).list()

    async def add_operator(self, name: str, role: str, who: Identity | None = None) -> Enrolment:
        """Enrol an operator; the first one needs no code and must be an admin."""
        check_name(name)
        check_role(role)
        who = who or default_identity()
        async with self._guarded(who, require_all=False) as sec:
            await sec.gate.authorize(Action.OPERATOR_ADD, who, f"{name} ({role})", enrol_role=role)
            secret = sec.gate.operators.add(name, role, who.operator, time.time())
            sec.gate.record(who, Action.OPERATOR_ADD.value, f"{name} ({role})", "succeeded", name=name, role=role)
            await operator_copy.save(sec.repo, sec.gate.operators.export(name, time.time()))
            issuer = self.config.security.issuer
            return Enrolment(name, role, provisioning_uri(secret, name, issuer), secret_base32(secret))

    async def set_operator_role(self, name: str, role: str, who: Identity | None = None) -> Operator:
        check_role(role)
        who = who or default_identity()
        async with self._guarded(who, require_all=False) as sec:
            ops = sec.gate.operators
            await sec.gate.authorize(Action.OPERATOR_CHANGE, who, f"{name} -> {role}")
            if role != "admin" and ops.admins() == [name]:
                raise UsageError(f"'{name}' is the last admin; enrol another admin before changing this role")
            op = ops.set_role(name, role)
            sec.gate.record(who, Action.OPERATOR_CHANGE.value, f"{name} -> {role}", "succeeded", name=name, role=role)
            await operator_copy.save(sec.repo, ops.export(name, time.time()))
            return op

    async def remove_operator(self, name: str, who: Identity | None = None) -> None:
        who = who or default_identity()
        async with self._guarded(who, require_all=False) as sec:
            ops = sec.gate.operators
            await sec.gate.authorize(Action.OPERATOR_REMOVE, who, name)
            if ops.admins() == [name] and ops.count() > 1:
                raise UsageError(f"'{name}' is the last admin; enrol another admin before removing it")
            ops.remove(name)
            sec.gate.record(who, Action.OPERATOR_REMOVE.value, name, "succeeded", name=name)
            await operator_copy.drop(sec.repo, name)

    async def recover_operator(self, name: str, passphrase: bytes, who: Identity | None = None) -> Enrolment:
        """Enrol an admin without a code when every operator record is lost, proven by the repository passphrase.

        The way back when the repository's operator records were deleted on
        every target and the catalog lost them too: nobody could ever pass
        the gate again. Knowing the passphrase (typed, not read from the
        config file) already gives full access to the repository, so it is
        the proof asked for; the enrolment is audited as operator.recover.
        """
        from core.security import operator_copy

        check_name(name)
        who = who or default_identity()
        subject = f"{name} (admin)"
        async with self._guarded(who, require_all=True) as sec:
            ops = sec.gate.operators
            if ops.count() or await operator_copy.load(sec.repo):
                sec.gate.record(who, Action.OPERATOR_RECOVER.value, subject, "refused", reason="operators exist")
                raise AuthError("operators are enrolled (the repository holds their records): an admin enrols more "
                                "with `backstop operator add`; recovery is only for when every record is lost")
            if not hmac.compare_digest(passphrase, self.config.encryption.passphrase()):
                sec.gate.record(who, Action.OPERATOR_RECOVER.value, subject, "refused", reason="wrong passphrase")
                raise AuthError("that is not the repository passphrase; operator recovery needs it typed in")
            sec.gate.record(who, Action.OPERATOR_RECOVER.value, subject, "allowed",
                            reason="no operator records anywhere; repository passphrase given")
            secret = ops.add(name, "admin", who.operator, time.time())
            sec.gate.record(who, Action.OPERATOR_RECOVER.value, subject, "succeeded", name=name, role="admin")
            await operator_copy.save(sec.repo, ops.export(name, time.time()))
            issuer = self.config.security.issuer
            return Enrolment(name, "admin", provisioning_uri(secret, name, issuer), secret_base32(secret))

    # -- audit -----------------------------------------------------------------------

    def audit_entries(self, since: float | None = None, limit: int | None = None) -> list[AuditEntry]:
        """Audit log entries, oldest first (reading needs no key)."""
        return AuditLog(self.catalog.connection).entries(since=since, limit=limit)

    async def check_audit(self, who: Identity | None = None) -> AuditVerification:
        """Check the chain in the catalog, compare it with every reachable target's copy and with the repository's state."""
        from core.security import audit_copy

        who = who or default_identity()
        repo = await self.open_repository(require_all=False)
        sec = await self._security(repo, who, enforce=False)
        problems = list(sec.disagreements)
        if self.catalog.schema_problems():
            return AuditVerification(0, problems, [], {})
        log = sec.gate.audit
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
        if problems:
            # Copy nothing on top of evidence: the repository copy is what shows the damage.
            return AuditVerification(len(entries), problems, notes, copies)
        await audit_copy.push(repo, log)
        return AuditVerification(len(entries), problems, notes, copies)

    # -- keys ------------------------------------------------------------------------

    async def key_list(self, usage: bool = True) -> list[KeyRow]:
        """DEK versions with their dates and (optionally) what each still protects."""
        from core.repository.keyring import key_status, scan_key_usage

        repo = await self.open_repository(require_all=False)
        statuses = await key_status(repo)
        scan = await scan_key_usage(repo) if usage else None
        return [KeyRow(s, scan.usage.get(s.version) if scan else None) for s in statuses]

    async def rotate_keys(self, who: Identity | None = None, kek: bool = True, dek: bool = True,
                          if_due: bool = False) -> RotationResult:
        """Rotate the KEK (re-wrap, no data uploaded) and/or add a DEK version.

        With ``if_due`` the rotation happens only when ``encryption.rotate_every``
        says so, and needs no code: the policy in the config is the approval
        (changing it is itself audited); this is what the scheduler runs.
        """
        from core.repository import keyring

        who = who or default_identity()
        every = self.config.encryption.rotate_every
        if if_due and every is None:
            raise UsageError("--if-due needs a policy: set encryption.rotate_every (e.g. 90d) in the config")
        what = "+".join(k for k, on in (("kek", kek), ("dek", dek)) if on)
        async with self._guarded(who, require_all=True) as sec:
            repo = sec.repo
            if if_due:
                assert every is not None
                statuses = await keyring.key_status(repo)
                last = keyring.last_rotation(statuses)
                if not keyring.rotation_due(statuses, every):
                    return RotationResult(False, f"not due: keys last rotated {last.isoformat(timespec='seconds')}, "
                                                 f"policy every {_days(every.total_seconds())}")
                sec.gate.record(who, Action.KEY_ROTATE.value, what, "allowed",
                                reason=f"encryption.rotate_every={_days(every.total_seconds())} policy is due")
            else:
                await sec.gate.authorize(Action.KEY_ROTATE, who, what)
            passphrase = self.config.encryption.passphrase()
            try:
                copied = await keyring.sync_key_objects(repo)
                kek_id = await keyring.rotate_kek(repo, passphrase) if kek else None
                new = await keyring.rotate_dek(repo, passphrase) if dek else None
            except BaseException as exc:
                sec.gate.record(who, Action.KEY_ROTATE.value, what, "failed", error=str(exc))
                raise
            sec.gate.record(who, Action.KEY_ROTATE.value, what, "succeeded", kek_id=kek_id,
                            dek_version=new.version if new else None, keys_copied=copied)
            return RotationResult(True, "rotated" + (" (policy due)" if if_due else ""), kek_id,
                                  new.version if new else None, copied)

    async def _reencrypt(self, sec: _Security, who: Identity, versions: set[int]) -> "ReencryptReport":
        """Re-encrypt under the exclusive lock the caller holds, keeping catalog and audit log in step."""
        from core.repository.reencrypt import reencrypt

        async def renamed(old: str, new: str) -> None:
            if self.catalog.connection.execute("SELECT 1 FROM snapshots WHERE id=?", (new,)).fetchone():
                self.catalog.delete_snapshot(old)
            else:
                self.catalog.rename_snapshot(old, new)
            sec.gate.record(who, "snapshot.renamed", f"{old[:8]} -> {new[:8]}", "succeeded", old=old, new=new,
                            reason="manifest re-sealed with the current data key")

        async with run_job(self.bus, "reencrypt", None, f"re-encryption of data key(s) {sorted(versions)}") as job:
            job.phase("reencrypt")
            report = await reencrypt(sec.repo, versions, self.pool, renamed, on_progress=job.progress)
            job.result = {k: v for k, v in report.to_json().items() if k != "snapshots"}
            return report

    async def reencrypt_keys(self, who: Identity | None = None, versions: set[int] | None = None) -> "ReencryptReport":
        """Move everything sealed with old DEK versions (default: all but the current) to the current one."""
        who = who or default_identity()
        async with self._guarded(who, require_all=True) as sec:
            current = sec.repo.key.version
            versions = set(versions) if versions else set(sec.repo.keys) - {current}
            subject = f"data key(s) {sorted(versions)} -> {current}"
            # The lock first: a command refused by a lock must not use up its one-time code.
            async with sec.repo.lock("exclusive", "re-encryption"):
                await sec.gate.authorize(Action.KEY_REENCRYPT, who, subject)
                async with _outcome(sec, who, Action.KEY_REENCRYPT, subject) as out:
                    report = await self._reencrypt(sec, who, versions)
                    out.update({k: v for k, v in report.to_json().items() if k != "snapshots"})
            return report

    async def retire_key(self, version: int, who: Identity | None = None,
                         reencrypt: bool = False) -> "ReencryptReport | None":
        """Delete a DEK version for good; refused while anything still needs it (unless re-encrypted first)."""
        from core.repository.keyring import retire_key, scan_key_usage

        who = who or default_identity()
        subject = f"data key {version}"
        async with self._guarded(who, require_all=True) as sec:
            repo = sec.repo
            if version not in repo.keys:
                raise UsageError(f"there is no data key {version}; see `backstop key list`")
            if version == repo.key.version:
                raise UsageError(f"data key {version} is the current key; rotate first (`backstop key rotate --dek`)")
            report = None
            async with repo.lock("exclusive", f"retirement of data key {version}"):
                await sec.gate.authorize(Action.KEY_RETIRE, who, subject)
                async with _outcome(sec, who, Action.KEY_RETIRE, subject, reencrypted=reencrypt):
                    if reencrypt:
                        report = await self._reencrypt(sec, who, {version})
                    usage = (await scan_key_usage(repo)).usage.get(version)
                    if usage is not None and usage.total:
                        raise KeyInUse(
                            f"data key {version} still protects {usage.describe()}; run `backstop key reencrypt` "
                            f"first (or `backstop key retire {version} --reencrypt`)")
                    await retire_key(repo, version)
            return report

    # -- forget and prune ------------------------------------------------------------------

    async def forget_snapshots(self, refs: list[str], who: Identity | None = None) -> list[str]:
        """Delete snapshots from every target and the catalog; returns their ids."""
        from core.repository import gc

        if not refs:
            raise UsageError("name at least one snapshot to forget")
        who = who or default_identity()
        snaps = [await self.find_snapshot(r) for r in refs]  # type: ignore[attr-defined]
        ids = list(dict.fromkeys(s.id for s in snaps))
        subject = ", ".join(f"{s.short_id} ({s.db} {s.finished_at})" for s in snaps)
        async with self._guarded(who, require_all=True) as sec:
            async with sec.repo.lock("shared", "forget"):
                await sec.gate.authorize(Action.SNAPSHOT_FORGET, who, subject)
                async with _outcome(sec, who, Action.SNAPSHOT_FORGET, subject) as out:
                    async with run_job(self.bus, "forget", None, f"forget {len(ids)} snapshot(s)") as job:
                        removed = await gc.forget(sec.repo, ids)
                        for sid in removed:
                            self.catalog.delete_snapshot(sid)
                        job.result = {"forgotten": removed}
                    out["snapshots"] = removed
            return removed

    async def prune_repository(self, who: Identity | None = None, grace_s: float | None = None,
                               dry_run: bool = False) -> "PruneReport":
        """Delete packs no snapshot needs and older than the grace period (default 24 h), and leftovers.

        A dry run changes nothing, so it needs neither a code nor the lock.
        """
        from core.repository import gc

        grace = gc.DEFAULT_GRACE_S if grace_s is None else grace_s
        if grace < 0:
            raise UsageError("--grace must not be negative")
        who = who or default_identity()
        subject = f"grace {_days(grace)}"
        if dry_run:
            repo = await self.open_repository(require_all=True)
            return await gc.prune(repo, grace, dry_run=True)
        async with self._guarded(who, require_all=True) as sec:
            async with sec.repo.lock("exclusive", "prune"):
                await sec.gate.authorize(Action.PRUNE, who, subject)
                async with _outcome(sec, who, Action.PRUNE, subject) as out:
                    async with run_job(self.bus, "prune", None, f"prune (grace {_days(grace)})") as job:
                        job.phase("prune")
                        report = await gc.prune(sec.repo, grace)
                        job.result = report.to_json()
                    out.update(report.to_json())
            return report

    # -- locks -------------------------------------------------------------------------------

    async def list_locks(self) -> list[dict[str, object]]:
        """The repository's locks (first reachable target), with whether each is stale."""
        repo = await self.open_repository(require_all=False)
        return await repo.locks()

    async def unlock(self, names: list[str], who: Identity | None = None) -> list[str]:
        """Remove locks (by name or short name) left by processes that cannot release them (another host's crash)."""
        who = who or default_identity()
        async with self._guarded(who, require_all=False) as sec:
            present = await sec.repo.locks()
            chosen = [lk for lk in present if any(str(lk["name"]).removeprefix("locks/").startswith(n.removeprefix("locks/"))
                                                  for n in names)] if names != ["all"] else present
            if not chosen:
                raise UsageError("no such lock; `backstop unlock` without arguments lists them")
            subject = ", ".join(f"{str(lk['name'])[6:14]} ({lk['kind']}, {lk['purpose']}, pid {lk['pid']} on "
                                f"{lk['host']})" for lk in chosen)
            await sec.gate.authorize(Action.UNLOCK, who, subject)
            async with _outcome(sec, who, Action.UNLOCK, subject):
                await sec.repo.remove_locks([str(lk["name"]) for lk in chosen])
            return [str(lk["name"]) for lk in chosen]

    # -- restore over an existing database ----------------------------------------------------

    async def restore_over(self, db_name: str, into: str, snapshot: str = "latest",
                           who: Identity | None = None, target: str | None = None) -> OverwriteResult:
        """Restore a snapshot in place of database ``into``, keeping the old one aside.

        The snapshot is restored into a new temporary database first; only
        when that succeeded is the existing database renamed aside (to
        ``<into>__replaced_<UTC time>``, kept for the operator to inspect or
        drop) and the new one renamed into place. A failed restore leaves the
        existing database untouched.
        """
        from core.postgres import logical
        from core.postgres.swap import swap_in

        dbc = self.config.database(db_name)
        logical.ensure_new_database(into)
        if not await logical.database_exists(dbc.dsn, into):
            res = await self.restore(db_name, into, snapshot, target=target)
            return OverwriteResult(res, False, None)
        who = who or default_identity()
        snap = await self.find_snapshot(snapshot, db_name)  # type: ignore[attr-defined]
        subject = f"{db_name} snapshot {snap.short_id} over database {into}"
        async with self._guarded(who, require_all=False) as sec:
            await sec.gate.authorize(Action.RESTORE_OVERWRITE, who, subject)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            temp, aside = _side_name(into, f"__restoring_{stamp}"), _side_name(into, f"__replaced_{stamp}")
            try:
                res = await self.restore(db_name, temp, snap.id, target=target)
                try:
                    await swap_in(dbc.dsn, live=into, new=temp, aside=aside)
                except BaseException:
                    await logical.drop_database(dbc.dsn, temp)
                    raise
            except BaseException as exc:
                sec.gate.record(who, Action.RESTORE_OVERWRITE.value, subject, "failed", error=str(exc),
                                note=f"database {into} was left as it was")
                raise
            sec.gate.record(who, Action.RESTORE_OVERWRITE.value, subject, "succeeded", previous_kept_as=aside,
                            bytes=res.bytes, duration_s=round(res.duration_s, 3))
            final = type(res)(res.snapshot_id, res.db, into, res.tables, res.bytes, res.duration_s, res.warnings)
            return OverwriteResult(final, True, aside)


async def _all_copies(repo: "Repository") -> dict:  # type: ignore[type-arg]
    """Every audit chain on the reachable targets, each from the target holding its longest valid copy."""
    from core.security import audit_copy

    from core.security.audit import verify_chain

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


async def _repository_chain(repo: "Repository") -> "tuple[str, list[AuditEntry]] | None":
    from core.security import audit_copy

    return audit_copy.main_chain(await _all_copies(repo))


@asynccontextmanager
async def _outcome(sec: _Security, who: Identity, action: Action, subject: str,
                   **detail: object) -> AsyncIterator[dict[str, object]]:
    """Audit how an allowed action ended: "failed" with the error, or "succeeded" with what the block added."""
    out: dict[str, object] = dict(detail)
    try:
        yield out
    except BaseException as exc:
        sec.gate.record(who, action.value, subject, "failed", error=str(exc) or type(exc).__name__, **detail)
        raise
    sec.gate.record(who, action.value, subject, "succeeded", **out)


def _replay_attempt_state(ops: OperatorStore, audit: AuditLog) -> None:
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


def _days(seconds: float) -> str:
    """A duration as the config writes it (90d, 24h, 5m, 30s)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
