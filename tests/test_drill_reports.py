"""Drill reports an auditor accepts: rendered (Markdown, self-contained HTML with a chart, JSON), gathered by
quarter, keyed with a MAC and sealed into a real repository (a local target and a SeaweedFS one).

An edited report, an edited MAC, a damaged or missing sealed copy each fail `drill verify`, naming what is
wrong; `sync` and `repair` bring the sealed copies back; a lost catalog gets the reports back from
`catalog rebuild`.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from core.drills.model import FAILED, PASSED, DrillCheck, DrillReport, DrillStep
from core.engine import Engine
from core.errors import NotFound
from core.repository.keyring import retire_key, rotate_dek
from core.repository.reencrypt import reencrypt
from core.storage.factory import make_storages

from tests.doubles.faulty_storage import Fault, FaultyStorage
from tests.fixtures.backstop import Setup, local_target, s3_target_dict, write_setup
from tests.fixtures.s3 import SeaweedServer, new_bucket

T = TypeVar("T")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def _report(start: str, ok: bool = True, target: str = "local1", recovery_s: float = 42.5) -> DrillReport:
    t = _ts(start)
    did = f"warranty-{datetime.fromtimestamp(t, UTC):%Y%m%dT%H%M%SZ}"
    return DrillReport(
        id=did, db="warranty", kind="logical", snapshot_id="5e" * 32,
        snapshot_finished_at=datetime.fromtimestamp(t - 5400, UTC).isoformat(), target=target,
        sources=[{"target": target, "bytes": 9_000_000, "objects": 7, "failures": 0, "failed": None},
                 {"target": "offsite" if target == "local1" else "local1", "bytes": 1_000_000, "objects": 1,
                  "failures": 0, "failed": None}],
        point_reached=datetime.fromtimestamp(t - 5400, UTC).isoformat(), started_at=t, finished_at=t + 70,
        recovery_s=recovery_s, rto_s=1800.0, scheduled_by="schedule:quarterly-drill",
        verdict=PASSED if ok else FAILED, error=None if ok else "table public.claims: 299 rows, 300 expected",
        scratch=f"backstop_drill_{did}", scratch_removed=True,
        steps=[DrillStep("choose", 0.4), DrillStep("restore", recovery_s), DrillStep("integrity", 6.0),
               DrillStep("cleanup", 1.1)],
        checks=[DrillCheck("table public.claims", ok, "300 rows, digest matches" if ok else
                           "299 rows, 300 expected"),
                DrillCheck("rto", True, f"{recovery_s:.0f} s of 1800 s")],
        host="db-drill-1", backstop_version="0.9.0")


def _engine(setup: Setup, fn: Callable[[Engine], Awaitable[T]]) -> T:
    """``fn(engine)`` in process, for what needs no second look through the CLI (that is done once each)."""
    async def go() -> T:
        async with Engine(setup.config) as engine:
            return await fn(engine)
    return asyncio.run(go())


def _verified(setup: Setup, *ids: str) -> list[list[str]]:
    """The targets each report's sealed copy verifies on, raising on a problem."""
    async def go(engine: Engine) -> list[list[str]]:
        found = [await engine.drill_verify(i) for i in ids]
        assert all(v.ok for v in found), [v.problems for v in found]
        return [v.sealed_on for v in found]
    return _engine(setup, go)


async def _each(fn: Callable[[DrillReport], Awaitable[T]], reports: list[DrillReport]) -> list[T]:
    return [await fn(r) for r in reports]


async def _async(value: T) -> T:
    return value


def _problems(setup: Setup, drill_id: str) -> str:
    """What `drill verify` would print for a report that fails (one problem a line)."""
    async def go(engine: Engine) -> str:
        found = await engine.drill_verify(drill_id)
        assert not found.ok
        return "\n".join(found.problems)
    return _engine(setup, go)


def _sql(setup: Setup, statement: str, *args: Any) -> None:
    with sqlite3.connect(setup.dir / "catalog.db") as db:
        db.execute(statement, args)


