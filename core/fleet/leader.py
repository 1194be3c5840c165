"""One scheduling daemon at a time on a fleet's catalog: the one holding a session advisory lock.

Every slot is claimed once in the catalog anyway (schedule_runs is unique
per slot), so two leaders could never run a slot twice; the lock keeps the
others idle instead of racing. The lock belongs to a connection, so a
leader that dies (SIGKILL, power loss) lets go when its session ends, and
a standby takes over at its next try (every few seconds). A host that
vanishes without closing its connection is noticed by the server's TCP
keepalives (README, "A fleet").
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from core.postgres.tools import first_line

log = logging.getLogger("backstop.daemon")

LEADER_LOCK_KEY = 0x6273746C656164  # "bstlead"


class Leadership:
    """Try to lead; keep knowing whether this process still does."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self.held = False

    def try_lead(self) -> bool:
        """True while this process holds the leader lock (taking it when free); never blocks for long."""
        try:
            if self._conn is None or self._conn.closed:
                self.held = False
                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                             application_name="backstop-daemon leader",
                                             keepalives=1, keepalives_idle=10, keepalives_interval=5,
                                             keepalives_count=2)
            if self.held:
                self._conn.execute("SELECT 1")  # still connected: the lock is still ours
                return True
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,)).fetchone()
            self.held = bool(row and row[0])
        except psycopg.Error as exc:
            if self.held:
                log.error("lost the control plane connection, and with it the lead: %s", first_line(exc))
            self.held = False
            if self._conn is not None:
                self._conn.close()
            self._conn = None
        return self.held

    def release(self) -> None:
        """Give the lead up (closing the session releases the lock)."""
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self.held = False
