"""Every target's copy of every repository object, side by side (FORMAT.md 12.5).

`sync` copies what a target lacks, `check` names objects a target lacks or
holds damaged, `repair` rewrites those from a copy that verifies. All three
list the same prefixes and check a copy the same way, defined here once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from core.errors import BackstopError, IntegrityError, ObjectFrozen, ObjectNotFound, StorageError
from core.repository.crypto import open_object
from core.repository.index import INDEX_PREFIX
from core.repository.keys import KEY_PREFIX, DataKey, unwrap_data_key
from core.repository.manifest import SNAPSHOT_PREFIX
from core.repository.marks import MARKS_PREFIX
from core.repository.packs import DATA_PREFIX
from core.repository.quarantine import QUARANTINE_KIND
from core.repository.repo import (
    AUDIT_KIND,
    AUDIT_PREFIX,
    CONFIG_NAME,
    DRILL_KIND,
    DRILL_PREFIX,
    OPERATOR_KIND,
    OPERATOR_PREFIX,
    SETTINGS_KIND,
    SETTINGS_PREFIX,
    RepoParams,
    sha256_hex,
)
from core.repository.wal import CLUSTER_KIND, CLUSTER_NAME, WAL_PREFIX, open_wal
from core.storage.base import Storage

QUARANTINE_PREFIX = "quarantine/"
# Commit order (FORMAT.md 11): keys, packs before the index objects that list them, index objects before the
# manifests that need them; `config` (not a prefix) after everything, so a new target counts as initialised last.
PREFIXES = (KEY_PREFIX, DATA_PREFIX, INDEX_PREFIX, SNAPSHOT_PREFIX, MARKS_PREFIX, QUARANTINE_PREFIX, WAL_PREFIX,
            AUDIT_PREFIX, OPERATOR_PREFIX, SETTINGS_PREFIX, DRILL_PREFIX)
_CONTENT_NAMED = (DATA_PREFIX, INDEX_PREFIX, SNAPSHOT_PREFIX, MARKS_PREFIX)
_SEALED = {AUDIT_PREFIX: AUDIT_KIND, OPERATOR_PREFIX: OPERATOR_KIND, SETTINGS_PREFIX: SETTINGS_KIND,
           QUARANTINE_PREFIX: QUARANTINE_KIND, DRILL_PREFIX: DRILL_KIND}
# Objects read at once per target: enough to keep a far S3 region busy, few enough for memory (packs are MiBs).
READ_PARALLEL = 4


def verifier(name: str, params: RepoParams, keys: dict[int, DataKey], passphrase: bytes) -> Callable[[bytes], None]:
    """How a copy of ``name`` is checked before it is trusted; the returned check raises IntegrityError."""
    last = name.rsplit("/", 1)[-1]

    def by_name(data: bytes) -> None:
        if sha256_hex(data) != last:
            raise IntegrityError(f"{name} is damaged (checksum mismatch)")

    def key(data: bytes) -> None:
        unwrap_data_key(data, passphrase, params.repo_id, name)

    def config(data: bytes) -> None:
        if RepoParams.from_bytes(data, name).repo_id != params.repo_id:
            raise IntegrityError("config names another repository")

    def wal(data: bytes) -> None:
        open_wal(data, last, keys)

    def sealed(kind: bytes) -> Callable[[bytes], None]:
        def check(data: bytes) -> None:
            open_object(data, kind, keys)
        return check

    if name.startswith(_CONTENT_NAMED):
        return by_name
    if name.startswith(KEY_PREFIX):
        return key
    if name == CONFIG_NAME:
        return config
    if name == CLUSTER_NAME:
        return sealed(CLUSTER_KIND)
    if name.startswith(WAL_PREFIX):
        return wal
    for prefix, kind in _SEALED.items():
        if name.startswith(prefix):
            return sealed(kind)
    raise IntegrityError(f"{name}: not a repository object Backstop knows how to check")


async def listing(st: Storage) -> set[str]:
    """Every repository object name on one target (never `locks/`)."""
    names: set[str] = set()
    for prefix in PREFIXES:
        names |= {o.name for o in await st.list(prefix)}
    if await st.exists(CONFIG_NAME):
        names.add(CONFIG_NAME)
    return names


def commit_order(name: str) -> tuple[int, str]:
    """Sort key: the order objects are copied in (see PREFIXES)."""
    if name == CONFIG_NAME:
        return len(PREFIXES), name
    return next(i for i, p in enumerate(PREFIXES) if name.startswith(p)), name


def commit_groups(names: list[str]) -> list[list[str]]:
    """``names`` (in commit order) cut into runs of one prefix: each run may be written at once, runs in turn."""
    groups: list[list[str]] = []
    for name in names:
        if groups and commit_order(groups[-1][0])[0] == commit_order(name)[0]:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


@dataclass
class Copy:
    """One target's copy of one object."""

    sha256: str | None = None  # of the bytes read; None when not read
    problem: str | None = None  # why the copy does not verify; None when it does (or was not read)


