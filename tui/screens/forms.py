"""Modal dialogs for the console's actions: a form of text fields, and a yes/no question."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from tui.text import plain

__all__ = ["ConfirmScreen", "Field", "FormScreen"]


@dataclass(frozen=True, slots=True)
class Field:
    """One text field of a form: ``key`` in the result, its label, a hint, a starting value."""

    key: str
    label: str
    placeholder: str = ""
    value: str = ""
    required: bool = True


class FormScreen(ModalScreen[dict[str, str] | None]):
    """A titled form; Enter moves to the next field and sends from the last one, Escape cancels.

    Dismisses with ``{key: text}`` (stripped) or None when cancelled.  A required
    field left empty is named in the form instead of sending.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    DEFAULT_CSS = """
    FormScreen { align: center middle; }
    FormScreen > Vertical { width: 72; max-width: 100%; height: auto; max-height: 100%;
                            border: thick $primary; background: $surface; padding: 0 1; }
    FormScreen Input { margin: 0 0 0 0; }
    FormScreen #form-error { color: $error; height: auto; }
    FormScreen .hint { color: $text-muted; }
    """

    def __init__(self, title: str, fields: Sequence[Field], hint: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.fields = list(fields)
        self.hint = hint

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(plain(self.title_text), classes="heading")
            for f in self.fields:
                yield Label(f.label)
                yield Input(value=f.value, placeholder=f.placeholder, id=f"f-{f.key}")
            yield Static("", id="form-error")
            yield Static(self.hint or "Enter: next field / send   Escape: cancel",
                         classes="hint")

    def on_mount(self) -> None:
        self.query_one(f"#f-{self.fields[0].key}", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        keys = [f.key for f in self.fields]
        i = keys.index((event.input.id or "f-")[2:])
        if i + 1 < len(keys):
            self.query_one(f"#f-{keys[i + 1]}", Input).focus()
            return
        values = {f.key: self.query_one(f"#f-{f.key}", Input).value.strip() for f in self.fields}
        missing = [f.label for f in self.fields if f.required and not values[f.key]]
        if missing:
            self.query_one("#form-error", Static).update("needed: " + ", ".join(missing))
            return
        self.dismiss(values)

    def action_cancel(self) -> None:
        """Close without sending."""
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question: y or Enter says yes, n or Escape says no."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y,enter", "answer(True)", "yes"),
        Binding("n,escape", "answer(False)", "no"),
    ]

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 60; max-width: 100%; height: auto;
                               border: thick $warning; background: $surface; padding: 0 1; }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(plain(self.question))
            yield Static("y / Enter: yes    n / Escape: no", classes="hint")

    def action_answer(self, yes: bool) -> None:
        """Close with the answer."""
        self.dismiss(yes)
