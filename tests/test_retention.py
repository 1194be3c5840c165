"""Retention: restic's keep rules in UTC, the min_age_days floor, the max_bytes cap, WAL retention, and
`backstop forget --db NAME [--dry-run]` end to end against a real database and a real WAL archive."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from core.catalog.open import open_catalog
from core.config import RetentionConfig, parse_config
from core.engine import Engine
from core.errors import ConfigError
from core.ops.retention import RetentionReport, apply_retention
from core.postgres.wal import format_lsn, parse_lsn, parse_segment_name, segment_file
from core.retention.policy import RetainedFacts, RetentionPlan, plan_retention
from core.retention.wal import PhysicalStart, plan_wal_trim

from tests.fixtures.backstop import Setup, local_target
from tests.fixtures.otp import CodeBook, secret_from_uri
from tests.fixtures.wal_archive import SEG, SYSID, add_snapshots, archive_wal, physical_record

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if "+" not in text else datetime.fromisoformat(text)


def facts(*times: str, kind: str = "logical", size: int = 100) -> list[RetainedFacts]:
    """Snapshots named s0, s1, ... at the given times."""
    return [RetainedFacts(f"s{i}", kind, at(t), size) for i, t in enumerate(times)]


def kept(plan: RetentionPlan) -> list[str]:
    return [d.snapshot_id for d in plan.decisions if d.keep]


def reasons(plan: RetentionPlan) -> dict[str, list[str]]:
    return {d.snapshot_id: d.reasons for d in plan.decisions}


# -- the config -----------------------------------------------------------------------------------


def test_retention_config_sizes_unlimited_and_strictness(tmp_path: Path) -> None:
    base = {"encryption": {"passphrase_env": "X"}, "targets": [local_target(tmp_path)]}
    entry = {"name": "w", "dsn": "dbname=w", "retention": {"keep_last": 7, "keep_hourly": 0, "keep_daily": 14,
             "keep_weekly": 8, "keep_monthly": 12, "keep_yearly": "unlimited", "min_age_days": 30,
             "max_bytes": "500GB"}}
    r = parse_config({**base, "databases": [entry]}, tmp_path / "c.yaml").database("w").retention
    assert r is not None and r.max_bytes == 500 * 10**9 and r.keep_yearly == -1 and r.min_age_days == 30
    assert RetentionConfig(max_bytes="1.5TiB").max_bytes == int(1.5 * 2**40)
    assert RetentionConfig(max_bytes=4096).max_bytes == 4096
    assert parse_config({**base, "databases": [{"name": "p", "dsn": "x"}]}, tmp_path / "c.yaml").databases[0] \
        .retention is None
    for bad, where in (({"max_bytes": "5G"}, "max_bytes"), ({"keep_daily": -2}, "keep_daily"),
                       ({"keep_forever": 1}, "unknown key"), ({"min_age_days": -1}, "min_age_days")):
        with pytest.raises(ConfigError, match=where):
            parse_config({**base, "databases": [{**entry, "retention": bad}]}, tmp_path / "c.yaml")


# -- the keep rules (restic's semantics) ----------------------------------------------------------


def test_keep_last_keeps_the_newest_n() -> None:
    plan = plan_retention(facts("2026-11-26", "2026-11-27", "2026-11-28", "2026-11-29", "2026-11-30"),
                          RetentionConfig(keep_last=3), NOW)
    assert [d.snapshot_id for d in plan.decisions] == ["s4", "s3", "s2", "s1", "s0"]  # newest first
    assert kept(plan) == ["s4", "s3", "s2"] and plan.remove == ["s1", "s0"]
    assert reasons(plan)["s2"] == ["last 3"] and reasons(plan)["s0"] == ["no rule keeps it"]


def test_daily_takes_the_newest_of_each_day_and_counts_only_days_with_snapshots() -> None:
    # Two on 11-30: the newer one stands for the day. 11-27 is beyond the two days counted.
    plan = plan_retention(facts("2026-11-27T12:00", "2026-11-29T23:00", "2026-11-30T08:00", "2026-11-30T10:00"),
                          RetentionConfig(keep_daily=2), NOW)
    assert kept(plan) == ["s3", "s1"]
    assert reasons(plan)["s3"] == ["daily 2026-11-30"] and reasons(plan)["s1"] == ["daily 2026-11-29"]
    # Empty days do not count: three daily buckets reach back a month when snapshots are ten days apart.
    plan = plan_retention(facts("2026-11-01", "2026-11-10", "2026-11-20", "2026-11-30"),
                          RetentionConfig(keep_daily=3), NOW)
    assert kept(plan) == ["s3", "s2", "s1"]


def test_the_oldest_snapshot_is_kept_while_a_period_rule_has_count_left() -> None:
    # restic >= 0.16: keep_daily 5 over two days keeps 11-29's oldest snapshot too (maximises history).
    plan = plan_retention(facts("2026-11-29T06:00", "2026-11-29T12:00", "2026-11-30T10:00"),
                          RetentionConfig(keep_daily=5), NOW)
    assert kept(plan) == ["s2", "s1", "s0"]
    assert reasons(plan)["s0"] == ["oldest daily 2026-11-29"]
    # keep_last has no such rule.
    assert kept(plan_retention(facts("2026-11-29T06:00", "2026-11-29T12:00"), RetentionConfig(keep_last=1),
                               NOW)) == ["s1"]


def test_weekly_uses_iso_weeks_across_the_year_end_and_rules_are_ored() -> None:
    # 2026-11-29 is a Sunday (ISO week 48), 11-30 a Monday (week 49); 2027-01-03 is still in 2026-W53.
    plan = plan_retention(facts("2026-11-29", "2026-11-30", "2027-01-01", "2027-01-03", "2027-01-04"),
                          RetentionConfig(keep_weekly=2), NOW + timedelta(days=60))
    assert kept(plan) == ["s4", "s3"]
    assert reasons(plan)["s3"] == ["weekly 2026-W53"] and reasons(plan)["s4"] == ["weekly 2027-W01"]
    plan = plan_retention(facts("2026-11-29", "2026-11-30", "2027-01-01", "2027-01-03", "2027-01-04"),
                          RetentionConfig(keep_last=1, keep_monthly=2, keep_yearly=1), NOW + timedelta(days=60))
    assert reasons(plan) == {"s4": ["last 1", "monthly 2027-01", "yearly 2027"], "s3": ["no rule keeps it"],
                             "s2": ["no rule keeps it"], "s1": ["monthly 2026-11"], "s0": ["no rule keeps it"]}


def test_restics_documented_hundred_years_of_daily_backups() -> None:
    """restic's docs: daily backups for 100 years, `--keep-daily 7 --keep-weekly 5 --keep-monthly 12
    --keep-yearly 75` keep the most recent 7 dailies, then 4 last-day-of-the-weeks (the 7 dailies already
    include a week), 11 or 12 last-day-of-the-months (11 or 12 depending on whether the weeklies cross a
    month) and 75 last-day-of-the-year snapshots. The "4" holds when the newest backup is a Sunday, as here
    (the 7 dailies are then exactly one ISO week)."""
    end = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    snaps = [RetainedFacts(f"d{i}", "logical", end - timedelta(days=i), 1) for i in range(36525)]
    plan = plan_retention(snaps, RetentionConfig(keep_daily=7, keep_weekly=5, keep_monthly=12, keep_yearly=75), end)

    def by(word: str) -> set[str]:
        return {d.snapshot_id for d in plan.decisions if any(r.startswith(word) for r in d.reasons)}

    daily, weekly, monthly, yearly = by("daily"), by("weekly"), by("monthly"), by("yearly")
    assert (len(daily), len(weekly), len(monthly), len(yearly)) == (7, 5, 12, 75)
    assert daily == {f"d{i}" for i in range(7)}
    assert len(weekly - daily) == 4
    assert len(monthly - daily - weekly) in (11, 12)
    # The yearlies are each year's last day (the current year's newest snapshot stands for 2026).
    years = sorted(d.time for d in plan.decisions if d.snapshot_id in yearly - {"d0"})
    assert all((t.month, t.day) == (12, 31) for t in years) and len(years) == 74
    assert set(kept(plan)) == daily | weekly | monthly | yearly


def test_unlimited_and_no_rules_and_buckets_in_utc() -> None:
    plan = plan_retention(facts("2026-11-29T06:00", "2026-11-29T12:00", "2026-11-30T10:00"),
                          RetentionConfig(keep_daily=-1), NOW)
    assert kept(plan) == ["s2", "s1", "s0"]  # every day; the oldest (11-29 06:00) as restic keeps it
    plan = plan_retention(facts("2026-11-29", "2026-11-30"), RetentionConfig(), NOW)
    assert plan.remove == [] and "no keep_* rule set" in reasons(plan)["s0"][0]
    # 01:30 at +02:00 is 23:30 UTC the day before: one daily bucket with the 22:00 UTC snapshot.
    snaps = facts("2026-11-29T22:00", "2026-11-30T01:30+02:00")
    plan = plan_retention(snaps, RetentionConfig(keep_daily=1), NOW)
    assert kept(plan) == ["s1"] and reasons(plan)["s1"] == ["daily 2026-11-29"]


def test_kinds_are_separate_groups_and_unfinished_snapshots_are_kept_uncounted() -> None:
    snaps = [RetainedFacts("log", "logical", at("2026-11-30T02:00"), 1),
             RetainedFacts("phys", "physical", at("2026-11-30T01:00"), 1),
             RetainedFacts("phys-old", "physical", at("2026-11-29T01:00"), 1),
             RetainedFacts("waiting", "physical", at("2026-11-30T03:00"), 1, status="waiting")]
    plan = plan_retention(snaps, RetentionConfig(keep_last=1), NOW)
    assert kept(plan) == ["waiting", "log", "phys"] and plan.remove == ["phys-old"]
    assert reasons(plan)["waiting"] == ["not restorable yet (waiting): kept, not counted"]
    assert reasons(plan)["phys"] == ["last 1"]


# -- the floor and the cap ------------------------------------------------------------------------


def test_the_floor_beats_every_rule_and_the_cap() -> None:
    times = [(NOW - timedelta(days=d)).isoformat() for d in (50, 40, 10, 1)]
    snaps = [RetainedFacts(f"s{i}", "logical", datetime.fromisoformat(t), 100) for i, t in enumerate(times)]
    plan = plan_retention(snaps, RetentionConfig(keep_last=1, min_age_days=30), NOW)
    assert kept(plan) == ["s3", "s2"] and plan.remove == ["s1", "s0"]
    assert reasons(plan)["s2"][0].startswith("min_age_days") and reasons(plan)["s3"] == ["last 1"]
    # Even a cap of 1 byte removes nothing younger than the floor: it can free only s0 and s1, too little.
    plan = plan_retention(snaps, RetentionConfig(keep_daily=-1, min_age_days=30, max_bytes=1), NOW)
    assert plan.remove == [] and plan.alert is not None and "max_bytes" in plan.alert
    assert "min_age_days 30" in plan.alert and "removed nothing" in plan.alert
    # A floor covering everything: nothing goes whatever the rules say.
    plan = plan_retention(snaps, RetentionConfig(keep_last=1, min_age_days=365), NOW)
    assert plan.remove == []


def test_the_cap_removes_the_oldest_kept_first_until_under_it() -> None:
    snaps = facts("2026-11-25", "2026-11-26", "2026-11-27", "2026-11-28", "2026-11-29", size=100)
    plan = plan_retention(snaps, RetentionConfig(keep_daily=-1, max_bytes=250), NOW)
    assert plan.remove == ["s2", "s1", "s0"] and kept(plan) == ["s4", "s3"] and plan.kept_bytes == 200
    assert plan.alert is None
    assert reasons(plan)["s0"] == ["max_bytes: oldest over the 250 B cap (was kept by daily 2026-11-25)"]
    # Exactly at the cap: nothing goes.
    assert plan_retention(snaps, RetentionConfig(keep_daily=-1, max_bytes=500), NOW).remove == []
    # The rules' removals count first: keep_last 3 leaves 300 bytes, one more goes for a 200-byte cap.
    plan = plan_retention(snaps, RetentionConfig(keep_last=3, max_bytes=200), NOW)
    assert plan.remove == ["s2", "s1", "s0"] and reasons(plan)["s2"][0].startswith("max_bytes")
    # The newest snapshot is never the cap's: a cap below one snapshot alerts.
    plan = plan_retention(snaps, RetentionConfig(keep_last=1, max_bytes=50), NOW)
    assert plan.remove == ["s3", "s2", "s1", "s0"] and plan.alert is not None
    assert all(r == ["no rule keeps it"] for r in [reasons(plan)[s] for s in plan.remove])


# -- WAL retention (pure) -------------------------------------------------------------------------


def _lsn(segno: int, offset: int = 0x28, seg: int = SEG) -> str:
    return format_lsn(segno * seg + offset)


def test_wal_before_the_oldest_retained_physical_snapshot_goes_history_files_stay() -> None:
    archived = ([segment_file(1, n) for n in range(1, 13)] + [segment_file(2, n) for n in (3, 4, 10)]
                + ["00000002.history", "00000003.history", segment_file(1, 3) + ".partial",
                   segment_file(1, 4) + ".00000028.backup", segment_file(1, 5) + ".00000028.backup"])
    retained = [PhysicalStart("b", _lsn(9), 1), PhysicalStart("a", _lsn(5), 1), PhysicalStart("c", _lsn(10), 2)]
    plan = plan_wal_trim(retained, archived)
    assert plan.keep_from == segment_file(1, 5) and plan.oldest_snapshot == "a"
    assert plan.remove == [segment_file(1, 1), segment_file(1, 2), segment_file(1, 3),
                           segment_file(1, 3) + ".partial", segment_file(2, 3), segment_file(1, 4),
                           segment_file(1, 4) + ".00000028.backup", segment_file(2, 4)]
    kept_names = set(archived) - set(plan.remove)
    assert plan.kept == len(kept_names)
    assert {"00000002.history", "00000003.history", segment_file(1, 5) + ".00000028.backup"} <= kept_names
    # Point-in-time recovery of every retained snapshot: everything from its start segment on is still there.
    for snap in retained:
        start = parse_lsn(snap.start_lsn) // SEG
        needed = {n for n in archived if not n.endswith(".history") and parse_segment_name(n[:24])[1] >= start}
        assert needed and needed <= kept_names, snap
    # ... and nothing older than the oldest start is kept but the history files.
    assert all(n.endswith(".history") or parse_segment_name(n[:24])[1] >= 5 for n in kept_names)
    # Nothing retained: nothing goes, and the plan says why.
    plan = plan_wal_trim([], archived)
    assert plan.remove == [] and plan.note is not None and "no physical snapshot" in plan.note


def test_wal_trim_with_other_segment_sizes_and_higher_lsns() -> None:
    seg = 1024 * 1024
    archived = [segment_file(1, n, seg) for n in (4094, 4095, 4096, 4097)]  # crosses 0/FFFFFFFF
    plan = plan_wal_trim([PhysicalStart("a", _lsn(4096, 0x28, seg), 1, seg)], archived)
    assert plan.remove == [segment_file(1, 4094, seg), segment_file(1, 4095, seg)]
    assert plan.keep_from == "000000010000000100000000"


# -- end to end: the CLI --------------------------------------------------------------------------


def _enrol(setup: Setup) -> CodeBook:
    out = setup.cli("operator", "add", "alice", "--role", "admin", check=True)
    return CodeBook(secret_from_uri(out.stdout.strip().splitlines()[-1]), drift=2)


def _snapshot_ids(setup: Setup) -> list[str]:
    """The catalog's snapshots, read in-process (a CLI start costs seconds on a loaded machine)."""
    cat = open_catalog(setup.config.catalog)
    try:
        return [s.id for s in cat.snapshots()]
    finally:
        cat.close()


def test_forget_by_rules_dry_run_then_the_real_run(tmp_path: Path, make_warranty_db,  # type: ignore[no-untyped-def]
                                                   setup_factory) -> None:
    _, dsn = make_warranty_db(claims=200)
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo)], [{"name": "w", "dsn": dsn, "retention": {"keep_last": 1}},
                                                 {"name": "plain", "dsn": dsn}], security={"totp_drift_steps": 2})
    setup.cli("init", check=True)
    made = []
    for i in range(3):
        if i:
            time.sleep(1.1)  # distinct finished_at seconds: the order is the test's, not a tie-break's
        made.append(setup.cli("backup", "--db", "w", check=True).stdout.strip())
    newest, older = made[-1], made[:-1]

    out = setup.cli("forget", "--db", "plain")
    assert out.returncode == 2 and "add `retention:`" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    for args in (("forget",), ("forget", newest[:8], "--db", "w")):
        out = setup.cli(*args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, (args, out.stderr)

    out = setup.cli("forget", "--db", "w", "--dry-run")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:] if not line.startswith("WAL")}
    assert set(rows) == {s[:8] for s in made}
    assert "keep" in rows[newest[:8]] and "last 1" in rows[newest[:8]]
    assert all("would go" in rows[s[:8]] and "no rule keeps it" in rows[s[:8]] for s in older)
    assert "WAL: nothing to delete: the repository archives no WAL" in out.stdout
    assert "nothing was changed" in out.stderr
    plan = json.loads(setup.cli("forget", "--db", "w", "--dry-run", "--json", check=True).stdout)
    assert set(plan["remove"]) == set(older) and plan["forgotten"] == [] and plan["dry_run"]
    assert sorted(_snapshot_ids(setup)) == sorted(made)
    assert {p.name for p in (repo / "snapshots").iterdir()} == set(made)

    alice = _enrol(setup)
    me = ["--operator", "alice"]
    out = setup.cli("forget", "--db", "w", *me)  # not a dry run: needs a code
    assert out.returncode == 2 and "one-time code" in out.stderr
    assert sorted(_snapshot_ids(setup)) == sorted(made)
    out = setup.cli("forget", "--db", "w", "--json", *me, "--otp", alice.next())
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(out.stdout)["forgotten"]) == sorted(plan["remove"])
    assert _snapshot_ids(setup) == [newest]
    assert {p.name for p in (repo / "snapshots").iterdir()} == {newest}
    audit = json.loads(setup.cli("audit", "list", "--json", check=True).stdout)
    done = [e for e in audit if e["action"] == "snapshot.forget" and e["outcome"] == "succeeded"]
    assert len(done) == 1 and "retention of w: 2 snapshot(s)" in done[0]["subject"]
    # Nothing left to remove: no code needed, nothing changes.
    again = json.loads(setup.cli("forget", "--db", "w", "--json", *me, check=True).stdout)
    assert again["remove"] == [] and again["forgotten"] == [] and _snapshot_ids(setup) == [newest]


def test_forget_by_rules_trims_the_wal_the_forgotten_physical_snapshot_needed(  # type: ignore[no-untyped-def]
        tmp_path: Path, setup_factory) -> None:
    """A real WAL archive (segments 1-8) and two catalogued physical snapshots starting in segments 3 and 6:
    keep_last 1 forgets the older one, and segments 1-5 go from the target; the history file stays."""
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo)], [{"name": "pg", "dsn": "dbname=pg",
                                                  "retention": {"keep_last": 1}}],
                          security={"totp_drift_steps": 2})
    t0 = time.time() - 86400
    asyncio.run(archive_wal(setup.config, "local1", repo, {(1, n): t0 + n for n in range(1, 9)},
                            {"00000002.history": b"1\t0/3000000\tbefore 2000-01-01\n"}))
    old = physical_record("a" * 64, "pg", "2026-11-30T01:00:00+00:00", "2026-11-30T01:10:00+00:00", 3, 4)
    new = physical_record("b" * 64, "pg", "2026-12-01T01:00:00+00:00", "2026-12-01T01:10:00+00:00", 6, 7)
    add_snapshots(setup.dir / "catalog.db", [old, new])
    cat = open_catalog(setup.config.catalog)
    cat.learn_system("pg", str(SYSID))
    cat.close()

    def wal_files() -> set[str]:
        return {p.name for p in (repo / "wal").rglob("*") if p.is_file() and p.name != "cluster"}

    before = wal_files()
    dry: dict[str, Any] = json.loads(setup.cli("forget", "--db", "pg", "--dry-run", "--json", check=True).stdout)
    assert dry["remove"] == [old.id]
    assert dry["wal"]["remove"] == [segment_file(1, n) for n in range(1, 6)]
    assert dry["wal"]["keep_from"] == segment_file(1, 6) and wal_files() == before
    out = setup.cli("forget", "--db", "pg", "--dry-run", check=True)
    assert f"WAL: would delete 5 file(s) ({segment_file(1, 1)} to {segment_file(1, 5)})" in out.stdout

    # The scheduler's path: in-process, under a standing approval instead of a code (audited as the reason).
    async def run() -> RetentionReport:
        async with Engine(setup.config) as engine:
            return await apply_retention(engine.ctx, "pg", approved_by="approved retention rules of pg")

    rep = asyncio.run(run())
    assert rep.forgotten == [old.id] and rep.wal_deleted == 5 and not rep.dry_run
    assert wal_files() == {segment_file(1, n) for n in range(6, 9)} | {"00000002.history"}
    audit = json.loads(setup.cli("audit", "list", "--json", check=True).stdout)
    allowed = [e for e in audit if e["action"] == "snapshot.forget" and e["outcome"] == "allowed"]
    assert len(allowed) == 1 and "approved retention rules of pg" in json.dumps(allowed[0]), audit
    assert _snapshot_ids(setup) == [new.id]
