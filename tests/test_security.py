"""Operators, MFA before destructive actions, the audit log, forget/prune and restore --force, end to end.

Everything runs the real CLI against real PostgreSQL; one-time codes come
from the test's own RFC 6238 implementation (tests/fixtures/otp.py).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import psycopg
from core.postgres.fingerprint import fingerprint

from tests.fixtures.backstop import Setup, local_target
from tests.fixtures.catalogs import catalog_db
from tests.fixtures.otp import CodeBook, secret_from_uri
from tests.fixtures.tamper import sql

NEEDS_CODE = "needs a fresh one-time code"


def enrol(setup: Setup, name: str, role: str, admin: tuple[str, CodeBook] | None = None,
          drift: int = 1) -> CodeBook:
    """Enrol through the CLI; returns a code book fed from the printed otpauth:// URI."""
    args = ["operator", "add", name, "--role", role]
    if admin:
        args += ["--operator", admin[0], "--otp", admin[1].next()]
    out = setup.cli(*args, check=True)
    uri = out.stdout.strip().splitlines()[-1]
    return CodeBook(secret_from_uri(uri), drift)


def audit(setup: Setup) -> list[dict[str, Any]]:
    return json.loads(setup.cli("audit", "list", "--json", check=True).stdout)


def snapshots(setup: Setup) -> list[dict[str, Any]]:
    return json.loads(setup.cli("snapshots", "--json", check=True).stdout)


def db_names(pg_cluster, pattern: str) -> list[str]:  # type: ignore[no-untyped-def]
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                           (pattern,))]


# -- codes, replay, expiry, lockout -----------------------------------------------------------


