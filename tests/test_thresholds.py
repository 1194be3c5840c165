"""Activity thresholds (issue 14): config, sampling a real database, which threshold fires, the baseline file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from core.errors import ConfigError
from core.fleet.thresholds import (
    Activity,
    BaselineStore,
    RowLimit,
    ThresholdsConfig,
    crossed,
    parse_thresholds,
    sample,
)
from core.postgres.cluster import LocalCluster


@pytest.fixture
def db(pg_cluster: LocalCluster) -> Iterator[str]:
    """A fresh empty database's DSN, with a 1,000-row table ``t``; dropped afterwards."""
    name = f"thr_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    try:
        dsn = pg_cluster.dsn(name)
        write(dsn, "CREATE TABLE t (id int PRIMARY KEY, pad text)",
              "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g")
        yield dsn
    finally:
        pg_cluster.drop_database(name)


def write(dsn: str, *stmts: str) -> None:
    """Run ``stmts`` and flush this session's table counters to the shared stats before returning."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in stmts:
            conn.execute(s)
        # PG15+: a backend flushes its pending counters when it goes idle, at most once a second; forced, the
        # flush happens before this statement's ReadyForQuery, so the next sample() sees the writes.
        conn.execute("SELECT pg_stat_force_next_flush()")


def act(lsn: int = 0, rows: int = 0, live: int = 0, at: float = 1_000_000.0) -> Activity:
    return Activity(wal_lsn=lsn, changed_rows=rows, live_rows=live, at=at)


# --- config -------------------------------------------------------------------------------------------------

def test_config_accepts_the_issue_example_and_plain_forms() -> None:
    cfg = parse_thresholds({"wal_bytes": "4GB", "changed_rows": "5%", "max_age": "26h"})
    assert cfg.wal_bytes == 4 * 10**9
    assert cfg.changed_rows == RowLimit(5.0, percent=True)
    assert cfg.max_age == timedelta(hours=26)
    cfg = parse_thresholds({"wal_bytes": "512MiB", "changed_rows": 200000})
    assert (cfg.wal_bytes, cfg.changed_rows, cfg.max_age) == (512 * 2**20, RowLimit(200000, False), None)
    assert parse_thresholds({"changed_rows": "200000", "wal_bytes": 65536}).changed_rows == RowLimit(200000, False)
    assert parse_thresholds({"changed_rows": "2.5%"}).changed_rows.rows(1000) == 25  # type: ignore[union-attr]
    # Written back as an operator writes it.
    assert cfg.model_dump(mode="json") == {"wal_bytes": 512 * 2**20, "changed_rows": "200000", "max_age": None}


@pytest.mark.parametrize(("data", "where", "expected"), [
    ({"wal_bytes": "4XB"}, "fleet.thresholds.wal_bytes", "expected a size like"),
    ({"wal_bytes": 0}, "fleet.thresholds.wal_bytes", "above zero"),
    ({"changed_rows": "5 percent"}, "fleet.thresholds.changed_rows", "percentage like 5%"),
    ({"changed_rows": "150%"}, "fleet.thresholds.changed_rows", "at most 100%"),
    ({"changed_rows": "0%"}, "fleet.thresholds.changed_rows", "above 0%"),
    ({"changed_rows": 0}, "fleet.thresholds.changed_rows", "at least 1"),
    ({"changed_rows": 2.5}, "fleet.thresholds.changed_rows", "whole number"),
    ({"changed_rows": True}, "fleet.thresholds.changed_rows", "row count like"),
    ({"max_age": "soon"}, "fleet.thresholds.max_age", "duration like"),
    ({"max_age": 0}, "fleet.thresholds.max_age", "above zero"),
    ({"max_age": "26h", "wal": 1}, "fleet.thresholds.wal", "unknown key"),
    ({}, "fleet.thresholds", "set at least one of wal_bytes, changed_rows, max_age"),
    ({"max_age": None}, "fleet.thresholds", "set at least one"),
    ("26h", "fleet.thresholds", "expected a mapping"),
])
def test_config_errors_name_the_key_and_what_was_expected(data: object, where: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_thresholds(data, "fleet.thresholds")
    assert str(err.value).startswith(f"{where}: "), str(err.value)
    assert expected in str(err.value)
    assert "Value error" not in str(err.value)


def test_config_model_reports_the_field_inside_a_larger_config() -> None:
    from pydantic import ValidationError
    with pytest.raises(ValidationError) as err:
        ThresholdsConfig.model_validate({"changed_rows": "lots"})
    assert err.value.errors()[0]["loc"] == ("changed_rows",)


# --- crossed() without a server -------------------------------------------------------------------------------

def test_max_age_fires_first_and_without_a_baseline() -> None:
    cfg = ThresholdsConfig(max_age="26h", wal_bytes=1)  # type: ignore[arg-type]
    now = act(lsn=10**9, at=1_000_000.0)
    fired = crossed(cfg, None, now, None)
    assert fired is not None and (fired.threshold, fired.reason) == ("max_age", "max_age: no successful snapshot yet")
    fired = crossed(cfg, act(), now, now.at - 27 * 3600)
    assert fired is not None and fired.threshold == "max_age"  # before wal_bytes, which is crossed too
    assert fired.reason == "max_age: 1d 3h since the last successful snapshot (limit 1d 2h)"
    assert crossed(cfg, None, now, now.at - 25 * 3600) is None  # young, and no baseline yet
    assert crossed(ThresholdsConfig(max_age="26h"), act(), now, now.at - 3600) is None  # type: ignore[arg-type]


def test_without_max_age_the_first_sample_only_becomes_the_baseline() -> None:
    cfg = ThresholdsConfig(wal_bytes=1, changed_rows=1)  # type: ignore[arg-type]
    assert crossed(cfg, None, act(lsn=10**12, rows=10**9), None) is None


def test_wal_before_rows_and_reasons() -> None:
    cfg = ThresholdsConfig(wal_bytes="1MiB", changed_rows="5%")  # type: ignore[arg-type]
    base = act(lsn=2**30, rows=500, live=1_000_000)
    fired = crossed(cfg, base, act(lsn=2**30 + 3 * 2**20, rows=500 + 61_204, live=1_000_000), None)
    assert fired is not None and fired.reason == ("wal_bytes: 3.0 MiB of WAL written since the last snapshot "
                                                  "(limit 1.0 MiB)")
    fired = crossed(cfg, base, act(lsn=2**30 + 100, rows=500 + 61_204, live=1_000_000), None)
    assert fired is not None and fired.to_json() == {
        "threshold": "changed_rows",
        "reason": "changed_rows: 61,204 rows changed since the last snapshot (limit 5% of 1,000,000 = 50,000)"}
    assert crossed(cfg, base, act(lsn=2**30 + 100, rows=500 + 49_999, live=1_000_000), None) is None


def test_counters_below_the_baseline_are_a_reset_counted_from_zero() -> None:
    cfg = ThresholdsConfig(changed_rows=1000, wal_bytes="1GB")  # type: ignore[arg-type]
    base = act(lsn=5 * 10**9, rows=10**6, live=10**6)
    # After pg_stat_reset(): 1,200 rows changed since, n_live_tup 0 until the next ANALYZE.
    fired = crossed(cfg, base, act(lsn=5 * 10**9 + 10, rows=1_200, live=0), None)
    assert fired is not None and fired.threshold == "changed_rows"
    assert "1,200 rows changed" in fired.reason and "counters reset" in fired.reason
    assert crossed(cfg, base, act(lsn=5 * 10**9 + 10, rows=999, live=0), None) is None
    # A percent limit keeps its size through the reset (the baseline's live rows, not 0).
    pct = ThresholdsConfig(changed_rows="5%")  # type: ignore[arg-type]
    assert crossed(pct, base, act(rows=1_200, live=0), None) is None
    # WAL position behind the baseline: the database was replaced (a restore); counted from zero.
    fired = crossed(cfg, base, act(lsn=2 * 10**9, rows=10**6, live=10**6), None)
    assert fired is not None and fired.threshold == "wal_bytes" and "counters reset" in fired.reason


# --- against a real database ----------------------------------------------------------------------------------

async def test_sample_counts_inserts_updates_and_deletes(db: str) -> None:
    first = await sample(db)
    assert first.changed_rows >= 1000 and first.live_rows == 1000 and not first.standby
    assert first.wal_lsn > 0
    write(db, "INSERT INTO t SELECT g, 'y' FROM generate_series(1001, 1100) g")
    second = await sample(db)
    assert (second.changed_rows - first.changed_rows, second.live_rows) == (100, 1100)
    write(db, "UPDATE t SET pad = 'z' WHERE id <= 30")
    third = await sample(db)
    assert third.changed_rows - second.changed_rows == 30
    write(db, "DELETE FROM t WHERE id > 1050")
    fourth = await sample(db)
    assert (fourth.changed_rows - third.changed_rows, fourth.live_rows) == (50, 1050)
    assert fourth.wal_lsn > third.wal_lsn > second.wal_lsn > first.wal_lsn
    assert fourth.at >= first.at


async def test_changed_rows_percent_fires_after_deleting_ten_percent(db: str) -> None:
    cfg = ThresholdsConfig(changed_rows="5%")  # type: ignore[arg-type]
    base = await sample(db)
    write(db, "DELETE FROM t WHERE id <= 40")
    assert crossed(cfg, base, await sample(db), None) is None  # 40 < 50
    write(db, "DELETE FROM t WHERE id > 40 AND id <= 100")
    fired = crossed(cfg, base, await sample(db), None)
    assert fired is not None and fired.reason == ("changed_rows: 100 rows changed since the last snapshot "
                                                  "(limit 5% of 1,000 = 50)")


async def test_wal_bytes_fires_after_enough_wal(db: str) -> None:
    cfg = ThresholdsConfig(wal_bytes="64kB")  # type: ignore[arg-type]
    base = await sample(db)
    assert crossed(cfg, base, await sample(db), None) is None
    write(db, "INSERT INTO t SELECT g, repeat('w', 1000) FROM generate_series(2001, 2200) g")  # ~200 kB of WAL
    fired = crossed(cfg, base, await sample(db), None)
    assert fired is not None and fired.threshold == "wal_bytes", fired
    assert fired.reason.endswith("(limit 62.5 KiB)")


async def test_stats_reset_on_a_real_database(db: str) -> None:
    cfg = ThresholdsConfig(changed_rows=20)  # type: ignore[arg-type]
    base = await sample(db)
    write(db, "SELECT pg_stat_reset()", "UPDATE t SET pad = 'r' WHERE id <= 25")
    now = await sample(db)
    assert now.changed_rows == 25 < base.changed_rows
    fired = crossed(cfg, base, now, None)
    assert fired is not None and fired.reason.startswith("changed_rows: 25 rows changed")
    assert "counters reset" in fired.reason


async def test_a_hot_standby_is_sampled_by_the_wal_it_replayed(pg_cluster: LocalCluster, db: str) -> None:
    """An agent beside a standby: pg_current_wal_insert_lsn() is refused there, the replayed WAL counts."""
    root = Path(tempfile.mkdtemp(prefix="backstop-test-standby-"))  # not under pytest's tmp (its modes get reset)
    data = root / "data"
    try:
        # A streaming copy of the test cluster (-R: standby.signal and primary_conninfo), handed to its account.
        made = subprocess.run([str(pg_cluster.bin_dir / "pg_basebackup"), "-d", pg_cluster.dsn(), "-D", str(data),
                               "-R", "-X", "stream", "-c", "fast"], capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        with psycopg.connect(pg_cluster.dsn()) as conn:  # a hot standby needs at least the primary's
            row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'max_connections'").fetchone()
        assert row is not None
        standby = LocalCluster(data, settings={"fsync": "off", "hot_standby": "on", "max_connections": row[0]})
        if standby.owner is not None:
            for path in [data, *data.rglob("*")]:
                os.chown(path, *standby.owner, follow_symlinks=False)
        data.chmod(0o700)
        standby.start()
        try:
            name = db.rsplit("/", 1)[1].split("?")[0]
            dsn = standby.dsn(name)
            first = await sample(dsn)
            assert first.standby and first.wal_lsn > 0
            cfg = ThresholdsConfig(wal_bytes="64kB")  # type: ignore[arg-type]
            write(db, "INSERT INTO t SELECT g, repeat('s', 1000) FROM generate_series(3001, 3200) g")  # on the primary
            deadline = time.monotonic() + 30
            while (now := await sample(dsn)).wal_lsn - first.wal_lsn < 64_000:
                assert time.monotonic() < deadline, "the standby never replayed the primary's writes"
                await asyncio.sleep(0.1)
            assert now.standby and now.changed_rows == first.changed_rows  # row counters are not replicated
            fired = crossed(cfg, first, now, None)
            assert fired is not None and fired.threshold == "wal_bytes", fired
        finally:
            standby.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the baseline file -----------------------------------------------------------------------------------------

def test_baseline_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "baselines.json"
    store = BaselineStore(path)
    assert store.get("sales") is None and not path.exists()
    a = Activity(wal_lsn=2**40, changed_rows=123, live_rows=456, at=1_700_000_000.25, standby=True)
    store.set("sales", a)
    store.set("hr", act(lsn=1))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["baselines.json"]  # no temp file left behind
    again = BaselineStore(path)
    assert again.get("sales") == a and again.all() == {"sales": a, "hr": act(lsn=1)}
    again.drop("hr")
    assert BaselineStore(path).all() == {"sales": a}


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"databases": {"x": {"wal_lsn": "1"}}}', b"\xff\xfe"],
                         ids=["not-json", "not-a-mapping", "bad-entry", "not-utf8"])
def test_baseline_store_starts_fresh_on_a_corrupt_file(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                       content: bytes) -> None:
    path = tmp_path / "baselines.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="core.fleet.thresholds"):
        store = BaselineStore(path)
    assert store.all() == {}
    assert any("starting fresh" in r.getMessage() for r in caplog.records)
    store.set("sales", act(rows=7))
    assert json.loads(path.read_text())["databases"]["sales"]["changed_rows"] == 7
