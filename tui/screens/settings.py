"""9 Settings: schedules with their next and last run, retention rules and their effect now, targets, and the
config file's edits waiting for an approval (`a` approves them behind the MFA modal)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from core.errors import AuthError, BackstopError
from core.schedule.overview import ScheduleStatus
from core.security.gate import Identity
from core.settings.overview import PendingSetting, RetentionStatus, SettingsOverview, TargetRow
from rich.table import Table
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static
from textual.worker import get_current_worker

from tui import format as fmt
from tui.host import ConsoleHost
from tui.screens.base import ConsoleScreen
from tui.screens.modals import DestructiveApproval, DestructiveConfirmScreen

NO_SCHEDULES = "No schedules: add a schedules: section to the config (README, Schedules); `backstop daemon` runs them."


def _table(*headers: str, whole: int = 1) -> Table:
    """A borderless table that wraps to the screen's width (plain text: readable without colour); the first
    ``whole`` columns (names) are never broken."""
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold", expand=False)
    for i, h in enumerate(headers):
        table.add_column(h, overflow="fold", no_wrap=i < whole)
    return table


def schedules_table(rows: list[ScheduleStatus]) -> Table | str:
    """Two lines a schedule, to fit 80 cells: what it does, its cron and zone, the next run in that zone, and
    the newest slot (UTC) with its outcome."""
    if not rows:
        return NO_SCHEDULES
    table = _table("SCHEDULE", "CRON, ZONE", "NEXT RUN", "LAST SLOT (UTC), OUTCOME")
    for r in rows:
        s = r.schedule
        what = f"{s.name}\n{s.action}" + (f" {s.db}" if s.db else "")
        when = f"{s.cron}\n{s.timezone}" + (f" {s.window}" if s.window else "")
        nxt = r.next_local.strftime("%Y-%m-%d\n%H:%M %Z") if r.next_local is not None else "none in\nwindow"
        if r.last is None:
            last = "-\nnever run"
        else:
            bad = r.last.state in ("failed", "missed", "abandoned")
            last = f"{fmt.iso_short(r.last.slot)}\n{r.last_outcome.upper() if bad else r.last_outcome}"
        table.add_row(what, when, nxt, last)
    return table


def retention_table(rows: list[RetentionStatus]) -> Table | str:
    """Each database's rules in force and what they would keep and remove now."""
    if not rows:
        return "No databases configured."
    table = _table("DATABASE", "RULES IN FORCE", "EFFECT NOW")
    for r in rows:
        if r.rules is None:
            effect = "-"
        else:
            effect = f"keeps {r.keep}, would remove {r.remove}"
            if r.alert:
                effect += f"; ALERT: {r.alert}"
        table.add_row(r.db, r.rules_text, effect)
    return table


def targets_table(rows: list[TargetRow]) -> Table:
    """Name, type and location of each target."""
    table = _table("NAME", "TYPE", "WHERE")
    for t in rows:
        table.add_row(t.name, t.type, t.where)
    return table


def pending_text(view: SettingsOverview) -> str:
    """The pending changes as `settings diff` words them, or why nothing waits."""
    if view.enforced is None:
        return f"Pending changes unknown: {view.in_force}."
    if not view.enforced:
        return "No pending change: no operator is enrolled, so the config's settings apply as written."
    if not view.pending:
        return f"No pending change ({view.in_force})."
    lines = [f"In force: {view.in_force}. The config file differs (press a to approve):"]
    for p in view.pending:
        lines += pending_lines(p)
    return "\n".join(lines)


def pending_lines(p: PendingSetting) -> list[str]:
    """One pending section: what changes, who may approve it, and what new retention rules would remove now."""
    role = p.required_role
    out = [f"{p.change.section}: changed (approving needs role {role}{' or admin' if role == 'operator' else ''})"]
    out += [f"  {line}" for line in p.change.lines]
    if p.would_remove is not None:
        ids = p.would_remove
        out.append(f"  the new rules would remove {len(ids)} snapshot(s) now"
                   + (f": {', '.join(i[:8] for i in ids[:6])}{' …' if len(ids) > 6 else ''}" if ids else ""))
    return out


