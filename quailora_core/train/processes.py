"""The processes of one training run under `accelerate launch --num_processes N`: which one
speaks and writes, the stop they decide together, and the adapter they must all end with.

Data-parallel training runs the same script in N processes (ranks) that meet in a collective
operation at every step (the gradients' all-reduce). Three things follow:

* only the main process (rank 0) emits events and writes the run's files, otherwise the JSON
  event stream and `training_run.json` / `metrics.json` would come N times;
* a stop request may reach only some ranks (the app or a user signals one process): each rank
  stopping on its own would leave the others waiting in the next collective forever, so the
  ranks decide together at each step end (`any_process`: stop when any rank was asked);
* the ranks must end with the same trained weights, which `weights_digest` lets them compare
  before rank 0 saves the adapter.

The rank and world size come from the launcher's environment (RANK, WORLD_SIZE: torchrun's,
which `accelerate launch` uses), so the light checks read them without importing torch.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any


def world_size() -> int:
    """How many processes the launcher started for this run (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """False in the other processes of a multi-process (`accelerate launch`) run."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def any_process(flag: bool, device: Any = "cpu") -> bool:
    """True on every rank when `flag` is true on any rank (a collective: every rank must call
    it at the same point); `flag` itself in a single process."""
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes == 1:
        return flag
    import torch
    from accelerate.utils import reduce

    return bool(reduce(torch.tensor([float(flag)], device=device), reduction="sum").item() > 0)


def gathered(value: Any) -> list[Any]:
    """`value` of every rank, in rank order, on every rank (a collective)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    if PartialState().num_processes == 1:
        return [value]
    return list(gather_object([value]))


def weights_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order): equal digests
    mean bit-identical weights. The peft state dict of a model and the `adapter_model.safetensors`
    it saves give the same digest."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
