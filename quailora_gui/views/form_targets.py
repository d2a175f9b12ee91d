"""The target check boxes of the run form: one box per leaf name of the model's linear
layers, and "All linear modules". What they send is a `controllers.target_choice.TargetChoice`:
the run file's specs as written (`self_attn.o_proj` stays so) until the user touches a box."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QListWidget, QListWidgetItem

from ..controllers.target_choice import TargetChoice

CHECKED, UNCHECKED = Qt.CheckState.Checked, Qt.CheckState.Unchecked


class TargetsEditor:
    def __init__(self, targets_list: QListWidget, all_linear: QCheckBox, on_edit: Callable[[], None]) -> None:
        self.list, self.all_linear = targets_list, all_linear
        self.choice = TargetChoice()
        self.modules: list[str] = []  # leaf names of the model's linear layers, once known
        self._on_edit = on_edit
        self._updating = False
        all_linear.toggled.connect(self._on_all_linear)
        targets_list.itemChanged.connect(self._on_item)

    def _items(self) -> list[QListWidgetItem]:
        return [self.list.item(i) for i in range(self.list.count())]

    def checked(self) -> list[str]:
        return [item.text() for item in self._items() if item.checkState() == CHECKED]

    def targets(self) -> list[str]:
        """What the form sends: the specs as written, or the boxes' choice after a touch."""
        return self.choice.targets(self.modules, self.checked(), self.all_linear.isChecked())

    def set_specs(self, specs: list[str]) -> None:
        """Show a run's targets (untouched: they are sent as they are)."""
        self.choice = TargetChoice(specs)
        self._show()

    def set_modules(self, modules: list[str]) -> None:
        """Fill the boxes from the model's linear modules, keeping the choice."""
        if list(modules) == self.modules:
            return
        if self.modules:
            self.choice.settle(self.modules, self.checked(), self.all_linear.isChecked())
        self.modules = list(modules)
        self._show()

    def _show(self) -> None:
        was, self._updating = self._updating, True
        try:
            on = set(self.choice.checked(self.modules)) if self.modules else set()
            self.list.clear()
            for name in self.modules:
                item = QListWidgetItem(name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(CHECKED if name in on else UNCHECKED)
                self.list.addItem(item)
            self.all_linear.setChecked(self.choice.all_linear)
            self.list.setVisible(bool(self.modules))
        finally:
            self._updating = was

    def _on_all_linear(self, on: bool) -> None:
        if self._updating:
            return
        self._updating = True
        try:
            if on or all(item.checkState() == CHECKED for item in self._items()):
                for item in self._items():
                    item.setCheckState(CHECKED if on else UNCHECKED)
            if self.modules:
                self.choice.touched = True
            else:  # no boxes yet: the choice is all or nothing
                self.choice = TargetChoice(["all-linear"] if on else [])
        finally:
            self._updating = False
        self._on_edit()

    def _on_item(self, _item: QListWidgetItem) -> None:
        if self._updating:
            return
        self.choice.touched = True
        self._updating = True
        self.all_linear.setChecked(all(item.checkState() == CHECKED for item in self._items()))
        self._updating = False
        self._on_edit()
