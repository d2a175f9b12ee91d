"""Which serving stacks reproduce an adapter, told before the run and written on the adapter.

A QuAILoRA adapter is only worth its initialization on the quantized base it was computed
for (Q + s*B*A ~= W). Serving stacks quantize the base their own way and check adapters by
their own rules, and a user otherwise finds out at load time, or never (a stack that loads
the adapter onto another quantization serves it silently worse). This module says, per
stack, whether it loads the adapter, whether it reproduces the base it was computed for,
why not, and the command that serves it: from an `AdapterRecord` and the adapter's
`adapter_config.json` after the run (`serving.folder.adapter_verdicts`), from a `RunConfig` before it
(`run_warnings`).

What the stacks do was read in their sources, not guessed; each rule below cites where:

- vLLM, in-flight bitsandbytes (`--quantization bitsandbytes` on an unquantized checkpoint):
  `BitsAndBytesModelLoader._unquantized_generator` quantizes every target weight with
  `quantize_4bit(loaded_weight, compress_statistics=True, quant_type="nf4")` (bitsandbytes'
  default blocksize, 64) -- NF4 with double quantization and nothing else, in 4 bits only;
  the tensor it quantizes is the checkpoint's as stored, with no cast to the load dtype
  (vllm/model_executor/model_loader/bitsandbytes_loader.py, vllm-project/vllm at
  c9e9c484932eb025a29752972a29047802bc1bbb). The flag is `--quantization bitsandbytes`
  (docs/features/quantization/bnb.md, "OpenAI Compatible Server").
- vLLM LoRA: `--max-lora-rank` takes one of `MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128,
  256, 320, 512]`, default 16 (vllm/config/lora.py, at 01230b40128e570a58e54e75f7e55c4d5cd9246d);
  an adapter is refused when `r > max_lora_rank`, when `modules_to_save` is set, when it
  uses DoRA, or when its bias is not "none" without bias support
  (`PEFTHelper.validate_legal` / `_validate_features`, vllm/lora/peft_helper.py at
  e745bafffc44744aa601169f8c6f325e47ca7cd5). The adapter's own rank need not be in that
  list: it must be at most `--max-lora-rank`, so rank 12 serves with `--max-lora-rank 16`.
  rsLoRA scaling is alpha / sqrt(r) there as in peft. Serving command:
  `vllm serve BASE --enable-lora --lora-modules NAME=PATH` (docs/features/lora.md).
- llama.cpp / GGUF: GGUF bases are quantized by llama.cpp's own formats (Q4_K, Q8_0, ...),
  not bitsandbytes', so a correction made for bitsandbytes' Q does not carry over; the
  route is to merge the adapter into the base it was computed for and convert the merged
  model (`quailora merge`, then `quailora export-gguf`).
- transformers + bitsandbytes: the adapter's record holds the exact `BitsAndBytesConfig`
  it was computed for (quant/record.py), so loading the base with it reproduces Q exactly.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quailora_core.adapter.record import AdapterRecord

TRANSFORMERS = "transformers"
VLLM = "vllm"
LLAMA_CPP = "llama.cpp"
STACK_NAMES = {
    TRANSFORMERS: "transformers + bitsandbytes",
    VLLM: "vLLM (bitsandbytes in flight)",
    LLAMA_CPP: "llama.cpp (GGUF)",
}

# vllm/config/lora.py: MaxLoRARanks, and LoRAConfig.max_lora_rank's default
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16
# what vLLM's in-flight bitsandbytes quantization makes (bitsandbytes_loader.py)
VLLM_INFLIGHT = "4-bit NF4 with double quantization"


@dataclass(frozen=True)
class ServingSettings:
    """What the stacks' rules read: the quantizer, the LoRA shape and the adapter's peft
    features, and where the base and the adapter are (empty before the run)."""

    bits: int
    quant_type: str | None  # 4 bit only
    double_quant: bool | None
    rank: int
    base: str = ""
    adapter: str = ""
    load_dtype: str = ""
    modules_to_save: tuple[str, ...] = ()
    use_dora: bool = False
    bias: str = "none"
    architecture: str = ""  # the base's transformers class (config.architectures[0]), when known
    experts: int = 0  # routed experts per MoE block; 0 for a dense model

    @classmethod
    def of_adapter(cls, record: AdapterRecord, peft_config: dict[str, Any], adapter: str = "") -> ServingSettings:
        """From the adapter's record and its adapter_config.json (what a stack reads)."""
        q = record.quantization
        return cls(
            bits=q.bits,
            quant_type=q.quant_type,
            double_quant=q.double_quant,
            rank=int(peft_config.get("r") or record.lora.get("rank") or 0),
            base=record.base_model.path,
            adapter=str(adapter),
            load_dtype=q.load_dtype,
            modules_to_save=tuple(peft_config.get("modules_to_save") or ()),
            use_dora=bool(peft_config.get("use_dora")),
            bias=str(peft_config.get("bias") or "none"),
            architecture=record.base_model.architecture,
            experts=record.base_model.experts,
        )

    @classmethod
    def of_run(cls, config: Any) -> ServingSettings:
        """From a RunConfig before the run (QuAILoRA writes no modules_to_save, DoRA or bias)."""
        q = config.quantization
        four = q.bits == 4
        return cls(
            bits=q.bits,
            quant_type=q.quant_type if four else None,
            double_quant=q.double_quant if four else None,
            rank=config.lora.rank,
            base=config.model.path,
            adapter=config.output,
        )

    def quantization_label(self) -> str:
        if self.bits != 4:
            return f"{self.bits}-bit LLM.int8"
        return f"4-bit {(self.quant_type or '').upper()} " + ("with" if self.double_quant else "without") + \
            " double quantization"  # fmt: skip


