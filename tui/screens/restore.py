"""6 Restore: a step-by-step wizard from what happened to a measured, recorded restore.

Steps: what happened → how bad (and when) → scope → tables → point in time →
the planner's proposal → destination → review → (MFA confirmation when
destructive) → live progress → result. `enter` chooses, `escape` goes back a
step, `ctrl+n` continues where a step has a form. Nothing is restored before
the review step's explicit "Start".

A point in time (a moment, not a snapshot) lets the planner offer a physical
snapshot plus archived WAL; the whole cluster is then recovered into a new
data directory (absent or empty: nothing is overwritten, so no MFA code is
asked, as for a restore into a new database).

On a PostgreSQL catalog a logical restore is handed to the live agent that
serves the database (it can reach the destination server); the console shows
the fleet job's progress. A restore over the live database still asks for the
code here, and the control plane checks it before queueing: the agent never
sees a code. With no live agent the restore runs from this host, with a warning.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from core.engine import PhysicalRestoreRequest, PhysicalRestoreResult, RestoreResult, make_target
from core.errors import AuthError, BackstopError
from core.planner import Incident, PointInTime, RestorePlan, RestoreRequest, Severity
from core.records import SnapshotRow
from core.security.gate import Identity
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, Input, Log, OptionList, ProgressBar, SelectionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from tui import format as fmt
from tui.bridge import JobChanged, JobProgressed
from tui.host import ConsoleHost
from tui.screens.base import ConsoleScreen
from tui.screens.modals import DestructiveApproval, DestructiveConfirmScreen

if TYPE_CHECKING:  # the queue's module brings psycopg: the wizard needs only its row types
    from core.fleet.queue import AgentRow, FleetJob

SEVERITY_TEXT = {
    Severity.LOW: "Low: some rows or one table are wrong or gone",
    Severity.HIGH: "High: a whole database is affected",
    Severity.CRITICAL: "Critical: production is down or data is compromised",
}
_TIMED = {Incident.ACCIDENTAL_DELETION, Incident.CORRUPTION, Incident.RANSOMWARE}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
STEPS = ("incident", "severity", "scope", "tables", "point", "plan", "destination", "review", "progress", "result")


@dataclass
class WizardState:
    """What the operator chose so far."""

    incident: Incident | None = None
    severity: Severity = Severity.HIGH
    incident_at: datetime | None = None
    db: str | None = None
    tables: list[str] = field(default_factory=list)
    whole: bool = True
    point: PointInTime = field(default_factory=PointInTime.latest)
    plan: RestorePlan | None = None
    destination: str = ""
    over_live: bool = False
    approval: DestructiveApproval | None = None
    job_id: str | None = None
    result: RestoreResult | None = None
    error: str | None = None
    pgdata: str = ""  # a point-in-time recovery's new data directory
    physical_result: PhysicalRestoreResult | None = None
    fleet_job: tuple[int, str] | None = None  # (job id, agent) of a restore handed to an agent

    @property
    def physical(self) -> bool:
        """Whether the accepted plan recovers the cluster from a physical snapshot and WAL."""
        return self.plan is not None and self.plan.source is not None and self.plan.source.kind == "physical"

    def request(self) -> RestoreRequest:
        """The planner request these choices make."""
        assert self.incident is not None and self.db is not None
        return RestoreRequest(self.db, self.incident, self.severity, tuple(self.tables if not self.whole else ()),
                              self.point, self.incident_at)


def parse_when(text: str) -> datetime | None:
    """'YYYY-MM-DD HH:MM' (UTC) or empty; raises ValueError otherwise."""
    text = text.strip()
    if not text:
        return None
    for pattern in ("%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(f"cannot read {text!r}: use YYYY-MM-DD HH:MM (UTC)")


def pgdata_problem(text: str) -> str | None:
    """Why ``text`` cannot be a new data directory (None: it is absent, or an empty directory)."""
    if not text.strip():
        return "Type the data directory to write the recovered cluster into."
    path = Path(text.strip()).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        return f"{path} exists and is not an empty directory: choose a new one (nothing is overwritten)."
    return None


def fleet_result(db: str, job: FleetJob) -> RestoreResult:
    """What an agent reported for a finished restore job, as the wizard's result."""
    r = job.result or {}
    warnings = [f"the previous database is kept as {r['kept_aside']}"] if r.get("kept_aside") else []
    warnings.append(f"restored by agent {job.agent} (fleet job {job.id})")
    return RestoreResult(snapshot_id=str(r.get("snapshot") or ""), db=db, into=str(r.get("into") or ""),
                         tables=[str(t) for t in r.get("tables") or []], bytes=int(r.get("bytes") or 0),
                         duration_s=float(r.get("duration_s") or 0.0), warnings=warnings)


