"""Attacks through the catalog: whoever can write the SQLite file must not gain an admin, erase history or undo a
lockout.

Each attack is made the way an attacker with write access to the catalog
file would make it (sqlite3 statements, an older copy of the file), then the
real CLI is run against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.fixtures.backstop import BACKSTOP, Setup, local_target
from tests.fixtures.otp import CodeBook, secret_from_uri
from tests.fixtures.tamper import copy_catalog, sql, sql_rows

# Attacks on the SQLite catalog's file (copied back, deleted, rolled back): SQLite whatever the suite runs on.
pytestmark = pytest.mark.sqlite_catalog


def _enrol(setup: Setup, name: str, role: str, admin: tuple[str, CodeBook] | None = None) -> CodeBook:
    args = ["operator", "add", name, "--role", role]
    if admin:
        args += ["--operator", admin[0], "--otp", admin[1].next()]
    out = setup.cli(*args, check=True)
    return CodeBook(secret_from_uri(out.stdout.strip().splitlines()[-1]))


def _audit(setup: Setup) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(setup.cli("audit", "list", "--json", check=True).stdout)


def _catalog(setup: Setup) -> Path:
    return setup.dir / "catalog.db"


def _prune(setup: Setup, who: str, book: CodeBook) -> subprocess.CompletedProcess[str]:
    return setup.cli("prune", "--operator", who, "--otp", book.next())


def test_catalog_write_access_cannot_enrol_a_code_free_admin(tmp_path, make_warranty_db, setup_factory) -> None:  # type: ignore[no-untyped-def]
    _, dsn = make_warranty_db(claims=200)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    sid = setup.cli("backup", "--db", "warranty", check=True).stdout.strip()
    alice = _enrol(setup, "alice", "admin")

    # The attack: a new audit log id, the history and the operators gone, and a
    # trigger that swallows the operators backstop would take back from the repository.
    sql(_catalog(setup),
        f"UPDATE security_state SET value='{uuid.uuid4().hex}' WHERE key='audit_log_id'",
        "DELETE FROM audit_log", "DELETE FROM operators",
        "CREATE TRIGGER swallow BEFORE INSERT ON operators BEGIN SELECT RAISE(IGNORE); END")
    out = setup.cli("operator", "add", "mallory", "--role", "admin")
    assert out.returncode == 2 and "otpauth://" not in out.stdout
    assert "disagrees with the repository" in out.stderr and "catalog rebuild" in out.stderr
    assert out.stderr.count("\n") == 1
    out = setup.cli("forget", sid, "--operator", "mallory", "--otp", "123456")
    assert out.returncode == 2
    assert sid in {s["id"] for s in json.loads(setup.cli("snapshots", "--json", check=True).stdout)}
    out = setup.cli("audit", "verify")
    assert out.returncode == 1 and "intact" not in out.stdout and "swallow" in out.stdout

    # A rebuild makes the catalog equal to the repository again: alice is back, the trigger gone.
    out = setup.cli("catalog", "rebuild")
    assert out.returncode == 0 and "dropped trigger 'swallow'" in out.stdout, out.stdout
    assert sql_rows(_catalog(setup), "SELECT name FROM sqlite_master WHERE type='trigger'") == []
    ops = json.loads(setup.cli("operator", "list", "--json", check=True).stdout)
    assert [o["name"] for o in ops] == ["alice"]
    assert setup.cli("operator", "add", "mallory", "--role", "admin").returncode == 2
    assert setup.cli("audit", "verify").returncode == 0
    out = setup.cli("forget", sid, "--operator", "alice", "--otp", alice.next())
    assert out.returncode == 0, out.stderr


def test_erased_audit_history_fails_verification(tmp_path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = setup_factory([local_target(tmp_path / "repo")], [])
    setup.cli("init", check=True)
    alice = _enrol(setup, "alice", "admin")
    assert _prune(setup, "alice", alice).returncode == 0
    n = len(_audit(setup))
    sql(_catalog(setup), f"UPDATE security_state SET value='{uuid.uuid4().hex}' WHERE key='audit_log_id'",
        "DELETE FROM audit_log")
    out = setup.cli("audit", "verify")
    assert out.returncode == 1 and "intact" not in out.stdout
    assert "replaced or erased" in out.stdout
    assert _prune(setup, "alice", alice).returncode == 2
    setup.cli("catalog", "rebuild", check=True)
    assert len(_audit(setup)) >= n
    out = setup.cli("audit", "verify")
    assert out.returncode == 0, out.stdout
    assert _prune(setup, "alice", alice).returncode == 0


def test_catalog_rolled_back_does_not_lift_a_lockout(tmp_path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = setup_factory([local_target(tmp_path / "repo")], [])
    setup.cli("init", check=True)
    alice = _enrol(setup, "alice", "admin")
    old = tmp_path / "old-catalog.db"
    copy_catalog(_catalog(setup), old)
    for _ in range(5):
        assert setup.cli("prune", "--operator", "alice", "--otp", alice.wrong()).returncode == 2
    out = _prune(setup, "alice", alice)
    assert out.returncode == 2 and "locked out" in out.stderr

    # The attacker puts back the copy from before the lockout.
    for f in setup.dir.glob("catalog.db*"):
        f.unlink()
    shutil.copy(old, _catalog(setup))
    out = _prune(setup, "alice", alice)
    assert out.returncode == 2 and "rolled back" in out.stderr, out.stderr
    out = setup.cli("audit", "verify")
    assert out.returncode == 1 and "rolled back" in out.stdout
    setup.cli("catalog", "rebuild", check=True)
    out = _prune(setup, "alice", alice)
    assert out.returncode == 2 and "is locked out" in out.stderr, out.stderr
    assert setup.cli("audit", "verify").returncode == 0


def _recover(setup: Setup, name: str, passphrase: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BACKSTOP, "--config", str(setup.path), "operator", "recover", name, "--passphrase-stdin"],
                          input=passphrase + "\n", capture_output=True, text=True, timeout=300)


def test_operator_records_lost_everywhere_are_recovered_with_the_passphrase(tmp_path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo)], [])
    setup.cli("init", check=True)
    _enrol(setup, "alice", "admin")
    # While the records exist, recovery is refused.
    out = _recover(setup, "carol", "correct horse battery staple")
    assert out.returncode == 2 and "operators are enrolled" in out.stderr
    shutil.rmtree(repo / "operators")
    for f in setup.dir.glob("catalog.db*"):
        f.unlink()
    out = setup.cli("operator", "add", "bob", "--role", "admin")
    assert out.returncode == 2 and "operator recover" in out.stderr and "catalog rebuild" not in out.stderr
    out = _recover(setup, "carol", "not the passphrase")
    assert out.returncode == 2 and "not the repository passphrase" in out.stderr
    out = _recover(setup, "carol", "correct horse battery staple")
    assert out.returncode == 0, out.stderr
    carol = CodeBook(secret_from_uri(out.stdout.strip().splitlines()[-1]))
    assert _prune(setup, "carol", carol).returncode == 0
    recover = [e for e in _audit(setup) if e["action"] == "operator.recover"]
    assert [e["outcome"] for e in recover] == ["refused", "refused", "allowed", "succeeded"]
    assert setup.cli("audit", "verify").returncode == 0


def test_dropped_audit_table_is_reported_not_a_traceback(tmp_path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = setup_factory([local_target(tmp_path / "repo")], [])
    setup.cli("init", check=True)
    alice = _enrol(setup, "alice", "admin")
    sql(_catalog(setup), "DROP TABLE audit_log")
    out = setup.cli("audit", "verify")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "table audit_log is missing" in out.stdout
    out = _prune(setup, "alice", alice)
    assert out.returncode == 2 and "table audit_log is missing" in out.stderr
    out = setup.cli("audit", "list")
    assert out.returncode == 1 and "Traceback" not in out.stderr and "catalog rebuild" in out.stderr
    setup.cli("catalog", "rebuild", check=True)
    assert setup.cli("audit", "verify").returncode == 0
    assert _prune(setup, "alice", alice).returncode == 0


def test_operator_names_cannot_forge_audit_lines(tmp_path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = setup_factory([local_target(tmp_path / "repo")], [])
    setup.cli("init", check=True)
    _enrol(setup, "alice", "admin")
    forged = "mallory\n#99    2030-01-01 00:00:00  alice            host             prune                succeeded"
    out = setup.cli("prune", "--operator", forged, "--otp", "123456")
    assert out.returncode == 2 and "operator name" in out.stderr
    out = setup.cli("prune", env={"BACKSTOP_OPERATOR": forged})
    assert out.returncode == 2 and "operator name" in out.stderr
    listing = setup.cli("audit", "list", check=True).stdout
    assert "#99" not in listing and len(listing.splitlines()) == len(_audit(setup))


def test_a_second_audit_chain_in_the_repository_is_a_deletion_until_rebuilt(tmp_path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    repo = tmp_path / "repo"
    a = setup_factory([local_target(repo)], [])
    a.cli("init", check=True)
    alice = _enrol(a, "alice", "admin")
    assert _prune(a, "alice", alice).returncode == 0
    # A second catalog started its own chain while the first chain's copies were out of sight.
    (repo / "audit").rename(tmp_path / "audit-aside")
    b = setup_factory([local_target(repo)], [])
    assert b.cli("audit", "verify").returncode == 0
    for log_dir in (tmp_path / "audit-aside").iterdir():
        log_dir.rename(repo / "audit" / log_dir.name)
    assert len(list((repo / "audit").iterdir())) == 2

    out = a.cli("audit", "verify")
    assert out.returncode == 1 and "second audit log" in out.stdout
    assert _prune(a, "alice", alice).returncode == 2
    out = a.cli("catalog", "rebuild")
    assert out.returncode == 0 and "recorded as a fork" in out.stdout
    assert a.cli("audit", "verify").returncode == 0
    assert _prune(a, "alice", alice).returncode == 0
    forks = [e for e in _audit(a) if e["action"] == "audit.fork"]
    assert len(forks) == 1 and forks[0]["detail"]["entries"] >= 1
    # The other catalog holds the fork, not the repository's chain: refused until it is rebuilt too.
    assert b.cli("audit", "verify").returncode == 1
    b.cli("catalog", "rebuild", check=True)
    assert b.cli("audit", "verify").returncode == 0
    assert os.path.exists(repo / "audit")
