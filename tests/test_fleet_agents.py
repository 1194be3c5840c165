"""A fleet as real processes: a daemon on a PostgreSQL catalog schedules, two agents (each in its own role,
each beside its own PostgreSQL cluster) run the backups of their databases; an agent SIGKILLed mid-backup
has its job taken back, retried, and no broken snapshot shows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from core.catalog.postgres import PostgresCatalog
from core.fleet.queue import ControlPlane
from core.postgres.cluster import LocalCluster
from core.sandbox.warranty import generate

from tests.fixtures.backstop import BACKSTOP, Setup, local_target, write_setup

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def second_cluster() -> Iterator[LocalCluster]:
    """Another PostgreSQL cluster: the second agent's host."""
    root = Path(tempfile.mkdtemp(prefix="backstop-test-pg2-"))
    cluster = LocalCluster(root / "data", settings={"fsync": "off", "synchronous_commit": "off"})
    try:
        cluster.init(no_sync=True)
        cluster.start()
        cluster.create_database("billing")
        generate(cluster.dsn("billing"), claims=400, seed=2)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _owner_rows(url: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]


def _wait(what: str, cond: Callable[[], bool], timeout: float, procs: list[subprocess.Popen[str]],
          logs: list[Path]) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        for p, log in zip(procs, logs, strict=True):
            assert p.poll() is None, f"{log.name}: exited {p.returncode} while waiting for {what}:\n{log.read_text()}"
        time.sleep(0.1)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def _start(setup: Setup, command: str, log: Path) -> subprocess.Popen[str]:
    with log.open("w") as out:
        return subprocess.Popen([*BACKSTOP, "--config", str(setup.path), command], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=out, text=True, cwd=ROOT)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_heartbeat(url: str, agent: str, procs: list[subprocess.Popen[str]], logs: list[Path]) -> None:
    _wait(f"agent {agent}'s heartbeat", lambda: bool(_owner_rows(
        url, "SELECT 1 FROM fleet.agents WHERE name = %s AND heartbeat_at IS NOT NULL", (agent,))), 30, procs, logs)


def _nightly_daemon(fleet_setup: dict[str, Any], **dispatch: float) -> Setup:
    """The control plane's config for warranty (host-a's), with a nightly backup run by hand in the tests."""
    daemon = write_setup(fleet_setup["tmp"] / "daemon", [local_target(fleet_setup["repo"])],
                         [fleet_setup["dbs"]["host-a"]], catalog={"url": fleet_setup["url"]}, dispatch=dispatch,
                         schedules=[{"name": "nightly", "action": "backup", "db": "warranty", "cron": "0 2 * * *"}])
    daemon.cli("init", check=True)
    return daemon


def _schedule_run(daemon: Setup, name: str) -> subprocess.Popen[str]:
    """`schedule run NAME` in the background: it queues the run for the agent and waits for its outcome, as the
    daemon does."""
    return subprocess.Popen([*BACKSTOP, "--config", str(daemon.path), "schedule", "run", name],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)


