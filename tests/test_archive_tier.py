"""The archive tier (issue 12 part 6): `backstop archive` and restores of archived packs, on a real SeaweedFS.

What SeaweedFS 4.x does, found by trying it (FORMAT.md 12.6): it stores and
lists the storage class given on put and reports it in head_object and
list_objects_v2; an in-place copy_object changes it (with the REPLACE
metadata directive; the default COPY directive is refused as a copy onto
itself); but it serves GETs of GLACIER and DEEP_ARCHIVE objects like any
other and answers restore_object with 405 MethodNotAllowed. So the restore
note here comes for real from the listed class; the InvalidObjectState a
real AWS bucket answers to a GET of a frozen object cannot be produced by
this server, and one test uses a double of the S3 storage that raises it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import yaml
from botocore.exceptions import ClientError
from core.config import ConfigError, S3TargetConfig, parse_config
from core.engine import Engine
from core.errors import ObjectFrozen
from core.postgres.cluster import LocalCluster
from core.postgres.fingerprint import fingerprint
from core.repository.tiers import needs_thaw
from core.schedule.actions import EngineRunner
from core.schedule.config import ScheduleConfig
from core.storage.base import ObjectInfo
from core.storage.local import LocalStorage
from core.storage.s3 import S3Client, S3Storage

from tests.fixtures.backstop import Setup, local_target, s3_target_dict
from tests.fixtures.s3 import SeaweedServer, new_bucket

REPO = {"pack_target_mib": 1, "chunk_avg_kib": 64}
T = TypeVar("T")
DAYS = 30


def _sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


# About 1.5 MiB of incompressible rows: whole packs that only the snapshot taken before it is dropped uses.
OLD_BATCH = ("CREATE TABLE old_batch AS SELECT g AS id, decode(string_agg(md5(random()::text || g || h), ''), 'hex') "
             "AS payload FROM generate_series(1, 1500) g, generate_series(1, 64) h GROUP BY g")


async def _facts(setup: Setup, *sids: str, avoid: frozenset[str] = frozenset()) -> list[tuple[set[str], float]]:
    """Per snapshot: the packs it reads (from its manifest and the index here, not by the archive code; a chunk
    also stored outside the ``avoid`` packs counts there) and its start time."""
    async with Engine(setup.config) as engine:
        repo = await engine.ctx.open_repository(require_all=False)
        index = await repo.load_index(common=False, avoid=avoid)
        out = []
        for sid in sids:
            m = await repo.read_manifest(sid)
            out.append(({index.chunks[bytes.fromhex(c)].pack_id for f in m.files for c in f.chunks},
                        datetime.fromisoformat(m.started_at).timestamp()))
        return out


def _packs_of(setup: Setup, sid: str, avoid: frozenset[str] = frozenset()) -> set[str]:
    return asyncio.run(_facts(setup, sid, avoid=avoid))[0][0]


def _classes(server: SeaweedServer, bucket: str) -> dict[str, tuple[str, int]]:
    """Pack id -> (storage class, size) as SeaweedFS lists them (boto3, not Backstop)."""
    out: dict[str, tuple[str, int]] = {}
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="data/"):
        for o in page.get("Contents", []):
            out[o["Key"].rsplit("/", 1)[-1]] = (o.get("StorageClass", "STANDARD"), o["Size"])
    return out


def _set_offsite(setup: Setup, **values: Any) -> None:
    doc = yaml.safe_load(setup.path.read_text())
    for t in doc["targets"]:
        if t["name"] == "offsite":
            t.update(values)
    setup.path.write_text(yaml.safe_dump(doc, sort_keys=False))


async def _archive(setup: Setup, now: float, dry_run: bool = False) -> Any:
    async with Engine(setup.config) as engine:
        return await engine.archive(dry_run=dry_run, now=now)


def _engine(setup: Setup, fn: Callable[[Engine], Awaitable[T]]) -> T:
    """Run ``fn`` with an Engine in this process (a CLI start costs seconds on a loaded machine)."""
    async def go() -> T:
        async with Engine(setup.config) as engine:
            return await fn(engine)
    return asyncio.run(go())


def _backup(setup: Setup, db: str) -> str:
    return _engine(setup, lambda e: e.backup(db)).id


def _restore(setup: Setup, sid: str, into: str, *extra: str) -> Any:
    return setup.cli("restore", "--db", "old", "--snapshot", sid, "--into", into, "--json", *extra)


def _make(pg_cluster: LocalCluster, tmp_path: Path, make_warranty_db, setup_factory,  # type: ignore[no-untyped-def]
          server: SeaweedServer) -> dict[str, Any]:
    """On S3 `offsite` (preferred) and local1: old snapshots A (warranty database `w`) and A2 (database `old`,
    holding only old_batch), then, a second later, a recent snapshot B of the unchanged `w`."""
    name, dsn = make_warranty_db(claims=200)
    old = f"{name}_old"
    pg_cluster.create_database(old)
    old_dsn = pg_cluster.dsn(old)
    _sql(old_dsn, OLD_BATCH)
    bucket = new_bucket(server)
    offsite = {**s3_target_dict(server, bucket, "offsite"), "priority": 10, "storage_class": "GLACIER_IR",
               "archive_after_days": DAYS}
    setup = setup_factory([offsite, local_target(tmp_path / "local1")],
                          [{"name": "w", "dsn": dsn}, {"name": "old", "dsn": old_dsn}], repository=REPO)
    _engine(setup, lambda e: e.init())
    fp_a2 = asyncio.run(fingerprint(old_dsn))
    a, a2 = _backup(setup, "w"), _backup(setup, "old")
    time.sleep(1.1)  # distinct started_at seconds: the cut-off goes between A2 and B
    b = _backup(setup, "w")
    return {"name": name, "bucket": bucket, "setup": setup, "a": a, "a2": a2, "b": b, "fp_a2": fp_a2}


def test_archive_moves_only_old_packs_and_frozen_ones_get_a_note(  # type: ignore[no-untyped-def]
        pg_cluster: LocalCluster, make_warranty_db, setup_factory, s3_servers: list[SeaweedServer],
        tmp_path: Path) -> None:
    server = s3_servers[0]
    made = _make(pg_cluster, tmp_path, make_warranty_db, setup_factory, server)
    setup, bucket, a2, b = made["setup"], made["bucket"], made["a2"], made["b"]
    (packs_a, _), (packs_a2, t_a2), (packs_b, t_b) = asyncio.run(_facts(setup, made["a"], a2, b))
    cold = (packs_a | packs_a2) - packs_b
    # A's packs are B's too (nothing changed in `w`): old, but still used by a recent snapshot.
    assert cold == packs_a2 and packs_a <= packs_b and packs_a, (len(packs_a), len(packs_a2), len(packs_b))
    listed = _classes(server, bucket)
    assert {c for c, _ in listed.values()} == {"STANDARD"}

    # Today every snapshot is younger than 30 days: nothing moves (the real CLI, the real clock).
    out = setup.cli("archive", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    (t,) = [t for t in rep["targets"] if t["target"] == "offsite"]
    assert rep["snapshots"] == 3 and t["old_packs"] == 0 and t["moved"] == 0 and t["returned"] == 0
    assert {c for c, _ in _classes(server, bucket).values()} == {"STANDARD"}

    # 30 days after a moment between A and B: only A is old.
    later = (t_a2 + t_b) / 2 + DAYS * 86400
    dry = asyncio.run(_archive(setup, later, dry_run=True))
    (t,) = [t for t in dry.targets if t.target == "offsite"]
    assert (t.old_packs, t.moved, t.moved_bytes) == (len(cold), len(cold), sum(listed[p][1] for p in cold))
    assert {c for c, _ in _classes(server, bucket).values()} == {"STANDARD"}  # a dry run changes nothing
    done = asyncio.run(_archive(setup, later))
    assert done.ok, done.to_json()
    (t,) = [t for t in done.targets if t.target == "offsite"]
    assert (t.moved, t.moved_bytes, t.copied) == (len(cold), sum(listed[p][1] for p in cold), 0)
    (loc,) = [t for t in done.targets if t.target == "local1"] or [None]  # local1 sets no archive_after_days
    assert loc is None
    after = _classes(server, bucket)
    assert {p for p, (c, _) in after.items() if c == "GLACIER_IR"} == cold
    assert all(after[p] == ("STANDARD", listed[p][1]) for p in set(after) - cold)  # B's packs stay STANDARD
    one = server.client().head_object(Bucket=bucket, Key=f"data/{min(cold)[:2]}/{min(cold)}")
    assert one["StorageClass"] == "GLACIER_IR" and one["ContentLength"] == listed[min(cold)][1]
    again = asyncio.run(_archive(setup, later))
    (t,) = [t for t in again.targets if t.target == "offsite"]
    assert (t.moved, t.already) == (0, len(cold))

    # GLACIER_IR reads directly: a restore of A from offsite alone matches the source as it was.
    into = f"{made['name']}_ir"
    res = _engine(setup, lambda e: e.restore("old", into, a2, target="offsite", only_target=True))
    assert asyncio.run(fingerprint(pg_cluster.dsn(into))) == made["fp_a2"]
    assert [s.target for s in res.sources if s.bytes] == ["offsite"]

    # GLACIER must be thawed: the same packs move on (GLACIER_IR -> GLACIER, in place, on SeaweedFS for real).
    _set_offsite(setup, storage_class="GLACIER")
    moved = asyncio.run(_archive(setup, later))
    (t,) = [t for t in moved.targets if t.target == "offsite"]
    assert t.moved == len(cold) and moved.ok
    assert {p for p, (c, _) in _classes(server, bucket).items() if c == "GLACIER"} == cold

    # From offsite alone: refused before anything is read or created, in one line saying what to do.
    into = f"{made['name']}_frozen"
    out = _restore(setup, a2, into, "--target", "offsite")
    assert out.returncode != 0 and out.stdout == ""
    line = out.stderr.strip()
    assert "\n" not in line, out.stderr
    nbytes = sum(listed[p][1] for p in cold)
    assert f"needs {len(cold)} object(s)" in line and "GLACIER on target 'offsite'" in line, line
    assert f"backstop archive thaw --snapshot {a2[:8]} --target offsite" in line, line
    assert "Expedited 1-5 minutes, Standard 3-5 hours, Bulk 5-12 hours" in line, line
    assert f"{nbytes / 1024 / 1024:.1f} MiB" in line or f"{nbytes / 1024:.1f} KiB" in line, (nbytes, line)
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (into,)).fetchone() == (0,)

    # The thaw on offsite asks SeaweedFS for restore_object, which it does not implement: said plainly, non-zero.
    out = setup.cli("archive", "thaw", "--snapshot", a2[:8], "--tier", "Expedited", "--target", "offsite")
    assert out.returncode == 1 and "MethodNotAllowed" in out.stderr and "thaw (restore_object)" in out.stderr, \
        out.stderr
    assert out.stderr.count("\n") == 1 and f"stopped after 0 of {len(cold)} object(s)" in out.stderr, out.stderr
    # Without --target nothing needs a thaw: local1 holds readable copies of everything.
    assert "nothing to thaw" in str(_engine(setup, lambda e: e.thaw(a2[:8])).note)

    # With every target: offsite is preferred, but A's frozen packs come from local1's readable copies.
    into = f"{made['name']}_both"
    res = _engine(setup, lambda e: e.restore("old", into, a2))
    assert any(f"{len(cold)} pack(s) this restore needs are in GLACIER on target 'offsite'" in w
               for w in res.warnings), res.warnings
    assert asyncio.run(fingerprint(pg_cluster.dsn(into))) == made["fp_a2"]
    served = {s.target: s for s in res.sources}
    assert served["local1"].bytes > 0 and all(s.failures == 0 for s in served.values())

    # A new backup of `old` (its data unchanged) never references a frozen pack: it stores those chunks again.
    c = _backup(setup, "old")
    assert packs_a2 and not _packs_of(setup, c, frozenset(cold)) & cold


class EnforcesThaw(S3Storage):
    """The real S3 storage (SeaweedFS) answering as AWS does for a frozen object, which SeaweedFS cannot produce.

    A GET of a GLACIER or DEEP_ARCHIVE object fails with S3's InvalidObjectState (through the real error
    mapping), and the listing shows no class, as when the class changed after the restore listed the packs.
    """

    def _get(self, client: S3Client, name: str, offset: int, length: int | None) -> bytes:
        if name.startswith("data/"):
            head = client.head_object(Bucket=self.config.bucket, Key=self._key(name))
            if needs_thaw(head.get("StorageClass")):
                raise ClientError({"Error": {"Code": "InvalidObjectState",
                                             "Message": "The operation is not valid for the object's storage class"}},
                                  "GetObject")
        return super()._get(client, name, offset, length)

    def _list(self, client: S3Client, prefix: str) -> list[ObjectInfo]:
        return [ObjectInfo(o.name, o.size, o.mtime, "STANDARD") for o in super()._list(client, prefix)]


async def _restore_with(setup: Setup, into: str, **kw: Any) -> Any:
    s3cfg, localcfg = setup.config.targets
    assert isinstance(s3cfg, S3TargetConfig) and not isinstance(localcfg, S3TargetConfig)
    async with Engine(setup.config, storages=[EnforcesThaw(s3cfg), LocalStorage(localcfg)]) as engine:
        return await engine.restore("w", into, **kw)


def test_a_frozen_read_fails_over_and_alone_names_the_thaw(  # type: ignore[no-untyped-def]
        pg_cluster: LocalCluster, make_warranty_db, setup_factory, s3_servers: list[SeaweedServer],
        tmp_path: Path) -> None:
    name, dsn = make_warranty_db(claims=200)
    server = s3_servers[1]
    bucket = new_bucket(server)
    offsite = {**s3_target_dict(server, bucket, "offsite"), "priority": 10, "storage_class": "DEEP_ARCHIVE",
               "archive_after_days": 1}
    setup = setup_factory([offsite, local_target(tmp_path / "local1")], [{"name": "w", "dsn": dsn}],
                          repository=REPO)
    _engine(setup, lambda e: e.init())
    source = asyncio.run(fingerprint(dsn))
    _backup(setup, "w")
    rep = asyncio.run(_archive(setup, time.time() + 2 * 86400))
    (t,) = rep.targets
    assert t.moved == t.old_packs > 0 and rep.ok
    assert {c for c, _ in _classes(server, bucket).values()} == {"DEEP_ARCHIVE"}
    # check --read-data does not try to read what must be thawed first: it says so and stays clean.
    checked = _engine(setup, lambda e: e.check(read_data=True))
    (off,) = [r for r in checked.reports if r.target == "offsite"]
    assert checked.ok and off.intact_packs == set() and not off.bad_packs, checked
    assert any(f"{t.old_packs} pack(s) are in an archive class that must be thawed" in n for n in off.notes), off.notes

    # The listing did not warn, so offsite (preferred) is read first, refuses, and local1 serves the rest.
    res = asyncio.run(_restore_with(setup, f"{name}_r"))
    assert asyncio.run(fingerprint(pg_cluster.dsn(f"{name}_r"))) == source
    shares = {s.target: s for s in res.sources}
    assert shares["offsite"].bytes == 0 and shares["offsite"].failures >= 1
    assert "must be thawed" in str(shares["offsite"].failed)
    assert shares["local1"].bytes > 0 and shares["local1"].failures == 0

    # From offsite alone the restore fails with the thaw to run, and the new database is dropped.
    with pytest.raises(ObjectFrozen, match="archive storage class and must be thawed.*backstop archive thaw"):
        asyncio.run(_restore_with(setup, f"{name}_x", target="offsite", only_target=True))
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (f"{name}_x",)).fetchone() == (0,)

    # The real listing does show DEEP_ARCHIVE: the CLI refuses up front, with DEEP_ARCHIVE's tiers and times.
    out = setup.cli("restore", "--db", "w", "--into", f"{name}_y", "--target", "offsite")
    assert out.returncode != 0 and out.stderr.count("\n") == 1, out.stderr
    assert "DEEP_ARCHIVE: Standard within 12 hours, Bulk within 48 hours" in out.stderr, out.stderr
    out = setup.cli("archive", "thaw", "--snapshot", "latest", "--target", "offsite", "--tier", "Expedited")
    assert out.returncode == 2 and "--tier Expedited is not offered for DEEP_ARCHIVE" in out.stderr, out.stderr


def test_archive_role_target_gets_the_old_packs_it_lacks(  # type: ignore[no-untyped-def]
        make_warranty_db, setup_factory, tmp_path: Path) -> None:
    """A local archive-role target left out of a quorum write: `archive` copies it the old packs, verified."""
    _, dsn = make_warranty_db(claims=200)
    arch = {**local_target(tmp_path / "vault", "vault"), "role": "archive", "archive_after_days": 1}
    setup = setup_factory([local_target(tmp_path / "hot"), arch], [{"name": "w", "dsn": dsn}], repository=REPO,
                          targets_policy={"quorum": 1})
    _engine(setup, lambda e: e.init())
    (tmp_path / "vault").rename(tmp_path / "vault.away")  # the vault is away during the backup
    out = setup.cli("backup", "--db", "w")
    assert out.returncode == 0 and "vault" in out.stderr, out.stderr
    (tmp_path / "vault.away").rename(tmp_path / "vault")
    sid = out.stdout.strip()
    packs = _packs_of(setup, sid)
    assert packs and not list((tmp_path / "vault" / "data").rglob("*"))

    recent = asyncio.run(_archive(setup, time.time()))
    assert [(t.target, t.old_packs, t.copied) for t in recent.targets] == [("vault", 0, 0)]
    dry = asyncio.run(_archive(setup, time.time() + 2 * 86400, dry_run=True))
    assert [(t.target, t.copied) for t in dry.targets] == [("vault", len(packs))]
    assert not list((tmp_path / "vault" / "data").rglob("*"))
    done = asyncio.run(_archive(setup, time.time() + 2 * 86400))
    (t,) = done.targets
    assert done.ok and t.copied == len(packs) and t.moved == 0
    held = {p.name for p in (tmp_path / "vault" / "data").rglob("*") if p.is_file()}
    assert held == packs
    hot = tmp_path / "hot" / "data"
    assert all((hot / p[:2] / p).read_bytes() == (tmp_path / "vault" / "data" / p[:2] / p).read_bytes() for p in packs)
    assert {p.name for p in hot.rglob("*") if p.is_file()} >= packs  # nothing left the hot target

    # The scheduler's `archive` action runs the same operation (today: nothing is old, nothing to do).
    schedule = ScheduleConfig(name="arch", action="archive", cron="0 3 * * *")
    ran = _engine(setup, lambda e: EngineRunner(e).run(schedule, datetime.now(UTC)))
    assert ran["ok"] is True and [t["target"] for t in ran["targets"]] == ["vault"]  # type: ignore[union-attr]


def test_archive_config_is_validated(tmp_path: Path) -> None:
    base = {"encryption": {"passphrase_env": "X"}}
    s3 = {"name": "o", "type": "s3", "bucket": "bkt"}
    ok = parse_config({**base, "targets": [{**s3, "storage_class": "GLACIER_IR", "archive_after_days": 90}]},
                      tmp_path / "c.yaml")
    t = ok.targets[0]
    assert isinstance(t, S3TargetConfig) and (t.storage_class, t.archive_after_days) == ("GLACIER_IR", 90)
    for bad, why in (({"storage_class": "COLD"}, "storage_class"),
                     ({"storage_class": "GLACIER"}, "needs archive_after_days"),
                     ({"storage_class": "STANDARD", "archive_after_days": 3}, "storage_class"),
                     ({"archive_after_days": 0}, "archive_after_days")):
        with pytest.raises(ConfigError, match=why):
            parse_config({**base, "targets": [{**s3, **bad}]}, tmp_path / "c.yaml")
