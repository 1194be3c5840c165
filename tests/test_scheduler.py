"""The scheduler under an injected clock, against a real SQLite catalog.

DST in Europe/Berlin (spring and autumn), windows (also across midnight),
missed runs (and that they reach the Backup Completion Rate and the alerts),
backups of one database never overlapping (two schedulers racing), a crash
(SIGKILL of a real process mid-run) resumed without a second run of its
slot, and two schedulers in two threads never running one slot twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from core.catalog.sqlite import SqliteCatalog
from core.config import parse_config
from core.errors import ConfigError, IntegrityError
from core.insights.overview import build_dashboard
from core.records import SnapshotRecord
from core.schedule.actions import verify_sample
from core.schedule.clock import FakeClock
from core.schedule.config import ScheduleConfig
from core.schedule.scheduler import Scheduler
from core.schedule.slots import jitter_offset, plan_slot

# Catalog-heavy: every test runs with the catalog on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_catalogs

BERLIN = "Europe/Berlin"
ROOT = Path(__file__).resolve().parent.parent


def sc(name: str, cron: str, **kw: Any) -> ScheduleConfig:
    kw.setdefault("action", "backup")
    if kw["action"] in ("backup", "drill"):
        kw.setdefault("db", "warranty")
    return ScheduleConfig(name=name, cron=cron, **kw)


def utc(*a: int) -> datetime:
    return datetime(*a, tzinfo=UTC)  # type: ignore[misc]


class Recorder:
    """A runner that records what it ran, when (on the scheduler's clock), and how many backups of a db overlap."""

    def __init__(self, clock: FakeClock, work_s: float = 0.0, fail: set[str] | None = None) -> None:
        self.clock, self.work_s, self.fail = clock, work_s, fail or set()
        self.runs: list[tuple[str, datetime, datetime]] = []  # (schedule, slot, started)
        self.active: Counter[str] = Counter()
        self.max_active: Counter[str] = Counter()

    async def run(self, schedule: ScheduleConfig, slot: datetime) -> dict[str, object]:
        self.runs.append((schedule.name, slot, self.clock.now()))
        key = schedule.db or schedule.name
        self.active[key] += 1
        self.max_active[key] = max(self.max_active[key], self.active[key])
        try:
            if self.work_s:
                await asyncio.sleep(self.work_s)
            if schedule.name in self.fail:
                raise IntegrityError("a copy is damaged")
        finally:
            self.active[key] -= 1
        return {"ok": True}


@pytest.fixture
def catalog(tmp_path: Path, catalog_at):  # type: ignore[no-untyped-def]
    cat = catalog_at(tmp_path / "catalog.db")
    yield cat
    cat.close()


async def drive(s: Scheduler, clock: FakeClock, start: datetime, end: datetime, step: timedelta) -> None:
    """Tick the scheduler every ``step`` from ``start`` to ``end``, letting each tick's runs finish."""
    clock.set(start)
    s.start()
    await s.tick()
    while clock.now() < end:
        clock.set(clock.now() + step)
        await s.tick()
        await s.wait_idle()


def states(cat: SqliteCatalog, name: str) -> dict[str, str]:
    return {r.slot: r.state for r in cat.schedule_runs(name, limit=10_000)}


# -- time: DST, windows, jitter --------------------------------------------------------------------------------


@pytest.mark.parametrize(("start", "expected"), [
    # Spring forward (29 March 2026, 02:00 CET -> 03:00 CEST): 02:30 does not exist that night and runs at 03:00.
    (utc(2026, 3, 27, 12), [utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0), utc(2026, 3, 30, 0, 30)]),
    # Fall back (25 October 2026, 03:00 CEST -> 02:00 CET): 02:30 happens twice that night and runs once.
    (utc(2026, 10, 23, 12), [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]),
])
async def test_daily_slots_follow_local_time_across_dst(catalog: SqliteCatalog, start: datetime,
                                                        expected: list[datetime]) -> None:
    clock = FakeClock(start)
    rec = Recorder(clock)
    s = Scheduler([sc("nightly", "30 2 * * *", timezone=BERLIN)], catalog, rec, clock)
    await drive(s, clock, start, start + timedelta(days=3), timedelta(minutes=5))
    assert [slot for _, slot, _ in rec.runs] == expected
    # Each ran at the first tick after its slot (ticks are 5 minutes apart), none was missed.
    assert all(timedelta(0) <= started - slot <= timedelta(minutes=5) for _, slot, started in rec.runs)
    assert set(states(catalog, "nightly").values()) == {"succeeded"}