@dataclass(frozen=True)
class StackVerdict:
    """One stack's answer for one adapter."""

    stack: str  # TRANSFORMERS, VLLM, LLAMA_CPP
    name: str  # as shown to the user
    loads: bool  # the stack accepts the adapter (directly or by the route in `commands`)
    reproduces: bool  # it serves the base the adapter was computed for, so the initialization holds
    reasons: list[str] = field(default_factory=list)  # why it does not load or not reproduce, plainly
    notes: list[str] = field(default_factory=list)  # conditions and flags worth knowing
    commands: list[str] = field(default_factory=list)  # what serves it, in order (shell, or Python)
    language: str = "bash"  # of `commands`: "bash" or "python"

    def line(self) -> str:
        """One line: '<stack> will not reproduce this adapter: <reasons>'."""
        verb = "reproduces" if self.reproduces else ("will not reproduce" if self.loads else "will not load")
        text = f"{self.name} {verb} this adapter"
        return text + (": " + " ".join(self.reasons) if self.reasons else ".")


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that serves `rank`, None above 512."""
    return next((r for r in VLLM_MAX_LORA_RANKS if r >= rank), None)


def _q(path: str) -> str:
    return shlex.quote(str(path))


def transformers_verdict(s: ServingSettings, loading_code: str = "") -> StackVerdict:
    return StackVerdict(
        TRANSFORMERS, STACK_NAMES[TRANSFORMERS], loads=True, reproduces=True,
        notes=["Loads the base with the exact BitsAndBytesConfig recorded in quailora.json."],
        commands=[loading_code] if loading_code else [], language="python",
    )  # fmt: skip


def vllm_verdict(s: ServingSettings) -> StackVerdict:
    refusals, reasons, notes = [], [], []
    max_rank = vllm_max_lora_rank(s.rank)
    if max_rank is None:
        refusals.append(f"vLLM refuses LoRA rank {s.rank}: its --max-lora-rank is at most {VLLM_MAX_LORA_RANKS[-1]} "
                        f"(choose rank {VLLM_MAX_LORA_RANKS[-1]} or less).")  # fmt: skip
    elif max_rank > VLLM_DEFAULT_MAX_LORA_RANK:
        notes.append(f"Rank {s.rank} needs --max-lora-rank {max_rank} (vLLM's default is "
                     f"{VLLM_DEFAULT_MAX_LORA_RANK}).")  # fmt: skip
    if s.modules_to_save:
        refusals.append(f"vLLM refuses adapters with modules_to_save ({', '.join(s.modules_to_save)}).")
    if s.use_dora:
        refusals.append("vLLM refuses DoRA adapters.")
    if s.bias != "none":
        refusals.append(f"vLLM refuses adapter bias {s.bias!r} unless its bias support is on.")
    exact = s.bits == 4 and s.quant_type == "nf4" and bool(s.double_quant)
    if not exact:
        reasons.append(f"vLLM quantizes the base in flight as {VLLM_INFLIGHT} only; this adapter was computed for "
                       f"{s.quantization_label()}, so vLLM would serve it on another quantized base and lose the "
                       "initialization (serve it with transformers + bitsandbytes, or compute it for NF4 with "
                       "double quantization).")  # fmt: skip
    if exact and s.experts:
        # vLLM's bitsandbytes loader maps expert weights (expert_params_mapping) and has a
        # bitsandbytes MoE method that quantizes them; transformers 5 keeps fused 3-D expert
        # parameters unquantized (bitsandbytes only replaces nn.Linear)
        exact = False
        reasons.append(f"vLLM quantizes the {s.experts} experts of each MoE block in flight too; transformers keeps "
                       "them in full precision, so vLLM would serve the adapter on another base (serve it with "
                       "transformers + bitsandbytes).")  # fmt: skip
    elif exact and s.load_dtype:
        notes.append(f"vLLM quantizes the checkpoint's weights as stored: the quantized base matches exactly when "
                     f"the checkpoint stores them in {s.load_dtype}, the dtype this adapter was computed from.")  # fmt: skip
    commands = []
    if not refusals and s.base and s.adapter:
        name = Path(s.adapter).name or "adapter"
        commands.append(f"vllm serve {_q(s.base)} --quantization bitsandbytes --enable-lora "
                        f"--lora-modules {_q(f'{name}={s.adapter}')} --max-lora-rank {max_rank}")  # fmt: skip
    return StackVerdict(VLLM, STACK_NAMES[VLLM], loads=not refusals, reproduces=not refusals and exact,
                        reasons=refusals + reasons, notes=notes, commands=commands)  # fmt: skip


def gguf_exportable(architecture: str) -> bool:
    """Whether `quailora export-gguf` writes this transformers architecture (unknown: assumed so)."""
    from quailora_core.serving.gguf_export import FAMILIES

    return not architecture or architecture in FAMILIES


def llama_cpp_verdict(s: ServingSettings) -> StackVerdict:
    reason = ("llama.cpp re-quantizes the full-precision base into its own GGUF formats (Q4_K and friends), not "
              f"bitsandbytes' {s.quantization_label()}: its Q differs, so this adapter, converted to a GGUF LoRA and "
              "applied to such a base, no longer carries the correction it was computed for. Merge it into the base "
              "it was computed for, then export the merged model (quantize that file further with llama.cpp only "
              "if you must).")  # fmt: skip
    commands, notes = [], []
    if not gguf_exportable(s.architecture):
        from quailora_core.serving.gguf_export import FAMILIES

        notes.append(f"`quailora export-gguf` writes {', '.join(sorted(FAMILIES))}, not {s.architecture}: convert the "
                     "merged folder with llama.cpp's own convert_hf_to_gguf.py.")  # fmt: skip
    if s.adapter:
        merged = f"{s.adapter.rstrip('/')}-merged"
        commands = [f"quailora merge --adapter {_q(s.adapter)} --output {_q(merged)}"]
        if gguf_exportable(s.architecture):
            commands.append(f"quailora export-gguf --model {_q(merged)} --output {_q(merged + '.gguf')} --type bf16")
        else:  # llama.cpp's own converter may know the family; ours does not
            commands.append(f"python convert_hf_to_gguf.py {_q(merged)} --outtype bf16   # llama.cpp's converter")
    return StackVerdict(LLAMA_CPP, STACK_NAMES[LLAMA_CPP], loads=True, reproduces=False, reasons=[reason],
                        notes=notes, commands=commands)  # fmt: skip


def verdicts(s: ServingSettings, loading_code: str = "") -> list[StackVerdict]:
    """Every stack's verdict, transformers first."""
    return [transformers_verdict(s, loading_code), vllm_verdict(s), llama_cpp_verdict(s)]


def run_warnings(config: Any) -> list[str]:
    """Before the run: what a serving stack cannot serve as these settings would compute it
    (warnings, not errors: transformers + bitsandbytes serves every setting)."""
    v = vllm_verdict(ServingSettings.of_run(config))
    return [] if v.reproduces else list(v.reasons)
