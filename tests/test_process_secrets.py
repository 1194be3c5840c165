"""The database password never shows in a process's arguments (`ps` shows those to every local user)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from core.postgres.cluster import LocalCluster
from psycopg import sql

from tests.fixtures.backstop import local_target

MakeDb = Callable[..., tuple[str, str]]


@dataclass
class _Watcher:
    """Polls every process's command line for secrets, and notes which programs ran."""

    secrets: list[bytes]
    seen: set[str] = field(default_factory=set)
    leaks: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = f.read()
                except OSError:
                    continue  # the process has gone
                if not argv:
                    continue
                self.seen.add(os.path.basename(argv.split(b"\0", 1)[0]).decode(errors="replace"))
                if any(secret in argv for secret in self.secrets):
                    self.leaks.append(argv.replace(b"\0", b" ").decode(errors="replace"))
            self._stop.wait(0.002)

    def __enter__(self) -> _Watcher:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def password_role(pg_cluster: LocalCluster) -> Iterator[tuple[str, str]]:
    """(role, password): a superuser the session cluster asks for a SCRAM password over TCP."""
    role, password = f"bk_{uuid.uuid4().hex[:8]}", f"pw_{uuid.uuid4().hex}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("SET password_encryption = 'scram-sha-256'"))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
    hba = pg_cluster.data_dir / "pg_hba.conf"
    original = hba.read_bytes()
    # First match wins: this role must authenticate, everyone else keeps trust.
    hba.write_bytes(f"host all {role} 127.0.0.1/32 scram-sha-256\n".encode() + original)
    _reload(pg_cluster)
    try:
        yield role, password
    finally:
        hba.write_bytes(original)
        _reload(pg_cluster)
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _reload(cluster: LocalCluster) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
        # The reload is asynchronous; an empty error column shows the new file is in force.
        errors = conn.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL").fetchone()
        assert errors == (0,)


def test_password_never_in_process_arguments(tmp_path: Path, pg_cluster: LocalCluster, make_warranty_db: MakeDb,
                                             password_role: tuple[str, str], setup_factory) -> None:  # type: ignore[no-untyped-def]
    role, password = password_role
    name, _ = make_warranty_db(claims=20000)
    # The server has no TLS, so libpq never uses the key passphrase; it must stay off the command line all the same.
    sslpassword = f"sslpw_{uuid.uuid4().hex}"
    dsn = f"postgresql://{role}:{password}@127.0.0.1:{pg_cluster.port}/{name}?sslpassword={sslpassword}"
    secrets = [password.encode(), sslpassword.encode()]
    # The server really asks for it: without the password the role is refused.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://{role}@127.0.0.1:{pg_cluster.port}/{name}", connect_timeout=5).close()

    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    setup.cli("init", check=True)
    with _Watcher(secrets) as backup:
        out = setup.cli("backup", "--db", "warranty")
    assert out.returncode == 0, out.stderr
    assert "pg_dump" in backup.seen, "pg_dump was never seen: the check proved nothing"
    assert backup.leaks == []

    into = f"{name}_restored"  # dropped with its source by make_warranty_db
    with _Watcher(secrets) as restore:
        out = setup.cli("restore", "--db", "warranty", "--into", into)
    try:
        assert out.returncode == 0, out.stderr
        assert "pg_restore" in restore.seen, "pg_restore was never seen: the check proved nothing"
        assert restore.leaks == []
        with psycopg.connect(pg_cluster.dsn(into)) as conn:
            assert conn.execute("SELECT count(*) FROM warranty.claims").fetchone() == (20000,)
    finally:
        # The role owns the new database; it must go before the role can be dropped.
        pg_cluster.drop_database(into)
