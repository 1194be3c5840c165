"""Requests screens post to the console (the app handles them; screens never call it for these).

Engine events and catalog changes reach the screens the other way, as the
bridge's messages (``tui.bridge``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from core.planner import Incident


class VerifyRequested(Message):
    """Read a snapshot back from every target holding it (shown live on the verification screen)."""

    def __init__(self, snapshot_id: str) -> None:
        super().__init__()
        self.snapshot_id = snapshot_id


class RestoreRequested(Message):
    """Open the restore wizard, optionally for a database and snapshot chosen elsewhere, or for a drill."""

    def __init__(self, db: str | None = None, snapshot: str | None = None,
                 incident: Incident | None = None) -> None:
        super().__init__()
        self.db = db
        self.snapshot = snapshot
        self.incident = incident