@dataclass
class Survey:
    """Which targets hold which objects, and (when read) which copies verify."""

    targets: list[str]  # listed, in the order given
    objects: dict[str, dict[str, Copy]] = field(default_factory=dict)  # name -> target -> copy
    unlisted: dict[str, str] = field(default_factory=dict)  # target -> why its listing failed
    read: bool = False
    bytes_read: int = 0
    skipped: set[str] = field(default_factory=set)  # names left out on purpose (forgotten manifests)

    def missing(self, target: str, demanded: Callable[[str], bool] = lambda _n: True) -> list[str]:
        """Objects some other target holds and ``target`` lacks (of those ``demanded``), in commit order."""
        return sorted((n for n, c in self.objects.items() if target not in c and demanded(n)), key=commit_order)

    def damaged(self, target: str) -> dict[str, str]:
        """Objects whose copy on ``target`` does not verify: name -> why."""
        out: dict[str, str] = {}
        for n, c in sorted(self.objects.items(), key=lambda kv: commit_order(kv[0])):
            why = c[target].problem if target in c else None
            if why is not None:
                out[n] = why
        return out

    def damaged_on(self, name: str) -> dict[str, str]:
        """Targets whose copy of ``name`` does not verify: target -> why."""
        return {t: c.problem for t, c in self.objects.get(name, {}).items() if c.problem is not None}

    def intact_on(self, name: str) -> list[str]:
        """Targets whose copy of ``name`` verifies (was read and passed)."""
        return [t for t, c in self.objects.get(name, {}).items() if c.sha256 is not None and c.problem is None]

    def without_intact_copy(self) -> list[str]:
        """Objects every copy of which failed its check (only meaningful once read; frozen copies are not failed)."""
        return sorted((n for n, c in self.objects.items() if all(x.problem is not None for x in c.values())),
                      key=commit_order)

    def differing(self) -> list[str]:
        """Objects whose verified copies are not byte for byte the same on every target."""
        return [n for n, c in self.objects.items()
                if len({x.sha256 for x in c.values() if x.sha256 is not None and x.problem is None}) > 1]


Known = Callable[[str, str], Copy | None]


# Always wanted on every target: nothing deletes them in normal operation (manifests, packs, index objects and WAL
# files are wanted only while a snapshot or the archive needs them: see `core/ops/repair.py`). `marked/` and
# `quarantine/` are bookkeeping whose deletes may have reached only some targets: never copied back.
ALWAYS_DEMANDED = (KEY_PREFIX, AUDIT_PREFIX, OPERATOR_PREFIX, SETTINGS_PREFIX, DRILL_PREFIX)


def always_demanded(name: str) -> bool:
    """An object every target must hold whatever the snapshots: config, keys, audit copies, records."""
    return name == CONFIG_NAME or name == CLUSTER_NAME or name.startswith(ALWAYS_DEMANDED)


async def survey(storages: list[Storage], params: RepoParams, keys: dict[int, DataKey], passphrase: bytes,
                 read: bool, skip: Callable[[str], bool] = lambda _n: False, known: Known = lambda _t, _n: None,
                 on_progress: Callable[[int, int], None] | None = None) -> Survey:
    """List every target and, with ``read``, fetch and verify every copy.

    ``skip`` leaves names out (forgotten manifests); ``known`` supplies the
    verdict on a copy already read by someone else (check's pack reads), so
    nothing is fetched twice.
    """
    out = Survey([s.name for s in storages], read=read)
    listed = await asyncio.gather(*(listing(s) for s in storages), return_exceptions=True)
    reachable: list[Storage] = []
    for st, names in zip(storages, listed, strict=True):
        if isinstance(names, BaseException):
            if not isinstance(names, StorageError):
                raise names
            out.unlisted[st.name] = str(names)
            continue
        reachable.append(st)
        for n in names:
            if skip(n):
                out.skipped.add(n)
                continue
            out.objects.setdefault(n, {})[st.name] = Copy()
    out.targets = [s.name for s in reachable]
    if not read:
        return out
    todo = [(st, n) for st in reachable for n in out.objects if st.name in out.objects[n]]
    done = 0

    async def one(st: Storage, name: str) -> None:
        nonlocal done
        copy = out.objects[name][st.name]
        given = known(st.name, name)
        if given is not None:
            copy.sha256, copy.problem = given.sha256, given.problem
        else:
            try:
                data = await st.get(name)
            except ObjectNotFound:
                copy.problem = "listed but gone when read"
            except ObjectFrozen:
                pass  # archived (FORMAT.md 12.6): not damage, and not a source until thawed
            except StorageError as exc:
                copy.problem = str(exc)
            else:
                out.bytes_read += len(data)
                copy.sha256, copy.problem = await asyncio.to_thread(_verify, name, data, params, keys, passphrase)
        done += 1
        if on_progress:
            on_progress(done, len(todo))

    per_target: dict[str, asyncio.Semaphore] = {st.name: asyncio.Semaphore(READ_PARALLEL) for st in reachable}

    async def bounded(st: Storage, name: str) -> None:
        async with per_target[st.name]:
            await one(st, name)

    await asyncio.gather(*(bounded(st, n) for st, n in todo))
    return out


def _verify(name: str, data: bytes, params: RepoParams, keys: dict[int, DataKey],
            passphrase: bytes) -> tuple[str, str | None]:
    digest = sha256_hex(data)
    try:
        verifier(name, params, keys, passphrase)(data)
    except (BackstopError, ValueError) as exc:
        return digest, str(exc)
    return digest, None
