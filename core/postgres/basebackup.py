"""Physical base backups: the checks before one, and `pg_basebackup` streaming a tar archive into a pipe.

A base backup is only worth keeping if the WAL from its start to its stop
reaches the archive, so the preflight refuses, each with one line saying
what to change, a server that could never make one restorable: a user
without REPLICATION, ``wal_level = minimal``, archiving off or not going
to Backstop, extra tablespaces (not supported yet), and a pg_hba.conf
that refuses the replication connection pg_basebackup needs.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from core.errors import PostgresError
from core.postgres.logical import ToolProcess, connect, redact, spawn_into_pipe
from core.postgres.tools import connect_error, libpq_message

# What the preflight reads, one row (PostgreSQL 13 and later).
_FACTS_SQL = """
SELECT current_setting('server_version'), current_setting('server_version_num')::int,
       current_setting('wal_level'), current_setting('archive_mode'),
       current_setting('max_wal_senders')::int,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       pg_is_in_recovery(), current_user,
       (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
       coalesce((SELECT setting FROM pg_settings WHERE name = 'archive_library'), '')
"""
_TABLESPACES_SQL = "SELECT spcname FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1"
_HBA_REFUSAL = re.compile(r'(?:no pg_hba\.conf entry for|pg_hba\.conf rejects) replication connection '
                          r'(?:from|for) host "([^"]*)", user "([^"]*)"')
ARCHIVE_COMMAND_HINT = "'backstop --config /path/to/backstop.yaml wal-push %p'"


class BackupRefused(PostgresError):
    """The server cannot give a base backup that could ever be restored: refused before anything was stored."""

    exit_code = 2


@dataclass(frozen=True)
class ServerFacts:
    """What the preflight learnt about the server behind a DSN."""

    server_version: str  # e.g. "15.10"
    version_num: int  # server_version_num, e.g. 150010
    wal_level: str
    archive_mode: str
    max_wal_senders: int
    wal_segment_size: int
    in_recovery: bool
    user: str
    can_replicate: bool
    archive_library: str
    archive_command: str | None  # None: this user may not read it
    tablespaces: list[str] = field(default_factory=list)
    system_identifier: str | None = None  # None: pg_control_system() was not readable
    estimated_bytes: int | None = None

    @property
    def major(self) -> int:
        return self.version_num // 10000


async def server_facts(dsn: str, what: str) -> ServerFacts:
    """Read the settings the preflight judges, the system identifier and a size estimate."""
    async with await connect(dsn, what) as conn:
        cur = await conn.execute(_FACTS_SQL)
        row = await cur.fetchone()
        assert row is not None
        tablespaces = [r[0] for r in await (await conn.execute(_TABLESPACES_SQL)).fetchall()]
        archive_command = await _optional(conn, "SELECT current_setting('archive_command')")
        sysid = await _optional(conn, "SELECT system_identifier::text FROM pg_control_system()")
        size = await _optional(conn, "SELECT sum(pg_database_size(oid))::bigint FROM pg_database")
    return ServerFacts(
        str(row[0]), int(row[1]), str(row[2]), str(row[3]), int(row[4]), int(row[5]), bool(row[6]), str(row[7]),
        bool(row[8]), str(row[9]), None if archive_command is None else str(archive_command), tablespaces,
        None if sysid is None else str(sysid), None if size is None else int(size))


async def _optional(conn: psycopg.AsyncConnection, query: str) -> Any:
    """One value, or None when this user may not read it (autocommit: the session goes on)."""
    try:
        cur = await conn.execute(query)
        row = await cur.fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    return None if row is None else row[0]


async def system_identifier(dsn: str, what: str) -> str | None:
    """The system identifier of the cluster behind ``dsn`` (None when this user may not read it)."""
    async with await connect(dsn, what) as conn:
        value = await _optional(conn, "SELECT system_identifier::text FROM pg_control_system()")
    return None if value is None else str(value)


def refusal(facts: ServerFacts, require_backstop_archiving: bool = True) -> str | None:
    """The first reason this server cannot give a restorable base backup, as one line; None when it can."""
    user = facts.user
    if not facts.can_replicate:
        return (f"user {user!r} lacks the REPLICATION attribute that base backups need; run "
                f"ALTER ROLE {_ident(user)} REPLICATION (as a superuser), or use a DSN of a user who has it")
    if facts.wal_level == "minimal":
        return ("wal_level is 'minimal', which cannot archive WAL or take base backups; set wal_level = replica "
                "in postgresql.conf and restart the server")
    if facts.max_wal_senders < 1:
        return ("max_wal_senders is 0, so the server accepts no base backup connection; set max_wal_senders = 10 "
                "in postgresql.conf and restart the server")
    archive_mode = facts.archive_mode
    if archive_mode == "off" or (facts.in_recovery and archive_mode != "always"):
        where = "on this standby set archive_mode = always" if facts.in_recovery else "set archive_mode = on"
        return (f"WAL archiving is off (archive_mode = {archive_mode}), so no base backup could ever become "
                f"restorable; {where} and archive_command = {ARCHIVE_COMMAND_HINT} in postgresql.conf, then "
                "restart the server")
    if require_backstop_archiving:
        if facts.archive_library:
            return (f"WAL is archived by the library {facts.archive_library!r}, not by Backstop, so the snapshot "
                    f"could never become restorable; set archive_library = '' and archive_command = "
                    f"{ARCHIVE_COMMAND_HINT} in postgresql.conf, then reload the server")
        if facts.archive_command is not None and "wal-push" not in facts.archive_command:
            shown = facts.archive_command or "(empty)"
            return (f"archive_command is {shown!r}, which does not archive to Backstop, so the snapshot could "
                    f"never become restorable; set archive_command = {ARCHIVE_COMMAND_HINT} in postgresql.conf "
                    "and reload the server (SELECT pg_reload_conf())")
    if facts.tablespaces:
        return (f"the cluster has tablespaces outside its data directory ({', '.join(facts.tablespaces)}); "
                "physical backups of such clusters are not supported yet: take logical backups "
                "(`backstop backup --db NAME`) of its databases")
    return None


def _ident(name: str) -> str:
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def hba_line(host: str, user: str) -> str:
    """The pg_hba.conf line that lets ``user`` open replication connections from ``host``."""
    if host in ("[local]", ""):
        return f"local replication {user} scram-sha-256"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return f"host replication {user} {host} scram-sha-256"
    return f"host replication {user} {addr}/{addr.max_prefixlen} scram-sha-256"


async def check_replication(dsn: str, user: str) -> None:
    """Open (and close) a physical replication connection as pg_basebackup will; refuse with the pg_hba line."""
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, replication="true", connect_timeout=10, autocommit=True)
    except psycopg.OperationalError as exc:
        message = libpq_message(exc)
        m = _HBA_REFUSAL.search(message)
        if m is not None:
            who = m.group(2) or user
            raise BackupRefused(
                f"the server's pg_hba.conf refuses replication connections for user {who!r} from {m.group(1)}; "
                f"add the line `{hba_line(m.group(1), who)}` to pg_hba.conf (above any line that rejects it) and "
                "reload the server (SELECT pg_reload_conf())") from None
        lower = message.lower()
        if "replication role" in lower or "wal sender" in lower:
            raise BackupRefused(f"user {user!r} may not start a base backup ({message}); run "
                                f"ALTER ROLE {_ident(user)} REPLICATION") from None
        if "max_wal_senders" in lower or "too many" in lower:
            raise BackupRefused(f"the server has no free WAL sender slot ({message}); raise max_wal_senders in "
                                "postgresql.conf and restart the server, or wait for other base backups or "
                                "standbys to finish") from None
        raise PostgresError(f"cannot open a replication connection ({redact(dsn)}): {connect_error(exc)}") from None
    await conn.close()


BaseBackupProcess = ToolProcess["io.BufferedReader[io.FileIO]"]


def _basebackup_advice(cause: str) -> str:
    return "see the PostgreSQL server log, fix the cause and run the backup again"


BASEBACKUP_OPTIONS = ("--format=tar", "--pgdata=-", "--wal-method=none", "--manifest-checksums=CRC32C",
                      "--checkpoint=fast", "--no-password")


async def start_basebackup(bin_dir: Path, dsn: str, label: str,
                           on_warning: Callable[[str], None] | None = None) -> BaseBackupProcess:
    """Start ``pg_basebackup`` writing the base tablespace as one tar stream (with backup_manifest) into a pipe.

    ``--wal-method=none``: the WAL comes from the archive. Then the server
    finishes the backup only once the WAL up to its stop point is archived;
    its warnings while it waits go to ``on_warning``.
    """
    proc, r, resources = await spawn_into_pipe(bin_dir, "pg_basebackup", dsn,
                                               [*BASEBACKUP_OPTIONS, f"--label={label}"])
    assert proc.stderr is not None
    reader = io.BufferedReader(os.fdopen(r, "rb", buffering=0), buffer_size=1 << 20)
    stderr = asyncio.ensure_future(_read_stderr(proc.stderr, on_warning))
    return BaseBackupProcess("pg_basebackup", proc, reader, stderr, resources, _basebackup_advice)


async def _read_stderr(stream: asyncio.StreamReader, on_warning: Callable[[str], None] | None) -> str:
    """pg_basebackup's messages; the server's warnings (archiving that does not keep up) are passed on at once."""
    lines: list[str] = []
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        lines.append(text)
        if (on_warning is not None and text.lstrip().startswith(("WARNING:", "pg_basebackup: warning:"))
                and "skipping special file" not in text):  # a socket in the data directory: nothing to back up
            on_warning("pg_basebackup: " + " ".join(text.split()))
    return "\n".join(lines)
