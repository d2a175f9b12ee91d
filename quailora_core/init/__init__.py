"""The initialization: a pipeline that only orchestrates (`pipeline`), the checks before it
(`preflight`), the activation cache (`activations`), input strategies registered by name
(`strategies`: fp, propagated, asymmetric), input statistics (`stats`), one layer's solve
(`layer`) with the solvers (`solvers`), per-layer metrics (`metrics`), the self-check
(`verify`) and the cost estimate (`estimate`)."""

from quailora_core._exports import lazy

_TABLE = {
    "run_init": "pipeline",
    "InitResult": "pipeline",
    "preflight": "preflight",
    "plan_for": "preflight",
    "STRATEGIES": "strategies",
    "estimate_run": "estimate",
    "summarize": "metrics",
}
__all__ = sorted(_TABLE)
__getattr__, __dir__ = lazy(__name__, _TABLE)
