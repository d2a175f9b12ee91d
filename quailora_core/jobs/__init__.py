"""The job queue: typed jobs and the queue's state (`job`), jobs from run configs, checked
(`build`), the shared queue file with its locked, atomic changes (`queue_file`), sweeps over
ranks x methods x bits (`sweep`) and the runner that takes the jobs one after another
(`runner`). `quailora queue ...` and the app's Queue tab both drive these."""

from quailora_core._exports import lazy

_EXPORTS = {
    "job": "Job QueueState STATES",
    "build": "init_job train_job",
    "queue_file": "JobQueue default_queue_path",
    "sweep": "sweep_jobs sweep_configs",
    "runner": "run_queue QueueRun",
}
__all__ = sorted(n for names in _EXPORTS.values() for n in names.split())
__getattr__, __dir__ = lazy(__name__, _EXPORTS)