def _one_line_error(proc: Any, code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


def test_reports_render_seal_verify_and_survive_a_lost_catalog(tmp_path: Path,
                                                                s3_servers: list[SeaweedServer]) -> None:
    server = s3_servers[0]
    bucket = new_bucket(server)
    home = tmp_path / "home"
    setup = write_setup(tmp_path / "cfg", [local_target(home, "local1"), s3_target_dict(server, bucket, "offsite")],
                        [{"name": "warranty", "dsn": "postgresql://backup@127.0.0.1:1/warranty"}])
    setup.cli("init", check=True)
    q3 = _report("2026-08-03T02:00:00", recovery_s=30.0)
    passed = _report("2026-10-01T02:00:00", target="offsite")
    failed = _report("2026-11-02T02:00:00", ok=False, recovery_s=2100.0)
    published = _engine(setup, lambda e: _each(e.drill_publish, [q3, passed, failed]))
    assert [name for _, name in published] == [f"drills/{r.id}" for r in (q3, passed, failed)]
    assert all(re.fullmatch(r"1:[0-9a-f]{64}", mac) for mac, _ in published)
    s3 = server.client()
    assert (home / "drills" / failed.id).is_file()
    assert s3.get_object(Bucket=bucket, Key=f"drills/{failed.id}")["Body"].read() == \
        (home / "drills" / failed.id).read_bytes()

    # A unique prefix verifies, naming both targets.
    ok = setup.cli("drill", "verify", failed.id[:-3], check=True)
    assert ok.stdout.strip() == f"report {failed.id}: MAC verifies, sealed copy on local1, offsite matches"

    # One self-contained HTML file: the chart inline, nothing fetched from outside, the facts an auditor needs.
    page = setup.cli("drill", "report", failed.id, "--format", "html", check=True).stdout
    assert page.count("<svg") == 1 and "</html>" in page
    refs = re.findall(r"""(?:src|href)=["']([^"']*)""", page) + re.findall(r"url\(([^)]*)\)", page)
    outside = [u for u in refs if not u.strip("'\"").startswith("#")]
    assert outside == [] and "<script" not in page and "@import" not in page, outside
    without_ns = re.sub(r"""xmlns(?::\w+)?=["'][^"']*["']""", "", page)
    assert "http://" not in without_ns and "https://" not in without_ns
    assert "FAILED" in page and "class='verdict failed'" in page
    assert "local1" in page and "RTO of 30m 00s" in page and "OVER the RTO" in page
    assert published[2][0] in page and "299 rows, 300 expected" in page
    md = _engine(setup, lambda e: e.drill_report(failed.id, fmt="md"))
    assert "| Check | Result | Detail |" in md and "| table public.claims | FAIL | 299 rows, 300 expected |" in md
    assert "| restore | 2100.0 s |" in md and published[2][0] in md
    doc = json.loads(_engine(setup, lambda e: e.drill_report(passed.id, fmt="json")))
    assert doc["mac"] == published[1][0] and doc["sealed"] == f"drills/{passed.id}" and doc["verdict"] == "passed"

    # The quarter: exactly its drills (the Q3 one left out), the summary, a chart for the database.
    quarter = json.loads(_engine(setup, lambda e: e.drill_report(quarter="2026Q4", fmt="json")))
    assert [r["id"] for r in quarter["reports"]] == [passed.id, failed.id]
    assert quarter["passed"] == 1 and quarter["drills"] == 2
    assert quarter["proven"] == {"local1": False, "offsite": True} and quarter["worst"]["id"] == failed.id
    qmd = _engine(setup, lambda e: e.drill_report(quarter="2026Q4"))
    assert "1 of 2 drill(s) passed" in qmd and q3.id not in qmd and passed.id in qmd and failed.id in qmd
    qhtml = setup.cli("drill", "report", "--quarter", "2026q4", "--db", "warranty", "--format", "html",
                      check=True).stdout
    assert qhtml.count("<svg") == 1 and q3.id not in qhtml.split("<h2>Recovery time")[0]
    q3doc = json.loads(_engine(setup, lambda e: e.drill_report(quarter="2026Q3", fmt="json")))
    assert [r["id"] for r in q3doc["reports"]] == [q3.id]

    # Bad input: one line each, exit 2.
    _one_line_error(setup.cli("drill", "report", "--quarter", "2026Q5"), 2, "2026Q5")
    _one_line_error(setup.cli("drill", "verify", "warranty-2026"), 2, "matches 3 reports")
    for unknown in ("warranty-1999", "nothing-like-it"):
        with pytest.raises(NotFound, match="no drill report") as exc:
            _engine(setup, partial(Engine.drill_verify, ref=unknown))
        assert exc.value.exit_code == 2

    # The repository is clean with drill reports in it.
    check = setup.cli("check", "--read-data")
    assert check.returncode == 0, check.stdout + check.stderr

    # An edited report: the verdict turned around in the catalog.
    _sql(setup, "UPDATE drills SET report = json_set(report, '$.verdict', 'passed') WHERE id = ?", failed.id)
    edited = setup.cli("drill", "verify", failed.id)
    assert edited.returncode == 1
    assert "does not match its MAC" in edited.stderr
    assert "verdict ('passed' in the catalog, 'failed' sealed)" in edited.stderr
    _sql(setup, "UPDATE drills SET report = json_set(report, '$.verdict', 'failed') WHERE id = ?", failed.id)
    assert _verified(setup, failed.id) == [["local1", "offsite"]]
    # An edited MAC.
    _sql(setup, "UPDATE drills SET mac = ? WHERE id = ?", "1:" + "0" * 64, failed.id)
    forged = _problems(setup, failed.id)
    assert "the MAC was edited in the catalog" in forged and "does not match its MAC" in forged
    _sql(setup, "UPDATE drills SET mac = ? WHERE id = ?", published[2][0], failed.id)

    # A damaged sealed copy on local1, a missing one on offsite: each named.
    sealed_file = home / "drills" / passed.id
    sealed_file.write_bytes(sealed_file.read_bytes()[:-5] + b"xxxxx")
    s3.delete_object(Bucket=bucket, Key=f"drills/{failed.id}")
    assert f"drills/{passed.id} on target 'local1' is damaged" in _problems(setup, passed.id)
    gone = setup.cli("drill", "verify", failed.id)
    assert gone.returncode == 1 and f"drills/{failed.id} is missing on target 'offsite'" in gone.stderr
    found = _engine(setup, lambda e: e.check(read_data=True))
    problems = "\n".join(p for r in found.reports for p in r.problems)
    assert f"drills/{passed.id} is damaged" in problems and "1 drills" in problems, problems
    # sync copies what offsite lacks; repair rewrites local1's damaged copy.
    synced = json.loads(setup.cli("sync", "--json", check=True).stdout)
    assert {t["target"]: t["objects"] for t in synced["targets"]} == {"local1": 0, "offsite": 1}
    assert s3.get_object(Bucket=bucket, Key=f"drills/{failed.id}")["Body"].read() == \
        (home / "drills" / failed.id).read_bytes()
    assert _engine(setup, lambda e: e.repair()).ok
    assert _verified(setup, q3.id, passed.id, failed.id) == [["local1", "offsite"]] * 3

    # The catalog lost: the sealed copies verify alone, and `catalog rebuild` brings the reports back.
    for suffix in ("", "-wal", "-shm"):
        (setup.dir / f"catalog.db{suffix}").unlink(missing_ok=True)
    alone = setup.cli("drill", "verify", failed.id, check=True)
    assert "verified from the sealed copies alone" in alone.stdout
    with pytest.raises(NotFound, match="catalog rebuild"):
        _engine(setup, lambda e: e.drill_report(failed.id))
    notes = _engine(setup, lambda e: e.check()).notes
    assert any("3 drill report(s) in the repository are not in the catalog" in n for n in notes), notes
    rebuilt = setup.cli("catalog", "rebuild", "--json", check=True)
    assert json.loads(rebuilt.stdout)["drills"] == 3
    assert _verified(setup, q3.id, passed.id, failed.id) == [["local1", "offsite"]] * 3
    written = setup.cli("drill", "report", failed.id, "--json", "-o", str(tmp_path / "r.json"), check=True)
    assert written.stdout == "" and "wrote" in written.stderr
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["mac"] == published[2][0] and again["verdict"] == "failed"


def test_a_target_failing_the_write_leaves_the_report_sealed_on_the_other(tmp_path: Path, caplog: Any) -> None:
    """Sealing tolerates a failing target (a warning names it); verify names the missing copy until sync."""
    targets = [local_target(tmp_path / "a", "local1"), local_target(tmp_path / "b", "near")]
    setup = write_setup(tmp_path / "cfg", targets, [{"name": "warranty", "dsn": "postgresql://backup@127.0.0.1:1/w"}])
    setup.cli("init", check=True)
    report = _report("2026-12-01T02:00:00")
    inner = make_storages(setup.config.targets)
    faulty = FaultyStorage(inner[1], faults=[Fault("put", "fail", prefix="drills/", unreachable=True)])

    async def go() -> tuple[tuple[str, str], Any]:
        async with Engine(setup.config, storages=[inner[0], faulty]) as engine:
            sealed = await engine.drill_publish(report)
            return sealed, await engine.drill_verify(report.id[:12])

    with caplog.at_level("WARNING", logger="backstop"):
        (mac, name), verification = asyncio.run(go())
    assert "not sealed on target 'near'" in caplog.text and "backstop sync" in caplog.text
    assert (tmp_path / "a" / name).is_file() and not (tmp_path / "b" / name).exists()
    assert verification.problems == [f"the sealed copy {name} is missing on target 'near'"]
    assert verification.sealed_on == ["local1"]
    setup.cli("sync", check=True)
    assert _verified(setup, report.id) == [["local1", "near"]]
    row = _engine(setup, lambda e: _async(e.catalog.drill(report.id)))
    assert row is not None and row[1] == mac and row[2] == name
    # A new data key: the old report still verifies; a new one records the new key version in its MAC.
    async def rotate(engine: Engine) -> None:  # the key operation itself (`key rotate` adds the gate and audit)
        await rotate_dek(await engine.open_repository(), engine.config.encryption.passphrase())

    _engine(setup, rotate)
    later = _report("2026-12-02T02:00:00")
    new_mac, _ = _engine(setup, lambda e: e.drill_publish(later))
    assert mac.startswith("1:") and new_mac.startswith("2:")
    assert _verified(setup, report.id, later.id) == [["local1", "near"]] * 2

    # Data key 1 re-encrypted away and retired: the sealed copy moved to key 2, its MAC (key 1's) still verifies.
    async def retire(engine: Engine) -> int:
        repo = await engine.open_repository()
        moved = await reencrypt(repo, {1}, engine.ctx.pool, lambda _old, _new: _async(None))
        await retire_key(repo, 1)
        return moved.records

    assert _engine(setup, retire) >= 2  # both targets' copies of the first report (audit copies may add more)
    assert not (tmp_path / "a" / "keys" / "dek-00000001").exists()
    assert _verified(setup, report.id, later.id) == [["local1", "near"]] * 2


def test_a_drill_that_failed_before_choosing_a_snapshot_still_renders() -> None:
    from dataclasses import replace

    from core.drills.report import html_report, markdown

    early = replace(_report("2026-11-02T02:00:00"), snapshot_id="", snapshot_finished_at="", point_reached="",
                    verdict=FAILED, error="no restorable logical snapshot of warranty to drill", checks=[],
                    steps=[DrillStep("choose", 0.1)])
    assert early.snapshot_age_s is None
    md = markdown((early, None, None))
    assert "none chosen" in md and "FAILED" in md and "no restorable logical snapshot" in md
    assert "none chosen" in html_report((early, None, None))
