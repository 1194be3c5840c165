"""A restore reads from the preferred target and fails over per object (issue 12 part 3).

Two real S3 servers stand for two regions. The preferred one (lowest
``priority``, listed second so config order is not what decides) is stopped
the moment the restore has read its first pack: the restore goes on from the
other one without starting again, the stopped server costs a few failed reads
(those in flight), not one per object, and the restored database matches the
source. A damaged pack copy on the preferred target is read from the other
one, counted and quarantined.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.engine import Engine
from core.errors import StorageError
from core.postgres.cluster import LocalCluster
from core.postgres.fingerprint import fingerprint
from core.repository.reader import READ_AHEAD
from core.storage.base import Storage
from core.storage.factory import make_storages

from tests.doubles.faulty_storage import FaultyStorage, PowerSwitch
from tests.fixtures.backstop import Setup, local_target, s3_target_dict
from tests.fixtures.s3 import SeaweedServer, ServerFactory, new_bucket

CLAIMS = 20000  # a few MB: dozens of pack reads with 1 MiB packs
REPO = {"pack_target_mib": 1, "chunk_avg_kib": 64}


class StopAfterFirstPack(FaultyStorage):
    """Forwards to a real S3 target; stops its server once the first pack read has come back."""

    def __init__(self, inner: Storage, switch: PowerSwitch, server: SeaweedServer) -> None:
        super().__init__(inner, switch)
        self.server = server
        self.stopped_at: float | None = None
        # Set once the server is really down: the read that stops it may be cancelled (its target demoted, the
        # restore done) while the stop still runs in its thread.
        self.down = threading.Event()
        self.failed_once = False
        self.asked_after_failure = 0  # pack reads started after one had failed: none once it is demoted

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        self.asked_after_failure += self.failed_once
        try:
            data = await super().get_range(name, offset, length)
        except StorageError:
            self.failed_once = True
            raise
        if name.startswith("data/") and self.stopped_at is None:
            self.stopped_at = time.monotonic()
            await asyncio.to_thread(self._stop)  # the region goes down mid-restore
        return data


    def _stop(self) -> None:
        self.server.stop()
        self.down.set()


def _setup(setup_factory: Callable[..., Setup], targets: list[dict[str, Any]], dsn: str) -> Setup:
    setup = setup_factory(targets, [{"name": "warranty", "dsn": dsn}], repository=REPO)
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    return setup


async def test_preferred_server_stopped_mid_restore(pg_cluster: LocalCluster, make_warranty_db,  # type: ignore[no-untyped-def]
                                                    setup_factory, s3_servers: list[SeaweedServer],
                                                    s3_server_factory: ServerFactory) -> None:
    name, dsn = make_warranty_db(claims=CLAIMS)
    source = await fingerprint(dsn)
    # A private server for the preferred region (stopping it cannot disturb other tests); the shared one as the other.
    preferred, other = s3_server_factory(), s3_servers[1]
    targets = [{**s3_target_dict(other, new_bucket(other), "region-b"), "priority": 50},
               {**s3_target_dict(preferred, new_bucket(preferred), "region-a"), "priority": 10}]
    setup = _setup(setup_factory, targets, dsn)
    switch = PowerSwitch()
    real = make_storages(setup.config.targets)
    hooked = StopAfterFirstPack(real[1], switch, preferred)
    plain = FaultyStorage(real[0], switch)  # only records its calls
    t0 = time.monotonic()
    async with Engine(setup.config, storages=[plain, hooked]) as engine:
        res = await engine.restore("warranty", f"{name}_r")
    took = time.monotonic() - t0
    assert hooked.stopped_at is not None and hooked.down.wait(60) and not preferred.running

    assert await fingerprint(pg_cluster.dsn(f"{name}_r")) == source
    shares = {s.target: s for s in res.sources}
    a, b = shares["region-a"], shares["region-b"]
    # Read from the preferred one first (its priority, not config order), then from the other one.
    first_pack = next(c for c in switch.calls if c.kind == "get_range" and c.name.startswith("data/"))
    assert first_pack.target == "region-a"
    assert a.objects >= 1 and a.bytes > 0 and a.failed is not None
    assert b.objects > 10 and b.bytes > a.bytes, res.sources
    # Shares add up to every pack read that succeeded, on whichever target.
    ok_reads = [c for c in switch.calls if c.kind == "get_range" and c.name.startswith("data/") and c.outcome == "ok"]
    assert a.objects + b.objects == len(ok_reads)
    assert a.bytes + b.bytes == sum(c.size or 0 for c in ok_reads)
    # One failure per read that was in flight when the server went, not one per object: it was demoted.
    failed = [c for c in switch.calls if c.target == "region-a" and c.kind == "get_range" and c.outcome == "error"]
    # (each stream keeps READ_AHEAD reads out; the restore jobs and the schema stream read at once).
    in_flight = READ_AHEAD * (setup.config.restore_jobs + 1)
    assert 1 <= len(failed) == a.failures <= in_flight and b.objects > len(failed), (failed, res.sources)
    assert hooked.asked_after_failure == 0
    assert b.failures == 0
    assert all(c.outcome == "ok" for c in switch.calls if c.target == "region-b")
    assert "region-a failed:" in res.read_summary() and "% from region-b" in res.read_summary()
    assert not any("quarantined" in w for w in res.warnings)  # a stopped server is not damage
    print(f"\nrestore with failover: {took:.1f} s; {res.read_summary()}; failures on region-a: {len(failed)}; "
          f"objects from region-b: {b.objects}")


async def test_damaged_pack_on_preferred_target_is_read_elsewhere_and_quarantined(
        tmp_path: Path, pg_cluster: LocalCluster, make_warranty_db, setup_factory,  # type: ignore[no-untyped-def]
        s3_servers: list[SeaweedServer]) -> None:
    name, dsn = make_warranty_db(claims=CLAIMS)
    source = await fingerprint(dsn)
    server = s3_servers[0]
    targets = [{**s3_target_dict(server, new_bucket(server), "offsite-eu"), "priority": 20},
               {**local_target(tmp_path / "repo"), "priority": 5}]
    setup = _setup(setup_factory, targets, dsn)
    packs = sorted((tmp_path / "repo" / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    assert len(packs) >= 2
    victim = packs[-1]  # the largest: surely table data
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    victim.write_bytes(bytes(raw))

    proc = setup.cli("restore", "--db", "warranty", "--into", f"{name}_r", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert await fingerprint(pg_cluster.dsn(f"{name}_r")) == source
    shares = {s["target"]: s for s in doc["sources"]}
    local, offsite = shares["local1"], shares["offsite-eu"]
    # Demoted at the damage: only reads already in flight on local1 meet it, not every read of that pack.
    assert 1 <= local["failures"] <= READ_AHEAD * 3
    assert local["failed"] and offsite["failures"] == 0 and offsite["objects"] >= 1
    assert doc["bytes"] > 0 and local["bytes"] + offsite["bytes"] > 0
    assert any("quarantined" in w for w in doc["warnings"]), doc["warnings"]
    assert (tmp_path / "repo" / "quarantine" / victim.name).is_file()

    # The human line says who served what, and why the preferred one was left. local1 may serve nothing this time:
    # the quarantined pack can be the first read to come back, before any other read on local1 completes.
    proc = setup.cli("restore", "--db", "warranty", "--into", f"{name}_r2")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.splitlines()[-1]
    assert line.startswith("read ") and "% from offsite-eu" in line, line
    assert "after local1 failed:" in line, line


def test_read_order_is_priority_then_health_then_config_and_a_failed_target_goes_last(tmp_path: Path) -> None:
    from core.config import LocalTargetConfig
    from core.repository.sources import ReadSources, summarise
    from core.storage.health import HealthWindow
    from core.storage.local import LocalStorage

    cfgs = [LocalTargetConfig(name=n, type="local", path=tmp_path / n, priority=p)
            for n, p in (("a", 50), ("b", 10), ("c", 50), ("d", 50))]
    stores = [LocalStorage(c) for c in cfgs]
    flaky = HealthWindow("a", "get_range", 0, 1, 9, {"unreachable": 3, "not_found": 5}, 0, 0, 0.0, {})
    src = ReadSources.for_targets(stores, cfgs, health=[flaky])
    assert [s.name for s in src.order()] == ["b", "c", "d", "a"]  # priority, then fewer recent errors, then config
    assert [s.name for s in ReadSources.for_targets(stores, cfgs, first="d").order()][0] == "d"  # a plan's choice
    src.failed(stores[1], "connection refused")
    assert [s.name for s in src.order()] == ["c", "d", "a", "b"]  # demoted, kept as a last resort
    src.served(stores[2], 300)
    src.served(stores[2], 500)
    src.served(stores[1], 200)
    assert [(s.target, s.objects, s.bytes, s.failures) for s in src.report()] == [("b", 1, 200, 1), ("c", 2, 800, 0)]
    assert src.summary() == "read 20% from b, 80% from c after b failed: connection refused"
    assert summarise([]) == "read nothing from the targets"
