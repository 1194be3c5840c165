"""Job events on the bus and in the catalog; the catalog can be rebuilt from the repository."""

from __future__ import annotations

import json

import pytest
from core.engine import Engine
from core.errors import PostgresError
from core.events import JobFinished, JobStarted, PhaseChanged, Progress

from tests.fixtures.backstop import local_target
from tests.fixtures.catalogs import lose_catalog

# Catalog-heavy: every test runs with the catalog on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_catalogs


async def test_backup_emits_typed_events_recorded_in_catalog(tmp_path, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=20_000)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn},
                                                              {"name": "broken", "dsn": dsn + "_nonexistent"}],
                          repository={"chunk_avg_kib": 64, "pack_target_mib": 1})
    seen: list = []
    async with Engine(setup.config) as engine:
        engine.bus.subscribe(seen.append)
        await engine.init()
        rec = await engine.backup("warranty")
        with pytest.raises(PostgresError):
            await engine.backup("broken")
        jobs = {j.db: j for j in engine.catalog.jobs()}
        events = engine.catalog.job_events(rec.job_id)  # type: ignore[arg-type]

    started = [e for e in seen if isinstance(e, JobStarted)]
    assert [e.db for e in started] == ["warranty", "broken"]
    phases = [e.phase for e in seen if isinstance(e, PhaseChanged) and e.job_id == rec.job_id]
    assert phases[:1] == ["connect"] and "dump" in phases and phases[-1] == "commit"
    progress = [e for e in seen if isinstance(e, Progress) and e.job_id == rec.job_id]
    assert progress and progress[-1].bytes_done == rec.size_bytes
    assert all(p.bytes_total and p.bytes_total >= p.bytes_done for p in progress)
    assert any(p.rate > 0 for p in progress)
    finished = [e for e in seen if isinstance(e, JobFinished)]
    assert [(e.outcome, bool(e.error)) for e in finished] == [("succeeded", False), ("failed", True)]

    assert jobs["warranty"].state == "succeeded" and jobs["warranty"].bytes_done == rec.size_bytes
    assert jobs["broken"].state == "failed" and "cannot connect" in (jobs["broken"].error or "")
    types = [t for _, _, t, _ in events]
    assert types[0] == "JobStarted" and types[-1] == "JobFinished" and "Progress" in types


def test_catalog_rebuild_from_repository(tmp_path, make_warranty_db, setup_factory):  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=300)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    ids = {setup.cli("backup", "--db", "warranty", check=True).stdout.strip() for _ in range(2)}
    before = json.loads(setup.cli("snapshots", "--json", check=True).stdout)
    lose_catalog(setup.config.catalog.url, setup.dir)
    assert json.loads(setup.cli("snapshots", "--json", check=True).stdout) == []
    out = setup.cli("catalog", "rebuild", check=True)
    assert "2 snapshot(s)" in out.stdout
    after = json.loads(setup.cli("snapshots", "--json", check=True).stdout)
    assert {s["id"] for s in after} == ids
    strip = lambda rows: [{k: v for k, v in r.items() if k != "job_id"} for r in rows]  # noqa: E731
    by_id = lambda rows: sorted(strip(rows), key=lambda r: r["id"])  # noqa: E731
    assert by_id(after) == by_id(before)
