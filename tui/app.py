"""The operator console: `backstop tui`.

Ten numbered screens (Textual modes, so each keeps its state), one bridge
from the engine's events and the catalog to UI messages, and a keyboard
contract operators build habits on: 1-9 and 0 switch screens, `?` help, `/`
filter, ctrl+p command palette, `q` quit, escape back.

The app builds each screen with itself as the screen's host
(``tui.host.ConsoleHost``) and drives the screens; screens never import the
app, and ask for what involves other screens by posting ``tui.messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import ClassVar

from core.engine import Engine
from core.errors import BackstopError
from core.insights.overview import Dashboard
from core.planner import Incident
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from tui.bridge import CatalogChanged, EngineBridge, JobChanged, JobProgressed
from tui.messages import RestoreRequested, VerifyRequested
from tui.screens.audit import AuditScreen
from tui.screens.base import ConsoleScreen
from tui.screens.catalog import CatalogScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.drills import DrillsScreen
from tui.screens.fleet import FleetScreen
from tui.screens.jobs import JobsScreen
from tui.screens.modals import ConfirmScreen, HelpEntry, HelpScreen
from tui.screens.restore import RestoreScreen
from tui.screens.settings import SettingsScreen
from tui.screens.trends import TrendsScreen
from tui.screens.verification import VerificationScreen
from tui.widgets.filter_bar import FilterBar
from tui.widgets.virtual_table import VirtualTable

SCREENS_IN_ORDER: tuple[tuple[str, type[ConsoleScreen]], ...] = (
    ("dashboard", DashboardScreen), ("jobs", JobsScreen), ("catalog", CatalogScreen),
    ("verification", VerificationScreen), ("trends", TrendsScreen), ("restore", RestoreScreen),
    ("drills", DrillsScreen), ("audit", AuditScreen), ("settings", SettingsScreen), ("fleet", FleetScreen),
)
_SCREENS_GROUP = Binding.Group("Screens", compact=True)
KEYMAP_ENV = "BACKSTOP_KEYMAP"
OPERATOR_ENV = "BACKSTOP_OPERATOR"


def _screen_bindings() -> list[BindingType]:
    return [Binding(str(cls.NUMBER), f"goto('{mode}')", cls.SCREEN_TITLE, id=f"goto.{mode}", group=_SCREENS_GROUP)
            for mode, cls in SCREENS_IN_ORDER]


def parse_keymap(text: str) -> dict[str, str]:
    """'goto.catalog=c,help=f1' -> {binding id: keys} for App.set_keymap."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if "=" in part:
            bid, keys = part.split("=", 1)
            if bid.strip() and keys.strip():
                out[bid.strip()] = keys.strip()
    return out