@pytest.mark.parametrize("start", [utc(2026, 3, 28, 20), utc(2026, 10, 24, 20)])
async def test_hourly_slots_stay_an_hour_apart_across_dst(catalog: SqliteCatalog, start: datetime) -> None:
    clock = FakeClock(start)
    rec = Recorder(clock)
    s = Scheduler([sc("hourly", "0 * * * *", timezone=BERLIN)], catalog, rec, clock)
    await drive(s, clock, start, start + timedelta(hours=12), timedelta(minutes=10))
    slots = [slot for _, slot, _ in rec.runs]
    # 02:00 local is skipped in spring and happens twice in autumn: in UTC an unbroken hourly series either way.
    assert len(slots) == 12 and all(b - a == timedelta(hours=1) for a, b in zip(slots, slots[1:], strict=False))


async def test_a_window_across_midnight_admits_only_its_slots(catalog: SqliteCatalog) -> None:
    start = utc(2026, 6, 1, 12)
    clock = FakeClock(start)
    rec = Recorder(clock)
    s = Scheduler([sc("late", "0 * * * *", timezone=BERLIN, window="23:00-01:00")], catalog, rec, clock)
    await drive(s, clock, start, start + timedelta(days=1), timedelta(minutes=15))
    # 23:00 and 00:00 Berlin (CEST, UTC+2) only; the slots outside the window are neither run nor missed.
    assert [slot for _, slot, _ in rec.runs] == [utc(2026, 6, 1, 21), utc(2026, 6, 1, 22)]
    assert len(states(catalog, "late")) == 2


async def test_a_slot_not_started_inside_its_window_is_missed(catalog: SqliteCatalog) -> None:
    clock = FakeClock(utc(2026, 1, 10, 0, 0))
    rec = Recorder(clock)
    s = Scheduler([sc("nightly", "0 2 * * *", timezone=BERLIN, window="02:00-04:00")], catalog, rec, clock)
    s.start()
    await s.tick()
    # The daemon was not looking between 01:00 UTC (02:00 CET) and 03:00 UTC, when the window closed.
    clock.set(utc(2026, 1, 10, 2, 59))
    await s.tick()
    await s.wait_idle()
    assert [slot for _, slot, _ in rec.runs] == [utc(2026, 1, 10, 1)]  # still inside the window: it runs late
    clock.set(utc(2026, 1, 12, 3, 0))  # down for two nights: both slots are missed, neither is run
    await s.tick()
    await s.wait_idle()
    assert len(rec.runs) == 1
    assert states(catalog, "nightly") == {"2026-01-10T01:00:00Z": "succeeded", "2026-01-11T01:00:00Z": "missed",
                                          "2026-01-12T01:00:00Z": "missed"}
    missed = catalog.schedule_runs("nightly", limit=1)[0]
    assert missed.error is not None and "2026-01-12T03:00:00Z" in missed.error  # the window's end, 04:00 CET


async def test_without_a_window_the_misfire_limit_decides(catalog: SqliteCatalog) -> None:
    clock = FakeClock(utc(2026, 2, 1, 0, 0))
    rec = Recorder(clock)
    s = Scheduler([sc("daily", "0 6 * * *"), sc("quarter", "*/15 * * * *", action="verify")], catalog, rec, clock)
    s.start()
    await s.tick()
    clock.set(utc(2026, 2, 1, 6, 59))  # daily: 59 min late is within the default 1 h; quarter: only 06:45 runs
    await s.tick()
    await s.wait_idle()
    assert sorted((n, slot) for n, slot, _ in rec.runs) == [("daily", utc(2026, 2, 1, 6)),
                                                            ("quarter", utc(2026, 2, 1, 6, 45))]
    # A slot is missed once the next one is due, even inside the misfire limit.
    assert states(catalog, "quarter")["2026-02-01T06:30:00Z"] == "missed"
    clock.set(utc(2026, 2, 2, 7, 0, 1))
    await s.tick()
    assert states(catalog, "daily")["2026-02-02T06:00:00Z"] == "missed"


def test_jitter_is_fixed_per_schedule_and_slot_and_stays_inside_the_window() -> None:
    s = sc("nightly", "0 2 * * *", timezone=BERLIN, window="02:00-04:00", jitter="10m")
    at = utc(2026, 7, 1, 0)  # 02:00 CEST
    a, b = plan_slot(s, at), plan_slot(s, at)
    assert a is not None and a == b and timedelta(0) <= a.run_at - at < timedelta(minutes=10)
    offsets = {jitter_offset(n, at, timedelta(minutes=10)) for n in ("a", "b", "c", "d", "e", "f")}
    assert len(offsets) > 1  # spread, not one shared delay
    long = sc("tight", "0 2 * * *", timezone=BERLIN, window="02:00-02:05", jitter="1h")
    slot = plan_slot(long, at)
    assert slot is not None and at <= slot.run_at < slot.deadline == utc(2026, 7, 1, 0, 5)


