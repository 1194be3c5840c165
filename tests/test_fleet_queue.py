"""The fleet's job queue on a real PostgreSQL catalog, with each agent in a login role of its own:
an agent claims only its jobs, cannot touch another's, cannot read the operators or write the audit log;
a lapsed lease is reaped and its old token is refused; a slot is queued once; one running job per database.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from core.catalog.pg_fleet import ADVISORY_LOCK_FUNCTIONS
from core.catalog.postgres import PostgresCatalog
from core.catalog.sqlite import SqliteCatalog
from core.events import JobFinished, JobStarted, Progress
from core.fleet.dispatch import ORPHAN_AFTER_S, settle_runs
from core.fleet.leader import LEADER_LOCK_KEY
from core.fleet.queue import AgentSession, ControlPlane
from core.fleet.records import JobLog, file_reports
from core.postgres.cluster import LocalCluster


def _as(url: str, role: str) -> psycopg.Connection[Any]:
    # The test cluster trusts loopback logins: the role is who the server sees (session_user).
    return psycopg.connect(url.replace("postgresql://postgres@", f"postgresql://{role}@"), autocommit=True)


@pytest.fixture
def fleet(pg_catalog_url: Callable[[], str], pg_cluster: LocalCluster) -> Iterator[dict[str, Any]]:
    url = pg_catalog_url()
    cat = PostgresCatalog(url)  # migrates: the fleet schema and the agent group come with version 3
    owner = psycopg.connect(url, autocommit=True)
    plane = ControlPlane(owner)
    suffix = uuid.uuid4().hex[:8]
    roles = {"a": f"agent_a_{suffix}", "b": f"agent_b_{suffix}"}
    conns: list[psycopg.Connection[Any]] = []
    try:
        for name, role in roles.items():
            plane.create_agent_role(role)
            plane.register_agent(f"host-{name}", role, ["warranty"] if name == "a" else ["billing"])
        for role in roles.values():
            conns.append(_as(url, role))
        yield {"plane": plane, "a": AgentSession(conns[0]), "b": AgentSession(conns[1]), "raw_a": conns[0],
               "owner": owner, "cat": cat}
    finally:
        for c in conns:
            c.close()
        owner.close()
        cat.close()
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as su:
            for role in roles.values():
                su.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_an_agent_claims_only_its_own_jobs_and_cannot_touch_anything_else(fleet: dict[str, Any]) -> None:
    plane, a, b = fleet["plane"], fleet["a"], fleet["b"]
    a1 = plane.enqueue("host-a", "backup", "warranty", {"type": "logical"})
    b1 = plane.enqueue("host-b", "backup", "billing")
    assert a1 is not None and b1 is not None

    got_a = a.claim()
    assert got_a is not None and (got_a.id, got_a.kind, got_a.args, got_a.attempt) == (a1, "backup",
                                                                                      {"type": "logical"}, 1)
    assert a.claim() is None  # b's job is not a's to take
    got_b = b.claim()
    assert got_b is not None and got_b.id == b1 and got_b.lease_token != got_a.lease_token

    # a holds b's job id and even its lease token: the functions still refuse, the job stays b's.
    assert a.heartbeat(got_b, {"bytes_done": 1}) is False and a.finish(got_b, ok=True) is False
    assert plane.job(b1).state == "running"  # type: ignore[union-attr]
    assert b.heartbeat(got_b, {"bytes_done": 5}) is True and b.finish(got_b, ok=True) is True
    assert plane.job(b1).state == "succeeded"  # type: ignore[union-attr]

    raw = fleet["raw_a"]
    for statement in ("SELECT * FROM operators", "SELECT * FROM security_state", "SELECT * FROM fleet.jobs",
                      "INSERT INTO audit_log (seq, ts, operator, host, action, subject, outcome, detail, prev, mac)"
                      " VALUES (99, 0, 'x', 'h', 'forged', 's', 'allowed', '{}', '', '')",
                      "UPDATE fleet.jobs SET state = 'succeeded'", "SELECT fleet.reap()"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute(statement)

    # Presence: each agent says where it runs and for which databases; the control plane lists them.
    assert a.beat("db1.example", "0.1.0", ["warranty", "payroll"]) is True
    listed = {r.name: r for r in plane.agents()}
    assert (listed["host-a"].host, listed["host-a"].databases) == ("db1.example", ["warranty"])
    # What an agent reports does not widen what it serves: payroll was never registered for it.
    assert listed["host-a"].mismatch == ["payroll"]
    assert a.request("backup", "payroll", "changed_rows: made up") is None
    assert a.request("backup", "warranty", "changed_rows: 10 rows") is None  # a1, a backup there, still runs
    assert a.request("verify", "warranty", "max_age: 30h since the last check") is None  # only backups
    assert a.finish(got_a, ok=True)
    assert a.request("backup", "warranty", "changed_rows: 10 rows") is not None  # now nothing runs there
    assert listed["host-a"].heartbeat_at is not None and listed["host-b"].heartbeat_at is None


def test_a_lapsed_lease_is_reaped_and_its_token_refused(fleet: dict[str, Any]) -> None:
    plane, a = fleet["plane"], fleet["a"]
    jid = plane.enqueue("host-a", "backup", "warranty", max_attempts=2)
    job = a.claim(lease_s=0.2)
    assert job is not None
    time.sleep(0.4)
    assert a.heartbeat(job, {}) is False  # the lease is gone: the agent must stop the work
    assert plane.reap(grace_s=0.0) == [jid]
    again = plane.job(jid)
    assert again is not None and (again.state, again.attempt) == ("queued", 1) and "no heartbeat" in (again.error or "")
    assert a.finish(job, ok=True) is False  # the old attempt cannot finish what was requeued
    assert a.claim() is None  # retried after a backoff, not at once
    fleet["owner"].execute("UPDATE fleet.jobs SET not_before = now() WHERE id = %s", (jid,))
    second = a.claim()
    assert second is not None and second.attempt == 2
    assert a.finish(second, ok=False, error="boom") is True
    assert plane.job(jid).state == "failed"  # type: ignore[union-attr]  # attempts used up


def test_a_slot_is_queued_once_and_one_database_runs_one_job_at_a_time(fleet: dict[str, Any]) -> None:
    from datetime import UTC, datetime

    plane, b = fleet["plane"], fleet["b"]
    slot = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)
    first = plane.enqueue("host-b", "backup", "billing", schedule="nightly", slot=slot)
    assert first is not None
    assert plane.enqueue("host-b", "backup", "billing", schedule="nightly", slot=slot) is None  # another scheduler
    other = plane.enqueue("host-b", "verify", "billing")
    running = b.claim()
    assert running is not None and running.id == first
    assert b.claim() is None  # billing is busy: the verify waits
    assert b.finish(running, ok=True)
    nxt = b.claim()
    assert nxt is not None and nxt.id == other


def test_an_agents_report_is_filed_once_and_speaks_only_for_its_own_jobs(fleet: dict[str, Any],
                                                                         tmp_path: Path) -> None:
    plane, a, b, cat = fleet["plane"], fleet["a"], fleet["b"], fleet["cat"]
    now = time.time()
    # A job the control plane ran itself: no report may touch it.
    cat.record_event(JobStarted("victim", kind="backup", db="warranty", description="here", ts=now - 60))
    cat.record_event(JobFinished("victim", outcome="succeeded", ts=now - 50))
    rid = plane.enqueue("host-a", "restore", "warranty", {"restore": {"db": "warranty"}}, max_attempts=1)
    bid = plane.enqueue("host-b", "backup", "billing")
    job, other = a.claim(), b.claim()
    assert job is not None and other is not None and job.id == rid and other.id == bid
    assert a.beat("db1.example", "0.1.0", ["warranty"])

    # What the agent's engine publishes and records in its own catalog while the job runs.
    history = JobLog()
    for ev in (JobStarted("r1", kind="restore", db="warranty", description="restore", ts=now - 9),
               Progress("r1", phase="restore", bytes_done=10, bytes_total=100, rate=5.0, ts=now - 8),
               Progress("r1", phase="restore", bytes_done=100, bytes_total=100, rate=9.0, ts=now - 7),
               JobFinished("r1", outcome="succeeded", ts=now - 6),
               JobStarted("r2", kind="backup", db="warranty", description="cut short", ts=now - 5)):
        history(ev)
    local = SqliteCatalog(tmp_path / "agent.db")
    local.add_restore(job_id="r1", snapshot_id="s" * 64, db="warranty", into="warranty_copy", tables=[],
                      started_at=now - 9, duration_s=3.0, nbytes=100, ok=True, error=None)
    local.add_verification(job_id="r1", target="local1", snapshot_id=None, started_at=now - 8, read_data=True,
                           objects_checked=7, bytes_read=700, problems=[])
    local.add_verification(job_id="elsewhere", target="local1", snapshot_id=None, started_at=now - 8,
                           read_data=False, objects_checked=1, bytes_read=1, problems=["not this job's"])
    records = history.report(local)
    local.close()
    assert [v["objects_checked"] for v in records["verifications"]] == [7]
    assert [e["type"] for e in records["events"]] == ["JobStarted", "Progress", "JobFinished", "JobStarted"]
    # Forged parts: another job's outcome and verification, another database's restore.
    records["events"].append({"job_id": "victim", "ts": now, "type": "JobFinished",
                              "payload": {"outcome": "failed", "error": "forged"}})
    records["restores"].append({**records["restores"][0], "db": "billing"})
    records["verifications"].append({**records["verifications"][0], "job_id": "victim", "objects_checked": 99})

    assert b.report(job, records) is False  # not b's job, even with its token
    assert a.report(job, records) is True and a.finish(job, ok=True) is True
    assert a.report(job, records) is False  # the attempt is over
    assert b.report(other, {"events": [{"type": "Nope"}]}) is True and b.finish(other, ok=True)

    assert file_reports(cat, plane).jobs == 2  # r1 and r2; b's malformed report is set aside
    assert file_reports(cat, plane).jobs == 0  # each report once
    jobs = {j.id: j for j in cat.jobs(limit=20)}
    assert (jobs["host-a:r1"].state, jobs["host-a:r1"].host, jobs["host-a:r1"].bytes_done) == (
        "succeeded", "db1.example", 100)
    assert jobs["host-a:r2"].state == "abandoned" and "stopped reporting" in (jobs["host-a:r2"].error or "")
    assert jobs["victim"].state == "succeeded" and "victim" not in {j[len("host-a:"):] for j in jobs}
    restores = cat.restores(limit=10)
    assert [(r.job_id, r.db, r.into, r.duration_s) for r in restores] == [("host-a:r1", "warranty",
                                                                          "warranty_copy", 3.0)]
    assert [(v.job_id, v.target, v.ok, v.objects_checked) for v in cat.verifications()] == [
        ("host-a:r1", "local1", True, 7)]


def test_the_leader_settles_runs_a_vanished_daemon_left_open(fleet: dict[str, Any]) -> None:
    from datetime import UTC, datetime

    plane, b, cat = fleet["plane"], fleet["b"], fleet["cat"]
    now = time.time()
    slots = [datetime(2026, 12, 3, h, 0, tzinfo=UTC) for h in (1, 2, 3, 4)]
    # A daemon on another host (its pid means nothing here) claimed four slots, then vanished.
    for i, at in enumerate(slots):
        assert cat.claim_schedule_run(name="nightly", slot=at.isoformat(), due=at.timestamp(), action="backup",
                                      db="billing", holder="far-host:4242:dead", state="waiting")
        if i < 3:
            cat.update_schedule_run("nightly", at.isoformat(), "running")
    done = plane.enqueue("host-b", "backup", "billing", schedule="nightly", slot=slots[0])
    failed = plane.enqueue("host-b", "backup", "billing", schedule="nightly", slot=slots[1], max_attempts=1)
    for want in (done, failed):
        job = b.claim()
        assert job is not None and job.id == want
        assert b.finish(job, ok=want == done, error=None if want == done else "disk full")
    plane.enqueue("host-b", "backup", "billing", schedule="nightly", slot=slots[2])  # still queued
    # slots[3] never reached an agent.

    assert settle_runs(cat, plane, "here:1:me", now) == 2
    state = {r.slot: (r.state, r.error, (r.result or {}).get("job")) for r in cat.schedule_runs("nightly")}
    assert state[slots[0].isoformat()] == ("succeeded", None, done)
    assert state[slots[1].isoformat()][:2] == ("failed", "agent host-b: disk full")
    assert state[slots[2].isoformat()][0] == "running" and state[slots[3].isoformat()][0] == "waiting"
    # Long after, the run that never queued a job is given up; the queued one still waits for its agent.
    assert settle_runs(cat, plane, "here:1:me", now + ORPHAN_AFTER_S + 1) == 1
    state = {r.slot: (r.state, r.error) for r in cat.schedule_runs("nightly")}
    assert state[slots[3].isoformat()][0] == "missed" and "far-host:4242:dead" in (state[slots[3].isoformat()][1] or "")
    assert state[slots[2].isoformat()][0] == "running"


def test_advisory_locks_left_to_everyone_are_named_until_revoked(fleet: dict[str, Any]) -> None:
    plane, raw, cat = fleet["plane"], fleet["raw_a"], fleet["cat"]
    (problem,) = plane.privilege_problems()
    assert f"{ADVISORY_LOCK_FUNCTIONS[0]} and 7 more" in problem and "catalog's write lock" in problem
    # What an agent's role can do out of the box: hold the daemons' leader lock.
    assert raw.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)).fetchone() == (True,)
    raw.execute("SELECT pg_advisory_unlock(%s)", (LEADER_LOCK_KEY,))
    # README step 1, in this test's catalog database only (function privileges are per database).
    fleet["owner"].execute(f"REVOKE EXECUTE ON FUNCTION {', '.join(ADVISORY_LOCK_FUNCTIONS)} FROM PUBLIC")
    assert plane.privilege_problems() == []
    for fn in ("pg_try_advisory_lock", "pg_advisory_xact_lock_shared"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute(f"SELECT {fn}(%s)", (LEADER_LOCK_KEY,))
    # The owner still takes the catalog's write lock (a lease is taken in a locked transaction).
    assert cat.acquire_lease("probe", "here:1:me", 5.0) and cat.lease_holder("probe") == "here:1:me"


def test_backstop_agents_lists_them_and_an_sqlite_catalog_says_what_to_do(
        fleet: dict[str, Any], tmp_path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    import json

    from tests.fixtures.backstop import local_target

    fleet["a"].beat("db1.example", "0.1.0", ["warranty", "billing"])  # billing: not registered for it
    setup = setup_factory([local_target(tmp_path / "repo")], [], catalog={"url": _url_of(fleet["owner"])})
    rows = {r["name"]: r for r in json.loads(setup.cli("agents", "--json", check=True).stdout)}
    assert rows["host-a"]["databases"] == ["warranty"] and rows["host-b"]["heartbeat_at"] is None
    assert rows["host-a"]["reported_databases"] == ["warranty", "billing"]
    shown = setup.cli("agents", check=True)
    assert "db1.example" in shown.stdout and "never" in shown.stdout
    # Out of the box any role may take advisory locks: the listing says so, with the fix.
    assert "agents may take advisory locks" in shown.stderr and "REVOKE" in shown.stderr
    lite = setup_factory([local_target(tmp_path / "repo2")], [], catalog={"url": f"sqlite:///{tmp_path / 'c.db'}"})
    out = lite.cli("agents")
    assert out.returncode != 0 and "catalog migrate" in out.stderr


def _url_of(conn: psycopg.Connection[Any]) -> str:
    info = conn.info
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"


def test_registering_an_agent_is_an_admin_action_with_a_code_and_audited(
        fleet: dict[str, Any], tmp_path, setup_factory, warranty_db, pg_cluster: LocalCluster) -> None:  # type: ignore[no-untyped-def]
    import json

    from tests.fixtures.backstop import local_target
    from tests.test_security import enrol

    _, dsn = warranty_db
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}],
                          catalog={"url": _url_of(fleet["owner"])})
    setup.cli("init", check=True)
    alice = enrol(setup, "alice", "admin")
    role = f"agent_c_{uuid.uuid4().hex[:8]}"
    args = ["agents", "register", "host-c", "--role", role, "--db", "warranty", "--create-role", "--operator", "alice"]
    try:
        no_code = setup.cli(*args)
        assert no_code.returncode == 2 and "code" in no_code.stderr, no_code.stderr
        unknown = setup.cli("agents", "register", "host-c", "--role", role, "--db", "payroll", "--operator", "alice",
                            "--otp", alice.next())
        assert unknown.returncode == 2 and "payroll" in unknown.stderr
        setup.cli(*args, "--otp", alice.next(), check=True)
        rows = {r["name"]: r for r in json.loads(setup.cli("agents", "--json", check=True).stdout)}
        assert (rows["host-c"]["role"], rows["host-c"]["databases"]) == (role, ["warranty"])
        audit = json.loads(setup.cli("audit", "list", "--json", check=True).stdout)
        outcomes = [(e["action"], e["outcome"]) for e in audit if e["action"] == "agent.register"]
        assert outcomes == [("agent.register", "refused"), ("agent.register", "allowed"),
                            ("agent.register", "succeeded")]
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as su:
            su.execute(f'DROP ROLE IF EXISTS "{role}"')
