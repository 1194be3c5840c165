"""A repository replicated on several targets: config, keys, objects, locks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from core.config import RepositoryConfig
from core.errors import (
    BackstopError,
    IntegrityError,
    LockConflict,
    ObjectNotFound,
    RepositoryError,
    RepositoryNotInitialised,
    StorageError,
    TargetDamaged,
    TargetUnreachable,
    WrongKey,
)
from core.format import now_iso
from core.processes import pid_alive
from core.repository.index import INDEX_PREFIX, Index, IndexFile
from core.repository.keys import (
    KEY_PREFIX,
    DataKey,
    key_object_name,
    new_data_key,
    unwrap_data_key,
    wrap_data_key,
)
from core.repository.manifest import SNAPSHOT_PREFIX, Manifest
from core.repository.marks import MARKS_PREFIX, Marks
from core.storage.base import Storage

CONFIG_NAME = "config"
LOCK_PREFIX = "locks/"
# Copies of the audit log and of the operator records (core/security), sealed
# envelopes of these kinds. Named by position or name, not content: replaced in place.
AUDIT_PREFIX = "audit/"
AUDIT_KIND = b"audit"
OPERATOR_PREFIX = "operators/"
OPERATOR_KIND = b"operator"
# The approved schedules/retention/encryption settings (core/settings): one object, replaced on approval.
SETTINGS_PREFIX = "settings/"
SETTINGS_KIND = b"settings"
# Sealed drill reports (core/drills/seal.py): ``drills/<report id>``, written once (FORMAT.md 18.4).
DRILL_PREFIX = "drills/"
DRILL_KIND = b"drill"
RECORD_KINDS = {AUDIT_PREFIX: AUDIT_KIND, OPERATOR_PREFIX: OPERATOR_KIND, SETTINGS_PREFIX: SETTINGS_KIND,
                DRILL_PREFIX: DRILL_KIND}
FORMAT_VERSION = 1
# Holders rewrite their lock this often; one not rewritten for STALE_LOCK_SECONDS
# was left by a crashed process and no longer blocks.
LOCK_REFRESH_SECONDS = 300
STALE_LOCK_SECONDS = 3600


@dataclass(frozen=True)
class RepoParams:
    """The plaintext `config` object: identity and fixed parameters."""

    repo_id: str
    version: int
    chunk_avg: int
    chunk_min: int
    chunk_max: int
    pack_target: int
    compression_level: int
    created: str

    @classmethod
    def new(cls, cfg: RepositoryConfig) -> RepoParams:
        avg = cfg.chunk_avg_kib * 1024
        return cls(
            repo_id=uuid.uuid4().hex,
            version=FORMAT_VERSION,
            chunk_avg=avg,
            chunk_min=avg // 4,
            chunk_max=avg * 4,
            pack_target=cfg.pack_target_mib * 1024 * 1024,
            compression_level=cfg.compression_level,
            created=now_iso(),
        )

    def to_bytes(self) -> bytes:
        return json.dumps({"format": "backstop-repository", **asdict(self)}, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> RepoParams:
        try:
            doc = json.loads(data)
            if doc.pop("format") != "backstop-repository":
                raise ValueError
            version = int(doc["version"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise IntegrityError(f"{where}: the config object is damaged (not a backstop repository config)") from None
        if version > FORMAT_VERSION:
            raise RepositoryError(f"{where}: repository format {version} is newer than this backstop; upgrade it")
        try:
            return cls(**doc)
        except TypeError:
            raise IntegrityError(f"{where}: the repository config object is damaged") from None


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256, the checksum recorded for every stored object."""
    return hashlib.sha256(data).hexdigest()


async def _read_config(st: Storage) -> RepoParams | None:
    try:
        return RepoParams.from_bytes(await st.get(CONFIG_NAME), f"target '{st.name}'")
    except ObjectNotFound:
        return None


@dataclass
class _Identity:
    """What one target's own config and key objects say (FORMAT.md 12.2)."""

    storage: Storage
    params: RepoParams | None = None
    keys: dict[int, DataKey] | None = None
    key_objects: dict[str, bytes] | None = None
    error: BackstopError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.keys is not None