def plan_text(p: RestorePlan) -> str:
    """The planner's proposal for operators."""
    if not p.ok:
        lines = [f"NO VALID PLAN: {p.refusal}"]
    else:
        assert p.source is not None and p.point is not None
        head = "PLAN (RISKY)" if p.risky else "PLAN"
        what = ", ".join(p.tables) if p.tables else "whole database"
        action = (f"point-in-time recovery of the cluster of {p.request.db} from physical snapshot "
                  f"{p.source.id[:8]} + archived WAL, target {p.target}" if p.source.kind == "physical" else
                  f"restore snapshot {p.source.id[:8]} ({p.source.kind}) of {p.request.db} from target {p.target}")
        if p.source.kind == "physical" and not p.tables:
            what = "whole cluster"
        lines = [
            f"{head}: {action}",
            f"  point      {p.point.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC   scope {what}",
            f"  estimate   {fmt.duration(p.estimated_s)} ({p.estimate_basis})"
            + (f"   RTO {fmt.duration(p.rto_s)}" if p.rto_s else ""),
            "  why:",
            *[f"   - {r}" for r in p.reasons],
        ]
        if p.risks:
            lines += ["  RISKS:", *[f"   ! {r}" for r in p.risks]]
    if p.rejected:
        # One line per reason, naming the snapshots it applies to (a down target rejects many).
        by_why: dict[str, list[str]] = {}
        for r in p.rejected:
            by_why.setdefault(r.why, []).append(r.source_id[:8])
        lines.append("  not chosen:")
        for why, ids in list(by_why.items())[:6]:
            more = f" +{len(ids) - 2}" if len(ids) > 2 else ""
            lines.append(f"   x {', '.join(ids[:2])}{more}: {why}")
        if len(by_why) > 6:
            lines.append(f"   … and {len(by_why) - 6} more reasons")
    return "\n".join(lines)