class SettingsScreen(ConsoleScreen):
    """What is in force and what waits for an approval; `a` approves the config file's edits (role and code)."""

    NUMBER = 9
    SCREEN_TITLE = "Settings"
    AUTO_FOCUS = "#settings-body"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "approve", "Approve changes", id="settings.approve"),
        Binding("r", "refresh", "Refresh", id="settings.refresh"),
    ]

    def __init__(self, host: ConsoleHost) -> None:
        super().__init__(host)
        self.view: SettingsOverview | None = None

    def compose_body(self) -> ComposeResult:
        yield Static("", id="settings-message")
        with VerticalScroll(id="settings-body"):
            yield Static("Pending changes", classes="section-title settings-first")
            yield Static("reading …", id="settings-pending")
            yield Static("Schedules", classes="section-title")
            yield Static("reading …", id="settings-schedules")
            yield Static("Retention", classes="section-title")
            yield Static("computing what the rules would remove …", id="settings-retention")
            yield Static("Targets", classes="section-title")
            yield Static("reading …", id="settings-targets")

    def on_mount(self) -> None:
        self.query_one("#settings-message", Static).display = False

    def reload(self) -> None:
        self.load_settings()

    @work(thread=True, group="settings", exclusive=True, exit_on_error=False,
          description="settings: schedules, retention effect, pending changes")
    def load_settings(self) -> None:
        # Retention plans read every snapshot of each database: a thread, never the event loop.
        view = self.engine.settings_overview(datetime.fromtimestamp(self.now(), UTC))
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self.show, view)

    def show(self, view: SettingsOverview) -> None:
        """Display a freshly computed overview."""
        self.view = view
        self.query_one("#settings-pending", Static).update(pending_text(view))
        self.query_one("#settings-schedules", Static).update(schedules_table(view.schedules))
        self.query_one("#settings-retention", Static).update(retention_table(view.retention))
        self.query_one("#settings-targets", Static).update(targets_table(view.targets))
        waiting = f"{len(view.pending)} change(s) wait for approval" if view.pending else "nothing pending"
        self.set_status(f"{len(view.schedules)} schedule(s) · {waiting}")

    def message(self, text: str, error: bool = False) -> None:
        """A line above the sections: the outcome of the last approval."""
        msg = self.query_one("#settings-message", Static)
        msg.update(text)
        msg.set_class(error, "error-text")
        msg.display = bool(text)

    def action_refresh(self) -> None:
        self.load_settings()

    def action_approve(self) -> None:
        pending = self.engine.settings.pending if self.engine.settings is not None else []
        if not pending:
            self.notify("Nothing waits for approval: the config file's settings are the ones in force.",
                        severity="warning")
            return
        op = self.host.operator
        sections = ", ".join(c.section for c in pending)
        explanation = (f"This puts the config file's {sections} in force (see Pending changes), in place of the "
                       "approved settings; the change and who approved it go into the audit log. Type your operator "
                       "name and a fresh one-time code from your authenticator.")
        self.app.push_screen(
            DestructiveConfirmScreen(f"approve {sections} as operator {op}", op, self.host.cursor_blink,
                                     explanation=explanation, name_label="Your operator name"),
            self._confirmed)

    def _confirmed(self, approval: DestructiveApproval | None) -> None:
        if approval is None:
            self.notify("Cancelled: nothing was approved.")
            return
        self.message("approving …")
        self.run_approval(approval.code)

    @work(group="settings-approve", exclusive=True, exit_on_error=False, description="settings: approve changes")
    async def run_approval(self, code: str) -> None:
        try:
            result = await self.engine.approve_settings(Identity(self.host.operator, code))
        except AuthError as exc:
            self.message(f"REFUSED by the MFA gate: {exc}. Nothing was approved.", error=True)
            self.notify(f"approval refused: {exc}", severity="error", timeout=10)
            return
        except BackstopError as exc:
            self.message(f"FAILED: {exc}. Nothing was approved.", error=True)
            return
        if result.changes:
            text = (f"APPROVED {', '.join(c.section for c in result.changes)}: settings version {result.version} "
                    "is in force")
        else:
            text = "nothing was pending"
        for w in result.warnings:
            text += f"; warning: {w}"
        self.message(text)
        self.notify(text)
        self.load_settings()
