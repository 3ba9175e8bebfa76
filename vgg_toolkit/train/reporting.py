"""What a training run shows and leaves behind: a progress bar, metrics.jsonl, a PNG plot of loss and
error per epoch, and a closing summary. Only rank 0 reports."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from ..runtime.console import plain, print_table
from ..runtime.files import atomic_file, png_mark, written_kind



def plot_history(history: list[dict], path: Path) -> Path | None:
    """Loss and the validation errors per epoch, as a PNG. Returns None without matplotlib. Drawn on
    matplotlib's Agg canvas directly, never through pyplot, so the caller's backend is left alone."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_err = fig.subplots(1, 2)
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    for key in _val_keys(history[-1]):
        ax_err.plot(epochs, [h.get(key) for h in history], marker="o", label=key[len("val_"):])
    ax_err.set(xlabel="epoch", ylabel="validation error (%)", title="Error")
    ax_err.legend()
    for h in history:
        if h.get("decision") == "drop":
            for ax in (ax_loss, ax_err):
                ax.axvline(h["epoch"] + 0.5, color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata=png_mark("training plot"))
    return path


def _val_keys(record: dict) -> list[str]:
    return [k for k in record if k.startswith("val_") and isinstance(record[k], (int, float))]


class TrainReporter:
    """The ``on_event`` callback of :func:`vgg_toolkit.train.loop.train` for the command line."""

    def __init__(self, run_dir: Path, console: Console | None = None, progress: bool = True):
        self.run_dir = Path(run_dir)
        self.console = console or Console()
        self.is_main = int(os.environ.get("RANK", "0")) == 0
        self.progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                                 TextColumn("{task.completed}/{task.total} steps"),
                                 TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2g}  "
                                            "{task.fields[ips]:.0f} img/s"),
                                 TimeRemainingColumn(), console=self.console, transient=True,
                                 disable=not (progress and self.is_main))
        self.task = None
        self.started = time.perf_counter()
        self.history: list[dict] = []
        self.last_checkpoint = None
        self.resumed_from = None
        self.tested = None  # the log's test record at the step the run starts from

    def _log(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int, epoch: int) -> None:
        """Keep the log's records up to where the run starts: one resumed from an earlier checkpoint
        trains the later steps again, which would otherwise be logged twice. The plot follows the log."""
        path, plot = self.run_dir / "metrics.jsonl", self.run_dir / "metrics.png"
        if not path.is_file():
            return
        lines = path.read_text(errors="replace").splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
                if record["step"] <= step and (record["event"] != "epoch" or record["epoch"] <= epoch):
                    kept.append((line, record))
            except (ValueError, TypeError, KeyError):  # a line cut short by a killed run: no record
                continue
        self.tested = next((r for _, r in reversed(kept) if r["event"] == "test" and r["step"] == step), None)
        if len(kept) == len(lines):
            return
        with atomic_file(path) as tmp:
            tmp.write_text("".join(line + "\n" for line, _ in kept))
        if self.history:
            plot_history(self.history, plot)
        elif written_kind(plot) == "training plot":  # of epochs no longer in the log
            plot.unlink()

    def __call__(self, event: str, state: dict) -> None:
        if not self.is_main:
            return
        def say(text: str, **kwargs):  # one line however narrow the terminal; paths are not markup
            self.console.print(plain(text), soft_wrap=True, highlight=False, **kwargs)
        if event == "start":
            self._truncate_log(state["step"], state["epoch"])
            self.progress.start()
            self.total = state["batches_per_epoch"]
            if state["already_finished"]:
                why = ("its learning-rate schedule ended it" if state["already_finished"] == "schedule" else
                       "it ran its --epochs; a larger --epochs trains on")
                say(f"{self.run_dir}: training already finished at epoch {state['epoch']}, step {state['step']} "
                    f"({why}); nothing to train")
                return
            if self.resumed_from:
                say(f"resumed from {self.resumed_from} (epoch {state['epoch'] + 1}, step {state['step']})")
            say(f"training on {state['device']} x{state['world_size']}, {self.total} steps per epoch, "
                f"run directory {self.run_dir}")
        elif event == "resumed":  # said at the start, unless there is nothing left to train
            self.history = list(state["history"])
            self.resumed_from = state["checkpoint"]
        elif event == "initialised":
            say(f"initialised from {state['source']}: {', '.join(state['copied'])}")
        elif event == "step":
            self._log({"event": "step", **state})
            fields = dict(epoch=state["epoch"] + 1, loss=state["loss"], lr=state["lr"], ips=state["img_per_s"])
            if self.task is None:
                self.task = self.progress.add_task("train", total=self.total, **fields)
            self.progress.update(self.task, completed=state["batch_in_epoch"], **fields)
            if not self.console.is_terminal:  # no bar is drawn into a pipe or a log file: a line instead
                say(f"epoch {fields['epoch']} step {state['batch_in_epoch']}/{self.total}: loss {fields['loss']:.4f}, "
                    f"lr {fields['lr']:.2g}, {fields['ips']:.0f} img/s")
        elif event == "epoch":
            self._log({"event": "epoch", **state})
            self.history = [*self.history, state]
            plot_history(self.history, self.run_dir / "metrics.png")
            errors = ", ".join(f"{k[len('val_'):]} {state[k]:.2f}%" for k in _val_keys(state))
            say(f"epoch {state['epoch']}: loss {state['train_loss']:.3f}, val {errors}, lr {state['lr']:.0e}, "
                f"{state['decision']}, {state['seconds']:.0f} s")
            if state.get("train_skipped"):
                detail = f" (rank 0: {state['skipped_detail']})" if state["skipped_detail"] else ""
                say(f"epoch {state['epoch']}: skipped {state['train_skipped']} unreadable training sample(s){detail}",
                    style="yellow")
            if self.task is not None:
                self.progress.reset(self.task, total=self.total)
        elif event == "checkpoint":
            self.last_checkpoint = state["path"]
        elif event in ("end", "interrupted"):
            self.progress.stop()
            if event == "interrupted":
                say(f"interrupted at step {state['step']}; saved {self.last_checkpoint}; "
                    "run the same command again to resume")

    def log_test(self, result: dict) -> None:
        """The test split's errors, kept beside the epochs, so a script reads them without parsing the table."""
        if result.get("test"):
            self._log({"event": "test", "step": result["step"], "checkpoint": str(result.get("tested")),
                       "errors_pct": result["test"]})

    def summary(self, result: dict) -> None:
        done = result.get("already_finished")
        table = Table(title="Training had already finished" if done else "Training finished", show_header=False)
        table.add_column("", no_wrap=True)
        table.add_column("", no_wrap=True)
        best = result.get("best_val") or {}
        rows = [("epochs", str(result["epoch"])), ("steps", str(result["step"]))]
        rows += [(f"best val {k[len('val_'):]}", f"{best[k]:.2f}% (epoch {best['epoch']})") for k in _val_keys(best)]
        rows += [(f"test {k}", f"{v:.2f}%") for k, v in (result.get("test") or {}).items()]
        rows += [] if done else [("wall time", f"{time.perf_counter() - self.started:.0f} s")]
        rows += [("checkpoint", str(result.get("checkpoint"))), ("best checkpoint", str(self.run_dir / "best")),
                 ("metrics", str(self.run_dir / "metrics.jsonl")), ("plot", str(self.run_dir / "metrics.png"))]
        for name, value in rows:
            table.add_row(plain(name), plain(value))
        print_table(self.console, table)  # paths and numbers are never cut
