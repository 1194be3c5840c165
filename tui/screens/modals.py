"""Modal screens: help (from the live bindings), confirmations with typed results, KPI definitions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from core.insights.kpis import Kpi
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


@dataclass(frozen=True)
class HelpEntry:
    """One binding as the help screen lists it."""

    key: str
    description: str
    binding_id: str
    where: str
    in_footer: bool


class HelpScreen(ModalScreen[None]):
    """Every binding active on the screen underneath, generated from the bindings themselves."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss_help", "Close help", id="help.close"),
    ]

    def __init__(self, sections: Sequence[tuple[str, Sequence[HelpEntry]]]) -> None:
        super().__init__()
        self.sections = list(sections)

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="modal-box"):
            yield Static("Keys (* = not in the footer)", classes="modal-title")
            with VerticalScroll(id="help-body"):
                for title, entries in self.sections:
                    yield Static(title, classes="help-section")
                    yield Static(Content(self.table(entries)), classes="help-table")
            yield Static("escape or ? closes · remap by id: BACKSTOP_KEYMAP='goto.catalog=c'", classes="modal-hint")

    @staticmethod
    def table(entries: Iterable[HelpEntry]) -> str:
        """Entries as aligned text lines: key, what it does, binding id."""
        return "\n".join(f"{e.key + ('' if e.in_footer else '*'):<11} {e.description:<26} {e.binding_id}"
                         for e in entries) or "(none)"

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; dismisses True only on an explicit yes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No") -> None:
        super().__init__()
        self.question = question
        self.yes, self.no = yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box", id="confirm-box"):
            yield Static(self.question, classes="modal-title")
            with Horizontal(classes="modal-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error")
                yield Button(f"{self.no} (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class DefinitionsScreen(ModalScreen[None]):
    """What the three KPIs mean and how they are computed."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,d,q", "close", "Close", id="definitions.close"),
    ]

    def __init__(self, kpis: Sequence[Kpi]) -> None:
        super().__init__()
        self.kpis = list(kpis)

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box", id="definitions-box"):
            yield Static("KPI definitions", classes="modal-title")
            with VerticalScroll():
                for k in self.kpis:
                    yield Static(f"{k.title}: {k.display}", classes="definition-title")
                    yield Static(k.definition + f"\nNow: {k.detail}.\n", classes="definition-text")
            yield Static("escape closes", classes="modal-hint")

    def action_close(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class DestructiveApproval:
    """What the operator typed to approve a destructive action (checked by the core gate)."""

    typed_name: str
    code: str


class DestructiveConfirmScreen(ModalScreen["DestructiveApproval | None"]):
    """Type the database's name (or, with ``name_label``, another name) and a fresh 6-digit MFA code, or cancel.

    The screen only checks the form (the name matches, six digits); whether the
    code is valid, fresh and the operator allowed is the core gate's decision.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="destructive.cancel"),
    ]

    def __init__(self, action: str, db_name: str, cursor_blink: bool = True, *, explanation: str | None = None,
                 name_label: str = "Database name") -> None:
        super().__init__()
        self.action_text = action
        self.db_name = db_name
        self.cursor_blink = cursor_blink
        self.explanation = explanation
        self.name_label = name_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="modal-box -danger", id="destructive-box"):
            yield Static(f"DESTRUCTIVE: {self.action_text}", classes="modal-title")
            yield Static(self.explanation or (
                f"This replaces the live database {self.db_name} with the restored snapshot; the current one is "
                f"kept aside as {self.db_name}__replaced_<time>. Type the database name and a fresh one-time code "
                "from your authenticator."))
            yield Label(self.name_label)
            name = Input(placeholder=self.db_name, id="confirm-name")
            name.cursor_blink = self.cursor_blink
            yield name
            yield Label("MFA code (6 digits)")
            code = Input(placeholder="······", password=True, restrict=r"[0-9]*", max_length=6, id="confirm-code")
            code.cursor_blink = self.cursor_blink
            yield code
            yield Static("", id="confirm-error", classes="error-text")
            with Horizontal(classes="modal-buttons"):
                yield Button("Confirm", id="confirm", variant="error")
                yield Button("Cancel (esc)", id="cancel", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#confirm-name", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "confirm-name":
            self.query_one("#confirm-code", Input).focus()
        else:
            self._try_confirm()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "confirm":
            self._try_confirm()
        else:
            self.dismiss(None)

    def _try_confirm(self) -> None:
        name = self.query_one("#confirm-name", Input).value
        code = self.query_one("#confirm-code", Input).value
        err = self.query_one("#confirm-error", Static)
        if name != self.db_name:
            err.update(f"The name does not match: type {self.db_name} exactly.")
            self.query_one("#confirm-name", Input).focus()
            return
        if len(code) != 6:
            err.update("Enter the 6-digit code from your authenticator.")
            self.query_one("#confirm-code", Input).focus()
            return
        self.dismiss(DestructiveApproval(name, code))

    def action_cancel(self) -> None:
        self.dismiss(None)
