"""Errors the engine raises on purpose.

`InputError` is bad input found before any heavy work: the CLI turns it into exit
code 2 and one line on stderr, the GUI shows it next to the field. `EngineError` is a
failure during a run (exit code 1). Both carry a one-sentence message and a hint that
says how to fix it, so every face of the engine can show the same words.
"""

from __future__ import annotations


class QuailoraError(Exception):
    """Base class: a message that says what is wrong and a hint that says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint on one line, as the CLI prints them."""
        return f"{self.message} {self.hint}".strip() if self.hint else self.message


class InputError(QuailoraError):
    """Bad input detected before any heavy work started (CLI exit code 2)."""


class MissingColumnError(InputError):
    """A tabular source lacks the asked-for text column. `columns` lists the ones it has, as
    data, so a front end can offer them (the app's column chooser) without parsing the text."""

    def __init__(self, message: str, hint: str = "", columns: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.columns = list(columns or [])


class EngineError(QuailoraError):
    """A failure while the engine was running (CLI exit code 1)."""


class Cancelled(QuailoraError):
    """The run was cancelled through its CancelToken."""

    def __init__(self) -> None:
        super().__init__("The run was cancelled.", "Nothing was written.")
