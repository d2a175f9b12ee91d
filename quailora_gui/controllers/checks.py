"""The cheap checks that decide whether Run is enabled, with the reason next to each field.

`ConfigChecker.check(config)` reads the model's config (`summarize_model`), previews the
calibration data (`preview`), checks the output folder and the device, runs
`RunConfig.validate()` and, when the model is readable, `estimate_run`. Every failure is
an `InputError` from the core; its message and hint go to the field it is about. The
view runs this off the GUI thread (it imports torch the first time) and debounced.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Field keys: each has a red label in the form.
MODEL = "model"
TARGETS = "targets"
CALIBRATION = "calibration"
TEXT_COLUMN = "text_column"
SIZES = "sizes"
QUANTIZATION = "quantization"
LORA = "lora"
METHOD = "method"
DEVICE = "device"
OUTPUT = "output"
GENERAL = "general"
FIELDS = (
    MODEL,
    TARGETS,
    CALIBRATION,
    TEXT_COLUMN,
    SIZES,
    QUANTIZATION,
    LORA,
    METHOD,
    DEVICE,
    OUTPUT,
    GENERAL,
)

# RunConfig.validate() stops at the first problem; its message says which setting it is.
_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("output", OUTPUT),
    ("device", DEVICE),
    ("cuda", DEVICE),
    ("target", TARGETS),
    ("column", TEXT_COLUMN),
    ("samples", SIZES),
    ("seq_len", SIZES),
    ("heldout", SIZES),
    ("rank", LORA),
    ("alpha", LORA),
    ("bits", QUANTIZATION),
    ("quantization", QUANTIZATION),
    ("blocksize", QUANTIZATION),
    ("compute dtype", QUANTIZATION),
    ("model dtype", MODEL),
    ("method", METHOD),
    ("input source", METHOD),
    ("damping", METHOD),
    ("als_iters", METHOD),
    ("batch_size", METHOD),
    ("model", MODEL),
    ("calibration", CALIBRATION),
)


def field_for_message(message: str) -> str:
    """Which form field an InputError message is about (GENERAL when none matches)."""
    low = message.lower()
    for word, key in _KEYWORDS:
        if word in low:
            return key
    return GENERAL


def error_text(exc: BaseException) -> str:
    """'message hint' of a core error, or str() of any other exception."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    hint = getattr(exc, "hint", "")
    return f"{message} {hint}".strip()


@dataclass
class CheckReport:
    """Outcome of one check: errors per field, and what was learnt on the way."""

    errors: dict[str, str] = field(default_factory=dict)
    summary: Any | None = None  # quailora_core.model.info.ModelSummary
    preview: Any | None = None  # quailora_core.sources.text.DataPreview
    estimate: Any | None = None  # quailora_core.init.estimate.RunEstimate
    plan: Any | None = None  # quailora_core.model.targets.TargetPlan: the layers the run would initialize
    estimate_error: str = ""
    columns: list[str] = field(default_factory=list)  # columns of a tabular calibration source
    generation: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def first_error(self) -> str:
        return next(iter(self.errors.values()), "")


def _mtime(path: str) -> float:
    """Change marker of a local path (0 for hub ids and 'demo'), so edits on disk are seen."""
    p = Path(path)
    try:
        if p.is_dir():
            marker = p / "config.json"
            return max(p.stat().st_mtime, marker.stat().st_mtime if marker.exists() else 0.0)
        return p.stat().st_mtime
    except OSError:
        return 0.0


