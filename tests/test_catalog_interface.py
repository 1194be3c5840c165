"""The catalog interface (core/catalog/base.py): the SQLite implementation satisfies it, method by method.

The contract tests take a catalog from ``catalog_factory``; a PostgreSQL
implementation joins by adding its factory to the parametrisation. A
recording proxy checks that they call every method of the protocol, so a
method added to the interface without a test here fails.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from core.catalog.base import Catalog, CatalogQueries, ChangeFeed, OperatorSlot
from core.catalog.postgres import PostgresCatalog
from core.catalog.sqlite import SqliteCatalog
from core.catalog.sqlite_queries import SqliteChangeFeed, SqliteQueries
from core.catalog.sqlite_schema import MIGRATIONS, TABLES
from core.catalog.store import Catalog as StoreCatalog
from core.drills.model import DrillCheck, DrillReport, DrillStep
from core.errors import NotFound
from core.events import JobFinished, JobStarted, JobWarning, PhaseChanged, Progress
from core.queries import Queries
from core.records import AuditEntry, OperatorRow, RestoreRecord, SnapshotRecord
from core.security.audit import AuditLog
from core.storage.health import HealthWindow, TargetMarks

KEY = b"k" * 32


def _protocol_methods(proto: type) -> dict[str, Any]:
    """The methods a protocol declares (its own, not object's or Protocol's)."""
    return {name: fn for name, fn in vars(proto).items()
            if not name.startswith("_") and (inspect.isfunction(fn) or isinstance(fn, property))}


def _same_signature(proto_fn: Any, impl_fn: Any) -> bool:
    if isinstance(proto_fn, property):
        return True
    a, b = inspect.signature(proto_fn), inspect.signature(impl_fn)
    def strip(s: inspect.Signature) -> list[tuple[object, ...]]:
        return [(p.name, p.kind, p.default) for p in s.parameters.values()]

    return strip(a) == strip(b)


@pytest.mark.parametrize(("proto", "impl"), [
    (Catalog, SqliteCatalog), (CatalogQueries, SqliteQueries), (CatalogQueries, Queries),
    (ChangeFeed, SqliteChangeFeed),
])
def test_implementations_declare_every_protocol_method_with_its_signature(proto: type, impl: type) -> None:
    methods = _protocol_methods(proto)
    assert methods, proto
    missing = [n for n in methods if not hasattr(impl, n)]
    assert missing == [], f"{impl.__name__} lacks {missing}"
    differ = [n for n, fn in methods.items() if not _same_signature(fn, getattr(impl, n))]
    assert differ == [], f"{impl.__name__}: signatures differ from {proto.__name__}: {differ}"


def test_runtime_checks_and_old_names(tmp_path: Path) -> None:
    cat = StoreCatalog(tmp_path / "catalog.db")  # the old name still builds the SQLite catalog
    try:
        assert isinstance(cat, SqliteCatalog) and isinstance(cat, Catalog)
        queries = cat.open_queries()
        assert isinstance(queries, CatalogQueries) and isinstance(Queries(queries), CatalogQueries)
        feed = cat.changes()
        assert isinstance(feed, ChangeFeed)
        with cat.operator_update("nobody") as slot:
            assert isinstance(slot, OperatorSlot) and slot.row is None
        feed.close()
        queries.close()
    finally:
        cat.close()


# -- the contract, over every implementation ------------------------------------------------------------


class _Recording:
    """Forwards to a catalog and notes which methods were called."""

    def __init__(self, inner: Any, calls: set[str]) -> None:
        self._inner, self._calls = inner, calls

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if callable(value):
            self._calls.add(name)
        return value


def _sqlite(path: Path) -> SqliteCatalog:
    return SqliteCatalog(path)


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_factory(request: pytest.FixtureRequest) -> Callable[[Path], Any]:
    if request.param == "sqlite":
        return _sqlite
    make_url = request.getfixturevalue("pg_catalog_url")
    urls: dict[Path, str] = {}

    def postgres(path: Path) -> PostgresCatalog:
        # One database per path: a test that reopens "the same file" reopens the same database.
        return PostgresCatalog(urls.setdefault(path, make_url()))

    return postgres


@pytest.fixture
def contract(tmp_path: Path, catalog_factory: Callable[[Path], Any]) -> Iterator[tuple[Any, Any, set[str], set[str]]]:
    """(catalog, queries) wrapped in recorders, and the names each was called with."""
    cat_calls: set[str] = set()
    q_calls: set[str] = set()
    cat = catalog_factory(tmp_path / "catalog.db")
    queries = cat.open_queries()
    yield _Recording(cat, cat_calls), _Recording(queries, q_calls), cat_calls, q_calls
    queries.close()
    cat.close()


def _snap(i: int, db: str = "warranty") -> SnapshotRecord:
    return SnapshotRecord(f"{i:04x}" + "ab" * 30, db, "logical", f"2026-11-{10 + i:02d}T10:00:00+00:00",
                          f"2026-11-{10 + i:02d}T10:05:00+00:00", 1000 * (i + 1), 100 * (i + 1), ["local1", "offsite"],
                          f"job{i}")


def _entry(seq: int, mac: str, prev: str) -> AuditEntry:
    return AuditEntry(seq, 1_700_000_000.0 + seq, "alice", "h", "prune", f"s{seq}", "allowed", "{}", prev, mac)


def _op(name: str, role: str = "operator", failures: int = 0) -> OperatorRow:
    return OperatorRow(name, role, b"\x00" * 40, 1.0, "root", -1, failures, 0.0, "mac-" + name)


def test_catalog_contract(contract) -> None:  # type: ignore[no-untyped-def]
    cat, queries, calls, q_calls = contract
    now = time.time()
    assert cat.schema_problems() == [] and cat.repair_schema() == []

    # Jobs and events.
    cat.record_event(JobStarted("j1", kind="backup", db="warranty", description="backup of warranty", ts=now - 50))
    cat.record_event(PhaseChanged("j1", phase="dump", ts=now - 49))
    cat.record_event(Progress("j1", phase="dump", bytes_done=5, bytes_total=10, rate=1.0, ts=now - 48))
    cat.record_event(JobWarning("j1", message="careful", ts=now - 47))
    cat.record_event(JobFinished("j1", outcome="succeeded", ts=now - 40))
    (job,) = cat.jobs()
    assert job.state == "succeeded" and job.bytes_done == 5 and cat.jobs(state="running") == []
    types = [t for _, _, t, _ in cat.job_events("j1")]
    assert types == ["JobStarted", "PhaseChanged", "Progress", "JobWarning", "JobFinished"]
    assert cat.mark_abandoned_jobs() == 0
    # Snapshots.
    for i in range(3):
        cat.add_snapshot(_snap(i, "warranty" if i != 1 else "billing"))
    assert [s.db for s in cat.snapshots()] == ["warranty", "billing", "warranty"]
    assert len(cat.snapshots("warranty")) == 2 and len(cat.snapshots(limit=1, offset=1)) == 1
    assert cat.snapshot("latest", "warranty").id == _snap(2).id
    assert cat.snapshot(_snap(1).id[:6]).db == "billing"
    with pytest.raises(NotFound):
        cat.snapshot("zz_%")
    assert cat.has_snapshot(_snap(0).id)
    # A physical snapshot is shared by the entries of its cluster (system identifier as learnt); status in place.
    phys = dataclasses.replace(_snap(3, "billing"), kind="physical", status="waiting", start_lsn="0/2000028",
                               stop_lsn="0/2000100", timeline=1, system_identifier="7", pg_version="150010",
                               wal_segment_size=16 << 20)
    cat.add_snapshot(phys)
    assert cat.system_of("warranty") is None and cat.snapshots("warranty", kind="physical") == []
    cat.learn_system("warranty", "7")
    assert cat.system_of("warranty") == "7" and cat.snapshot("latest", "warranty", kind="physical") == phys
    assert cat.snapshot("latest", "warranty", kind="logical").id == _snap(2).id
    cat.set_snapshot_status(phys.id, "restorable")
    assert cat.snapshot(phys.id[:8], "warranty").status == "restorable"
    cat.set_snapshot_targets(phys.id, ["offsite"])  # a quorum write left local1 out
    assert cat.snapshot(phys.id[:8], "warranty").targets == ["offsite"]
    cat.delete_snapshot(phys.id)

    # Verifications and restores, then a rename carries them.
    cat.add_verification(job_id="j1", target="local1", snapshot_id=_snap(0).id, started_at=now - 30, read_data=True,
                         objects_checked=3, bytes_read=300, problems=[])
    cat.add_verification(job_id=None, target="offsite", snapshot_id=None, started_at=now - 20, read_data=False,
                         objects_checked=9, bytes_read=0, problems=["pack x is missing"])
    assert [v.ok for v in cat.verifications()] == [False, True] and len(cat.verifications(_snap(0).id)) == 1
    cat.add_restore(job_id="r1", snapshot_id=_snap(0).id, db="warranty", into="w_restore", tables=[],
                    started_at=now - 10, duration_s=4.5, nbytes=1000, ok=True, error=None)
    cat.add_restore(job_id="r2", snapshot_id=_snap(0).id, db="warranty", into="w_drill_1", tables=["public.t"],
                    started_at=now - 5, duration_s=2.0, nbytes=10, ok=False, error="boom", kind="drill",
                    target="offsite")
    with pytest.raises(ValueError):
        cat.add_restore(job_id=None, snapshot_id="x", db="w", into="y", tables=[], started_at=now, duration_s=1,
                        nbytes=0, ok=True, error=None, kind="rehearsal")
    drill, restore = cat.restores()
    assert (drill.kind, drill.target, drill.ok, drill.error, drill.tables) == ("drill", "offsite", False, "boom",
                                                                               ["public.t"])
    assert (restore.kind, restore.target, restore.ok, restore.duration_s) == ("restore", None, True, 4.5)
    assert len(cat.restores("billing")) == 0
    new_id = "ffff" + "cd" * 30
    cat.rename_snapshot(_snap(0).id, new_id)
    assert not cat.has_snapshot(_snap(0).id) and cat.verifications(new_id) and cat.restores()[0].snapshot_id == new_id
    cat.delete_snapshot(new_id)
    assert not cat.has_snapshot(new_id)

    # Drill reports: kept whole, sealed later, listed by time window and database.
    def report(i: int, db: str, verdict: str) -> DrillReport:
        return DrillReport(id=f"{db}-{i}", db=db, kind="logical", snapshot_id=_snap(2).id,
                           snapshot_finished_at="2026-01-01T00:00:00+00:00", target="local1", sources=[],
                           point_reached="2026-01-01T00:00:00+00:00", started_at=now - 100 + i, finished_at=now,
                           recovery_s=3.5, rto_s=3600, scheduled_by="schedule:q", verdict=verdict,
                           checks=[DrillCheck("table public.t", verdict == "passed", "1 row")],
                           steps=[DrillStep("restore", 3.5)])

    for i, (db, verdict) in enumerate((("warranty", "passed"), ("billing", "failed"), ("warranty", "failed"))):
        cat.add_drill(report(i, db, verdict))
    assert [d.id for d in cat.drills()] == ["warranty-2", "billing-1", "warranty-0"]
    assert [d.id for d in cat.drills(db="warranty", since=now - 100, until=now - 98)] == ["warranty-0"]
    got, mac, sealed = cat.drill("billing-1") or (None, None, None)
    assert got == report(1, "billing", "failed") and (mac, sealed) == (None, None) and cat.drill("nope") is None
    cat.set_drill_seal("billing-1", "ab" * 32, "drills/billing-1")
    assert cat.drill("billing-1")[1:] == ("ab" * 32, "drills/billing-1")  # type: ignore[index]

    # Security settings and the audit log.
    cat.set_security_value("settings:security", "{}")
    assert cat.security_value("settings:security") == "{}" and cat.security_value("nothing") is None
    assert cat.audit_is_empty() and cat.audit_log_id() is None and cat.audit_last() is None

    def build(log_id: str, last: tuple[int, str] | None) -> AuditEntry:
        seq, prev = (last[0] + 1, last[1]) if last else (1, "genesis-" + log_id)
        return _entry(seq, f"mac{seq}", prev)

    assert cat.audit_append(build, start_log_id="chain1").seq == 1
    assert cat.audit_append(build, start_log_id="ignored").prev == "mac1"
    assert cat.audit_log_id() == "chain1" and not cat.audit_is_empty()
    cat.audit_insert([_entry(3, "mac3", "mac2"), _entry(4, "mac4", "mac3")])
    assert [e.seq for e in cat.audit_entries()] == [1, 2, 3, 4]
    assert [e.seq for e in cat.audit_entries(limit=2)] == [3, 4]
    assert [e.seq for e in cat.audit_entries(after_seq=3)] == [4]
    assert [e.seq for e in cat.audit_entries(since=1_700_000_002.5)] == [3, 4]
    assert cat.audit_first("prune", "allowed").seq == 1 and cat.audit_first("prune", "refused") is None
    assert cat.audit_last().seq == 4 and cat.audit_entry(2).mac == "mac2" and cat.audit_entry(9) is None
    assert not cat.audit_adopt("chain2", [_entry(1, "x", "y")])  # refused: the catalog has a log
    assert cat.audit_discard() == 4 and cat.audit_is_empty()
    assert cat.audit_adopt("chain2", [_entry(1, "m1", "g"), _entry(2, "m2", "m1")])
    assert cat.audit_log_id() == "chain2" and len(cat.audit_entries()) == 2

    # Operators: a locked read-modify-write, all or nothing.
    assert cat.operator_count() == 0 and cat.operator_rows() == []
    with cat.operator_update("alice") as slot:
        assert slot.row is None
        slot.put(_op("alice", "admin"))
    with pytest.raises(RuntimeError), cat.operator_update("alice") as slot:
        slot.put(_op("alice", "viewer", failures=3))
        raise RuntimeError("the check failed half way")
    assert cat.operator_row("alice") == _op("alice", "admin")  # rolled back
    with pytest.raises(ValueError), cat.operator_update("alice") as slot:
        slot.put(_op("mallory"))
    assert not cat.insert_operators_if_empty([_op("bob")])
    with cat.operator_update("alice") as slot:
        slot.delete()
    assert cat.insert_operators_if_empty([_op("bob"), _op("carol", "admin")])
    assert [r.name for r in cat.operator_rows()] == ["bob", "carol"] and cat.operator_count() == 2
    cat.delete_operators()
    assert cat.operator_count() == 0 and cat.operator_row("bob") is None

    # The scheduler's claims (one row per schedule and slot) and leases.
    holder = f"{socket.gethostname()}:{os.getpid()}:t"
    assert cat.claim_schedule_run(name="nightly", slot="2026-01-01T02:00:00Z", due=now - 30, action="backup",
                                  db="warranty", holder=holder)
    assert not cat.claim_schedule_run(name="nightly", slot="2026-01-01T02:00:00Z", due=now - 30, action="backup",
                                      db="warranty", holder="other:1:x")
    cat.update_schedule_run("nightly", "2026-01-01T02:00:00Z", "running")
    assert cat.abandon_dead_schedule_runs() == 0  # its holder (this process) is alive
    cat.update_schedule_run("nightly", "2026-01-01T02:00:00Z", "succeeded", result={"snapshot": "s"})
    assert cat.claim_schedule_run(name="nightly", slot="2026-01-02T02:00:00Z", due=now - 20, action="backup",
                                  db="warranty", holder=holder, state="missed", error="not started")
    runs = cat.schedule_runs("nightly")
    assert [(r.state, r.result) for r in runs] == [("missed", None), ("succeeded", {"snapshot": "s"})]
    assert cat.last_schedule_slot("nightly") == now - 20 and cat.last_schedule_slot("other") is None
    assert cat.acquire_lease("backup:warranty", holder, 60) and not cat.acquire_lease("backup:warranty", "h:1:y", 60)
    assert cat.lease_holder("backup:warranty") == holder
    cat.release_lease("backup:warranty", holder)
    assert cat.lease_holder("backup:warranty") is None and len(cat.snapshot_last_verified()) == 1  # one verified above
    # Per-target health (core/storage/metered.py): newer marks replace older ones, never the reverse.
    window = HealthWindow("offsite", "put", now - 30, now, 3, {"unreachable": 1}, 2048, 0, 0.25, {10: 2, 20: 1})
    cat.record_target_health([window], {"offsite": TargetMarks(
        last_write_ok_at=now - 5, last_error=("unreachable", "down", now - 1), listings={"data/": (4096, 2, now - 2)})})
    cat.record_target_health([], {"offsite": TargetMarks(last_write_ok_at=now - 100, last_read_ok_at=now - 3)})

    # The read side sees it all.
    q = queries
    assert q.missed_runs_since(0) == [("warranty", now - 20)] and q.missed_runs_since(0, "verify") == []
    assert [d.db for d in q.databases()] == ["billing", "warranty"] and q.snapshot_count() == 2
    assert q.snapshots_lacking(["local1", "offsite", "later"]) == {"later": 2}
    assert q.snapshot_total() == 2 and q.snapshot_total("billing") == 1 and q.snapshot_total(words=("billing",)) == 1
    ids = q.snapshot_rowids()
    assert len(ids) == 2 and q.snapshot_page(0, 2, 2) == list(ids) and q.snapshot_page(1, 2, 2) == [ids[1]]
    rows = q.snapshot_rows(list(ids))
    assert [r.id for r in rows] == [_snap(2).id, _snap(1).id]
    assert q.latest_snapshots("warranty", 5)[0].id == _snap(2).id
    assert q.snapshot_by_id(_snap(1).id[:5]).db == "billing" and q.snapshot_by_id("ab") is None
    assert q.latest_checks([_snap(2).id]) == {}
    assert q.snapshots_verified_since(0) == 0
    count, _ = q.never_verified("2000-01-01", "2100-01-01")
    assert count == 2
    assert len(q.snapshot_series("2000-01-01")) == 2
    assert q.latest_snapshot_per_db() == {"billing": _snap(1).finished_at, "warranty": _snap(2).finished_at}
    assert [j.id for j in q.jobs()] == ["j1"] and q.jobs(words=("nothing",)) == [] and q.running_jobs() == []
    assert q.job("j1").state == "succeeded" and q.job("nope") is None
    assert len(q.job_events("j1")) == 5 and len(q.job_events("j1", after_id=1, limit=2)) == 2
    assert [j.id for j in q.finished_jobs_since(0, "backup")] == ["j1"] and q.failed_jobs_since(0) == []
    assert q.job_failures_since(0) == []
    assert [d.id for d in q.drill_reports()] == ["warranty-2", "billing-1", "warranty-0"]
    assert [d.id for d in q.drill_reports(db="warranty", since=now - 99)] == ["warranty-2"]
    assert q.backup_counts_by_age(now, 7) == {0: (1, 0)}
    vids = q.verification_rowids()
    assert len(vids) == 2 and len(q.verification_rowids(("failed",))) == 1
    assert [v.target for v in q.verification_rows(list(vids))] == ["offsite", "local1"]
    assert q.verification_counts_by_age(now + 1, 7) == {0: (1, 1)}
    assert len(q.verifications_since(0)) == 2
    assert not q.latest_target_checks()["offsite"].ok and q.damaged_copies() == []
    assert q.target_health_windows(now - 60) == [window] and q.target_health_windows(now + 1) == []
    health = q.target_health_states()["offsite"]
    assert (health.last_write_ok_at, health.last_read_ok_at, health.last_error_class) == (now - 5, now - 3,
                                                                                          "unreachable")
    assert (health.stored_bytes, health.stored_objects, health.stored_measured_at) == (4096, 2, now - 2)
    assert [r.kind for r in q.restores()] == ["restore", "drill"]
    assert [r.into for r in q.restores(kind="drill")] == ["w_drill_1"] and q.restores(db="billing") == []
    # The metrics endpoint's aggregates (core/metrics/): j1 (a backup) took 10 s.
    (hist,) = q.job_duration_histograms([5.0, 60.0])
    assert (hist.kind, hist.cumulative, hist.count, hist.sum_s) == ("backup", (0, 1), 1, pytest.approx(10.0))
    assert q.job_failure_counts() == {}
    assert [(r.name, r.state, r.runs) for r in q.schedule_run_stats()] == [("nightly", "missed", 1),
                                                                           ("nightly", "succeeded", 1)]
    assert q.newest_restorable() == {"billing": (_snap(1).finished_at, None), "warranty": (_snap(2).finished_at, None)}
    assert [(d.id, d.verdict) for d in q.latest_drills()] == [("billing-1", "failed"), ("warranty-2", "failed")]
    assert q.drill_counts() == {("billing", "failed"): 1, ("warranty", "failed"): 1, ("warranty", "passed"): 1}
    table = q.audit_table()
    assert table is not None and table.columns[:2] == ("seq", "ts")
    arows = q.audit_rows(list(q.audit_rowids()))
    assert [r[0] for r in arows] == [2, 1] and len(q.audit_rowids(("nothing-like-this",))) == 0

    # Several in one transaction, all or none: a job recorded before spoils the whole batch.
    batch = [JobStarted("j2", kind="verify", db=None, description="elsewhere", ts=now - 30, host="agent-host"),
             JobFinished("j2", outcome="failed", error="boom", ts=now - 20)]
    with pytest.raises(sqlite3.IntegrityError):
        cat.record_events([*batch, JobStarted("j1", kind="backup", db="warranty", description="again")])
    assert [j.id for j in cat.jobs()] == ["j1"]
    cat.record_events(batch)
    assert [(j.id, j.state, j.host) for j in cat.jobs()] == [("j2", "failed", "agent-host"), ("j1", "succeeded",
                                                                                             socket.gethostname())]

    # The change feed: a commit by another connection is seen once.
    feed = q.changes()
    assert feed.poll() is False
    cat.set_security_value("touched", "1")
    assert feed.poll() is True and feed.poll() is False
    feed.close()
    assert feed.poll() is False
    writer_feed = cat.changes()
    writer_feed.poll()
    writer_feed.close()
    other = cat.open_queries()
    assert isinstance(other, CatalogQueries) and other.snapshot_count() == 2
    other.close()
    q.close()  # closing twice (the fixture does it again) is harmless
    cat.close()

    assert set(_protocol_methods(Catalog)) - calls == set(), "Catalog methods the contract does not exercise"
    assert set(_protocol_methods(CatalogQueries)) - q_calls == set(), "query methods the contract does not exercise"


@pytest.mark.both_catalogs
def test_audit_appends_from_two_writers_interleave_into_one_chain(tmp_path: Path, catalog_at) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "catalog.db"
    a, b = catalog_at(path), catalog_at(path)  # two connections, as two processes (or hosts) would have

    def append(cat: Any, who: str) -> None:
        log = AuditLog(cat, KEY)
        for i in range(40):
            log.append(who, "h", "prune", f"{who} {i}", "allowed", {"i": i}, 1_700_000_000.0 + i)

    threads = [threading.Thread(target=append, args=(c, w)) for c, w in ((a, "alice"), (b, "bob"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = AuditLog(a, KEY).verify()
    assert report.ok and report.entries == 80
    a.close()
    b.close()


# -- schema versions -------------------------------------------------------------------------------


_OLD_RESTORES = """
    CREATE TABLE restores (
        id INTEGER PRIMARY KEY, job_id TEXT, snapshot_id TEXT NOT NULL, db TEXT NOT NULL, into_db TEXT NOT NULL,
        tables TEXT NOT NULL, started_at REAL NOT NULL, duration_s REAL NOT NULL, bytes INTEGER NOT NULL,
        ok INTEGER NOT NULL, error TEXT
    );