def test_codes_replay_wrong_expired_and_lockout_are_all_audited(tmp_path: Path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = setup_factory([local_target(tmp_path / "repo")], [])
    setup.cli("init", check=True)
    # Nobody can act before someone is enrolled, and the first operator must be an admin.
    out = setup.cli("operator", "add", "alice", "--role", "operator")
    assert out.returncode == 2 and "must be an admin" in out.stderr
    alice = enrol(setup, "alice", "admin")
    as_alice = ["--operator", "alice"]

    good = alice.next()
    assert setup.cli("prune", *as_alice, "--otp", good).returncode == 0
    out = setup.cli("prune", *as_alice, "--otp", good)  # the same code again
    assert out.returncode == 2 and "already used" in out.stderr
    out = setup.cli("prune", *as_alice, "--otp", alice.wrong())
    assert out.returncode == 2 and "code is wrong" in out.stderr and "3 more failures" in out.stderr
    out = setup.cli("prune", *as_alice, "--otp", alice.expired())
    assert out.returncode == 2 and "expired" in out.stderr
    out = setup.cli("prune", *as_alice, "--otp", alice.wrong())
    assert out.returncode == 2 and "1 more failure " in out.stderr
    out = setup.cli("prune", *as_alice, "--otp", alice.wrong())  # the fifth failure in a row
    assert out.returncode == 2 and "locked out for 5 min" in out.stderr
    out = setup.cli("prune", *as_alice, "--otp", alice.next())  # a valid code does not help now
    assert out.returncode == 2 and "is locked out" in out.stderr
    for out_line in (out.stderr,):
        assert out_line.count("\n") == 1 and "Traceback" not in out_line

    entries = audit(setup)
    mfa = [e for e in entries if e["action"] == "mfa.verify"]
    assert [e["outcome"] for e in mfa] == ["ok", "replayed", "wrong", "expired", "wrong", "wrong", "locked"]
    assert all(e["operator"] == "alice" and e["host"] for e in mfa)
    prunes = [e["outcome"] for e in entries if e["action"] == "prune"]
    assert prunes == ["allowed", "succeeded"] + ["refused"] * 6
    # No code or secret ever reaches the log.
    assert good not in json.dumps(entries)
    ops = json.loads(setup.cli("operator", "list", "--json", check=True).stdout)
    assert ops[0]["name"] == "alice" and ops[0]["locked_until"] > time.time() + 200
    assert setup.cli("audit", "verify").returncode == 0

    assert len(json.loads(setup.cli("audit", "list", "--since", "1h", "--json", check=True).stdout)) == len(entries)
    assert json.loads(setup.cli("audit", "list", "--since", "2099-01-01", "--json", check=True).stdout) == []
    assert setup.cli("audit", "list", "--since", "whenever").returncode == 2

    # Deleting the operator rows lifts no lockout: they come back from the repository with their state.
    _sql(setup.dir / "catalog.db", "DELETE FROM operators")
    out = setup.cli("prune", *as_alice, "--otp", alice.next())
    assert out.returncode == 2 and "is locked out" in out.stderr, out.stderr


# -- each destructive action: no code, viewer, authorised ---------------------------------------


def test_each_destructive_action_needs_role_and_fresh_code(tmp_path: Path, pg_cluster, make_warranty_db,  # type: ignore[no-untyped-def]
                                                           setup_factory) -> None:
    name, dsn = make_warranty_db(claims=300)
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}],
                          security={"totp_drift_steps": 2})
    setup.cli("init", check=True)
    first = setup.cli("backup", "--db", "warranty", check=True).stdout.strip()
    setup.cli("backup", "--db", "warranty", check=True)
    admin = enrol(setup, "alice", "admin", drift=2)
    vera = enrol(setup, "vera", "viewer", ("alice", admin), drift=2)
    otto = enrol(setup, "otto", "operator", ("alice", admin), drift=2)
    books = {"alice": admin, "otto": otto}

    actions: list[tuple[str, list[str], str]] = [
        ("restore.overwrite", ["restore", "--db", "warranty", "--into", name, "--force"], "otto"),
        ("snapshot.forget", ["forget", first[:12]], "otto"),
        ("prune", ["prune"], "otto"),
        ("key.rotate", ["key", "rotate", "--dek"], "otto"),
        ("key.reencrypt", ["key", "reencrypt"], "otto"),
        ("key.retire", ["key", "retire", "1"], "alice"),
        ("operator.add", ["operator", "add", "newbie", "--role", "viewer"], "alice"),
        ("operator.change", ["operator", "role", "newbie", "operator"], "alice"),
        ("operator.remove", ["operator", "remove", "newbie"], "alice"),
    ]
    for action, args, who in actions:
        out = setup.cli(*args, "--operator", who)
        assert out.returncode == 2 and NEEDS_CODE in out.stderr and f"'{who}'" in out.stderr, (action, out.stderr)
        # A viewer is refused whatever code they bring.
        out = setup.cli(*args, "--operator", "vera", "--otp", vera.current())
        assert out.returncode == 2 and "has role viewer" in out.stderr, (action, out.stderr)
        if who == "alice":
            out = setup.cli(*args, "--operator", "otto", "--otp", otto.current())
            assert out.returncode == 2 and "needs role admin" in out.stderr, (action, out.stderr)
        out = setup.cli(*args, "--operator", who, "--otp", books[who].next())
        assert out.returncode == 0, (action, out.stderr)
        outcomes = [(e["operator"], e["outcome"]) for e in audit(setup) if e["action"] == action]
        expected = [(who, "refused"), ("vera", "refused")] + ([("otto", "refused")] if who == "alice" else [])
        assert outcomes[-len(expected) - 2:] == [*expected, (who, "allowed"), (who, "succeeded")], (action, outcomes)

    # What the actions did.
    assert first not in {s["id"] for s in snapshots(setup)}
    assert len(db_names(pg_cluster, f"{name}\\_\\_replaced\\_%")) == 1
    keys = json.loads(setup.cli("key", "list", "--json", check=True).stdout)
    assert [k["version"] for k in keys] == [2]
    assert [o["name"] for o in json.loads(setup.cli("operator", "list", "--json").stdout)] == ["alice", "otto", "vera"]
    assert setup.cli("audit", "verify").returncode == 0


# -- tampering with the audit log ------------------------------------------------------------------


_AUDIT_COLS = "seq, ts, operator, host, action, subject, outcome, detail, prev, mac"


def _rows(db: Path) -> list[tuple[Any, ...]]:
    with catalog_db(db) as conn:
        return list(conn.execute(f"SELECT {_AUDIT_COLS} FROM audit_log ORDER BY seq").fetchall())


def _restore_rows(db: Path, rows: list[tuple[Any, ...]]) -> None:
    with catalog_db(db) as conn:
        conn.execute("DELETE FROM audit_log")
        conn.executemany(f"INSERT INTO audit_log ({_AUDIT_COLS}) VALUES ({','.join('?' * len(rows[0]))})", rows)


