"""Per-target health (issue 12 part 4): every call to a target is timed and classified, `backstop targets` shows it,
and the dashboard warns about a target that fails."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from core.catalog.sqlite import SqliteCatalog
from core.config import LocalTargetConfig, load_config
from core.engine import Engine
from core.errors import ObjectNotFound
from core.insights.targets import summarise, target_health_alerts
from core.storage.health import TargetHealthState, bucket_of, bucket_upper_s, percentile
from core.storage.local import LocalStorage
from core.storage.metered import HealthMeter, MeteredStorage

from tests.fixtures.backstop import local_target, s3_target_dict
from tests.fixtures.s3 import new_bucket


def _targets(setup) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    out = json.loads(setup.cli("targets", "--json", check=True).stdout)
    return {t["name"]: t for t in out["targets"]}


def test_commands_record_health_per_target_and_a_dead_server_counts_for_its_target_only(  # type: ignore[no-untyped-def]
        tmp_path, s3_servers, s3_server_factory, make_warranty_db, setup_factory):
    _, dsn = make_warranty_db(claims=200)
    dying = s3_server_factory()
    setup = setup_factory([local_target(tmp_path / "repo"),
                           s3_target_dict(s3_servers[0], new_bucket(s3_servers[0]), "region-a"),
                           s3_target_dict(dying, new_bucket(dying), "offsite")],
                          [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    setup.cli("check", check=True)
    before = _targets(setup)
    assert list(before) == ["local1", "region-a", "offsite"]
    for name, t in before.items():
        assert t["calls_by_kind"]["put"] > 0 and t["calls_by_kind"]["list"] > 0, (name, t)
        assert t["bytes_written"] > 1000 and t["bytes_read"] > 0, (name, t)
        assert 0 < t["p50_s"] <= t["p95_s"] <= t["p99_s"] < 30, (name, t)
        assert sum(t["errors"].values()) == 0 and t["last_error"] is None, (name, t)
        assert t["last_write_ok_at"] and t["last_read_ok_at"], (name, t)
        # `check` listed the packs: the bytes stored are measured, and are at least what was written as packs.
        assert t["stored_bytes"] > 1000 and t["stored_objects"] > 3 and t["stored_measured_at"], (name, t)
    assert before["local1"]["type"] == "local" and before["offsite"]["type"] == "s3"
    assert before["region-a"]["region"] == "us-east-1" and before["local1"]["role"] == "primary"
    # Every target holds the same objects.
    assert before["local1"]["stored_objects"] == before["offsite"]["stored_objects"]

    dying.kill()
    out = setup.cli("backup", "--db", "warranty")
    assert out.returncode != 0 and "'offsite'" in out.stderr
    after = _targets(setup)
    assert after["offsite"]["errors"]["unreachable"] > 0 and after["offsite"]["errors_last_hour"] > 0
    assert after["offsite"]["last_error_class"] == "unreachable" and "offsite" in after["offsite"]["last_error"]
    for healthy in ("local1", "region-a"):
        assert sum(after[healthy]["errors"].values()) == 0, after[healthy]
        assert after[healthy]["calls"] > before[healthy]["calls"]  # the failed backup still used them
    table = setup.cli("targets", check=True).stdout
    assert "offsite" in table and "unreachable" in table and "local1" in table

    # The dashboard (the console's screen 1 reads the same) warns about the dead target only.
    async def dashboard() -> list[tuple[str, str]]:
        async with Engine(load_config(setup.path)) as engine:
            return [(a.kind, a.message) for a in (await asyncio.to_thread(engine.dashboard)).alerts]

    alerts = asyncio.run(dashboard())
    errs = [m for k, m in alerts if k == "target-errors"]
    assert len(errs) == 1 and "target offsite" in errs[0] and "unreachable" in errs[0], alerts


async def test_metered_storage_counts_outcomes_bytes_and_listings_and_flushes(tmp_path: Path) -> None:
    cat = SqliteCatalog(tmp_path / "catalog.db")
    flushed: list[int] = []

    def sink(windows, marks) -> None:  # type: ignore[no-untyped-def]
        flushed.append(len(windows))
        cat.record_target_health(windows, marks)

    meter = HealthMeter(sink)
    st = MeteredStorage(LocalStorage(LocalTargetConfig(type="local", name="t1", path=tmp_path / "repo")), meter)
    await st.prepare()
    await st.put("data/aa/one", b"x" * 1000)
    await st.put("data/bb/two", b"y" * 500)
    assert await st.get("data/aa/one") == b"x" * 1000
    assert await st.get_range("data/bb/two", 10, 20) == b"y" * 20
    assert await st.exists("data/zz/none") is False
    try:
        await st.get("data/zz/none")
    except ObjectNotFound:
        pass
    assert len(await st.list("data/")) == 2
    await st.delete("data/bb/two")
    assert st.root == st.inner.root  # type: ignore[attr-defined]  # backend extras stay reachable
    assert flushed == []  # nothing written to the catalog before a flush is due
    meter.flush()
    assert flushed == [6]  # put, get, get_range, exists, list, delete
    q = cat.open_queries()
    rows = {w.kind: w for w in q.target_health_windows(0)}
    assert rows["put"].calls == 2 and rows["put"].bytes_written == 1500 and rows["put"].outcomes == {}
    assert rows["get"].calls == 2 and rows["get"].outcomes == {"not_found": 1} and rows["get"].bytes_read == 1000
    assert rows["get_range"].bytes_read == 20 and rows["exists"].outcomes == {"not_found": 1}
    state = q.target_health_states()["t1"]
    assert state.last_error is None and state.stored_bytes == 1500 and state.stored_objects == 2
    # An absent object is an answer, not an error: no error recorded, no alert.
    config = load_config_with_target(tmp_path)
    (h,) = summarise(config, q.target_health_windows(0), q.target_health_states(), time.time())
    assert h.not_found == 2 and h.error_total == 0 and h.calls == 8
    # A due flush happens on the next call, without waiting for the job's end.
    meter.flush_every_s = 0.0
    await st.exists("data/aa/one")
    assert flushed == [6, 1]
    q.close()
    cat.close()


def load_config_with_target(tmp_path: Path):  # type: ignore[no-untyped-def]
    from core.config import parse_config

    return parse_config({"catalog": {"url": f"sqlite:///{tmp_path / 'c.db'}"},
                         "encryption": {"passphrase_env": "BACKSTOP_TEST_UNUSED"},
                         "targets": [{"name": "t1", "type": "local", "path": str(tmp_path / "repo")}],
                         "databases": []}, tmp_path / "b.yaml")


def test_percentiles_and_the_no_write_alert(tmp_path: Path) -> None:
    hist: dict[int, int] = {}
    for ms in [1] * 50 + [10] * 45 + [100] * 4 + [1000]:
        b = bucket_of(ms / 1000)
        hist[b] = hist.get(b, 0) + 1
    p50, p95, p99 = (percentile(hist, q) for q in (50, 95, 99))
    assert p50 == bucket_upper_s(0) and 0.010 <= p95 < 0.0125 and 0.100 <= p99 < 0.125  # type: ignore[operator]
    assert percentile({}, 50) is None
    config = load_config_with_target(tmp_path)
    now = time.time()
    stale = TargetHealthState("t1", last_write_ok_at=now - 7200)
    (h,) = summarise(config, [], {"t1": stale}, now)
    alerts = target_health_alerts([h], now, newest_backup_at=now - 60, known=["t1"])
    assert [a.kind for a in alerts] == ["target-no-write"] and "t1" in alerts[0].message
    # Written after the newest backup, or never measured: no alert.
    assert target_health_alerts([h], now, newest_backup_at=now - 9000, known=["t1"]) == []
    assert target_health_alerts([h], now, newest_backup_at=now - 60, known=[]) == []


def test_wrapper_overhead_per_call_is_small(tmp_path: Path) -> None:
    """The meter's bookkeeping per call, against the call itself (printed for the closing note)."""
    meter = HealthMeter(None)
    n = 20_000
    t0 = time.perf_counter()
    for i in range(n):
        meter.record("t1", "get", 0.001 * (i % 50), "ok", read=100)
    per_call = (time.perf_counter() - t0) / n
    print(f"meter overhead per call: {per_call * 1e6:.2f} us")
    assert per_call < 50e-6