class ConfigChecker:
    """Runs the checks; caches successful model summaries and previews by path and mtime.

    The core functions are looked up lazily (importing them imports torch), and can be
    passed in for tests of this class alone.
    """

    def __init__(
        self,
        summarize_model: Callable[..., Any] | None = None,
        preview: Callable[..., Any] | None = None,
        estimate_run: Callable[..., Any] | None = None,
        plan_targets: Callable[..., Any] | None = None,
    ) -> None:
        self._summarize = summarize_model
        self._plan = plan_targets
        self._plans: dict[tuple, Any] = {}
        self._preview = preview
        self._estimate = estimate_run
        self._summaries: dict[tuple, Any] = {}
        self._previews: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ core lookups
    def _core_summarize(self) -> Callable[..., Any]:
        if self._summarize is None:
            from quailora_core.model.info import summarize_model

            self._summarize = summarize_model
        return self._summarize

    def _core_plan(self) -> Callable[..., Any]:
        if self._plan is None:
            from quailora_core.init.pipeline import plan_for

            self._plan = plan_for
        return self._plan

    def plan(self, config: Any) -> Any:
        """Which layers the run would initialize, as the engine decides it (asking peft and
        transformers' quantizer); cached per model, targets, rank and quantization."""
        key = (repr(config.model), _mtime(config.model.path), repr(config.lora), repr(config.quantization),
               config.init.device)  # fmt: skip
        if key not in self._plans:
            self._plans[key] = self._core_plan()(config)
        return self._plans[key]

    def _core_preview(self) -> Callable[..., Any]:
        if self._preview is None:
            from quailora_core.sources.text import preview

            self._preview = preview
        return self._preview

    def _core_estimate(self) -> Callable[..., Any]:
        if self._estimate is None:
            from quailora_core.init.estimate import estimate_run

            self._estimate = estimate_run
        return self._estimate

    # ------------------------------------------------------------------ pieces
    def summarize(self, path: str, trust_remote_code: bool = False) -> Any:
        key = (path, trust_remote_code, _mtime(path))
        if key not in self._summaries:
            self._summaries[key] = self._core_summarize()(path, trust_remote_code=trust_remote_code)
        return self._summaries[key]

    def preview(self, cal: Any) -> Any:
        key = (cal.source, cal.text_column, cal.dataset_config, cal.split, _mtime(cal.source))
        if key not in self._previews:
            self._previews[key] = self._core_preview()(
                cal.source, text_column=cal.text_column, dataset_config=cal.dataset_config, split=cal.split
            )
        return self._previews[key]

    # ------------------------------------------------------------------ the check
    def check(self, config: Any) -> CheckReport:
        """Check a RunConfig (not modified) and return every problem found, per field."""
        from quailora_core.errors import InputError, MissingColumnError

        config = copy.deepcopy(config)
        report = CheckReport()
        errors = report.errors

        # Model: read its config only.
        if not config.model.path.strip():
            errors[MODEL] = "Choose a model: a local folder, a hub id, or the demo model."
        else:
            try:
                report.summary = self.summarize(config.model.path.strip(), config.model.trust_remote_code)
            except InputError as exc:
                errors[MODEL] = error_text(exc)
            except Exception as exc:  # an unreadable config is the model's problem, not a crash
                errors[MODEL] = f"Could not read the model's config: {error_text(exc)}"

        # Targets against the model's linear modules.
        targets = list(config.lora.targets)
        if not targets:
            errors[TARGETS] = "Choose at least one target module."
        elif report.summary is not None:
            # What the engine will initialize, asked of the engine itself (it asks peft and
            # transformers' quantizer): the form shows the very refusal a run would give.
            try:
                report.plan = self.plan(config)
            except InputError as exc:
                text = error_text(exc)
                if "rank" in exc.message.lower():
                    errors[LORA] = text
                elif "full precision" in exc.message or "quantized" in exc.message:
                    errors[MODEL] = text
                else:
                    errors[TARGETS] = text
            except Exception as exc:
                errors[TARGETS] = f"Could not plan the targets: {error_text(exc)}"

        # Calibration data: preview the first rows.
        if not config.calibration.source.strip():
            errors[CALIBRATION] = (
                "Choose calibration text: a file, a folder, a hub dataset or the sample text."
            )
        else:
            try:
                report.preview = self.preview(config.calibration)
                report.columns = list(report.preview.columns or [])
            except InputError as exc:
                key = TEXT_COLUMN if "column" in exc.message.lower() else CALIBRATION
                errors[key] = error_text(exc)
                report.columns = list(exc.columns) if isinstance(exc, MissingColumnError) else []
            except Exception as exc:
                errors[CALIBRATION] = f"Could not read the calibration data: {error_text(exc)}"

        # Output folder and device, checked on their own so both can show at once.
        from quailora_core.config import check_output_dir

        try:
            check_output_dir(config.output, config.overwrite)
        except InputError as exc:
            errors[OUTPUT] = error_text(exc)
        try:
            from quailora_core.device import resolve_device

            resolve_device(config.init.device)
        except InputError as exc:
            errors[DEVICE] = error_text(exc)

        # Everything else RunConfig.validate() knows (stops at its first problem).
        try:
            config.validate()
        except InputError as exc:
            key = field_for_message(exc.message)
            errors.setdefault(key, error_text(exc))

        # Memory and time, when the model is known.
        if report.summary is not None and MODEL not in errors:
            try:
                report.estimate = self._core_estimate()(config, report.summary)
            except Exception as exc:  # an estimate is a courtesy: never block Run on it
                report.estimate_error = error_text(exc)
        return report


def warm_up() -> None:
    """Import the engine and its heavy dependencies (torch, transformers) once, off the GUI thread."""
    import quailora_core.config  # noqa: F401
    import quailora_core.device  # noqa: F401

    for name in (
        "quailora_core.init.pipeline",
        "quailora_core.model.info",
        "quailora_core.sources.text",
        "quailora_core.init.estimate",
        "quailora_core.adapter.writer",
        "quailora_core.init.metrics",
    ):
        try:
            __import__(name)
        except ImportError:
            pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
