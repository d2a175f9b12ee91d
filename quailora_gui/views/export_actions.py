"""The export actions: the shown run's adapter, the merged model (base + adapter, for serving),
its GGUF file (for llama.cpp), the charts as PNG, the per-layer CSV, and the run folder (for
Export run and for Launch). Folder copies, the merge and the GGUF export run in the files lane
of the task runner (a rank-64 adapter of a 70B model is ~1 GB, its merge ~140 GB); the state
machine keeps one at a time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog

from ..controllers import checks
from ..controllers.app_state import EXPORT_ACTIONS, Export
from ..controllers.paths import gguf_file_for, is_free_output, merged_folder_for, next_free_output
from ..controllers.progress import MergeGgufText, merge_event_text
from ..controllers.tasks import file_task, gguf_task, merge_task
from .dialogs import ExportDialog, GgufTypeDialog, show_input_error

# the GGUF types offered, as the core's export names them, and what each is for
GGUF_TYPES = [("f16", "16-bit, what the merge computed (largest file)"), ("bf16", "16-bit brain float"),
              ("q8_0", "8-bit blocks, about half the size (llama.cpp's q8_0)")]  # fmt: skip


class ExportActions(QObject):
    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self.w = window

    def _chosen_folder(self, dest: str | None, title: str) -> str | None:
        """`dest`, or the folder the user picks when it is None (None if they cancel); remembered
        as the next dialog's starting folder."""
        if dest is None:
            dest = QFileDialog.getExistingDirectory(self.w, title, self.w.prefs.last_dir()) or None
        if dest is not None:
            self.w.prefs.remember_dir(dest)
        return dest

    def _show(self, written: list[tuple[str, str]], code: str, folder: str, *captions: str) -> None:
        dialog = ExportDialog(self.w, written, code, folder, *captions)
        dialog.open()
        self.w.keep_dialog(dialog)
        self.w.exported.emit(written)

    # ------------------------------------------------------------------ the adapter
    def export_adapter(self, dest: str | None = None) -> str | None:
        """Copy the shown run's adapter into `dest` (asked for when None) in the files lane;
        then show how to load it (`exported`). Returns the folder being written, or None."""
        run = self.w.results_area.displayed
        allowed = run is not None and self.w.state.enabled(EXPORT_ACTIONS[Export.ADAPTER])
        dest = self._chosen_folder(dest, "Export the adapter to") if allowed else None
        if dest is None:
            return None
        target = dest if is_free_output(dest) else str(Path(dest) / Path(run.output_dir).name)
        source = run.output_dir

        def copy() -> tuple[Path, str]:  # and the code that loads it, from its record, off the GUI thread too
            from quailora_core.adapter import AdapterRecord, copy_adapter
            from quailora_core.adapter.card import loading_code

            written = Path(copy_adapter(source, target))
            return written, loading_code(str(written), AdapterRecord.load(written))

        self._in_thread(Export.ADAPTER, copy, self._on_adapter_exported, "Export failed", target)
        return target

    def _on_adapter_exported(self, result: tuple[Path, str]) -> None:
        target, code = result
        self.w.log(f"Adapter exported to {target}")
        self._show([("Adapter", str(target))], code, str(target))

    # ------------------------------------------------------------------ the merged model
    def export_merged(self, dest: str | None = None) -> str | None:
        """Merge the shown run's adapter into its base (`quailora merge`: dequant(Q) + s·B·A)
        in `dest` (asked for when None), off the GUI thread, each merged block in the log; then
        show where it went and how to load it (`exported`). Returns the folder being written."""
        run = self.w.results_area.displayed
        allowed = run is not None and self.w.state.enabled(EXPORT_ACTIONS[Export.MERGED])
        dest = self._chosen_folder(dest, "Export the merged model to") if allowed else None
        if dest is None:
            return None
        target = dest if is_free_output(dest) else next_free_output(str(Path(dest) / (Path(run.output_dir).name + "-merged")))
        w = self.w
        w.state.begin_export(Export.MERGED)
        w.log(f"Merging the adapter into its base in {target} …")

        on_event = self._reporter(merge_event_text)
        def done(result: Any) -> None:
            from quailora_core.serving.merge import loading_code

            w.state.end_export()
            w.log(f"Merged model written to {result.output_dir}")
            self._show([("Merged model", result.output_dir)], loading_code(result.output_dir, result.auto_class), result.output_dir,
                       "Load it for inference (no bitsandbytes, no peft) with:",
                       "Python that loads the merged model.")  # fmt: skip

        def failed(exc: BaseException, _details: str) -> None:
            self._failed(exc, "The merge failed", "Merge failed")

        w.tasks.start(merge_task(run.output_dir, target, on_event=on_event, on_done=done, on_error=failed,
                                 on_cancelled=lambda: w.state.end_export()))  # fmt: skip
        return target

    # ------------------------------------------------------------------ the GGUF file
    def _reporter(self, text_of: Callable[[Any], str | None]) -> Callable[[Any], None]:
        """An export's engine events as lines in the log and the status bar (`text_of` words them)."""

        def on_event(event: Any) -> None:
            text = text_of(event)
            if text:
                self.w.log(text)
                self.w.statusBar().showMessage(text)

        return on_event

    def export_gguf(self, dest: str | None = None, gguf_type: str | None = None) -> str | None:
        """Merge the shown run's adapter into its base and write the merged model as the GGUF
        file `dest` (asked for when None) of `gguf_type` (asked for when None, ggufTypeDialog), off
        the GUI thread in the files lane (`quailora merge --gguf`; the merged folder is kept beside
        the file); then show the file and the llama.cpp commands that run it (`exported`).
        Returns the file to be written, or None."""
        run = self.w.results_area.displayed
        allowed = run is not None and self.w.state.enabled(EXPORT_ACTIONS[Export.GGUF])
        if not allowed:
            return None
        if dest is None:
            start = str(Path(self.w.prefs.last_dir()) / (Path(run.output_dir).name + ".gguf"))
            dest, _ = QFileDialog.getSaveFileName(self.w, "Export the merged model as GGUF", start, "GGUF (*.gguf)")
            if not dest:
                return None
        target = gguf_file_for(dest)
        self.w.prefs.remember_dir(str(Path(target).parent))
        if gguf_type is not None:
            self._start_gguf(run.output_dir, target, gguf_type)
            return target
        dialog = GgufTypeDialog(self.w, target, GGUF_TYPES)
        dialog.accepted.connect(lambda: self._start_gguf(run.output_dir, target, dialog.gguf_type()))
        dialog.open()
        self.w.keep_dialog(dialog)
        return target

    def _start_gguf(self, adapter: str, target: str, gguf_type: str) -> None:
        w = self.w
        if not w.state.enabled(EXPORT_ACTIONS[Export.GGUF]):  # something else began while the type was asked
            w.log("Export GGUF not started: another export or a run is under way.")
            return
        folder = merged_folder_for(target)
        w.state.begin_export(Export.GGUF)
        w.log(f"Merging the adapter into its base in {folder}, then writing {gguf_type} GGUF {target} …")
        on_event = self._reporter(MergeGgufText())
        def done(result: Any) -> None:
            from quailora_core.serving.merge_gguf import llama_cpp_commands

            w.state.end_export()
            gguf_file = str(result.gguf.output)
            w.log(f"GGUF file written to {gguf_file} (merged folder kept in {result.merge.output_dir})")
            w.statusBar().showMessage(f"GGUF file written to {gguf_file}")
            self._show([("GGUF file", gguf_file), ("Merged model", result.merge.output_dir)],
                       llama_cpp_commands(gguf_file), str(Path(gguf_file).parent),
                       "Run it with llama.cpp (chat in the terminal, or an OpenAI-compatible server):",
                       "The llama.cpp commands that run the GGUF file.")  # fmt: skip

        def failed(exc: BaseException, _details: str) -> None:
            self._failed(exc, "The GGUF export failed", "GGUF export failed")

        w.tasks.start(gguf_task(adapter, folder, gguf_type, target, on_event=on_event, on_done=done, on_error=failed,
                                on_cancelled=lambda: w.state.end_export()))  # fmt: skip

    # ------------------------------------------------------------------ charts, CSV
    def export_charts(self, folder: str | None = None) -> list[str]:
        """Save the layer-error chart and the heat map as PNG files in `folder`."""
        area = self.w.results_area
        folder = self._chosen_folder(folder, "Save the charts in") if len(area.results) else None
        if folder is None:
            return []
        area.refresh(everything=True)
        Path(folder).mkdir(parents=True, exist_ok=True)
        written = []
        shown = area.displayed
        # the run the charts show names the files and heads each image (a live, unfinished run:
        # the form's output folder)
        output = shown.output_dir if shown is not None else self.w.form.to_config().output
        stem = Path(output).name or "run"
        caption = f"{shown.name if shown else 'Run in progress'} · {output}"
        for widget, name in ((area.layerErrorChart, "layer-errors.png"), (area.heatMap, "heat-map.png")):
            path = str(Path(folder) / f"{stem}-{name}")
            if not area.grab_chart(widget, caption).save(path, "PNG"):
                self.w.keep_dialog(show_input_error(self.w, OSError(f"Could not write {path}."), "Export failed"))
                return written
            written.append(path)
        self.w.log(f"Charts saved: {', '.join(written)}")
        self._show([("Chart", p) for p in written], "", folder)
        return written

    def export_csv(self, path: str | None = None) -> str | None:
        """Write the per-layer results (the core's CSV format) to `path`."""
        results = self.w.results_area.results
        if not len(results):
            return None
        if path is None:
            start = str(Path(self.w.prefs.last_dir()) / "layers.csv")
            path, _ = QFileDialog.getSaveFileName(self.w, "Save the per-layer results", start, "CSV (*.csv)")
            if not path:
                return None
        self.w.prefs.remember_dir(str(Path(path).parent))
        from quailora_core.init.metrics import write_csv

        try:
            write_csv(results.layers, path)
        except OSError as exc:
            self.w.keep_dialog(show_input_error(self.w, exc, "Export failed"))
            return None
        self.w.log(f"Per-layer results saved to {path}")
        self._show([("Results", path)], "", str(Path(path).parent))
        return path

    # ------------------------------------------------------------------ the run folder
    def export_run(self, dest: str | None = None) -> str | None:
        """Write the run folder (run.toml, adapter, data, launch.sh) for the shown run's adapter
        into `dest` (asked for when None), in the files lane; then show where it went and how
        to start it (`exported`). Returns the folder being written, or None."""
        run = self.w.results_area.displayed
        allowed = run is not None and self.w.state.enabled(EXPORT_ACTIONS[Export.RUN])
        dest = self._chosen_folder(dest, "Export the run to") if allowed else None
        if dest is None:
            return None
        target = dest if is_free_output(dest) else next_free_output(str(Path(dest) / (Path(run.output_dir).name + "-run")))
        self.run_folder(Export.RUN, target, self._on_run_exported, "Export failed")
        return target

    def _on_run_exported(self, run_dir: Path) -> None:
        from ..controllers.training import launch_text

        written = [("Run folder", str(run_dir)), ("Launcher", str(run_dir / "launch.sh"))]
        self.w.log(f"Run exported to {run_dir}; start it with {run_dir / 'launch.sh'}")
        self._show(written, launch_text(run_dir), str(run_dir), "Start it here or on a GPU machine with:",
                   "The commands that train this run folder.")  # fmt: skip

    def run_folder(self, kind: Export, target: str, on_done: Callable[[Path], None], failure_title: str) -> None:
        """export_run(<the shown run's training config>, target) in the files lane; then
        `on_done(run_dir)` on the GUI thread, or an error dialog titled `failure_title`."""
        config = self.w.training_control.training_config()  # read from the widgets, on the GUI thread

        def write() -> Path:
            from quailora_core.train import export_run

            return Path(export_run(config, target))

        self._in_thread(kind, write, on_done, failure_title, target)

    def _in_thread(self, kind: Export, job: Callable[[], Any], on_done: Callable[[Any], None],
                   failure_title: str, target: str) -> None:  # fmt: skip
        """A Qt-free file job in the files lane, the export actions disabled meanwhile; then
        `on_done(its result)` on the GUI thread, or an error dialog titled `failure_title`."""
        w = self.w
        w.state.begin_export(kind)
        w.log(f"Exporting to {target} …")

        def done(result: Any) -> None:
            w.state.end_export()
            on_done(result)

        def failed(exc: BaseException, _details: str) -> None:
            self._failed(exc, "The export failed", failure_title)

        w.tasks.start(file_task(f"export {kind.value}", job, on_done=done, on_error=failed))

    def _failed(self, exc: BaseException, what: str, title: str) -> None:
        """An export ended with `exc`: the export actions enabled again, its one line in the log
        and in a dialog titled `title` (an unexpected exception worded "<what>: <error>"), then
        `exportFailed`."""
        from quailora_core.errors import QuailoraError

        w = self.w
        w.state.end_export()
        if not isinstance(exc, (QuailoraError, OSError)):
            exc = QuailoraError(f"{what}: {checks.error_text(exc)}")
        w.log(f"{title}: {getattr(exc, 'message', None) or exc}")
        w.keep_dialog(show_input_error(w, exc, title))
        w.exportFailed.emit(exc)