class RestoreScreen(ConsoleScreen):
    """The restore wizard."""

    NUMBER = 6
    SCREEN_TITLE = "Restore"
    AUTO_FOCUS = "#incident-options"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "step_back", "Back a step", id="restore.back"),
        Binding("ctrl+n", "next", "Continue", id="restore.next"),
    ]

    def __init__(self, host: ConsoleHost,
                 preset: tuple[str | None, str | None, Incident | None] | None = None) -> None:
        """``preset``: (database, snapshot, incident) chosen elsewhere before the wizard first opened."""
        super().__init__(host)
        self.preset = preset
        self.state = WizardState()
        self.history: list[str] = []
        self.preset_snapshot: str | None = None

    # -- layout ---------------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        with ContentSwitcher(initial="step-incident", id="steps"):
            with Vertical(id="step-incident", classes="step"):
                yield Static("What happened?", classes="step-title")
                yield OptionList(*[Option(i.label, id=i.value) for i in Incident], id="incident-options")
            with Vertical(id="step-severity", classes="step"):
                yield Static("How bad is it?", classes="step-title")
                yield OptionList(*[Option(t, id=s.value) for s, t in SEVERITY_TEXT.items()], id="severity-options")
                yield Static("When did it happen or start? (UTC, YYYY-MM-DD HH:MM; empty if unknown)",
                             id="when-label")
                yield self._input("when-input", "e.g. 2026-11-20 09:30")
                yield Static("", id="when-error", classes="error-text")
            with Vertical(id="step-scope", classes="step"):
                yield Static("Which database, and how much of it?", classes="step-title")
                yield OptionList(id="db-options")
                yield OptionList(Option("The whole database", id="whole"),
                                 Option("Only some tables", id="tables"), id="scope-options")
            with Vertical(id="step-tables", classes="step"):
                yield Static("Tables to restore (space toggles, ctrl+n continues)", classes="step-title",
                             id="tables-title")
                yield SelectionList[str](id="table-options")
            with Vertical(id="step-point", classes="step"):
                yield Static("To which point in time?", classes="step-title")
                yield OptionList(id="point-options")
                yield Static("Recover to (UTC, YYYY-MM-DD HH:MM[:SS]; enter plans it):", id="moment-label")
                yield self._input("moment-input", "e.g. 2026-11-20 14:31:07")
                yield Static("", id="moment-error", classes="error-text")
            with Vertical(id="step-plan", classes="step"):
                yield Static("The planner proposes (tab scrolls the plan)", classes="step-title")
                with VerticalScroll(id="plan-scroll", classes="plan-scroll"):
                    yield Static("planning …", id="plan-text")
                yield OptionList(id="plan-options")
            with Vertical(id="step-destination", classes="step"):
                yield Static("Where to restore?", classes="step-title")
                yield Static("New database name:", id="dest-label")
                yield self._input("dest-input", "new database name")
                yield self._input("pgdata-input", "new (absent or empty) data directory, e.g. /srv/pitr/warranty")
                yield Static("", id="dest-error", classes="error-text")
                yield OptionList(id="dest-options")
                yield Static("", id="dest-note", classes="chart-note")
            with Vertical(id="step-review", classes="step"):
                yield Static("Review", classes="step-title")
                yield Static("", id="review-text", classes="plan-text")
                yield OptionList(Option("Start the restore", id="start"), Option("Back", id="back"),
                                 id="review-options")
            with Vertical(id="step-progress", classes="step"):
                yield Static("Restoring …", classes="step-title", id="progress-title")
                yield ProgressBar(total=100, show_eta=False, id="restore-progress")
                yield Static("", id="progress-text")
                yield Log(id="restore-log", max_lines=500)
            with Vertical(id="step-result", classes="step"):
                yield Static("Result", classes="step-title")
                yield Static("", id="result-text", classes="plan-text")
                yield OptionList(Option("Start another restore", id="again"),
                                 Option("Go to the dashboard", id="dashboard"), id="result-options")

    def _input(self, id: str, placeholder: str) -> Input:
        inp = Input(placeholder=placeholder, id=id)
        inp.cursor_blink = self.host.cursor_blink
        return inp

    def on_mount(self) -> None:
        pending, self.preset = self.preset, None
        if pending is not None:
            self.reset(*pending)
        else:
            self.show_step("incident", remember=False)

    # -- navigation ---------------------------------------------------------------------

    @property
    def step(self) -> str:
        return (self.query_one("#steps", ContentSwitcher).current or "step-incident").removeprefix("step-")

    def show_step(self, name: str, remember: bool = True) -> None:
        """Switch to a step and focus its first control."""
        if remember and self.step != name:
            self.history.append(self.step)
        self.query_one("#steps", ContentSwitcher).current = f"step-{name}"
        self.set_status(f"step {STEPS.index(name) + 1} of {len(STEPS)}: {name}")
        getattr(self, f"_enter_{name}", lambda: None)()

    def action_step_back(self) -> None:
        """Escape: one step back; at the first step, back to the previous screen."""
        if self.step == "progress":
            self.notify("The restore keeps running; its progress is on screen 0 (Fleet) too." if self.state.fleet_job
                        else "The restore keeps running; its progress is on screens 1 and 2 too.")
            return
        if self.step == "result" or not self.history:
            if self.step == "result":
                self.reset()
            else:
                self.host.go_back()
            return
        self.show_step(self.history.pop(), remember=False)

    def action_next(self) -> None:
        """ctrl+n: continue from steps with a form."""
        if self.step == "tables":
            self._tables_done()
        elif self.step == "severity":
            self._when_done()
        elif self.step == "point" and self.query_one("#moment-input", Input).display:
            self._moment_done()
        elif self.step == "destination":
            self._choose_destination("pgdata" if self.state.physical else "new")

    def reset(self, db: str | None = None, snapshot: str | None = None, incident: Incident | None = None) -> None:
        """Start over (optionally with a database and snapshot chosen in the catalog, or a drill)."""
        self.state = WizardState(db=db, incident=incident)
        self.preset_snapshot = snapshot
        if snapshot:
            self.state.point = PointInTime.snapshot(snapshot)
        self.history.clear()
        self.query_one("#when-input", Input).value = ""
        self.show_step("incident", remember=False)
        if incident is not None:
            options = self.query_one("#incident-options", OptionList)
            options.highlighted = list(Incident).index(incident)
            self.show_step("severity")

    # -- steps -------------------------------------------------------------------------

    def _enter_incident(self) -> None:
        self.query_one("#incident-options", OptionList).focus()

    @on(OptionList.OptionSelected, "#incident-options")
    def _incident(self, event: OptionList.OptionSelected) -> None:
        self.state.incident = Incident(event.option.id)
        self.show_step("severity")

    def _enter_severity(self) -> None:
        timed = self.state.incident in _TIMED
        for wid in ("#when-label", "#when-input", "#when-error"):
            self.query_one(wid).display = timed
        self.query_one("#severity-options", OptionList).focus()

    @on(OptionList.OptionSelected, "#severity-options")
    def _severity(self, event: OptionList.OptionSelected) -> None:
        self.state.severity = Severity(event.option.id)
        if self.state.incident in _TIMED:
            self.query_one("#when-input", Input).focus()
        else:
            self.state.incident_at = None
            self.show_step("scope")

    @on(Input.Submitted, "#when-input")
    def _when_submitted(self) -> None:
        self._when_done()

    def _when_done(self) -> None:
        try:
            self.state.incident_at = parse_when(self.query_one("#when-input", Input).value)
        except ValueError as exc:
            self.query_one("#when-error", Static).update(str(exc))
            return
        self.query_one("#when-error", Static).update("")
        self.show_step("scope")

    def _enter_scope(self) -> None:
        dbs = self.query_one("#db-options", OptionList)
        names = [d.name for d in self.engine.config.databases]
        dbs.clear_options()
        dbs.add_options([Option(n, id=n) for n in names])
        if self.state.db in names:
            dbs.highlighted = names.index(self.state.db)
        elif names:
            dbs.highlighted = 0
        self.query_one("#scope-options", OptionList).display = False
        dbs.focus()

    @on(OptionList.OptionSelected, "#db-options")
    def _db(self, event: OptionList.OptionSelected) -> None:
        self.state.db = event.option.id
        scope = self.query_one("#scope-options", OptionList)
        scope.display = True
        scope.highlighted = 0 if self.state.whole else 1
        scope.focus()

    @on(OptionList.OptionSelected, "#scope-options")
    def _scope(self, event: OptionList.OptionSelected) -> None:
        self.state.whole = event.option.id == "whole"
        if self.state.whole:
            self.state.tables = []
            self.show_step("point")
        else:
            self.show_step("tables")

    def _enter_tables(self) -> None:
        self.query_one("#tables-title", Static).update("Reading the table list of the newest snapshot …")
        self.query_one("#table-options", SelectionList).focus()
        self.load_tables()

    @work(group="wizard-tables", exclusive=True, exit_on_error=False,
          description="restore wizard: read the table list from the newest snapshot's manifest")
    async def load_tables(self) -> None:
        assert self.state.db is not None
        table_list = self.query_one("#table-options", SelectionList)
        title = self.query_one("#tables-title", Static)
        rows = await asyncio.to_thread(self.queries.latest_snapshots, self.state.db, 1)
        if not rows:
            title.update(f"No snapshots of {self.state.db}: nothing to restore (escape goes back).")
            return
        try:
            names = await self.engine.snapshot_tables(self.preset_snapshot or rows[0].id)
        except BackstopError as exc:
            title.update(f"Cannot read the table list: {exc}")
            return
        table_list.clear_options()
        table_list.add_options([(n, n, n in self.state.tables) for n in names])
        title.update(f"Tables in snapshot {(self.preset_snapshot or rows[0].id)[:8]} "
                     "(space toggles, ctrl+n continues)")

    def _tables_done(self) -> None:
        chosen = list(self.query_one("#table-options", SelectionList).selected)
        if not chosen:
            self.notify("Choose at least one table (space), or go back and restore the whole database.",
                        severity="warning")
            return
        self.state.tables = chosen
        self.show_step("point")

    def _enter_point(self) -> None:
        assert self.state.db is not None
        opts = self.query_one("#point-options", OptionList)
        opts.clear_options()
        opts.add_option(Option("Latest: let the planner choose the best snapshot (recommended)", id="latest"))
        opts.add_option(Option("A moment in time: point-in-time recovery (physical backup + WAL)", id="moment"))
        for wid in ("#moment-label", "#moment-input", "#moment-error"):
            self.query_one(wid).display = self.state.point.kind == "time"
        opts.highlighted = 0
        opts.focus()
        self.load_points(self.state.db)

    @work(group="wizard-points", exclusive=True, exit_on_error=False,
          description="restore wizard: list the newest snapshots to choose from")
    async def load_points(self, db: str) -> None:
        rows = await asyncio.to_thread(self.queries.latest_snapshots, db, 30)
        if get_current_worker().is_cancelled or self.step != "point" or self.state.db != db:
            return
        self._show_points(rows)

    def _show_points(self, rows: list[SnapshotRow]) -> None:
        """The snapshots to choose from, below 'Latest'; the cursor goes to the one chosen before, if any."""
        # Physical snapshots restore a data directory, reached through "A moment in time", not into a database.
        rows = [r for r in rows if r.kind != "physical"]
        opts = self.query_one("#point-options", OptionList)
        opts.add_options([Option(f"{fmt.iso_short(r.finished_at)} UTC  {r.id[:8]}  {fmt.size(r.size_bytes):>9}  "
                                 f"{'verified' if any(c.ok for c in r.checks) else 'unverified'}", id=r.id)
                          for r in rows])
        ids = ["latest", "moment"] + [r.id for r in rows]
        want = {"snapshot": self.state.point.snapshot_id, "time": "moment"}.get(self.state.point.kind, "latest")
        if opts.highlighted in (None, 0):
            opts.highlighted = ids.index(want) if want in ids else 0

    @on(OptionList.OptionSelected, "#point-options")
    def _point(self, event: OptionList.OptionSelected) -> None:
        sid = event.option.id or "latest"
        if sid == "moment":
            for wid in ("#moment-label", "#moment-input", "#moment-error"):
                self.query_one(wid).display = True
            inp = self.query_one("#moment-input", Input)
            if not inp.value and self.state.incident_at is not None:
                # Just before the damage is the usual answer; the operator can type the second.
                inp.value = f"{self.state.incident_at:%Y-%m-%d %H:%M:%S}"
            inp.focus()
            return
        self.state.point = PointInTime.latest() if sid == "latest" else PointInTime.snapshot(sid)
        self.show_step("plan")

    @on(Input.Submitted, "#moment-input")
    def _moment_submitted(self) -> None:
        self._moment_done()

    def _moment_done(self) -> None:
        """The typed moment becomes a point-in-time request (the planner looks for physical+WAL sources)."""
        err = self.query_one("#moment-error", Static)
        try:
            at = parse_when(self.query_one("#moment-input", Input).value)
        except ValueError as exc:
            err.update(str(exc))
            return
        if at is None:
            err.update("Type the moment to recover to, or choose another option above.")
            return
        err.update("")
        self.state.point = PointInTime.moment(at)
        self.show_step("plan")

    def _enter_plan(self) -> None:
        self.query_one("#plan-text", Static).update("planning: reading the catalog and probing the targets …")
        opts = self.query_one("#plan-options", OptionList)
        opts.clear_options()
        opts.focus()
        self.make_plan()

    @work(group="wizard-plan", exclusive=True, exit_on_error=False,
          description="restore wizard: ask the planner for a plan")
    async def make_plan(self) -> None:
        try:
            p = await self.engine.plan_restore(self.state.request(),
                                               now=datetime.fromtimestamp(self.now(), UTC))
        except BackstopError as exc:
            self.query_one("#plan-text", Static).update(f"Planning failed: {exc}")
            return
        if get_current_worker().is_cancelled:
            return
        self.state.plan = p
        self.query_one("#plan-text", Static).update(plan_text(p))
        opts = self.query_one("#plan-options", OptionList)
        opts.clear_options()
        if p.ok:
            opts.add_option(Option("Accept the plan and choose where to restore" + (" (risky)" if p.risky else ""),
                                   id="accept"))
        opts.add_option(Option("Back: change the choices", id="back"))
        opts.highlighted = 0
        opts.focus()

    @on(OptionList.OptionSelected, "#plan-options")
    def _plan_choice(self, event: OptionList.OptionSelected) -> None:
        if event.option.id == "accept" and self.state.physical and self.state.tables:
            # Tables as of a moment go through a scratch cluster, which the CLI runs.
            self.notify(f"Tables at a moment: run `backstop restore --db {self.state.db} --table ... --target-time "
                        "...`; the wizard recovers whole clusters only.", severity="warning")
        elif event.option.id == "accept":
            self.show_step("destination")
        else:
            self.action_step_back()

    def _enter_destination(self) -> None:
        p = self.state.plan
        assert p is not None and self.state.db is not None
        physical = self.state.physical
        self.query_one("#dest-input").display = not physical
        self.query_one("#pgdata-input").display = physical
        self.query_one("#dest-label", Static).update(
            "New data directory for the recovered cluster (absent or empty):" if physical else "New database name:")
        if physical:
            self._enter_pgdata()
            return
        inp = self.query_one("#dest-input", Input)
        if not inp.value or inp.value.startswith(f"{self.state.db}_"):
            inp.value = self.state.destination or p.destination
        opts = self.query_one("#dest-options", OptionList)
        opts.clear_options()
        opts.add_option(Option("Restore into the NEW database named above (safe, default)", id="new"))
        available, why = self.engine.destructive_restore_available()
        if available and p.tables:
            available, why = False, "whole databases only: restore the tables into a new database and copy rows back"
        opts.add_option(Option(f"Restore OVER the live database {self.state.db} (destructive, needs MFA)",
                               id="live", disabled=not available))
        self.query_one("#dest-note", Static).update(
            f"Over the live database: {why}" + (f" (acting as operator {self.host.operator})" if available else ""))
        opts.highlighted = 0
        opts.focus()

    def _enter_pgdata(self) -> None:
        """A point-in-time recovery writes a data directory: offer only a new one (nothing is overwritten)."""
        opts = self.query_one("#dest-options", OptionList)
        opts.clear_options()
        opts.add_option(Option("Recover the cluster into the NEW data directory typed above", id="pgdata"))
        self.query_one("#dest-note", Static).update(
            "The directory must be absent or empty; the cluster is written and set up to recover to the moment, "
            "then its start command is shown.")
        opts.highlighted = 0
        self.query_one("#pgdata-input", Input).focus()

    @on(Input.Submitted, "#dest-input")
    def _dest_submitted(self) -> None:
        self._choose_destination("new")

    @on(Input.Submitted, "#pgdata-input")
    def _pgdata_submitted(self) -> None:
        self._choose_destination("pgdata")

    @on(OptionList.OptionSelected, "#dest-options")
    def _dest_choice(self, event: OptionList.OptionSelected) -> None:
        self._choose_destination(event.option.id or "new")

    def _choose_destination(self, kind: str) -> None:
        assert self.state.db is not None
        err = self.query_one("#dest-error", Static)
        if kind == "pgdata":
            problem = pgdata_problem(self.query_one("#pgdata-input", Input).value)
            if problem:
                err.update(problem)
                self.query_one("#pgdata-input", Input).focus()
                return
            self.state.over_live = False
            self.state.pgdata = str(Path(self.query_one("#pgdata-input", Input).value.strip()).expanduser().absolute())
            err.update("")
            self.show_step("review")
            return
        if kind == "live":
            self.state.over_live = True
            self.state.destination = self.state.db
        else:
            name = self.query_one("#dest-input", Input).value.strip()
            if not _NAME_RE.match(name):
                err.update("Use letters, digits and underscores (at most 63), starting with a letter.")
                self.query_one("#dest-input", Input).focus()
                return
            if name == self.state.db:
                err.update("That is the live database: choose the destructive option to restore over it.")
                return
            self.state.over_live = False
            self.state.destination = name
        err.update("")
        self.show_step("review")

    def _enter_review(self) -> None:
        s = self.state
        assert s.plan is not None and s.plan.source is not None and s.incident is not None and s.db is not None
        dest = (f"OVER THE LIVE DATABASE {self.engine.live_database(s.db)} (destructive: MFA confirmation follows)"
                if s.over_live
                else f"new data directory {s.pgdata} (recovers to {s.plan.point:%Y-%m-%d %H:%M:%S} UTC)"
                if s.physical and s.plan.point is not None
                else f"new database {s.destination}")
        when = f" at {s.incident_at:%Y-%m-%d %H:%M} UTC" if s.incident_at else ""
        whole = "whole cluster" if s.physical else "whole database"
        self.query_one("#review-text", Static).update(
            f"incident     {s.incident.label}{when}, severity {s.severity.value}\n"
            f"database     {s.db}  ({', '.join(s.plan.tables) or whole})\n"
            f"snapshot     {s.plan.source.id[:12]} ({s.plan.source.kind}) from target {s.plan.target}\n"
            f"destination  {dest}\n"
            f"estimate     {fmt.duration(s.plan.estimated_s)}"
            + (f"  (RTO {fmt.duration(s.plan.rto_s)})" if s.plan.rto_s else "")
            + ("\nRISKS        " + "; ".join(s.plan.risks) if s.plan.risks else ""))
        opts = self.query_one("#review-options", OptionList)
        opts.highlighted = 0
        opts.focus()

    @on(OptionList.OptionSelected, "#review-options")
    def _review_choice(self, event: OptionList.OptionSelected) -> None:
        if event.option.id != "start":
            self.action_step_back()
            return
        if self.state.over_live:
            assert self.state.db is not None
            live = self.engine.live_database(self.state.db)
            self.app.push_screen(
                DestructiveConfirmScreen(f"restore over {live} as operator {self.host.operator}", live,
                                         self.host.cursor_blink),
                self._confirmed)
        else:
            self.start_restore()

    def _confirmed(self, approval: DestructiveApproval | None) -> None:
        if approval is None:
            self.notify("Cancelled: nothing was changed.")
            return
        self.state.approval = approval
        self.start_restore()

    def start_restore(self) -> None:
        """Go to the progress step and run the restore in a worker."""
        self.query_one("#restore-log", Log).clear()
        self.state.fleet_job = None
        self.query_one("#progress-text", Static).update("starting …")
        bar = self.query_one("#restore-progress", ProgressBar)
        bar.update(total=None, progress=0)
        self.show_step("progress")
        self.run_restore()

    @work(group="restore", exclusive=True, exit_on_error=False, description="restore wizard: run the restore")
    async def run_restore(self) -> None:
        s = self.state
        assert s.plan is not None and s.plan.source is not None and s.db is not None
        try:
            if s.physical:
                await self._run_physical()
                return
            agent, no_agent = await self._fleet_agent(s.db)
            if agent is not None:
                s.result = await self._run_by_agent()
            elif s.over_live:
                assert s.approval is not None
                who = Identity(self.host.operator, s.approval.code)
                over = await self.engine.restore_over(s.db, self.engine.live_database(s.db), s.plan.source.id,
                                                      who=who, target=s.plan.target)
                kept = [f"the previous database is kept as {over.aside}"] if over.aside else []
                s.result = replace(over.restore, warnings=[*over.restore.warnings, *kept])
            else:
                s.result = await self.engine.restore(s.db, s.destination, s.plan.source.id, list(s.plan.tables),
                                                     target=s.plan.target,
                                                     kind="drill" if s.incident is Incident.DRILL else "restore")
            if no_agent:
                s.result = replace(s.result, warnings=[*s.result.warnings, no_agent])
            s.error = None
        except AuthError as exc:
            s.error = f"REFUSED by the MFA gate: {exc}"
            s.result = None
        except BackstopError as exc:
            s.error = str(exc)
            s.result = None
        self.show_result()

    async def _fleet_agent(self, db: str) -> tuple[AgentRow | None, str | None]:
        """The live agent serving ``db`` on a PostgreSQL catalog, or None and why the restore runs here."""
        if not self.engine.config.catalog.is_postgres or self.state.incident is Incident.DRILL:
            return None, None  # a test restore proves this host's path; it is recorded as a drill here
        problem: str | None = None
        try:
            agent = await asyncio.to_thread(self.engine.agent_for, db)
        except BackstopError as exc:
            agent, problem = None, str(exc)
        if agent is not None:
            return agent, None
        why = f"the agents could not be read ({problem})" if problem else f"no live agent serves {db}"
        note = f"{why}: restored from this host (start `backstop agent` beside {db} to restore there)"
        self.query_one("#restore-log", Log).write_line(note)
        return None, note

    async def _run_by_agent(self) -> RestoreResult:
        """Queue the restore for the agent (the code checked here first when it overwrites) and follow it."""
        from core.fleet.restore_dispatch import RestoreOrder

        s = self.state
        assert s.plan is not None and s.plan.source is not None and s.db is not None
        who = None
        if s.over_live:
            assert s.approval is not None
            who = Identity(self.host.operator, s.approval.code)
        into = self.engine.live_database(s.db) if s.over_live else s.destination
        order = RestoreOrder(s.db, into, s.plan.source.id, tuple(s.plan.tables), overwrite=s.over_live,
                             target=s.plan.target)
        job = await self.engine.dispatch_restore(order, who)
        s.fleet_job = (job.id, job.agent)
        log = self.query_one("#restore-log", Log)
        log.write_line(f"queued as fleet job {job.id} for agent {job.agent}")
        self.query_one("#progress-text", Static).update(f"queued for agent {job.agent} …")
        phases: list[str] = []

        def progress(j: FleetJob) -> None:
            # Called in this worker's coroutine, on the app's loop: widgets may be updated directly.
            p = j.progress or {}
            phase = str(p.get("phase") or "")
            if phase and phase not in phases:
                phases.append(phase)
                log.write_line(f"agent {j.agent}: {phase}")
            total = int(p.get("bytes_total") or 0)
            self._show_progress(phase or "running", int(p.get("bytes_done") or 0), total or None,
                                float(p.get("rate") or 0.0))

        done = await self.engine.wait_for_fleet_job(job.id, progress)
        log.write_line(f"fleet job {done.id}: {done.state}")
        return fleet_result(s.db, done)

    async def _run_physical(self) -> None:
        """Write the physical snapshot into the new data directory, set up to recover to the planned moment."""
        s = self.state
        assert s.plan is not None and s.plan.source is not None and s.plan.point is not None and s.db is not None
        s.physical_result, s.error = None, None
        config_path = self.engine.config_path
        if config_path is None:
            s.error = ("the console does not know its config file, which the recovered cluster's restore_command "
                       "reads: open it with `backstop --config PATH tui`")
        else:
            try:
                target = make_target(time=s.plan.point.astimezone(UTC).isoformat())
                s.physical_result = await self.engine.restore_physical(PhysicalRestoreRequest(
                    db=s.db, pgdata=Path(s.pgdata), config_path=config_path, snapshot=s.plan.source.id,
                    target=target))
            except BackstopError as exc:
                s.error = str(exc)
        self.show_result()

    def _physical_result_text(self, r: PhysicalRestoreResult) -> str:
        p = self.state.plan
        assert p is not None
        vs = f" (estimated {fmt.duration(p.estimated_s)})" if p.estimated_s else ""
        warn = "".join(f"\nWARNING {w}" for w in r.warnings)
        return (f"RECOVERY PREPARED: physical snapshot {r.snapshot_id[:8]} of {r.db} written into {r.pgdata}\n"
                f"{r.files} files, {fmt.size(r.bytes)} in {fmt.duration(r.duration_s)}{vs}; pg_verifybackup: "
                f"{r.verified}\nrecovery reads WAL from {r.wal_from} to {r.target.describe()}; start it with:\n"
                f"  {r.start_command}{warn}")

    def show_result(self) -> None:
        """The outcome, with the measured time against the estimate and the RTO."""
        s = self.state
        text = self.query_one("#result-text", Static)
        if s.physical_result is not None:
            text.update(self._physical_result_text(s.physical_result))
        elif s.result is not None:
            r = s.result
            p = s.plan
            assert p is not None
            vs = ""
            if p.estimated_s:
                vs = f" (estimated {fmt.duration(p.estimated_s)})"
            rto = ""
            if p.rto_s:
                rto = "  within the RTO" if r.duration_s <= p.rto_s else "  OVER THE RTO"
                rto += f" of {fmt.duration(p.rto_s)}"
            warn = "".join(f"\nWARNING {w}" for w in r.warnings)
            text.update(f"RESTORED snapshot {r.snapshot_id[:8]} of {r.db} into {r.into} "
                        f"({', '.join(r.tables) or 'whole database'})\n"
                        f"measured {fmt.duration(r.duration_s)}{vs}{rto}; {fmt.size(r.bytes)} read\n"
                        + (f"recorded by agent {s.fleet_job[1]} in its catalog; fleet job {s.fleet_job[0]} is on "
                           f"screen 0.{warn}" if s.fleet_job else
                           f"recorded in the catalog: it counts in Average Recovery Time and on screen 5.{warn}"))
        else:
            if s.error and s.error.startswith("REFUSED"):
                text.update(f"{s.error}\nNothing was changed; the refusal is in the audit log (screen 8).")
            else:
                text.update(f"RESTORE FAILED: {s.error}\nNothing was left half-done: " + (
                    "what the restore wrote into the data directory is removed again." if s.physical else
                    "a database the restore created is dropped again, and the live database was not touched."))
        self.show_step("result")

    def _enter_result(self) -> None:
        opts = self.query_one("#result-options", OptionList)
        opts.highlighted = 0
        opts.focus()

    @on(OptionList.OptionSelected, "#result-options")
    def _result_choice(self, event: OptionList.OptionSelected) -> None:
        if event.option.id == "again":
            self.reset()
        else:
            self.reset()
            self.host.goto("dashboard")

    # -- live progress ---------------------------------------------------------------------

    def job_changed(self, msg: JobChanged) -> None:
        if self.step != "progress":
            return
        log = self.query_one("#restore-log", Log)
        if msg.event == "started" and msg.kind == "restore":
            self.state.job_id = msg.job_id
            log.write_line(f"started: {msg.text}")
        elif msg.job_id == self.state.job_id:
            if msg.event == "phase":
                self.query_one("#progress-text", Static).update(f"phase: {msg.text}")
            log.write_line(f"{msg.event}: {msg.text}")

    def job_progress(self, msg: JobProgressed) -> None:
        if msg.job_id != self.state.job_id:
            return
        self._show_progress(msg.phase, msg.done, msg.total, msg.rate)

    def _show_progress(self, phase: str, done: int, total: int | None, rate: float) -> None:
        """The bar and its line, for a restore run here or by an agent."""
        self.query_one("#restore-progress", ProgressBar).update(total=total or None, progress=done)
        self.query_one("#progress-text", Static).update(
            f"{phase}: {fmt.size(done)} of {fmt.size(total)} at {fmt.size(rate)}/s, "
            f"eta {fmt.eta(done, total, rate)}")