async def test_jitter_delays_the_start(catalog: SqliteCatalog) -> None:
    s_conf = sc("nightly", "0 2 * * *", jitter="10m")
    slot = plan_slot(s_conf, utc(2026, 4, 1, 2))
    assert slot is not None and slot.run_at > slot.at
    clock = FakeClock(utc(2026, 4, 1, 1))
    rec = Recorder(clock)
    s = Scheduler([s_conf], catalog, rec, clock)
    s.start()
    await s.tick()
    clock.set(slot.run_at - timedelta(seconds=1))
    assert await s.tick() == []
    clock.set(slot.run_at)
    assert len(await s.tick()) == 1


def test_verify_samples_rotate_so_every_snapshot_is_read_within_the_period() -> None:
    snaps = [SnapshotRecord(f"{i:064x}", "warranty", "logical", f"2026-01-0{i + 1}T00:00:00+00:00",
                            f"2026-01-0{i + 1}T00:10:00+00:00", 1, 1) for i in range(8)]
    last: dict[str, float] = {snaps[0].id: 50.0}  # verified once, long ago: the others (never verified) go first
    read: list[str] = []
    for run in range(4):  # 25% a run: 2 of 8, so four runs read every one exactly once
        pick = verify_sample(snaps, last, 0.25)
        assert len(pick) == 2
        read += [p.id for p in pick]
        last.update({p.id: 100.0 + run for p in pick})
    assert sorted(read) == sorted(x.id for x in snaps) and read[-2:] == [snaps[7].id, snaps[0].id]
    assert verify_sample(snaps, last, 1.0) == sorted(snaps, key=lambda x: last[x.id])
    assert verify_sample([], {}, 0.05) == [] and len(verify_sample(snaps, {}, 0.01)) == 1


# -- outcomes and what they feed ---------------------------------------------------------------------------


