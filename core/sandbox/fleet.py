"""The demo's fleet: a control plane (a PostgreSQL catalog in the sandbox's own cluster) and one agent.

``fleet/control.yaml`` is the daemon's config (catalog on PostgreSQL, the
sandbox's repository and schedules); ``fleet/agent.yaml`` is the agent's
(its own SQLite catalog, the warranty database, and the control plane
reached as its own login role, whose password sits in a 0600 passfile).
The control plane's catalog starts as a copy of the sandbox's SQLite
catalog (`backstop catalog migrate --to`), so the fleet sees its history.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from core.postgres.cluster import LocalCluster

CONTROL_DB = "backstop_control"
AGENT = "sandbox-agent"
AGENT_ROLE = "backstop_sandbox_agent"


def _url(cluster: LocalCluster, user: str, passfile: Path) -> str:
    return f"postgresql://{user}@127.0.0.1:{cluster.port}/{CONTROL_DB}?passfile={quote(str(passfile), safe='/')}"


def prepare_fleet(base: Path, cluster: LocalCluster, db_name: str, dsn: str) -> Path:
    """Make (once) the control plane and the agent's role, and write both configs; returns the fleet directory."""
    import psycopg
    from psycopg import sql

    from core.catalog.pg_fleet import ADVISORY_LOCK_FUNCTIONS
    from core.catalog.postgres import PostgresCatalog
    from core.catalog.sqlite import SqliteCatalog
    from core.fleet.queue import ControlPlane
    from core.ops.catalog_migrate import migrate_catalog

    fleet = base / "fleet"
    fleet.mkdir(mode=0o700, exist_ok=True)
    assert cluster.pgpass is not None
    owner_url = _url(cluster, "postgres", cluster.pgpass)
    agent_pass = fleet / "agent.pgpass"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        fresh = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (CONTROL_DB,)).fetchone() is None
    if fresh:
        cluster.create_database(CONTROL_DB)
        migrate_catalog(SqliteCatalog(base / "catalog.db"), owner_url)
    PostgresCatalog(owner_url).close()  # migrated to this version's schema
    with psycopg.connect(owner_url, autocommit=True) as conn:
        # README "A fleet", step 1: the agent may not take the catalog's write lock or the leader lock.
        conn.execute(f"REVOKE EXECUTE ON FUNCTION {', '.join(ADVISORY_LOCK_FUNCTIONS)} FROM PUBLIC")
    if not agent_pass.exists():
        password = secrets.token_urlsafe(24)
        with psycopg.connect(owner_url, autocommit=True) as conn:
            plane = ControlPlane(conn)
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (AGENT_ROLE,)).fetchone() is None:
                plane.create_agent_role(AGENT_ROLE)
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(AGENT_ROLE),
                                                                     sql.Literal(password)))
            plane.register_agent(AGENT, AGENT_ROLE, [db_name])
        agent_pass.touch(mode=0o600)
        agent_pass.write_text(f"127.0.0.1:{cluster.port}:{CONTROL_DB}:{AGENT_ROLE}:{password}\n")
    common = (f"encryption: {{passphrase_file: {base / 'passphrase'}}}\n"
              "targets:\n"
              f"  - {{name: local1, type: local, path: {base / 'repository'}}}\n"
              "databases:\n"
              f"  - {{name: {db_name}, dsn: \"{dsn}\", rto_minutes: 1}}\n")
    (fleet / "control.yaml").write_text(
        "# Written by `backstop demo`: the sandbox fleet's control plane (`backstop daemon` schedules,\n"
        "# the agent runs the work; README, \"A fleet\").\n"
        f"catalog: {{url: \"{owner_url}\"}}\n" + common
        + "schedules:\n"
        f"  - {{name: hourly, action: backup, db: {db_name}, cron: \"0 * * * *\"}}\n")
    (fleet / "agent.yaml").write_text(
        "# Written by `backstop demo`: the sandbox fleet's agent (`backstop agent`).\n"
        f"catalog: {{url: \"sqlite:///{fleet / 'agent-catalog.db'}\"}}\n" + common
        + "fleet:\n"
        f"  agent: {AGENT}\n"
        f"  control_plane: \"{_url(cluster, AGENT_ROLE, agent_pass)}\"\n"
        "  heartbeat_s: 5\n  lease_s: 30\n"
        f"  state_dir: {fleet}\n"
        "  thresholds: {changed_rows: 5%, max_age: 26h}\n")
    return fleet
