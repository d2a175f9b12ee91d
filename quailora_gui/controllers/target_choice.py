"""The form's LoRA targets: the run file's own specs until the user changes the check boxes.

The check boxes show the leaf names of the model's linear layers (`q_proj`, `o_proj`: the
model summary's `linear_modules`). A spec names layers by peft's rule, the engine's too
(`quailora_core.model.target_names.matches(spec, name)`: the whole name or a dotted suffix), so a
spec such as `self_attn.o_proj` names `o_proj` layers and checks that box. Until the user
touches a box the targets go to the engine exactly as written; the engine's own plan of
them (`ConfigChecker.plan`) is what the check shows. After a touch, each checked box
keeps the specs that named it, and a box checked anew adds its leaf name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from quailora_core.model.target_names import ALL_LINEAR
from quailora_core.model.target_names import matches as core_matches


class TargetChoice:
    """The target specs and whether the user has changed them through the boxes."""

    def __init__(self, specs: Iterable[str] = (ALL_LINEAR,), matches: Callable[[str, str], bool] | None = None):
        self.specs = list(specs)
        self.touched = False
        self._matches = matches

    def names_leaf(self, spec: str, leaf: str) -> bool:
        """Whether `spec` names layers whose leaf name is `leaf`: a layer `….leaf` it matches
        by the engine's rule is exactly one whose path ends in the spec, so `leaf` is the
        whole spec or its dotted suffix (the rule read from the spec's side)."""
        matches = self._matches or core_matches
        return matches(leaf, spec)

    @property
    def all_linear(self) -> bool:
        return self.specs == [ALL_LINEAR]

    def checked(self, leaves: Iterable[str]) -> list[str]:
        """The boxes the specs check, in the model's order."""
        leaves = list(leaves)
        if self.all_linear:
            return leaves
        return [leaf for leaf in leaves if any(self.names_leaf(s, leaf) for s in self.specs)]

    def targets(self, leaves: list[str], checked: list[str], all_linear: bool) -> list[str]:
        """The targets to send, given the boxes as they are now."""
        if not leaves or not self.touched:
            return list(self.specs)
        if all_linear or (checked and len(checked) == len(leaves)):
            return [ALL_LINEAR]
        out: list[str] = []
        for leaf in checked:
            mine = [s for s in self.specs if s != ALL_LINEAR and self.names_leaf(s, leaf)]
            out.extend(mine or [leaf])
        return out

    def settle(self, leaves: list[str], checked: list[str], all_linear: bool) -> None:
        """Take the boxes' targets as the written ones (before the boxes are rebuilt for
        another model)."""
        self.specs = self.targets(leaves, checked, all_linear)
        self.touched = False