class BackstopApp(App[None]):
    """The console over one engine."""

    CSS_PATH = "app.tcss"
    TITLE = "Backstop"
    BINDINGS: ClassVar[list[BindingType]] = [
        *_screen_bindings(),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("q", "quit_console", "Quit", id="quit"),
        Binding("escape", "back", "Back", id="back"),
        Binding("ctrl+p", "command_palette", "Palette", show=False, priority=True, id="palette"),
    ]

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time, poll_interval: float = 0.5,
                 cursor_blink: bool = True, operator: str | None = None, own_engine: bool = False,
                 keymap: dict[str, str] | None = None, first_dashboard: Future[Dashboard] | None = None) -> None:
        super().__init__()
        self.first_dashboard = first_dashboard  # computed while the app started (see core.cli); the dashboard takes it
        self.engine = engine
        self.clock = clock
        self.poll_interval = poll_interval
        self.cursor_blink = cursor_blink
        self.operator = operator or os.environ.get(OPERATOR_ENV) or getpass.getuser()
        self.own_engine = own_engine
        self.bridge: EngineBridge | None = None
        self.mode_history: list[str] = []
        self.console_screens: dict[int, ConsoleScreen] = {}
        self.pending_restore: tuple[str | None, str | None, Incident | None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._keymap = keymap if keymap is not None else parse_keymap(os.environ.get(KEYMAP_ENV, ""))
        for mode, cls in SCREENS_IN_ORDER:
            self.add_mode(mode, lambda cls=cls: self._build(cls))  # type: ignore[misc]

    def _build(self, cls: type[ConsoleScreen]) -> ConsoleScreen:
        """A numbered screen, with this console as its host and what it starts from."""
        screen: ConsoleScreen
        if cls is DashboardScreen:
            first, self.first_dashboard = self.first_dashboard, None
            screen = DashboardScreen(self, first)
        elif cls is RestoreScreen:
            preset, self.pending_restore = self.pending_restore, None
            screen = RestoreScreen(self, preset)
        else:
            screen = cls(self)
        # Registered so that catalog changes reach the screens not on display.
        self.console_screens[screen.NUMBER] = screen
        return screen

    def _mounted(self, number: int) -> ConsoleScreen | None:
        """A numbered screen the app may drive (built and mounted), or None."""
        screen = self.console_screens.get(number)
        return screen if screen is not None and screen.is_mounted else None

    # -- lifecycle -------------------------------------------------------------------

    def on_mount(self) -> None:
        if self._keymap:
            self.set_keymap(self._keymap)
        self.bridge = EngineBridge(self, self.engine.bus)
        # One cheap check of the catalog's change feed every half second, in a thread, is all the idle
        # console does (well under 1% of a core). Not a worker: workers are what tests wait to finish.
        if self.poll_interval > 0:
            self._watcher = asyncio.create_task(self._watch_catalog())
        self.switch_mode("dashboard")

    async def on_unmount(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher  # its change feed is closed when it ends
        if self.bridge is not None:
            self.bridge.close()
        if self.own_engine:
            await self.engine.close()

    # -- what screens may ask (tui.host.ConsoleHost) -------------------------------------

    def console_jobs(self) -> Mapping[str, str]:
        """Jobs this console started and that still run: id -> kind."""
        return dict(self.bridge.running) if self.bridge else {}

    # -- catalog changes and the bridge's messages ---------------------------------------

    async def _watch_catalog(self) -> None:
        async for _ in self.engine.queries.watch(self.poll_interval):
            self.post_message(CatalogChanged())

    def on_catalog_changed(self, _: CatalogChanged) -> None:
        for screen in self.console_screens.values():
            if screen is self.screen and screen.is_mounted:
                screen.catalog_changed()
            else:
                screen.stale = True

    def on_job_progressed(self, msg: JobProgressed) -> None:
        if isinstance(self.screen, ConsoleScreen) and self.screen.is_mounted:
            self.screen.job_progress(msg)

    def on_job_changed(self, msg: JobChanged) -> None:
        # A screen mounting meanwhile looks at console_jobs() itself.
        for screen in list(self.console_screens.values()):
            if screen.is_mounted:
                screen.job_changed(msg)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Failures in workers become notifications, never a crash."""
        if event.state is WorkerState.ERROR:
            err = event.worker.error
            text = str(err) if isinstance(err, BackstopError) else f"{type(err).__name__}: {err}"
            self.notify(f"{event.worker.description or event.worker.name} failed: {text}", severity="error",
                        timeout=10)

    # -- navigation ------------------------------------------------------------------------

    def goto(self, mode: str) -> None:
        """Show a numbered screen, remembering where we came from (for escape)."""
        if mode != self.current_mode:
            self.mode_history.append(self.current_mode)
            del self.mode_history[:-20]
            self.switch_mode(mode)

    def action_goto(self, mode: str) -> None:
        self.goto(mode)

    def go_back(self) -> None:
        """Back to the previous numbered screen."""
        if len(self.screen_stack) > 1:
            self.pop_screen()
        elif self.mode_history:
            self.switch_mode(self.mode_history.pop())

    async def action_back(self) -> None:
        self.go_back()

    # -- actions shared by screens ----------------------------------------------------------------

    def on_verify_requested(self, msg: VerifyRequested) -> None:
        self.start_verification(msg.snapshot_id)

    def on_restore_requested(self, msg: RestoreRequested) -> None:
        self.open_restore(msg.db, msg.snapshot, msg.incident)

    def start_verification(self, snapshot_id: str) -> None:
        """Read a snapshot back from every target, shown live on screen 4."""
        self.goto("verification")
        screen = self._mounted(VerificationScreen.NUMBER)
        if isinstance(screen, VerificationScreen):  # a screen mounting now follows the job from console_jobs()
            screen.watch_job(f"verification of {snapshot_id[:8]}")

        async def run() -> None:
            reports = await self.engine.verify_snapshot(snapshot_id)
            bad = [r for r in reports if not r.ok]
            if bad:
                self.notify(f"snapshot {snapshot_id[:8]}: {len(bad)} damaged or unreadable cop(y/ies): "
                            f"{bad[0].problems[0]}", severity="error", timeout=15)
            else:
                self.notify(f"snapshot {snapshot_id[:8]} read back intact from "
                            f"{', '.join(r.target for r in reports)}")

        self.run_worker(run(), group=f"verify-{snapshot_id}", exclusive=True, exit_on_error=False,
                        description=f"verification of snapshot {snapshot_id[:8]}")

    def open_restore(self, db: str | None = None, snapshot: str | None = None,
                     incident: Incident | None = None) -> None:
        """Open the wizard, optionally for a database and snapshot chosen elsewhere, or for a drill."""
        screen = self.console_screens.get(RestoreScreen.NUMBER)
        if isinstance(screen, RestoreScreen) and screen.is_mounted:
            screen.reset(db, snapshot, incident)
        elif isinstance(screen, RestoreScreen):
            screen.preset = (db, snapshot, incident)  # built, not mounted yet: it starts from this
        else:
            self.pending_restore = (db, snapshot, incident)  # the wizard is built with it
        self.goto("restore")

    # -- help, palette, quit -------------------------------------------------------------------------

    def help_entries(self) -> list[tuple[str, list[HelpEntry]]]:
        """Sections of the help screen, generated from the bindings active right now."""
        sections: dict[str, list[HelpEntry]] = {}
        seen: set[tuple[str, str]] = set()
        for _key, (node, binding, _enabled, _tooltip) in self.screen.active_bindings.items():
            if binding.system:
                continue
            if node is self:
                title = "Everywhere"
            elif node is self.screen:
                title = f"This screen ({getattr(node, 'SCREEN_TITLE', type(node).__name__)})"
            else:
                title = f"In the focused {type(node).__name__}"
            entry = HelpEntry(self.get_key_display(binding), binding.description or binding.action,
                              binding.id or "-", title, binding.show or binding.action == "command_palette")
            seen.add((entry.key, entry.description))
            sections.setdefault(title, []).append(entry)
        # Keys of lists and filters, even when none is focused right now.
        for title, cls in (("In lists", VirtualTable), ("While filtering (/)", FilterBar)):
            rows = []
            for b in cls.BINDINGS:
                assert isinstance(b, Binding)
                e = HelpEntry(self.get_key_display(b), b.description, b.id or "-", title, b.show)
                if (e.key, e.description) not in seen:
                    rows.append(e)
            if rows:
                sections.setdefault(title, []).extend(rows)
        order = sorted(sections, key=lambda t: (not t.startswith("This screen"), t != "Everywhere", t))
        return [(t, sections[t]) for t in order]

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.help_entries()))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for mode, cls in SCREENS_IN_ORDER:
            yield SystemCommand(f"{cls.NUMBER} {cls.SCREEN_TITLE}", f"Go to the {cls.SCREEN_TITLE} screen",
                                lambda m=mode: self.goto(m))
        yield SystemCommand("Restore wizard: start over", "A new restore, from what happened",
                            lambda: self.open_restore())
        yield SystemCommand("Keys", "Every key binding (?)", self.action_help)
        yield SystemCommand("Quit", "Leave the console (q)", self.action_quit_console)
        yield from super().get_system_commands(screen)

    async def action_quit(self) -> None:
        # ctrl+q goes through the same question as q.
        self.action_quit_console()

    def action_quit_console(self) -> None:
        """Quit, asking first if a job this console started is still running."""
        running = dict(self.bridge.running) if self.bridge else {}
        if not running:
            self.exit()
            return
        kinds = ", ".join(sorted(set(running.values())))

        def answer(yes: bool | None) -> None:
            if yes:
                self.workers.cancel_all()
                self.exit()

        self.push_screen(ConfirmScreen(f"A {kinds} started here is still running. Quit and cancel it? "
                                       "(a cancelled restore drops the database it was creating)",
                                       yes="Quit and cancel", no="Stay"), answer)


def run_console(engine: Engine, first_dashboard: Future[Dashboard] | None = None,
                operator: str | None = None) -> int:
    """Entry point of `backstop tui` (core.cli builds the engine and starts the dashboard's reads)."""
    BackstopApp(engine, own_engine=True, operator=operator, first_dashboard=first_dashboard).run()
    return 0