"""


def _old_catalog(path: Path) -> None:
    """A catalog file as the previous version left it: schema version 3, restores without kind and target."""
    db = sqlite3.connect(str(path), isolation_level=None)
    script = "".join(m for m in MIGRATIONS[:3] if isinstance(m, str))
    assert "kind TEXT NOT NULL DEFAULT 'restore'" not in script  # the old DDL, before restores got kinds
    db.executescript(f"BEGIN; {script}; PRAGMA user_version=3; COMMIT;")
    assert [r[1] for r in db.execute("PRAGMA table_info(restores)")][-1] == "error"
    rows = [(1, "x1", "s1", "warranty", "warranty_restore_1", "[]", 1_700_000_000.0, 12.5, 100, 1, None),
            (2, "x2", "s1", "warranty", "warranty_copy", '["public.claims"]', 1_700_000_100.0, 3.0, 10, 0, "boom"),
            (3, "x3", "s1", "warranty", "warranty_drill_20261101_0900", "[]", 1_700_000_200.0, 9.0, 90, 1, None)]
    db.executemany("INSERT INTO restores VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    db.close()


def test_a_catalog_of_the_previous_version_migrates_on_open(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    _old_catalog(path)
    cat = SqliteCatalog(path)
    try:
        assert cat.connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert cat.schema_problems() == []
        old = {r.id: r for r in cat.restores()}
        assert (old[1].kind, old[1].target, old[1].ok, old[1].duration_s) == ("restore", None, True, 12.5)
        assert (old[2].kind, old[2].ok, old[2].error, old[2].tables) == ("restore", False, "boom", ["public.claims"])
        # Drills were told apart by their name before: they become drills.
        assert old[3].kind == "drill"
        cat.add_restore(job_id="x4", snapshot_id="s1", db="warranty", into="w2", tables=[], started_at=1.0,
                        duration_s=1.0, nbytes=1, ok=True, error=None, kind="drill", target="local1")
        q = cat.open_queries()
        assert [r.id for r in q.restores(kind="drill")] == [4, 3]
        assert [r.kind for r in q.restores(kind="restore")] == ["restore", "restore"]
        q.close()
    finally:
        cat.close()
    # Opening again runs nothing twice.
    SqliteCatalog(path).close()


def test_a_previous_version_catalog_without_a_restores_table_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    _old_catalog(path)
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("DROP TABLE restores")
    db.close()
    cat = SqliteCatalog(path)
    try:
        assert cat.schema_problems() == ["table restores is missing from the catalog"]
        assert cat.repair_schema() == ["recreated table restores"] and cat.schema_problems() == []
        assert cat.restores() == []
    finally:
        cat.close()


def _columns(db: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    return {t: [tuple(r[1:]) for r in db.execute(f'PRAGMA table_info("{t}")')] for t in tables}


def _indexes(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}


def test_a_repaired_table_is_the_migrated_one(tmp_path: Path) -> None:
    cat = SqliteCatalog(tmp_path / "catalog.db")
    try:
        migrated, indexes = _columns(cat.connection), _indexes(cat.connection)
        assert set(migrated) == set(TABLES)
        for t in TABLES:
            cat.connection.execute(f"DROP TABLE {t}")
        assert sorted(cat.repair_schema()) == sorted(f"recreated table {t}" for t in TABLES)
        assert _columns(cat.connection) == migrated and _indexes(cat.connection) == indexes
    finally:
        cat.close()


def test_restore_records_carry_kind_and_target_with_defaults() -> None:
    r = RestoreRecord(1, None, "s", "db", "x", [], 0.0, 1.0, 10, True, None)
    assert (r.kind, r.target, r.is_drill) == ("restore", None, False)
    assert json.loads(json.dumps(r.to_json()))["kind"] == "restore"
