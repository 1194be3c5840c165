"""Secrets (passphrase, S3 secret key, TOTP secret) never reach output, events, the catalog or the repository."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from core.security.totp import secret_base32

from tests.fixtures.backstop import local_target, s3_target_dict
from tests.fixtures.catalogs import catalog_db
from tests.fixtures.otp import secret_from_uri
from tests.fixtures.s3 import new_bucket

PASSPHRASE = "Passphrase-ZQX7731-never-shown"
S3_SECRET = "S3secret-QQV9981-never-shown"
WRONG_S3_SECRET = "S3wrong-KKD4410-never-shown"


def _catalog_text(db: Path) -> str:
    """Every row of every table (jobs, job events, audit log, operators, ...) as text."""
    with catalog_db(db) as conn:
        if isinstance(conn, sqlite3.Connection):
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        else:  # PostgreSQL: the catalog's tables and the fleet queue's
            tables = [f"{r[0]}.{r[1]}" for r in conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN"
                " ('public', 'fleet') AND table_type = 'BASE TABLE'")]
        return "\n".join(repr(row) for t in tables for row in conn.execute(
            f'SELECT * FROM {t}' if "." in t else f'SELECT * FROM "{t}"'))


@pytest.fixture
def distinctive_s3_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """AWS_SECRET_ACCESS_KEY set to a distinctive value for the servers and clients this test starts."""
    import boto3

    # SeaweedFS takes its admin credentials from the environment it starts in; boto3
    # caches credentials per session, so start a fresh default session on both sides.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    boto3.setup_default_session()
    yield S3_SECRET
    monkeypatch.undo()
    boto3.setup_default_session()


def test_secrets_never_leak(tmp_path: Path, distinctive_s3_secret: str, s3_server_factory,  # type: ignore[no-untyped-def]
                            make_warranty_db, setup_factory) -> None:
    _, dsn = make_warranty_db(claims=300)
    server = s3_server_factory()
    repo = tmp_path / "repo"
    setup = setup_factory([local_target(repo), s3_target_dict(server, new_bucket(server), "offsite")],
                          [{"name": "warranty", "dsn": dsn}], passphrase=PASSPHRASE)
    runs: list[subprocess.CompletedProcess[str]] = []

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        out = setup.cli(*args, env=env)
        runs.append(out)
        return out

    assert cli("init").returncode == 0
    sid = cli("backup", "--db", "warranty").stdout.strip()
    assert len(sid) == 64
    enrolment = setup.cli("operator", "add", "alice", "--role", "admin", check=True)
    secret = secret_from_uri(enrolment.stdout.strip().splitlines()[-1])
    totp_forms = [secret_base32(secret), secret.hex(), secret_base32(secret).lower()]

    # A failed login, and listings of everything an operator can see.
    out = cli("forget", sid[:8], "--operator", "alice", "--otp", "000000")
    assert out.returncode == 2 and "refused" in out.stderr
    for args in (("operator", "list"), ("operator", "list", "--json"), ("audit", "list", "--json"),
                 ("jobs", "--json"), ("key", "list", "--json"), ("audit", "verify")):
        assert cli(*args).returncode == 0, args
    # Failing S3 calls: refused credentials, then a dead server.
    out = cli("backup", "--db", "warranty", env={"AWS_SECRET_ACCESS_KEY": WRONG_S3_SECRET})
    assert out.returncode == 1 and "'offsite'" in out.stderr and "credentials were refused" in out.stderr, out.stderr
    server.kill()
    out = cli("backup", "--db", "warranty")
    assert out.returncode == 1 and "'offsite'" in out.stderr

    secrets = [PASSPHRASE, S3_SECRET, WRONG_S3_SECRET, *totp_forms]
    for run in runs:
        for s in secrets:
            assert s not in run.stdout and s not in run.stderr, (run.args, s)
    # The enrolment shows the TOTP secret once, by design, and nothing else.
    assert PASSPHRASE not in enrolment.stdout + enrolment.stderr and S3_SECRET not in enrolment.stdout

    db = setup.dir / "catalog.db"
    text = _catalog_text(db)
    assert "mfa.verify" in text and "JobStarted" in text  # the scan sees audit entries and job events
    for s in secrets:
        assert s not in text, s
    raw = b"".join(p.read_bytes() for p in setup.dir.glob("catalog.db*"))
    for s in [PASSPHRASE.encode(), S3_SECRET.encode(), secret, *(f.encode() for f in totp_forms)]:
        assert s not in raw
    # The stored TOTP secret is sealed: present, but not as the secret.
    with catalog_db(db) as conn:
        sealed = bytes(conn.execute("SELECT secret_sealed FROM operators WHERE name='alice'").fetchone()[0])
    assert len(sealed) == 12 + len(secret) + 16 and secret not in sealed
    for p in repo.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert PASSPHRASE.encode() not in data and S3_SECRET.encode() not in data and secret not in data, p
