"""PostgreSQL failures reach the operator as one line that keeps the cause and says what to do."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from core.errors import PostgresError
from core.postgres.cluster import LocalCluster, free_port
from core.postgres.tools import server_major
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.fixtures.backstop import local_target

MakeDb = Callable[..., tuple[str, str]]


@pytest.fixture
def reader_role(pg_cluster: LocalCluster, make_warranty_db: MakeDb) -> Iterator[tuple[str, str]]:
    """(owner's dsn, reader's dsn): a warranty database and a login role that may read all of it."""
    name, owner_dsn = make_warranty_db(claims=300)
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for schema in ("public", "warranty"):
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r};"
                                 " GRANT SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}")
                         .format(s=sql.Identifier(schema), r=sql.Identifier(role)))
    try:
        yield owner_dsn, make_conninfo(owner_dsn, user=role)
    finally:
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {r}; DROP ROLE {r}").format(r=sql.Identifier(role)))


def _failed_backup(tmp_path: Path, setup_factory, dsn: str) -> str:  # type: ignore[no-untyped-def]
    """The one line a failed `backstop backup` printed."""
    setup = setup_factory([local_target(tmp_path / "repo")], [{"name": "warranty", "dsn": dsn}])
    setup.passphrase_file.chmod(0o600)  # as it should be: no warning about it on stderr
    setup.cli("init", check=True)
    out = setup.cli("backup", "--db", "warranty")
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_pg_dump_failure_names_its_cause(tmp_path: Path, reader_role: tuple[str, str],
                                         setup_factory) -> None:  # type: ignore[no-untyped-def]
    owner_dsn, dsn = reader_role
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("REVOKE SELECT ON warranty.claims FROM " + conninfo_to_dict(dsn)["user"])
    line = _failed_backup(tmp_path, setup_factory, dsn)
    # The cause, not pg_dump's trailing "Query was: LOCK TABLE ..." detail.
    assert "permission denied" in line and "claims" in line, line
    assert "Query was" not in line


def test_pg_dump_failure_of_a_copy_names_its_cause(
        tmp_path: Path, reader_role: tuple[str, str], setup_factory) -> None:  # type: ignore[no-untyped-def]
    owner_dsn, dsn = reader_role
    # pg_dump runs with row_security off, so a policy the reader is subject to
    # fails the COPY of that table (pg_dump ends with "Query was: COPY ...").
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE warranty.claims ENABLE ROW LEVEL SECURITY;"
                     " CREATE POLICY only_some ON warranty.claims USING (id % 2 = 0)")
    line = _failed_backup(tmp_path, setup_factory, dsn)
    assert "row-level security" in line and "claims" in line, line
    assert "Command was" not in line


def test_pg_dump_losing_its_session_keeps_the_server_message(
        tmp_path: Path, pg_cluster: LocalCluster, make_warranty_db: MakeDb, setup_factory) -> None:  # type: ignore[no-untyped-def]
    name, dsn = make_warranty_db(claims=20000)
    stop = threading.Event()
    killed: list[int] = []

    def terminate_copies() -> None:
        # A session ended while a COPY streams rows: pg_dump reports the reason as
        # "detail: Error message from server: ..." followed by "Command was: COPY ...".
        # (Ended between statements, it is "query failed: ..." then "Query was: ...".)
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            copying: set[int] = set()
            while not stop.is_set() and not killed:
                # Two statements: in one WHERE clause the planner may call
                # pg_terminate_backend before the filters, on any session.
                now = {r[0] for r in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'backstop'"
                    " AND state = 'active' AND query LIKE 'COPY %%'", (name,))}
                # Seen copying twice in a row: its rows are most likely on their way.
                for pid in now & copying:
                    if conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,):
                        killed.append(pid)
                copying = now

    watcher = threading.Thread(target=terminate_copies, daemon=True)
    watcher.start()
    try:
        line = _failed_backup(tmp_path, setup_factory, dsn)
    finally:
        stop.set()
        watcher.join()
    assert killed, "no COPY was caught running: the test proved nothing"
    assert "terminating connection" in line or "server closed the connection" in line, line
    assert "Command was" not in line


def test_unreachable_server_is_one_clear_line(tmp_path: Path, setup_factory) -> None:  # type: ignore[no-untyped-def]
    line = _failed_backup(tmp_path, setup_factory, f"postgresql://backup:Secret-FJQ1234@127.0.0.1:{free_port()}/w")
    assert "Connection refused" in line, line
    assert line.lower().count("is the server running") <= 1, line
    assert "Secret-FJQ1234" not in line
    assert "; " in line.split("Connection refused", 1)[1]  # what to do comes after the cause

async def test_server_major_unreachable_is_one_clean_line() -> None:
    with pytest.raises(PostgresError) as err:
        await server_major(f"postgresql://postgres:Secret-FJQ1234@localhost:{free_port()}/x")
    message = str(err.value)
    assert "\n" not in message and "\t" not in message
    assert "Connection refused" in message, message
    # libpq's line once, without psycopg's "connection failed:" stutter in front of it.
    assert "connection failed: connection to server" not in message, message
    assert message.lower().count("is the server running") <= 1, message
    assert "Secret-FJQ1234" not in message
