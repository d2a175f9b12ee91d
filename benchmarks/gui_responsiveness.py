"""How responsive the window stays during an initialization: wall-clock gaps of a 20 ms timer.

The tests check what keeps the window responsive in ways load cannot break (no engine or
library code on the GUI thread; little GUI-thread CPU time per event). This script
measures the figure a user feels, the longest wait of the event loop, which *does* depend
on the machine and its load, so it is reported as a ratio within one run: the gaps while
an initialization runs on the demo model against the gaps of the same window idle, for
the same length of time, just before.

    python benchmarks/gui_responsiveness.py              # demo model, 32 x 128 tokens, rank 16
    python benchmarks/gui_responsiveness.py --no-write   # print only

Writes benchmarks/results/gui_responsiveness.json. Offscreen Qt unless a display is set.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "screenshots"))

from _common import machine, write_results  # noqa: E402
from _demo_window import open_demo_window, set_method, small_init_form, wait_for  # noqa: E402


def _gaps(ticks: list[float]) -> dict:
    gaps = sorted(b - a for a, b in zip(ticks, ticks[1:], strict=False))
    if not gaps:
        return {"ticks": len(ticks)}
    return {
        "ticks": len(ticks),
        "max_ms": round(1000 * gaps[-1], 1),
        "p99_ms": round(1000 * gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))], 1),
        "median_ms": round(1000 * statistics.median(gaps), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="quailora")
    p.add_argument("--no-write", action="store_true", help="print the figures, write nothing")
    args = p.parse_args(argv)

    app, window = open_demo_window()
    small_init_form(window)
    set_method(window, args.method)
    from PySide6.QtCore import QEventLoop, QTimer

    wall: list[float] = []
    cpu: list[float] = []
    heartbeat = QTimer()
    heartbeat.setInterval(20)
    heartbeat.timeout.connect(lambda: (wall.append(time.perf_counter()), cpu.append(time.thread_time())))

    # the run first (to know how long it lasts), then the idle window for as long
    heartbeat.start()
    started = time.perf_counter()
    window.runButton.click()
    outcome = wait_for(window, window.runEnded)[0]
    run_seconds = time.perf_counter() - started
    heartbeat.stop()
    if outcome != "finished":
        raise SystemExit(f"the run ended {outcome!r}: {window.logView.toPlainText()[-2000:]}")
    run_wall, run_cpu = list(wall), list(cpu)
    wall.clear()
    cpu.clear()
    heartbeat.start()
    loop = QEventLoop()
    QTimer.singleShot(int(1000 * run_seconds), loop.quit)
    loop.exec()
    heartbeat.stop()

    run, idle = _gaps(run_wall), _gaps(wall)
    cpu_work = [b - a for a, b in zip(run_cpu, run_cpu[1:], strict=False)]
    report = {
        "what": "wall-clock gaps between 20 ms timer ticks in the window: during a demo-model "
        "initialization, and idle for as long just after",
        "method": args.method,
        "run_seconds": round(run_seconds, 2),
        "during_run": run,
        "idle": idle,
        "max_gap_ratio_run_over_idle": round(run["max_ms"] / idle["max_ms"], 2) if idle.get("max_ms") else None,
        "gui_thread_cpu_ms_between_ticks_max": round(1000 * max(cpu_work), 1) if cpu_work else None,
        "machine": machine(),
    }
    print(
        f"run {run_seconds:.1f} s: longest gap {run['max_ms']} ms (p99 {run['p99_ms']} ms) against "
        f"{idle['max_ms']} ms idle: {report['max_gap_ratio_run_over_idle']}x; GUI-thread CPU between ticks "
        f"at most {report['gui_thread_cpu_ms_between_ticks_max']} ms"
    )
    if not args.no_write:
        print("wrote", write_results("gui_responsiveness", report))
    window.shutdown()
    window.close()
    app.processEvents()
    return 0


if __name__ == "__main__":
    sys.exit(main())
