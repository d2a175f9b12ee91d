"""A sweep: one base run expanded into init jobs over ranks x methods x bits.

Each job writes its own folder, `<base output>-r16-quailora-4bit`, made free (`-2`, `-3`
...) against folders on disk and those the queue's jobs will write, so a sweep never
collides with itself, an earlier sweep or a finished run. The LoRA alpha keeps the base
run's alpha / rank ratio (the usual alpha equals the rank), so every rank gets the same
scaling rule rather than one fixed alpha.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Sequence
from pathlib import Path

from quailora_core.config import METHODS, RunConfig
from quailora_core.errors import InputError
from quailora_core.files import next_free_output
from quailora_core.jobs.build import init_job
from quailora_core.jobs.job import Job

BITS = (4, 8)


def sweep_configs(base: RunConfig, ranks: Sequence[int] = (), methods: Sequence[str] = (), bits: Sequence[int] = (),
                  taken: Collection[str] = ()) -> list[RunConfig]:  # fmt: skip
    """One config per combination, ranks outermost; an empty axis keeps the base value.
    Outputs are absolute (against the working directory), as the queue's are."""
    base = base.resolved(Path.cwd())
    ranks = list(ranks) or [base.lora.rank]
    methods = list(methods) or [base.init.method]
    bits = list(bits) or [base.quantization.bits]
    for r in ranks:
        if not isinstance(r, int) or r < 1:
            raise InputError(f"Sweep rank {r!r} is not a whole number of at least 1.", "Use e.g. --sweep-ranks 8,16.",
                             field="lora.rank")  # fmt: skip
    for m in methods:
        if m not in METHODS:
            raise InputError(f"Unknown sweep method {m!r}.", f"Use some of {', '.join(METHODS)}.", field="init.method")
    for b in bits:
        if b not in BITS:
            raise InputError(f"Sweep bits {b!r} must be 4 or 8.", "Use e.g. --sweep-bits 4,8.", field="quantization.bits")
    out: list[RunConfig] = []
    claimed = set(taken)
    base_out = base.output.rstrip("/\\")
    for r in ranks:
        for m in methods:
            for b in bits:
                config = copy.deepcopy(base)
                config.lora.rank, config.lora.alpha = r, base.lora.alpha * r / base.lora.rank
                config.init.method, config.quantization.bits = m, b
                config.output = next_free_output(f"{base_out}-r{r}-{m}-{b}bit", claimed)
                claimed.add(config.output)
                out.append(config)
    return out


def sweep_jobs(base: RunConfig, ranks: Sequence[int] = (), methods: Sequence[str] = (), bits: Sequence[int] = (),
               taken: Collection[str] = ()) -> list[Job]:  # fmt: skip
    """The sweep's init jobs, each checked (`init_job`)."""
    return [init_job(config) for config in sweep_configs(base, ranks, methods, bits, taken)]