async def test_missed_backups_count_against_completion_and_raise_alerts(catalog: SqliteCatalog,
                                                                        tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    clock = FakeClock(now - timedelta(hours=5))
    rec = Recorder(clock, fail={"verify"})
    s = Scheduler([sc("hourly", "0 * * * *"), sc("verify", "30 * * * *", action="verify")], catalog, rec, clock)
    s.start()
    await s.tick()
    clock.set(now)  # five hours asleep: four or five hourly backups missed (and the verifies, which do not count)
    await s.tick()
    await s.wait_idle()
    missed = [r for r in catalog.schedule_runs("hourly") if r.state == "missed"]
    assert len(missed) >= 4
    cfg = parse_config({"catalog": {"url": f"sqlite:///{catalog.path}"}, "encryption": {"passphrase_env": "X"},
                        "targets": [{"name": "l", "type": "local", "path": str(tmp_path)}],
                        "databases": [{"name": "warranty", "dsn": "postgresql:///warranty"}]}, tmp_path / "c.yaml")
    q = catalog.open_queries()
    try:
        assert len(q.missed_runs_since(0)) == len(missed)  # backups only: the missed verifies do not count
        dash = build_dashboard(q, cfg, now.timestamp())
    finally:
        q.close()
    completion = dash.kpis[0]
    assert completion.value == 0.0 and f"{len(missed)} missed" in completion.detail
    assert sum(a.kind == "missed-run" and "warranty" in a.message for a in dash.alerts) == len(missed)
    assert [r.state for r in catalog.schedule_runs("verify") if r.state != "missed"] in ([], ["failed"])


async def test_a_failing_action_is_recorded_with_its_message(catalog: SqliteCatalog) -> None:
    clock = FakeClock(utc(2026, 5, 5, 9, 59))
    rec = Recorder(clock, fail={"verify"})
    s = Scheduler([sc("verify", "0 10 * * *", action="verify")], catalog, rec, clock)
    s.start()
    await s.tick()
    clock.set(utc(2026, 5, 5, 10))
    await s.tick()
    (out,) = await s.wait_idle()
    assert out.state == "failed" and out.error == "a copy is damaged"
    run = catalog.schedule_runs("verify")[0]
    assert (run.state, run.error) == ("failed", "a copy is damaged") and run.started_at and run.finished_at


# -- concurrency, crashes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", [False, True], ids=["one-scheduler-claims-both", "each-claims-one"])
async def test_backups_of_one_database_never_overlap_across_two_schedulers(tmp_path: Path, split: bool,
                                                                          catalog_at) -> None:  # type: ignore[no-untyped-def]
    cat_a, cat_b = catalog_at(tmp_path / "c.db"), catalog_at(tmp_path / "c.db")
    try:
        clock = FakeClock(utc(2026, 8, 1, 1, 59), autojump=True)
        rec = Recorder(clock, work_s=0.05)
        logical, physical = sc("logical", "0 2 * * *"), sc("physical", "0 2 * * *", type="physical")
        other = sc("other-db", "0 2 * * *", db="billing")
        # Split: the two backups of warranty are claimed by different schedulers and meet at the lease.
        a = Scheduler([logical, other] if split else [logical, physical, other], cat_a, rec, clock, lease_poll_s=30)
        b = Scheduler([physical, other] if split else [logical, physical, other], cat_b, rec, clock,
                      lease_poll_s=30)
        a.start(), b.start()
        await a.tick(), await b.tick()
        clock.set(utc(2026, 8, 1, 2))
        await asyncio.gather(a.tick(), b.tick())
        await asyncio.gather(a.wait_idle(), b.wait_idle())
        # Each slot once, and the two backups of warranty one after the other (billing's ran alongside).
        assert sorted(n for n, _, _ in rec.runs) == ["logical", "other-db", "physical"]
        assert rec.max_active["warranty"] == 1
        assert {states(cat_a, n)["2026-08-01T02:00:00Z"] for n in ("logical", "physical", "other-db")} == {
            "succeeded"}
        assert cat_a.lease_holder("backup:warranty") is None  # released
    finally:
        cat_a.close()
        cat_b.close()


async def test_a_backup_that_cannot_get_its_database_before_the_deadline_is_missed(catalog: SqliteCatalog) -> None:
    clock = FakeClock(utc(2026, 8, 1, 1, 59), autojump=True)
    rec = Recorder(clock)
    catalog.acquire_lease("backup:warranty", "elsewhere:1:x", ttl_s=86_400, now=clock.now().timestamp())
    s = Scheduler([sc("nightly", "0 2 * * *", window="02:00-03:00", timezone="UTC")], catalog, rec, clock,
                  lease_poll_s=60)
    s.start()
    await s.tick()
    clock.set(utc(2026, 8, 1, 2))
    await s.tick()
    (out,) = await s.wait_idle()
    assert out.state == "missed" and "busy with another backup" in (out.error or "") and rec.runs == []


async def test_stopping_a_scheduler_records_its_waiting_and_running_runs(catalog: SqliteCatalog) -> None:
    clock = FakeClock(utc(2026, 8, 1, 1, 59))
    catalog.acquire_lease("backup:warranty", "elsewhere:1:x", ttl_s=86_400, now=clock.now().timestamp())
    rec = Recorder(clock, work_s=3600)
    s = Scheduler([sc("blocked", "0 2 * * *"), sc("long", "0 2 * * *", action="verify")], catalog, rec, clock)
    s.start()
    await s.tick()
    clock.set(utc(2026, 8, 1, 2))
    assert len(await s.tick()) == 2
    await asyncio.sleep(0.05)
    assert s.busy and len(rec.runs) == 1
    await s.stop()
    assert not s.busy
    assert states(catalog, "blocked") == {"2026-08-01T02:00:00Z": "missed"}  # never started: nothing to clean up
    assert states(catalog, "long") == {"2026-08-01T02:00:00Z": "abandoned"}


_CRASHER = textwrap.dedent("""
    import asyncio, sys
    from datetime import datetime, UTC
    from pathlib import Path
    from core.catalog.sqlite import SqliteCatalog
    from core.schedule.clock import FakeClock
    from core.schedule.config import ScheduleConfig
    from core.schedule.scheduler import Scheduler

    class Hang:
        async def run(self, schedule, slot):
            print("started", flush=True)
            await asyncio.sleep(3600)

    async def main():
        cat = SqliteCatalog(Path(sys.argv[1]))
        clock = FakeClock(datetime(2026, 5, 1, 1, 59, tzinfo=UTC))
        s = Scheduler([ScheduleConfig(name="nightly", action="backup", db="warranty", cron="0 2 * * *")], cat,
                      Hang(), clock)
        s.start()
        await s.tick()
        clock.set(datetime(2026, 5, 1, 2, 0, 5, tzinfo=UTC))
        await s.tick()
        await s.wait_idle()

    asyncio.run(main())
""")


async def test_a_crashed_scheduler_is_resumed_without_running_its_slot_twice(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SqliteCatalog(path).close()
    proc = subprocess.Popen([sys.executable, "-c", _CRASHER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    cat = SqliteCatalog(path)
    try:
        assert states(cat, "nightly") == {"2026-05-01T02:00:00Z": "running"}
        assert cat.lease_holder("backup:warranty", now=utc(2026, 5, 1, 2, 1).timestamp()) is not None
        clock = FakeClock(utc(2026, 5, 1, 2, 1))
        rec = Recorder(clock)
        s = Scheduler([sc("nightly", "0 2 * * *")], cat, rec, clock)
        assert s.start() == 1
        await s.tick()
        await s.wait_idle()
        assert rec.runs == []  # the slot the dead scheduler held is not run again
        run = cat.schedule_runs("nightly")[0]
        assert run.state == "abandoned" and f"pid {proc.pid}" in (run.error or "")
        # The next slot runs, although the dead holder's lease had not expired yet.
        clock.set(utc(2026, 5, 2, 2, 0, 1))
        await s.tick()
        await s.wait_idle()
        assert [slot for _, slot, _ in rec.runs] == [utc(2026, 5, 2, 2)]
        assert states(cat, "nightly")["2026-05-02T02:00:00Z"] == "succeeded"
    finally:
        cat.close()


def test_two_schedulers_in_two_threads_never_run_the_same_slot(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SqliteCatalog(path).close()
    ran: list[tuple[str, datetime]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    class Runner:
        async def run(self, schedule: ScheduleConfig, slot: datetime) -> dict[str, object]:
            with lock:
                ran.append((schedule.name, slot))
            await asyncio.sleep(0)
            return {}

    confs = [sc("minutely", "* * * * *", action="verify"), sc("five", "*/5 * * * *", action="verify")]

    def worker() -> None:
        async def main() -> None:
            cat = SqliteCatalog(path)
            clock = FakeClock(utc(2026, 9, 1, 0, 0))
            s = Scheduler(confs, cat, Runner(), clock)
            s.start()
            await s.tick()
            for _ in range(120):
                clock.advance(60)
                await s.tick()
                await s.wait_idle()
            cat.close()

        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(ran) == len(set(ran)) == 120 + 24  # every slot exactly once between the two


# -- config ----------------------------------------------------------------------------------------------------

_BASE = {"encryption": {"passphrase_env": "X"}, "targets": [{"name": "l", "type": "local", "path": "/tmp"}],
         "databases": [{"name": "warranty", "dsn": "postgresql:///warranty"}]}
_GOOD = {"name": "nightly", "action": "backup", "db": "warranty", "type": "logical", "cron": "0 2 * * *",
         "window": "02:00-04:00", "timezone": BERLIN, "jitter": "10m"}


def test_the_fixed_config_keys_parse() -> None:
    cfg = parse_config({**_BASE, "schedules": [
        _GOOD, {"name": "verify", "action": "verify", "cron": "30 * * * *", "sample": "5%"},
        {"name": "retention", "action": "retention", "cron": "0 5 * * *"},
        {"name": "keys", "action": "key-rotation", "cron": "0 6 * * 1"},
        {"name": "drill", "action": "drill", "db": "warranty", "cron": "0 2 1 1,4,7,10 *"}]}, Path("c.yaml"))
    assert [s.name for s in cfg.schedules] == ["nightly", "verify", "retention", "keys", "drill"]
    assert cfg.schedules[0].jitter == timedelta(minutes=10) and cfg.schedules[1].sample_share == 0.05


@pytest.mark.parametrize(("change", "expected"), [
    ({"action": "nap"}, "schedules.0.action: Input should be 'backup'"),
    ({"cron": "61 * * * *"}, "schedules.0.cron: Value error, not a valid cron expression"),
    ({"window": "02:00-25:00"}, "schedules.0.window: Value error, expected a window like"),
    ({"timezone": "Mars/Olympus"}, "schedules.0.timezone: Value error, unknown time zone 'Mars/Olympus'"),
    ({"db": "nope"}, "schedules.0.db: no database named 'nope'"),
    ({"jitter": "soon"}, "schedules.0.jitter: Value error, expected a duration"),
    ({"db": None}, "action backup needs db"),
])
def test_bad_schedules_are_refused_naming_the_key(change: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({**_BASE, "schedules": [{**_GOOD, **change}]}, Path("c.yaml"))
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_duplicate_schedule_names_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"schedules\.1\.name: duplicate schedule name 'nightly'"):
        parse_config({**_BASE, "schedules": [_GOOD, _GOOD]}, Path("c.yaml"))
