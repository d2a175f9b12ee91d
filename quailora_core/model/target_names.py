"""The one rule for naming LoRA targets, peft's, in a module that imports nothing heavy.

`matches(spec, name)`: a spec names a layer when it is the whole module name or a dotted
suffix of it (`o_proj`, `self_attn.o_proj`); `all-linear` is peft's shorthand for every
linear layer. The engine's plan (`targets.plan_targets`, which asks peft itself) and the
app's target boxes both use it, so the form accepts exactly what the engine does.
"""

from __future__ import annotations

ALL_LINEAR = "all-linear"


def matches(spec: str, name: str) -> bool:
    """Whether the target `spec` names the module `name` (whole name or dotted suffix)."""
    return name == spec or name.endswith("." + spec)
