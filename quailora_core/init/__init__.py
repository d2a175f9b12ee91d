"""The initialization: a pipeline that only orchestrates (`pipeline`), the checks before it
(`preflight`), input statistics (`stats`), the solvers (`solvers`), the per-layer metrics
(`metrics`), the self-check (`verify`) and the cost estimate (`estimate`)."""

from quailora_core._exports import lazy

_TABLE = {
    "run_init": "pipeline",
    "InitResult": "pipeline",
    "preflight": "pipeline",
    "plan_for": "pipeline",
    "estimate_run": "estimate",
    "summarize": "metrics",
}
__all__ = sorted(_TABLE)
__getattr__, __dir__ = lazy(__name__, _TABLE)
