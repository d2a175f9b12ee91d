"""The initialization: a pipeline that only orchestrates (`pipeline`), the checks before it
(`preflight`), the activation cache (`activations`), input strategies registered by name
(`strategies`: fp, propagated, asymmetric), input statistics (`stats`), one layer's solve
(`layer`) with the solvers (`solvers`), per-layer metrics (`metrics`), the self-check
(`verify`) and the cost estimate (`estimate`)."""

from quailora_core._exports import lazy

_EXPORTS = {
    "pipeline": "run_init InitResult",
    "preflight": "Preflight plan_for",
    "strategies": "STRATEGIES",
    "estimate": "estimate_run",
    "metrics": "summarize",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