async def _identify(st: Storage, passphrase: bytes) -> _Identity:
    """Open one target on its own; classify what stops it (unreachable, damaged, wrong key, empty)."""
    ident = _Identity(st)
    where = f"target '{st.name}'"
    try:
        ident.params = await _read_config(st)
        if ident.params is None:
            # A target that holds repository objects but lost its config is damaged, not new.
            if await st.list(KEY_PREFIX):
                raise TargetDamaged(st.name, f"the config object is missing but keys/ is not ({st.describe()})")
            raise RepositoryNotInitialised(
                f"{where} ({st.describe()}) holds no repository; run `backstop init` first")
        ident.key_objects = await _read_key_objects(st)
        ident.keys = _unwrap_all(ident.key_objects, passphrase, ident.params.repo_id, where)
    except IntegrityError as exc:
        ident.error = TargetDamaged(st.name, str(exc).removeprefix(f"{where}: "))
    except (StorageError, RepositoryError) as exc:  # unreachable, wrong key, uninitialised, newer format
        ident.error = exc
    return ident


_REWRITE_HINT = "`backstop init` rewrites its config and key objects from a healthy target"


def _classify(idents: list[_Identity]) -> list[_Identity]:
    """Targets that open with this passphrase; a wrong-key target beside one that opens is damage."""
    ok = [i for i in idents if i.ok]
    if len({i.params.repo_id for i in ok if i.params}) > 1:
        raise RepositoryError("the targets hold different repositories (repo ids differ); check the targets list")
    if ok:
        good = ok[0].storage.name
        for i in idents:
            if isinstance(i.error, WrongKey):
                i.error = TargetDamaged(i.storage.name, f"its key objects do not open with the passphrase that opens "
                                                        f"target '{good}': they are damaged or were replaced")
    return ok