@pytest.fixture
def fleet_setup(tmp_path: Path, pg_cluster: LocalCluster, second_cluster: LocalCluster, make_warranty_db,  # type: ignore[no-untyped-def]
                pg_catalog_url: Callable[[], str]) -> Iterator[dict[str, Any]]:
    _, dsn_a = make_warranty_db(claims=2000)
    dsn_b = second_cluster.dsn("billing")
    url = pg_catalog_url()
    PostgresCatalog(url).close()  # the control plane's schema
    suffix = uuid.uuid4().hex[:8]
    roles = {"host-a": f"agent_a_{suffix}", "host-b": f"agent_b_{suffix}"}
    dbs = {"host-a": {"name": "warranty", "dsn": dsn_a}, "host-b": {"name": "billing", "dsn": dsn_b}}
    with psycopg.connect(url, autocommit=True) as conn:
        plane = ControlPlane(conn)
        for agent, role in roles.items():
            plane.create_agent_role(role)
            plane.register_agent(agent, role, [dbs[agent]["name"]])
    repo = tmp_path / "repo"
    agents = {name: write_setup(tmp_path / name, [local_target(repo)], [db], fleet={
        "agent": name, "control_plane": url.replace("postgresql://postgres@", f"postgresql://{roles[name]}@"),
        "heartbeat_s": 0.5, "lease_s": 2.0, "poll_s": 1.0}) for name, db in dbs.items()}
    try:
        yield {"url": url, "repo": repo, "dbs": dbs, "agents": agents, "tmp": tmp_path}
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as su:
            # The catalog database goes with the fixture; the agents' roles are cluster-wide.
            su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                       (list(roles.values()),))
            for role in roles.values():
                su.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_scheduled_backups_run_on_the_agent_beside_each_database(fleet_setup: dict[str, Any]) -> None:
    url, tmp = fleet_setup["url"], fleet_setup["tmp"]
    schedules = [{"name": "backup-warranty", "action": "backup", "db": "warranty", "cron": "*/3 * * * * *"},
                 {"name": "backup-billing", "action": "backup", "db": "billing", "cron": "1-59/3 * * * * *"}]
    daemon = write_setup(tmp / "daemon", [local_target(fleet_setup["repo"])], list(fleet_setup["dbs"].values()),
                         catalog={"url": url}, schedules=schedules)
    daemon.cli("init", check=True)
    logs = [tmp / "agent-a.log", tmp / "agent-b.log", tmp / "daemon.log"]
    procs = [_start(fleet_setup["agents"]["host-a"], "agent", logs[0]),
             _start(fleet_setup["agents"]["host-b"], "agent", logs[1])]
    try:
        _wait("both agents' first heartbeat", lambda: len(_owner_rows(
            url, "SELECT 1 FROM fleet.agents WHERE heartbeat_at IS NOT NULL")) == 2, 30, procs, logs[:2])
        procs.append(_start(daemon, "daemon", logs[2]))
        done = "SELECT agent, target, state FROM fleet.jobs WHERE state = 'succeeded'"
        _wait("a backup of each database", lambda: {r[1] for r in _owner_rows(url, done)} == {"warranty", "billing"},
              60, procs, logs)
        placed = {(r[0], r[1]) for r in _owner_rows(url, "SELECT agent, target, state FROM fleet.jobs")}
        assert placed <= {("host-a", "warranty"), ("host-b", "billing")}, placed
        agents = json.loads(daemon.cli("agents", "--json", check=True).stdout)
        assert {a["name"]: a["databases"] for a in agents} == {"host-a": ["warranty"], "host-b": ["billing"]}
        # The daemon indexed what the agents stored, from the repository's manifests.
        _wait("the snapshots in the control plane's catalog", lambda: {s["db"] for s in json.loads(
            daemon.cli("snapshots", "--json", check=True).stdout)} == {"warranty", "billing"}, 30, procs, logs)
        runs = _owner_rows(url, "SELECT name, state, result FROM schedule_runs WHERE state = 'succeeded'")
        agent_of = {name: json.loads(result)["agent"] for name, _, result in runs}
        assert agent_of == {"backup-warranty": "host-a", "backup-billing": "host-b"}
        # The agents' own job history is in the control plane's catalog too (the fleet's KPIs count it).
        jobs = _owner_rows(url, "SELECT split_part(id, ':', 1), kind, db, state FROM jobs WHERE id LIKE 'host-%%'")
        assert {("host-a", "backup", "warranty", "succeeded"), ("host-b", "backup", "billing", "succeeded")} <= set(
            jobs), jobs
    finally:
        for p in reversed(procs):
            _stop(p)
    check = daemon.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_an_agent_killed_mid_backup_loses_the_job_which_is_retried_without_a_broken_snapshot(
        fleet_setup: dict[str, Any]) -> None:
    url, tmp = fleet_setup["url"], fleet_setup["tmp"]
    daemon = _nightly_daemon(fleet_setup, retry_delay_s=1.0, reap_grace_s=0.5)
    agent = fleet_setup["agents"]["host-a"]
    logs = [tmp / "agent-a.log", tmp / "agent-a2.log"]
    first = _start(agent, "agent", logs[0])
    procs = [first]
    try:
        _wait_for_heartbeat(url, "host-a", procs, logs[:1])
        waiting = _schedule_run(daemon, "nightly")
        _wait("the backup running on the agent", lambda: bool(_owner_rows(
            url, "SELECT 1 FROM fleet.jobs WHERE state = 'running'")), 30, procs, logs[:1])
        first.send_signal(signal.SIGKILL)
        first.wait()
        _wait("the job taken back from the dead agent", lambda: bool(_owner_rows(
            url, "SELECT 1 FROM fleet.jobs WHERE state = 'queued' AND attempt = 1 AND error LIKE '%%no heartbeat%%'")),
            30, [], [])
        procs.append(_start(agent, "agent", logs[1]))
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, out + err
        (state, attempt), = _owner_rows(url, "SELECT state, attempt FROM fleet.jobs")
        assert (state, attempt) == ("succeeded", 2)
    finally:
        for p in procs:
            _stop(p)
    snaps = json.loads(daemon.cli("snapshots", "--json", check=True).stdout)
    assert len(snaps) == 1  # the killed attempt left nothing that lists as a snapshot
    check = daemon.cli("check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert os.path.isdir(fleet_setup["repo"])


def test_an_agent_stopped_by_sigterm_mid_backup_hands_the_job_back_at_once(fleet_setup: dict[str, Any]) -> None:
    url, tmp = fleet_setup["url"], fleet_setup["tmp"]
    daemon = _nightly_daemon(fleet_setup, retry_delay_s=0.5, reap_grace_s=30.0)
    agent = fleet_setup["agents"]["host-a"]
    doc = yaml.safe_load(agent.path.read_text())
    slow = dict(doc)
    slow["targets"] = [{**doc["targets"][0], "max_upload_rate": "100KB/s"}]  # the backup takes seconds
    agent.path.write_text(yaml.safe_dump(slow, sort_keys=False))
    logs = [tmp / "agent-a.log", tmp / "agent-a2.log"]
    first = _start(agent, "agent", logs[0])
    procs = [first]
    try:
        _wait_for_heartbeat(url, "host-a", procs, logs[:1])
        waiting = _schedule_run(daemon, "nightly")
        _wait("the backup under way on the agent", lambda: bool(_owner_rows(
            url, "SELECT 1 FROM fleet.jobs WHERE state = 'running' AND progress->>'phase' IS NOT NULL")), 30, procs,
            logs[:1])
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0, logs[0].read_text()
        # Handed back by the agent itself, long before the 30 s reap grace: no waiting for a lease to lapse.
        (state, attempt, error), = _owner_rows(url, "SELECT state, attempt, error FROM fleet.jobs")
        assert (state, attempt) == ("queued", 1) and "stopped in the middle" in error, error
        agent.path.write_text(yaml.safe_dump(doc, sort_keys=False))
        procs.append(_start(agent, "agent", logs[1]))
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, out + err
        assert _owner_rows(url, "SELECT state, attempt FROM fleet.jobs") == [("succeeded", 2)]
        # Both attempts are on record at the control plane: the stopped one abandoned, the second succeeded.
        states = sorted(r[0] for r in _owner_rows(url, "SELECT state FROM jobs WHERE id LIKE 'host-a:%%'"))
        assert states == ["abandoned", "succeeded"], states
    finally:
        for p in procs:
            _stop(p)
    snaps = json.loads(daemon.cli("snapshots", "--json", check=True).stdout)
    assert len(snaps) == 1  # the stopped attempt left nothing that lists as a snapshot


def test_a_drill_scheduled_on_the_fleet_runs_on_the_agent_and_its_sealed_report_reaches_the_control_plane(
        fleet_setup: dict[str, Any]) -> None:
    url, tmp = fleet_setup["url"], fleet_setup["tmp"]
    control = write_setup(tmp / "control", [local_target(fleet_setup["repo"])], [fleet_setup["dbs"]["host-a"]],
                          catalog={"url": url},
                          schedules=[{"name": "drill-warranty", "action": "drill", "db": "warranty",
                                      "cron": "0 3 * * *"}])
    control.cli("init", check=True)
    sid = control.cli("backup", "--db", "warranty", check=True).stdout.strip()  # the agent's catalog lacks it
    logs = [tmp / "agent-a.log"]
    procs = [_start(fleet_setup["agents"]["host-a"], "agent", logs[0])]
    try:
        _wait_for_heartbeat(url, "host-a", procs, logs)
        run = control.cli("schedule", "run", "drill-warranty")
        assert run.returncode == 0, run.stdout + run.stderr + logs[0].read_text()
    finally:
        for p in procs:
            _stop(p)
    assert _owner_rows(url, "SELECT kind, agent, state FROM fleet.jobs") == [("drill", "host-a", "succeeded")]
    # The control plane lists the drill, read from its sealed copy in the repository, and it verifies.
    (drill,) = json.loads(control.cli("drill", "list", "--json", check=True).stdout)
    assert (drill["db"], drill["snapshot"], drill["verdict"]) == ("warranty", sid, "passed")
    verified = control.cli("drill", "verify", drill["id"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Its test restore counts in the recovery-time history, under the agent's name.
    (kind, ok, job_id), = _owner_rows(url, "SELECT kind, ok, job_id FROM restores")
    assert (kind, bool(ok)) == ("drill", True) and job_id.startswith("host-a:")


def test_a_changed_rows_threshold_makes_the_agent_ask_for_a_snapshot(fleet_setup: dict[str, Any],
                                                                      second_cluster: LocalCluster) -> None:
    url, tmp = fleet_setup["url"], fleet_setup["tmp"]
    daemon = write_setup(tmp / "daemon", [local_target(fleet_setup["repo"])], [fleet_setup["dbs"]["host-b"]],
                         catalog={"url": url})
    daemon.cli("init", check=True)
    agent = fleet_setup["agents"]["host-b"]
    doc = yaml.safe_load(agent.path.read_text())
    doc["fleet"]["thresholds"] = {"changed_rows": "5%"}
    doc["fleet"]["state_dir"] = str(tmp / "agent-state")
    agent.path.write_text(yaml.safe_dump(doc, sort_keys=False))
    logs = [tmp / "agent-b.log", tmp / "daemon.log"]
    procs = [_start(agent, "agent", logs[0]), _start(daemon, "daemon", logs[1])]
    try:
        baselines = tmp / "agent-state" / "agent-host-b.baselines.json"
        _wait("the agent's first look at billing", baselines.exists, 30, procs, logs)
        assert _owner_rows(url, "SELECT 1 FROM fleet.jobs") == []  # nothing changed yet: nothing asked for
        with psycopg.connect(second_cluster.dsn("billing"), autocommit=True) as conn:
            conn.execute("UPDATE warranty.claims SET description = description || '.'")
        _wait("a backup asked for by the threshold", lambda: bool(_owner_rows(
            url, "SELECT 1 FROM fleet.jobs WHERE state = 'succeeded' AND reason LIKE 'changed_rows:%%'")),
            60, procs, logs)
        (agent_name, target, reason), = _owner_rows(url, "SELECT agent, target, reason FROM fleet.jobs")
        assert (agent_name, target) == ("host-b", "billing") and "rows changed since the last snapshot" in reason
        # The daemon indexes the snapshot nobody waited for.
        _wait("the threshold's snapshot in the control plane's catalog", lambda: [s["db"] for s in json.loads(
            daemon.cli("snapshots", "--json", check=True).stdout)] == ["billing"], 30, procs, logs)
    finally:
        for p in procs:
            _stop(p)


def test_a_killed_leader_hands_over_to_the_standby_daemon_and_no_slot_runs_twice(
        fleet_setup: dict[str, Any]) -> None:
    url, tmp = fleet_setup["url"], fleet_setup["tmp"]
    schedules = [{"name": "often", "action": "backup", "db": "warranty", "cron": "*/2 * * * * *"}]
    daemon = write_setup(tmp / "daemon", [local_target(fleet_setup["repo"])], [fleet_setup["dbs"]["host-a"]],
                         catalog={"url": url}, schedules=schedules)
    daemon.cli("init", check=True)
    logs = [tmp / "agent-a.log", tmp / "daemon1.log", tmp / "daemon2.log"]
    procs = [_start(fleet_setup["agents"]["host-a"], "agent", logs[0])]
    try:
        procs.append(_start(daemon, "daemon", logs[1]))
        _wait("the first daemon leading", lambda: "leading:" in logs[1].read_text(), 30, procs, logs[:2])
        procs.append(_start(daemon, "daemon", logs[2]))
        _wait("the second daemon standing by", lambda: "standing by" in logs[2].read_text(), 30, procs, logs)
        succeeded = "SELECT count(*) FROM fleet.jobs WHERE state = 'succeeded'"
        _wait("a backup under the first leader", lambda: _owner_rows(url, succeeded)[0][0] >= 1, 60, procs, logs)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        killed = time.monotonic()
        survivors, their_logs = [procs[0], procs[2]], [logs[0], logs[2]]
        _wait("the standby leading", lambda: "leading:" in logs[2].read_text(), 30, survivors, their_logs)
        took_over = time.monotonic() - killed
        before = _owner_rows(url, "SELECT max(id) FROM fleet.jobs")[0][0]
        _wait("a backup queued by the new leader", lambda: bool(_owner_rows(
            url, "SELECT 1 FROM fleet.jobs WHERE id > %s AND state = 'succeeded'", (before,))), 60, survivors,
            their_logs)
        print(f"handover after {took_over:.2f}s")
        assert took_over < 30, f"the standby took {took_over:.1f}s to take over"
        twice = _owner_rows(url, "SELECT schedule, slot FROM fleet.jobs GROUP BY 1, 2 HAVING count(*) > 1")
        assert twice == []
        runs = _owner_rows(url, "SELECT name, slot FROM schedule_runs GROUP BY 1, 2 HAVING count(*) > 1")
        assert runs == []
        # The dead leader's runs its agent finished read as the agent finished them, not as left running.
        unsettled = ("SELECT r.slot, r.state FROM schedule_runs r JOIN fleet.jobs j ON j.schedule = r.name"
                     " AND abs(extract(epoch FROM j.slot) - r.due) < 0.001 WHERE j.state = 'succeeded'"
                     " AND r.state <> 'succeeded' AND r.holder LIKE %s")
        dead = f"%:{procs[1].pid}:%"
        _wait("the dead leader's runs settled", lambda: _owner_rows(url, unsettled, (dead,)) == [], 30, survivors,
              their_logs)
        assert _owner_rows(url, "SELECT count(*) FROM schedule_runs WHERE holder LIKE %s AND state = 'succeeded'",
                           (dead,))[0][0] >= 1
    finally:
        for p in reversed(procs):
            _stop(p)


def test_a_restore_asked_at_the_control_plane_runs_on_the_agent_and_overwriting_needs_a_code_checked_there(
        fleet_setup: dict[str, Any]) -> None:
    from tests.test_security import enrol

    url, tmp = fleet_setup["url"], fleet_setup["tmp"]
    source_dsn = fleet_setup["dbs"]["host-a"]["dsn"]
    into = source_dsn.rsplit("/", 1)[1] + "_copy"  # dropped with the source by the fixture
    control = write_setup(tmp / "control", [local_target(fleet_setup["repo"])], [fleet_setup["dbs"]["host-a"]],
                          catalog={"url": url})
    control.cli("init", check=True)
    sid = control.cli("backup", "--db", "warranty", check=True).stdout.strip()  # the agent's catalog lacks it
    logs = [tmp / "agent-a.log"]
    procs = [_start(fleet_setup["agents"]["host-a"], "agent", logs[0])]
    try:
        _wait_for_heartbeat(url, "host-a", procs, logs)
        out = json.loads(control.cli("restore", "--db", "warranty", "--into", into, "--by-agent", "--json",
                                     check=True).stdout)
        assert (out["agent"], out["snapshot"], out["into"]) == ("host-a", sid, into)
        count = "SELECT count(*) FROM warranty.claims"
        copy_dsn = source_dsn.rsplit("/", 1)[0] + "/" + into
        assert _owner_rows(copy_dsn, count) == _owner_rows(source_dsn, count)
        # Its timing is in the control plane's restore history (the planner's estimates and the KPIs use it).
        (db, into_db, ok, job_id), = _owner_rows(url, "SELECT db, into_db, ok, job_id FROM restores")
        assert (db, into_db, bool(ok)) == ("warranty", into, True) and job_id.startswith("host-a:")

        # Over an existing database: the control plane asks for the code, the agent never sees one.
        alice = enrol(control, "alice", "admin")
        jobs_before = _owner_rows(url, "SELECT count(*) FROM fleet.jobs")[0][0]
        refused = control.cli("restore", "--db", "warranty", "--into", into, "--by-agent", "--force",
                              "--operator", "alice")
        assert refused.returncode == 2 and "code" in refused.stderr, refused.stderr
        assert _owner_rows(url, "SELECT count(*) FROM fleet.jobs")[0][0] == jobs_before  # nothing was queued
        over = json.loads(control.cli("restore", "--db", "warranty", "--into", into, "--by-agent", "--force",
                                      "--operator", "alice", "--otp", alice.next(), "--json", check=True).stdout)
        assert over["replaced"] is True and over["kept_aside"].startswith(into + "__replaced_")
        audit = json.loads(control.cli("audit", "list", "--json", check=True).stdout)
        overwrite = [(e["outcome"], e["detail"].get("fleet_job")) for e in audit
                     if e["action"] == "restore.overwrite"]
        assert [o for o, _ in overwrite] == ["refused", "allowed", "succeeded"] and overwrite[-1][1] is not None
    finally:
        for p in procs:
            _stop(p)
    # An agent cannot queue a restore (or anything but a backup) for itself.
    role = fleet_setup["agents"]["host-a"].config.fleet.control_plane  # type: ignore[union-attr]
    with psycopg.connect(role, autocommit=True) as conn:
        from core.fleet.queue import AgentSession

        assert AgentSession(conn).request("restore", "warranty", "made up", {"approved_by": "me"}) is None
