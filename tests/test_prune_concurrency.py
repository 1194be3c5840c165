"""Prune beside a running backup and a running restore (FORMAT.md 17.2): both succeed, every snapshot restores.

Two local targets, so that the forgotten snapshot's packs can be made old
(``os.utime``) without waiting out a real grace period. The backup and the
restore are held at one point by a storage double that delays a single call
(tests/doubles/faulty_storage.py) while prune runs in another engine on the
plain targets, as another process would.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from core.engine import Engine
from core.postgres.cluster import LocalCluster
from core.postgres.fingerprint import fingerprint
from core.security.gate import Identity
from core.storage.factory import make_storages

from tests.doubles.faulty_storage import Fault, FaultyStorage, PowerSwitch
from tests.fixtures.backstop import Setup, local_target, write_setup
from tests.fixtures.otp import CodeBook, secret_from_uri

HOUR = 3600.0


def _setup(tmp_path: Path, dsn: str) -> Setup:
    return write_setup(tmp_path / "setup", [local_target(tmp_path / "a", "A"), local_target(tmp_path / "b", "B")],
                       [{"name": "warranty", "dsn": dsn}], repository={"chunk_avg_kib": 64, "pack_target_mib": 1},
                       security={"totp_drift_steps": 2})


async def _init(engine: Engine) -> Callable[[], Identity]:
    """Initialise the repository with an admin; returns a maker of that admin with a fresh code."""
    await engine.init()
    book = CodeBook(secret_from_uri((await engine.add_operator("alice", "admin")).uri), drift=2)
    return lambda: Identity("alice", book.next())


def _age(tmp_path: Path, seconds: float) -> None:
    """Make every object on both targets ``seconds`` old, as if written that long ago."""
    when = time.time() - seconds
    for target in ("a", "b"):
        for root, _, files in os.walk(tmp_path / target):
            for f in files:
                os.utime(Path(root) / f, (when, when))


async def _wait_fired(fault: Fault, task: asyncio.Future[object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while fault.fired is None:
        if task.done():
            task.result()  # its error, if any
            raise AssertionError("the operation ended without making the held call")
        assert time.monotonic() < deadline, "the held call never came"
        await asyncio.sleep(0.02)


def _held(setup: Setup, fault: Fault) -> tuple[Engine, PowerSwitch]:
    """An engine whose targets both hold ``fault``'s call for a while (``fault`` itself is target A's)."""
    switch = PowerSwitch()
    stores = [FaultyStorage(s, switch) for s in make_storages(setup.config.targets)]
    stores[0].arm(fault)
    stores[1].arm(replace(fault))
    return Engine(setup.config, storages=list(stores)), switch


async def _restores_equal(engine: Engine, pg: LocalCluster, sid: str, source_fp: dict[str, object]) -> None:
    into = f"pc_{uuid.uuid4().hex[:10]}"
    try:
        await engine.restore("warranty", into, snapshot=sid)
        assert await fingerprint(pg.dsn(into)) == source_fp
    finally:
        pg.drop_database(into)


async def test_prune_beside_a_backup_that_reuses_what_prune_marks(
        tmp_path: Path, make_warranty_db: Callable[..., tuple[str, str]], pg_cluster: LocalCluster) -> None:
    _, dsn = make_warranty_db(claims=3000)
    source = await fingerprint(dsn)
    setup = _setup(tmp_path, dsn)
    async with Engine(setup.config) as engine:
        who = await _init(engine)
        first = await engine.backup("warranty")
        await engine.forget_snapshots([first.id], who())
    _age(tmp_path, 2 * 24 * HOUR)  # the forgotten snapshot's packs are long past any grace period

    # The second backup loads the index (first's packs still in it), references their chunks, and is held
    # just before its manifest is written, while prune runs and marks exactly those packs.
    hold = Fault("put", "delay", 1, "snapshots/", delay_s=3.0)
    backing, switch = _held(setup, hold)
    try:
        backup = asyncio.ensure_future(backing.backup("warranty"))
        await _wait_fired(hold, backup)
        async with Engine(setup.config) as other:
            pruned = await other.prune_repository(who(), grace_s=HOUR)
        second = await backup
    finally:
        await backing.close()
        switch.close()
    assert pruned.packs_marked > 0 and pruned.packs_deleted == [], pruned.to_json()

    async with Engine(setup.config) as engine:
        # The new snapshot's chunks are now only in marked packs: readers still find them.
        await _restores_equal(engine, pg_cluster, second.id, source)
        assert (await engine.check(read_data=True)).ok
        # The next prune past the grace period finds the second snapshot needing the marked packs: it puts
        # them back into the index instead of deleting them.
        again = await engine.prune_repository(who(), grace_s=0)
        assert again.packs_rescued == pruned.packs_marked and again.packs_deleted == [], again.to_json()
        await _restores_equal(engine, pg_cluster, second.id, source)
        res = await engine.check(read_data=True)
        assert res.ok and not [n for r in res.reports for n in r.notes if "marked" in n]


async def test_prune_beside_a_restore_of_the_snapshot_it_forgets(
        tmp_path: Path, make_warranty_db: Callable[..., tuple[str, str]], pg_cluster: LocalCluster) -> None:
    _, dsn = make_warranty_db(claims=3000)
    source = await fingerprint(dsn)
    setup = _setup(tmp_path, dsn)
    async with Engine(setup.config) as engine:
        who = await _init(engine)
        snap = await engine.backup("warranty")
    _age(tmp_path, 2 * 24 * HOUR)

    hold = Fault("get_range", "delay", 1, "data/", delay_s=3.0)
    reading, switch = _held(setup, hold)
    into = f"pc_{uuid.uuid4().hex[:10]}"
    try:
        restore = asyncio.ensure_future(reading.restore("warranty", into, snapshot=snap.id))
        await _wait_fired(hold, restore)
        async with Engine(setup.config) as other:
            await other.forget_snapshots([snap.id], who())
            pruned = await other.prune_repository(who(), grace_s=HOUR)
        await restore
        assert await fingerprint(pg_cluster.dsn(into)) == source
    finally:
        await reading.close()
        switch.close()
        pg_cluster.drop_database(into)
    # Marked while the restore read them, not deleted: the grace period outlasts any restore.
    assert pruned.packs_marked > 0 and pruned.packs_deleted == [], pruned.to_json()
    async with Engine(setup.config) as engine:
        # A backup starting now does not reference marked packs: it stores their chunks afresh ...
        again = await engine.backup("warranty")
        assert again.stored_bytes > 0
        # ... so the marked ones go once the grace period has passed, and nothing is lost.
        swept = await engine.prune_repository(who(), grace_s=0)
        assert len(swept.packs_deleted) == pruned.packs_marked and swept.packs_rescued == 0, swept.to_json()
        await _restores_equal(engine, pg_cluster, again.id, source)
        res = await engine.check(read_data=True)
        assert res.ok and not [n for r in res.reports for n in r.notes], [n for r in res.reports for n in r.notes]