class Repository:
    """One logical repository, identical on every target."""

    def __init__(self, storages: list[Storage], params: RepoParams, keys: dict[int, DataKey],
                 unreachable: dict[str, str] | None = None, passphrase: bytes = b"",
                 damaged: dict[str, str] | None = None, damaged_storages: list[Storage] | None = None) -> None:
        self.storages = storages
        self.params = params
        self.keys = keys
        self._passphrase = passphrase  # kept to check each target's own key objects
        # Targets that could not be opened (name -> message), when tolerated.
        self.unreachable = unreachable or {}
        # Targets whose own config or keys are damaged (name -> message): their
        # other objects can still be checked with the keys of a healthy target.
        self.damaged = damaged or {}
        self.damaged_storages = damaged_storages or []
        # Set by init: targets whose config or key objects it rewrote (name -> what).
        self.repaired: dict[str, str] = {}
        # Set by writers under a quorum targets_policy (FORMAT.md 12.4): says why the targets still written
        # to no longer meet the policy (None: they do). A target failing a write is then dropped, not fatal.
        self.write_check: Callable[[list[str]], str | None] | None = None
        # Targets dropped by a write under write_check (name -> the failure).
        self.dropped: dict[str, str] = {}
        self._dropped_storages: list[Storage] = []

    # -- opening -----------------------------------------------------------

    @classmethod
    async def init(cls, storages: list[Storage], passphrase: bytes,
                   cfg: RepositoryConfig) -> tuple[Repository, list[str]]:
        """Create the repository on every target that lacks it; returns it and those targets.

        Idempotent. Refuses when an existing repository does not open with this
        passphrase, or when targets already hold different repositories. A
        target whose own config or key objects are damaged or missing gets
        them again from a healthy target, once its other copy of the identity
        (the config's repo id, or key objects bound to that id) confirms it
        holds this repository (``Repository.repaired`` says what was rewritten where).
        """
        idents = list(await asyncio.gather(*(_identify(s, passphrase) for s in storages)))
        for i in idents:
            if isinstance(i.error, StorageError):
                raise i.error
        ok = _classify(idents)
        if ok:
            params = ok[0].params
            assert params is not None and ok[0].key_objects is not None
            key_objects = ok[0].key_objects
            keys: dict[int, DataKey] = {}
            for i in ok:
                keys.update(i.keys or {})
        else:
            for i in idents:
                if isinstance(i.error, (WrongKey, TargetDamaged)):
                    raise i.error
            params = RepoParams.new(cfg)
            dek = new_data_key(1)
            key_objects = {key_object_name(1): wrap_data_key(dek, passphrase, params.repo_id)}
            keys = {1: dek}
        created: list[str] = []
        repaired: dict[str, str] = {}
        for i in idents:
            st = i.storage
            if i.ok:
                missing = sorted(set(key_objects) - set(i.key_objects or {}))
                for name in missing:  # an interrupted rotation or a deleted key object
                    await st.put(name, key_objects[name])
                if missing:
                    repaired[st.name] = f"key object(s) {', '.join(missing)} copied from a healthy target"
                continue
            if isinstance(i.error, RepositoryNotInitialised):
                # Keys first, config last: a target counts as initialised only
                # once everything needed to open it is there.
                for name, data in key_objects.items():
                    await st.put(name, data)
                await st.put(CONFIG_NAME, params.to_bytes())
                created.append(st.name)
                continue
            what = await _confirm_same_repository(i, params, passphrase)
            for name, data in key_objects.items():
                await st.put(name, data)
            await st.put(CONFIG_NAME, params.to_bytes())
            repaired[st.name] = f"{i.error}; config and key objects rewritten from a healthy target ({what})"
        repo = cls(storages, params, keys, passphrase=passphrase)
        repo.repaired = repaired
        return repo, created

    @classmethod
    async def open(cls, storages: list[Storage], passphrase: bytes, require_all: bool = True) -> Repository:
        """Open the repository from every target whose own config and keys are intact.

        With ``require_all`` (backups) every target must open; otherwise
        unreachable, damaged and uninitialised targets are noted and left out,
        so one bad target never blocks the healthy one.
        """
        idents = list(await asyncio.gather(*(_identify(s, passphrase) for s in storages)))
        ok = _classify(idents)
        failed = [i for i in idents if not i.ok]
        if not ok:
            wrong = [i.error for i in failed if isinstance(i.error, WrongKey)]
            others = [i.error for i in failed if not isinstance(i.error, WrongKey)]
            if len(failed) == 1 or (wrong and not others) or all(isinstance(e, RepositoryNotInitialised)
                                                                for e in others):
                assert failed[0].error is not None
                first = next((e for e in others if isinstance(e, RepositoryNotInitialised)), None)
                raise first or (wrong[0] if wrong else failed[0].error)
            if all(isinstance(e, StorageError) for e in others) and not wrong:
                raise StorageError(storages[0].name if len(storages) == 1 else "all",
                                   "no target could be reached: " + "; ".join(str(e) for e in others))
            message = "no target can be opened: " + "; ".join(str(i.error) for i in failed)
            raise WrongKey(message) if wrong else RepositoryError(message)
        if require_all and failed:
            err = failed[0].error
            assert err is not None
            if isinstance(err, TargetDamaged):
                raise TargetDamaged(err.target, f"{str(err).removeprefix(f'target {err.target!r}: ')}; "
                                                f"{_REWRITE_HINT}")
            raise err
        keys: dict[int, DataKey] = {}
        for i in ok:
            keys.update(i.keys or {})
        params = ok[0].params
        assert params is not None
        unreachable = {i.storage.name: str(i.error) for i in failed if not isinstance(i.error, TargetDamaged)}
        damaged = {i.storage.name: f"{i.error}; {_REWRITE_HINT}" for i in failed if isinstance(i.error, TargetDamaged)}
        return cls([i.storage for i in ok], params, keys, unreachable, passphrase, damaged,
                   [i.storage for i in failed if isinstance(i.error, TargetDamaged)])

    # -- keys ---------------------------------------------------------------

    async def verify_identity(self, st: Storage) -> list[str]:
        """Problems with a target's own config and key objects (empty when it opens on its own)."""
        where = f"target '{st.name}'"
        try:
            params = await _read_config(st)
            if params is None:
                return [f"{where}: the config object is missing"]
            if params.repo_id != self.params.repo_id:
                return [f"{where}: holds another repository ({params.repo_id[:8]})"]
            keys = _unwrap_all(await _read_key_objects(st), self._passphrase, params.repo_id, where)
        except WrongKey:
            return [f"{where}: its key objects do not open with the passphrase that opens the other targets: "
                    f"they are damaged or were replaced; {_REWRITE_HINT}"]
        except (RepositoryError, StorageError) as exc:
            return [f"{where}: {exc}" if not str(exc).startswith(where) else str(exc)]
        missing = sorted(set(self.keys) - set(keys))
        if missing:
            return [f"{where}: key version(s) {missing} are missing from keys/"]
        return []

    @property
    def key(self) -> DataKey:
        """The data key new data is sealed with (the newest version)."""
        return self.keys[max(self.keys)]

    @property
    def id_key(self) -> bytes:
        return self.key.id_key

    # -- objects ------------------------------------------------------------

    async def put_all(self, name: str, data: bytes,
                      slots: Mapping[str, asyncio.Semaphore] | None = None) -> None:
        """Write one object to every target, concurrently; raises only once every target has answered.

        ``slots`` (target name -> semaphore) bounds the writes in flight per target (parallel_uploads):
        each target waits only for its own slot, so a slow target does not hold back the others' writes.
        """
        async def one(st: Storage) -> None:
            slot = slots.get(st.name) if slots else None
            if slot is None:
                await st.put(name, data)
                return
            async with slot:
                await st.put(name, data)
        await self._each(one)

    async def put_all_stream(self, name: str, pieces: AsyncIterator[bytes]) -> list[bytes]:
        """:meth:`put_all` of an object still being made: every target takes each piece as it comes.

        Returns the pieces written, in order (for the read-back). When ``pieces`` fails, no target keeps anything and
        its error is raised.
        """
        got: list[bytes] = []
        queues: dict[int, asyncio.Queue[bytes | None]] = {id(st): asyncio.Queue() for st in self.storages}

        async def feed() -> None:
            try:
                async for piece in pieces:
                    got.append(piece)
                    for q in queues.values():
                        q.put_nowait(piece)
            except BaseException:
                for q in queues.values():
                    q.put_nowait(_BROKEN)
                raise
            for q in queues.values():
                q.put_nowait(None)

        async def take(q: asyncio.Queue[bytes | None]) -> AsyncIterator[bytes]:
            while (piece := await q.get()) is not None:
                if piece is _BROKEN:
                    raise _MakerFailed  # the target discards what it wrote
                yield piece

        feeder = asyncio.ensure_future(feed())
        try:
            await self._each(lambda st: st.put_stream(name, take(queues[id(st)])))
        except _MakerFailed:
            pass  # the feeder's own error is raised below
        finally:
            if not feeder.done():
                feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        feeder.result()
        return got

    async def verify_all(self, name: str, digest: str) -> None:
        """Read an object back from every target and compare its SHA-256."""
        async def one(st: Storage) -> None:
            got = sha256_hex(await st.get(name))
            if got != digest:
                raise IntegrityError(f"target '{st.name}': read-back of {name} does not match what was written")
        await self._each(one)

    async def verify_same(self, name: str, data: bytes | list[bytes]) -> None:
        """Read an object back from every target and compare it with what was written, byte for byte.

        For a writer that still holds the bytes (a WAL push; ``data`` may be the pieces it wrote, never
        joined: one copy fewer in memory): a comparison costs a tenth of hashing them.
        """
        pieces = [data] if isinstance(data, bytes) else data

        async def one(st: Storage) -> None:
            if not _same(await st.get(name), pieces):
                raise IntegrityError(f"target '{st.name}': read-back of {name} does not match what was written")
        await self._each(one)

    async def _each(self, call: Callable[[Storage], Awaitable[None]]) -> None:
        """``call`` on every target; under ``write_check`` a failing target is dropped while the rest meet it."""
        if self.write_check is None:
            await _all(call(s) for s in self.storages)
            return
        stores = list(self.storages)
        results = await asyncio.gather(*(call(s) for s in stores), return_exceptions=True)
        failures: list[BaseException] = []
        for st, r in zip(stores, results, strict=True):
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # cancellation and the like first
            if isinstance(r, (StorageError, IntegrityError)):
                failures.append(r)
                self.dropped[st.name] = str(r)
                self._dropped_storages.append(st)
                self.storages.remove(st)
            elif isinstance(r, BaseException):
                raise r
        if failures:
            reason = self.write_check([s.name for s in self.storages])
            if reason is not None:
                raise RepositoryError(f"targets_policy is not met: {reason} ({failures[0]}); bring the target back "
                                      "and run the backup again")

    async def delete_all(self, name: str) -> None:
        """Remove an object from every target, ignoring failures (best effort cleanup)."""
        stores = [*self.storages, *self._dropped_storages]
        await asyncio.gather(*(s.delete(name) for s in stores), return_exceptions=True)

    async def names_anywhere(self, prefix: str) -> set[str]:
        """Names under ``prefix`` on any target (a listing, nothing read); a target whose listing fails is passed
        over, since the others still tell (its own checks name it)."""
        found: set[str] = set()
        for st in self.storages:
            try:
                found |= {o.name for o in await st.list(prefix)}
            except StorageError:
                continue
        return found

    async def get_any(self, name: str) -> tuple[bytes, Storage]:
        """Fetch an object from the first target that has an intact copy."""
        errors: list[str] = []
        for st in self.storages:
            try:
                return await st.get(name), st
            except StorageError as exc:
                errors.append(str(exc))
        raise RepositoryError(f"{name} could not be read from any target: " + "; ".join(errors))

    # -- index --------------------------------------------------------------

    async def load_index(self, storage: Storage | None = None, common: bool = True,
                         avoid: frozenset[str] | set[str] = frozenset(), marked: bool | None = None) -> Index:
        """Merge the index objects of the targets (or of ``storage`` only).

        With ``common`` (backups), an index object missing from some target (a
        backup that failed half way through its commit) is left out, so its
        chunks are stored again rather than referenced where a copy may be
        missing. Without it (restores), every index object any target holds
        counts, read from whichever target has an intact copy. An index object
        no target delivers intact is left out and named in ``Index.damaged``:
        it affects only the snapshots whose chunks nothing else lists. Chunk
        locations in ``avoid`` packs (quarantine) give way to any other copy.
        With ``marked`` (default: when not ``common``), chunks found only in
        packs prune has marked for deletion (core.repository.marks) are
        included too: a snapshot that raced prune may need them until the
        next prune writes them back into the index.
        """
        stores = [storage] if storage else self.storages
        listings = await asyncio.gather(*(s.list(INDEX_PREFIX) for s in stores))
        sets = [{o.name for o in lst} for lst in listings]
        names = set.intersection(*sets) if common else set.union(*sets)
        index = Index()
        for name in sorted(names):
            try:
                f = await self._read_index(name, [s for s, have in zip(stores, sets, strict=True) if name in have])
            except IntegrityError as exc:
                index.damaged[name] = str(exc)
                continue
            index.merge(name, f, avoid)
        if marked if marked is not None else not common:
            (await self.load_marks(storage)).fill(index)
        return index

    async def load_marks(self, storage: Storage | None = None) -> Marks:
        """Merge the ``marked/`` objects of the targets (or of ``storage`` only); one no target delivers intact raises.

        What an unreadable one marked is unknown, so prune must not delete
        around it: IntegrityError, whose message says to run `backstop check`.
        """
        stores = [storage] if storage else self.storages
        listings = await asyncio.gather(*(s.list(MARKS_PREFIX) for s in stores))
        sets = [{o.name for o in lst} for lst in listings]
        marks = Marks()
        for name in sorted(set().union(*sets)):
            errors = []
            for st in (s for s, have in zip(stores, sets, strict=True) if name in have):
                try:
                    data = await st.get(name)
                    if sha256_hex(data) != name[len(MARKS_PREFIX):]:
                        raise IntegrityError(f"target '{st.name}': {name} is damaged (checksum mismatch)")
                    marks.merge(name, Marks.open(data, self.keys))
                    break
                except ObjectNotFound:
                    continue  # deleted meanwhile by a prune finishing its sweep
                except (StorageError, IntegrityError) as exc:
                    errors.append(str(exc))
            else:
                if errors:
                    raise IntegrityError(f"the list of packs marked for deletion ({name[:20]}…) cannot be read from "
                                         f"any target ({'; '.join(errors)}); run `backstop check` and repair the "
                                         "repository before pruning")
        return marks

    async def _read_index(self, name: str, stores: list[Storage]) -> IndexFile:
        errors = []
        damage = False
        for st in stores:
            try:
                data = await st.get(name)
                if sha256_hex(data) != name[len(INDEX_PREFIX):]:
                    raise IntegrityError(f"target '{st.name}': {name} is damaged (checksum mismatch)")
                return IndexFile.open(data, self.keys)
            except TargetUnreachable as exc:
                errors.append(str(exc))  # not damage: the copy there may well be intact
            except (StorageError, IntegrityError) as exc:
                damage = True
                errors.append(f"target '{st.name}': {name}: {exc}" if not str(exc).startswith("target") else str(exc))
        if not damage:
            raise StorageError(stores[0].name if len(stores) == 1 else "all", "; ".join(errors))
        raise IntegrityError("; ".join(errors))

    # -- snapshots ----------------------------------------------------------

    async def snapshot_names(self, storage: Storage | None = None) -> set[str]:
        """Snapshot ids present on a target (the first one by default)."""
        st = storage or self.storages[0]
        return {o.name[len(SNAPSHOT_PREFIX):] for o in await st.list(SNAPSHOT_PREFIX)}

    async def read_manifest(self, sid: str) -> Manifest:
        """Fetch and decrypt a snapshot manifest, trying every target."""
        name = f"{SNAPSHOT_PREFIX}{sid}"
        errors: list[str] = []
        for st in self.storages:
            try:
                data = await st.get(name)
                if sha256_hex(data) != sid:
                    raise IntegrityError(f"target '{st.name}': {name} is damaged (checksum mismatch)")
                return Manifest.open(data, self.keys)
            except (StorageError, IntegrityError) as exc:
                errors.append(str(exc))
        raise RepositoryError(f"snapshot {sid[:8]} could not be read from any target: " + "; ".join(errors))

    # -- locks --------------------------------------------------------------

    @asynccontextmanager
    async def lock(self, kind: str, purpose: str) -> AsyncIterator[None]:
        """Hold a shared, prune or exclusive lock on every target for the block's duration.

        Shared locks go together; a prune lock goes with shared ones but not
        with another prune; an exclusive lock goes with nothing.

        The lock is rewritten every LOCK_REFRESH_SECONDS, so however long the
        holder runs it never looks stale; a crashed holder's lock goes stale
        after STALE_LOCK_SECONDS.
        """
        assert kind in ("shared", "exclusive", "prune")
        await self._check_lock_conflicts(kind)
        name = f"{LOCK_PREFIX}{uuid.uuid4().hex}"
        doc = {"kind": kind, "purpose": purpose, "host": socket.gethostname(), "pid": os.getpid(), "created": now_iso()}
        await self.put_all(name, json.dumps(doc).encode())
        refresher = asyncio.ensure_future(self._refresh_lock(name, doc))
        try:
            # Two processes may have passed the check at once: look again now
            # that ours is visible, and give way if we collide.
            await self._check_lock_conflicts(kind, ignore=name)
            yield
        finally:
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            await self.delete_all(name)

    async def _refresh_lock(self, name: str, doc: dict[str, object]) -> None:
        while True:
            await asyncio.sleep(LOCK_REFRESH_SECONDS)
            try:
                await self.put_all(name, json.dumps({**doc, "refreshed": now_iso()}).encode())
            except StorageError:
                pass  # a missed refresh only matters after STALE_LOCK_SECONDS; the next try may work

    async def locks(self) -> list[dict[str, object]]:
        """Locks currently present on the first target, with a `stale` flag.

        A lock is stale once it has not been refreshed for STALE_LOCK_SECONDS,
        or at once when it was taken on this host by a process that no longer
        exists (a killed backup must not block the next one for an hour).
        """
        out = []
        st = self.storages[0]
        here = socket.gethostname()
        for o in await st.list(LOCK_PREFIX):
            try:
                doc = json.loads(await st.get(o.name))
                created = datetime.fromisoformat(doc.get("refreshed") or doc["created"])
                if created.tzinfo is None:
                    created = created.replace(tzinfo=UTC)
            except (ObjectNotFound, ValueError, KeyError, TypeError, AttributeError):
                continue  # vanished meanwhile, or not a lock we can read: it cannot hold anything
            age = (datetime.now(UTC) - created).total_seconds()
            dead = doc.get("host") == here and not pid_alive(doc.get("pid"))
            out.append({**doc, "name": o.name, "stale": age > STALE_LOCK_SECONDS or dead, "dead_holder": dead})
        return out

    async def remove_locks(self, names: list[str]) -> None:
        """Delete lock objects from every target (stale ones, or by `backstop unlock`)."""
        for name in names:
            await self.delete_all(name)

    async def _check_lock_conflicts(self, kind: str, ignore: str | None = None) -> None:
        for lk in await self.locks():
            if lk["name"] == ignore:
                continue
            if lk["stale"]:
                if lk.get("dead_holder"):
                    await self.delete_all(str(lk["name"]))  # its holder is gone: break it now
                continue
            # "prune" works beside backups and restores (FORMAT.md 17.2) but never beside another prune.
            if kind == "exclusive" or lk["kind"] == "exclusive" or kind == lk["kind"] == "prune":
                here = lk["host"] == socket.gethostname()
                raise LockConflict(
                    f"the repository is locked ({lk['kind']}, {lk['purpose']}) by pid {lk['pid']} on {lk['host']} "
                    f"since {lk['created']}; wait for it to finish"
                    + ("" if here else " (if that process is gone, `backstop unlock` removes the lock)")
                )