_sql = sql  # statements on the catalog, as someone with write access to the file would run them


def test_audit_tampering_is_detected_and_named(tmp_path: Path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    setup = setup_factory([local_target(tmp_path / "repo"), local_target(tmp_path / "repo2", "second")], [])
    setup.cli("init", check=True)
    alice = enrol(setup, "alice", "admin")
    setup.cli("prune", "--operator", "alice")  # refused: no code
    setup.cli("prune", "--operator", "alice", "--otp", alice.next(), check=True)
    setup.cli("prune", "--operator", "alice", "--otp", alice.wrong())
    ok = setup.cli("audit", "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr
    db = setup.dir / "catalog.db"
    original = _rows(db)
    n = len(original)
    assert n >= 8

    refused = next(r[0] for r in original if r[4] == "prune" and r[6] == "refused")
    _sql(db, f"UPDATE audit_log SET outcome='allowed' WHERE seq={refused}")
    out = setup.cli("audit", "verify")
    assert out.returncode == 1 and f"audit entry #{refused} " in out.stdout and "altered" in out.stdout, out.stdout
    _restore_rows(db, original)

    _sql(db, "DELETE FROM audit_log WHERE seq=4")
    out = setup.cli("audit", "verify")
    assert out.returncode == 1 and "#4 is missing" in out.stdout and "deleted" in out.stdout, out.stdout
    _restore_rows(db, original)

    _sql(db, "UPDATE audit_log SET seq=-1 WHERE seq=5", "UPDATE audit_log SET seq=5 WHERE seq=6",
         "UPDATE audit_log SET seq=6 WHERE seq=-1")
    out = setup.cli("audit", "verify")
    assert out.returncode == 1 and "audit entry #5 holds the content of entry #6" in out.stdout, out.stdout
    _restore_rows(db, original)

    # Dropping the newest entries leaves a valid, shorter chain: the repository copy exposes it.
    _sql(db, f"DELETE FROM audit_log WHERE seq>={n - 1}")
    out = setup.cli("audit", "verify")
    assert out.returncode == 1 and f"audit entry #{n - 1} " in out.stdout and "missing from the catalog" in out.stdout
    _restore_rows(db, original)
    assert setup.cli("audit", "verify").returncode == 0

    # The catalog is lost: the log comes back from the repository, chain intact.
    for f in setup.dir.glob("catalog.db*"):
        f.unlink()
    setup.cli("catalog", "rebuild", check=True)
    back = _rows(db)
    assert back[:n] == original
    out = setup.cli("audit", "verify")
    assert out.returncode == 0, out.stdout
    # ... and so do the operators, who can act as before.
    assert [o["name"] for o in json.loads(setup.cli("operator", "list", "--json").stdout)] == ["alice"]
    assert setup.cli("prune", "--operator", "alice", "--otp", alice.next()).returncode == 0

    # Emptying the operators table does not reopen the code-free first enrolment.
    _sql(db, "DELETE FROM operators")
    out = setup.cli("operator", "add", "mallory", "--role", "admin")
    assert out.returncode == 2 and "is not one" in out.stderr, out.stderr  # not a first enrolment
    for r in (tmp_path / "repo", tmp_path / "repo2"):
        for p in (r / "operators").iterdir():
            p.unlink()
    _sql(db, "DELETE FROM operators")
    out = setup.cli("operator", "add", "mallory", "--role", "admin")
    assert out.returncode == 2 and "operators were enrolled before" in out.stderr, out.stderr
    assert json.loads(setup.cli("operator", "list", "--json").stdout) == []


# -- restore over an existing database ------------------------------------------------------------


def _flip_all_packs(repo: Path) -> None:
    for p in (repo / "data").rglob("*"):
        if p.is_file():
            data = bytearray(p.read_bytes())
            data[len(data) // 3] ^= 1
            p.write_bytes(bytes(data))


async def test_restore_force_keeps_the_old_database_and_loses_nothing_on_failure(  # type: ignore[no-untyped-def]
        tmp_path: Path, pg_cluster, make_warranty_db, setup_factory) -> None:
    name, dsn = make_warranty_db(claims=500)
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo)], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    setup.cli("backup", "--db", "warranty", check=True)
    at_backup = await fingerprint(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM warranty.claim_events")  # the accident
    damaged = await fingerprint(dsn)
    assert damaged != at_backup

    admin = enrol(setup, "alice", "admin")
    out = setup.cli("restore", "--db", "warranty", "--into", name, "--force", "--operator", "alice")
    assert out.returncode == 2 and NEEDS_CODE in out.stderr
    assert await fingerprint(dsn) == damaged  # refused: untouched
    out = setup.cli("restore", "--db", "warranty", "--into", name, "--force", "--operator", "alice",
                    "--otp", admin.next())
    assert out.returncode == 0, out.stderr
    aside = re.search(r"kept as (\S+);", out.stderr)
    assert aside, out.stderr
    assert await fingerprint(dsn) == at_backup
    assert await fingerprint(pg_cluster.dsn(aside.group(1))) == damaged

    # A restore that fails (every copy damaged) changes nothing and leaves nothing behind.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM warranty.claim_attachments")
    before = await fingerprint(dsn)
    _flip_all_packs(repo)
    out = setup.cli("restore", "--db", "warranty", "--into", name, "--force", "--operator", "alice",
                    "--otp", admin.next())
    assert out.returncode == 1 and "no intact copy" in out.stderr
    assert await fingerprint(dsn) == before
    assert db_names(pg_cluster, f"{name}\\_\\_restoring%") == []
    outcomes = [e["outcome"] for e in audit(setup) if e["action"] == "restore.overwrite"]
    assert outcomes == ["refused", "allowed", "succeeded", "allowed", "failed"]


# -- forget and prune --------------------------------------------------------------------------------


def _packs(repo: Path) -> set[str]:
    return {p.name for p in (repo / "data").rglob("*") if p.is_file()}


async def test_forget_and_prune_with_grace_period(tmp_path: Path, pg_cluster, make_warranty_db,  # type: ignore[no-untyped-def]
                                                  setup_factory) -> None:
    # Tables equal in both databases share chunks, so a's packs are wholly garbage only where they hold
    # its claims: enough of them for at least two 1 MiB packs of a's own.
    _, dsn_a = make_warranty_db(claims=30000, seed=1)
    name_b, dsn_b = make_warranty_db(claims=30000, seed=2)
    repo, repo2 = tmp_path / "repo", tmp_path / "repo2"
    setup = setup_factory([local_target(repo), local_target(repo2, "second")],
                          [{"name": "a", "dsn": dsn_a}, {"name": "b", "dsn": dsn_b}],
                          repository={"pack_target_mib": 1, "chunk_avg_kib": 64}, security={"totp_drift_steps": 2})
    setup.cli("init", check=True)
    sid_a = setup.cli("backup", "--db", "a", check=True).stdout.strip()
    setup.cli("backup", "--db", "b", check=True)
    all_packs = _packs(repo)
    alice = enrol(setup, "alice", "admin", drift=2)
    me = ["--operator", "alice"]

    out = setup.cli("forget", sid_a[:8], *me, "--otp", alice.next())
    assert out.returncode == 0, out.stderr
    assert [s["db"] for s in snapshots(setup)] == ["b"]
    assert not (repo / "snapshots" / sid_a).exists() and not (repo2 / "snapshots" / sid_a).exists()

    # Default grace (24 h): everything is younger, nothing goes.
    rep = json.loads(setup.cli("prune", "--json", *me, "--otp", alice.next(), check=True).stdout)
    assert rep["packs_deleted"] == 0 and rep["packs_too_young"] > 0
    assert _packs(repo) == all_packs
    # A dry run needs no code and deletes nothing.
    rep = json.loads(setup.cli("prune", "--dry-run", "--grace", "0s", "--json", check=True).stdout)
    assert rep["dry_run"] and rep["packs_deleted"] > 0 and _packs(repo) == all_packs

    # A leftover of a crashed backup is kept while young, deleted once old.
    leftover = repo / "data" / "ab" / ("ab" + "0" * 62)
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"x" * 1000)
    rep = json.loads(setup.cli("prune", "--grace", "1h", "--json", *me, "--otp", alice.next(), check=True).stdout)
    assert leftover.exists() and rep["packs_deleted"] == 0
    old = time.time() - 7200
    for p in [*repo.rglob("*"), *repo2.rglob("*")]:
        if p.is_file() and "data" in p.parts:
            os.utime(p, (old, old))
    rep = json.loads(setup.cli("prune", "--grace", "1h", "--json", *me, "--otp", alice.next(), check=True).stdout)
    # Old enough to be marked, not deleted: a backup that loaded the index before may still reference them.
    assert rep["packs_marked"] > 2 and rep["packs_deleted"] == 0 and leftover.exists()
    check = setup.cli("check", "--read-data")
    assert check.returncode == 0 and "marked for deletion" in check.stdout, check.stdout
    # Once the marks are older than the grace period (here: none), the next prune deletes them.
    rep = json.loads(setup.cli("prune", "--grace", "0s", "--json", *me, "--otp", alice.next(), check=True).stdout)
    assert rep["packs_deleted"] > 2 and not leftover.exists()
    assert _packs(repo) == _packs(repo2) and len(_packs(repo)) < len(all_packs)
    check = setup.cli("check", "--read-data")
    assert check.returncode == 0 and "referenced by no index" not in check.stdout, check.stdout

    into = f"{name_b}_after_prune"
    setup.cli("restore", "--db", "b", "--into", into, check=True)
    assert await fingerprint(dsn_b) == await fingerprint(pg_cluster.dsn(into))
    setup.cli("catalog", "rebuild", check=True)
    assert [s["db"] for s in snapshots(setup)] == ["b"]
    # The next backup of a still works: pruned chunks are stored again, not referenced.
    setup.cli("backup", "--db", "a", check=True)
    assert setup.cli("check", "--read-data").returncode == 0


def test_enrolment_draws_a_qr_code_on_a_terminal(tmp_path: Path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    import pty
    import subprocess

    from tests.fixtures.backstop import BACKSTOP

    setup = setup_factory([local_target(tmp_path / "repo")], [])
    setup.cli("init", check=True)
    master, slave = pty.openpty()
    proc = subprocess.Popen([*BACKSTOP, "--config", str(setup.path), "operator", "add", "alice", "--role", "admin"],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:  # read while it writes: a pty's buffer is small
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert "otpauth://totp/Backstop:alice?" in shown
    assert sum(shown.count(c) for c in "█▀▄") > 100  # the QR code, drawn with block characters
    # Not on a pipe: scripts get the URI alone.
    setup2 = setup_factory([local_target(tmp_path / "repo2")], [])
    setup2.cli("init", check=True)
    out = setup2.cli("operator", "add", "bob", "--role", "admin", check=True)
    assert out.stdout.strip().startswith("otpauth://") and "█" not in out.stdout


async def test_settings_changes_go_through_the_same_gate(tmp_path: Path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    """The engine API the console uses: the change runs only after the gate allowed it, and is audited."""
    import pytest
    from core.engine import Engine
    from core.errors import AuthError, MfaRequired
    from core.security.gate import Action, Identity

    setup = setup_factory([local_target(tmp_path / "repo")], [])
    applied: list[str] = []
    async with Engine(setup.config) as engine:
        await engine.init()
        admin = await engine.add_operator("alice", "admin", Identity("root"))
        book = CodeBook(secret_from_uri(admin.uri))
        viewer = await engine.add_operator("vera", "viewer", Identity("alice", book.next()))
        with pytest.raises(MfaRequired):
            await engine.change_settings(Action.RETENTION_CHANGE, "keep_daily 7 -> 3", lambda: applied.append("x"),
                                         Identity("alice"))
        with pytest.raises(AuthError, match="role viewer"):
            await engine.change_settings(Action.RETENTION_CHANGE, "keep_daily 7 -> 3", lambda: applied.append("x"),
                                         Identity("vera", CodeBook(secret_from_uri(viewer.uri)).current()))
        assert applied == []

        async def apply() -> None:
            applied.append("keep_daily=3")
        await engine.change_settings(Action.RETENTION_CHANGE, "keep_daily 7 -> 3", apply,
                                     Identity("alice", book.next()))
        assert applied == ["keep_daily=3"]
        outcomes = [(e.operator, e.outcome) for e in engine.audit_entries() if e.action == "settings.retention"]
        assert outcomes == [("alice", "refused"), ("vera", "refused"), ("alice", "allowed"), ("alice", "succeeded")]
        assert (await engine.check_audit()).ok
