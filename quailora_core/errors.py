"""Errors the engine raises on purpose.

`InputError` is bad input found before any heavy work: the CLI turns it into exit
code 2 and one line on stderr, the GUI shows it next to the field. `EngineError` is a
failure during a run (exit code 1). Both carry a one-sentence message and a hint that
says how to fix it, so every face of the engine can show the same words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class QuailoraError(Exception):
    """Base class: a message that says what is wrong and a hint that says what to do.

    `field` names the setting the error is about, by its run-file path ("lora.rank",
    "calibration.source", "output"; None when it is about no one setting): the app puts the
    message next to that field, without reading the English text."""

    def __init__(self, message: str, hint: str = "", field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.field = field

    def one_line(self) -> str:
        """The message and hint on one line, as the CLI prints them."""
        return f"{self.message} {self.hint}".strip() if self.hint else self.message


class InputError(QuailoraError):
    """Bad input detected before any heavy work started (CLI exit code 2)."""


class ColumnError(InputError):
    """The text column of a tabular source is wrong (missing, or not text): an error about
    the text column setting, whichever source (calibration, training data) it belongs to."""


class MissingColumnError(ColumnError):
    """A tabular source lacks the asked-for text column. `columns` lists the ones it has, as
    data, so a front end can offer them (the app's column chooser) without parsing the text."""

    def __init__(self, message: str, hint: str = "", columns: list[str] | None = None,
                 field: str | None = None) -> None:  # fmt: skip
        super().__init__(message, hint, field)
        self.columns = list(columns or [])


@contextlib.contextmanager
def about(field: str, column_field: str | None = None) -> Iterator[None]:
    """Errors raised inside are about `field` unless they already name one (a wrong text
    column is about `column_field`): the data loaders serve calibration and training data
    alike, and only their caller knows which setting the user typed."""
    try:
        yield
    except InputError as exc:
        if exc.field is None:
            exc.field = column_field if column_field and isinstance(exc, ColumnError) else field
        raise


class EngineError(QuailoraError):
    """A failure while the engine was running (CLI exit code 1)."""


class Cancelled(QuailoraError):
    """The run was cancelled through its CancelToken."""

    def __init__(self) -> None:
        super().__init__("The run was cancelled.", "Nothing was written.")