def _same(got: bytes, pieces: list[bytes]) -> bool:
    """Whether ``got`` is exactly the pieces, one after another."""
    if len(got) != sum(len(p) for p in pieces):
        return False
    at = 0
    for piece in pieces:
        # startswith at an offset is a memcmp; comparing a memoryview slice goes byte by byte (3.3 ms for a
        # 2 MB WAL object here, at the end of every push, against 0.04 ms).
        if not got.startswith(piece, at):
            return False
        at += len(piece)
    return True


_BROKEN = b"\0broken"  # by identity: put_all_stream's marker for "the maker failed"


class _MakerFailed(Exception):
    """put_all_stream's pieces failed: each target drops its write (not a target's failure)."""


async def _all(calls: Iterable[Awaitable[None]]) -> None:
    """Run calls on every target at once; raise the first failure only after every call has ended.

    Raising as soon as one target fails would let the caller's cleanup (take
    the manifest back everywhere) race a write still under way on another
    target, which then lands after the cleanup: a snapshot left on one target.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r  # cancellation and the like first
    for r in results:
        if isinstance(r, BaseException):
            raise r


async def _confirm_same_repository(ident: _Identity, params: RepoParams, passphrase: bytes) -> str:
    """How a damaged target is known to hold ``params``' repository, or RepositoryError."""
    st = ident.storage
    if ident.params is not None:
        if ident.params.repo_id != params.repo_id:
            raise RepositoryError(f"targets {st.name} and the others hold different repositories; "
                                  "give each repository its own targets")
        return "its config names this repository"
    try:
        _unwrap_all(await _read_key_objects(st), passphrase, params.repo_id, f"target '{st.name}'")
        return "its key objects open for this repository"
    except (RepositoryError, StorageError):
        pass
    raise RepositoryError(
        f"target '{st.name}': {ident.error}; neither its config nor its key objects confirm that it holds this "
        "repository, so backstop will not overwrite it: move its contents aside and run `backstop init` again")


async def _read_key_objects(st: Storage) -> dict[str, bytes]:
    objs = await st.list(KEY_PREFIX)
    if not objs:
        raise IntegrityError(f"target '{st.name}': keys/ is empty; the repository cannot be opened from it")
    return {o.name: await st.get(o.name) for o in objs}


def _unwrap_all(objects: dict[str, bytes], passphrase: bytes, repo_id: str, where: str) -> dict[int, DataKey]:
    keys: dict[int, DataKey] = {}
    for name in sorted(objects):
        dek = unwrap_data_key(objects[name], passphrase, repo_id, where)
        keys[dek.version] = dek
    return keys

