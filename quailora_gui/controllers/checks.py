"""The cheap checks that decide whether Run is enabled, with the reason next to each field.

`ConfigChecker.check(config)` reads the model's config (`summarize_model`), previews the
calibration data (`preview`), asks the engine which layers the run would initialize
(`plan_for`), checks the output folder and the device, runs `RunConfig.validate()`, asks
which serving stacks could not serve the settings (`serving.stacks.run_warnings`) and, when
the model is readable, `estimate_run`. Every refusal is an `InputError` from the core that
names the setting it is about (`InputError.field`, a run-file path such as "lora.rank"); the
form's field table (`form_fields.error_key`) says which red label shows it, whatever its
words. The view runs this off the GUI thread (it imports torch the first time), debounced.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .form_fields import (  # noqa: F401 (the error keys are part of this module's API)
    CALIBRATION,
    DEVICE,
    GENERAL,
    LORA,
    METHOD,
    MODEL,
    OUTPUT,
    QUANTIZATION,
    SIZES,
    TARGETS,
    TEXT_COLUMN,
    error_key,
)
from .wording import app_words


def error_text(exc: BaseException) -> str:
    """'message hint' of a core error, or str() of any other exception, in the app's words
    (`wording.app_words`: no command-line flags)."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    hint = getattr(exc, "hint", "")
    return app_words(f"{message} {hint}".strip())


@dataclass
class CheckReport:
    """Outcome of one check: errors per field, and what was learnt on the way."""

    errors: dict[str, str] = field(default_factory=dict)
    summary: Any | None = None  # quailora_core.model.ModelSummary
    preview: Any | None = None  # quailora_core.sources.DataPreview
    estimate: Any | None = None  # quailora_core.init.estimate.RunEstimate
    plan: Any | None = None  # quailora_core.model.TargetPlan: the layers the run would initialize
    estimate_error: str = ""
    serving: list[str] = field(default_factory=list)  # warnings: a serving stack will not reproduce these settings
    columns: list[str] = field(default_factory=list)  # columns of a tabular calibration source
    generation: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def first_error(self) -> str:
        return next(iter(self.errors.values()), "")

    def refuse(self, exc: BaseException, default_field: str | None = None) -> None:
        """File a core error under the label of the setting it names (or `default_field`'s);
        the first error of a label stays."""
        path = getattr(exc, "field", None) or default_field
        self.errors.setdefault(error_key(path), error_text(exc))


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
    """Runs the checks; caches successful model summaries, previews and plans by their inputs.

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
        self._preview = preview
        self._estimate = estimate_run
        self._plans: dict[tuple, Any] = {}
        self._summaries: dict[tuple, Any] = {}
        self._previews: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ core lookups
    def _core_summarize(self) -> Callable[..., Any]:
        if self._summarize is None:
            from quailora_core.model import summarize_model

            self._summarize = summarize_model
        return self._summarize

    def _core_plan(self) -> Callable[..., Any]:
        if self._plan is None:
            from quailora_core.init import plan_for

            self._plan = plan_for
        return self._plan

    def _core_preview(self) -> Callable[..., Any]:
        if self._preview is None:
            # the module path: once imported, the room's attribute `preview` is the module
            from quailora_core.sources.preview import preview

            self._preview = preview
        return self._preview

    def _core_estimate(self) -> Callable[..., Any]:
        if self._estimate is None:
            from quailora_core.init import estimate_run

            self._estimate = estimate_run
        return self._estimate

    # ------------------------------------------------------------------ pieces
    def plan(self, config: Any) -> Any:
        """Which layers the run would initialize, as the engine decides it (asking peft and
        transformers' quantizer); cached per model, targets, rank and quantization."""
        key = (repr(config.model), _mtime(config.model.path), repr(config.lora), repr(config.quantization),
               config.init.device)  # fmt: skip
        if key not in self._plans:
            self._plans[key] = self._core_plan()(config)
        return self._plans[key]

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
        from quailora_core.device import resolve_device
        from quailora_core.errors import InputError, MissingColumnError, about
        from quailora_core.files import check_output_dir

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
                report.refuse(exc, "model.path")
            except Exception as exc:  # an unreadable config is the model's problem, not a crash
                errors[MODEL] = f"Could not read the model's config: {error_text(exc)}"

        # Targets: what the engine would initialize, asked of the engine itself (it asks peft
        # and transformers' quantizer), so the form shows the very refusal a run would give.
        if not config.lora.targets:
            errors[TARGETS] = "Choose at least one target module."
        elif report.summary is not None:
            try:
                report.plan = self.plan(config)
            except InputError as exc:
                report.refuse(exc, "lora.targets")
            except Exception as exc:
                errors[TARGETS] = f"Could not plan the targets: {error_text(exc)}"

        # Calibration data: preview the first rows.
        if not config.calibration.source.strip():
            errors[CALIBRATION] = "Choose calibration text: a file, a folder, a hub dataset or the sample text."
        else:
            try:
                with about("calibration.source", "calibration.text_column"):  # the core's rule for which
                    report.preview = self.preview(config.calibration)
                report.columns = list(report.preview.columns or [])
            except InputError as exc:
                report.refuse(exc)
                report.columns = list(exc.columns) if isinstance(exc, MissingColumnError) else []
            except Exception as exc:
                errors[CALIBRATION] = f"Could not read the calibration data: {error_text(exc)}"

        # Output folder and device, checked on their own so both can show at once.
        try:
            check_output_dir(config.output, config.overwrite)
        except InputError as exc:
            report.refuse(exc, "output")
        try:
            resolve_device(config.init.device)
        except InputError as exc:
            report.refuse(exc, "init.device")

        # Everything else RunConfig.validate() knows (stops at its first problem).
        try:
            config.validate()
        except InputError as exc:
            report.refuse(exc)

        # Serving stacks that cannot serve these settings as computed: warnings, Run stays possible.
        try:
            from quailora_core.serving.stacks import run_warnings

            report.serving = run_warnings(config)
        except Exception as exc:  # a courtesy like the estimate: never block Run on it
            report.serving = [f"Could not check the serving stacks: {error_text(exc)}"]

        # Memory and time, when the model is known.
        if report.summary is not None and MODEL not in errors:
            try:
                report.estimate = self._core_estimate()(config, report.summary)
            except Exception as exc:  # an estimate is a courtesy: never block Run on it
                report.estimate_error = error_text(exc)
        return report


def check_config(checker: ConfigChecker, config: Any, generation: int) -> CheckReport:
    """`checker.check(config)` as the checks thread runs it: a bug in a check becomes a
    report (the form must never wait forever), stamped with the check's generation."""
    try:
        report = checker.check(config)
    except Exception as exc:
        report = CheckReport(errors={GENERAL: f"Could not check the settings: {error_text(exc)}"})
    report.generation = generation
    return report


def warm_up() -> None:
    """Import the engine and its heavy dependencies (torch, transformers) once, off the GUI
    thread: every public name the app uses, through the rooms' lazy API."""
    import quailora_core.adapter as adapter
    import quailora_core.config  # noqa: F401
    import quailora_core.device  # noqa: F401
    import quailora_core.init as init
    import quailora_core.model as model
    import quailora_core.sources as sources

    for room, name in ((init, "run_init"), (init, "estimate_run"), (init, "summarize"), (model, "summarize_model"),
                       (sources, "DataPreview"), (adapter, "copy_adapter")):  # fmt: skip
        try:
            getattr(room, name)
        except ImportError:
            pass
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
