"""A training run from shards: configuration -> plan (with the data's facts) -> batch source -> the
loop -> the test split. The command line is a thin layer over :func:`run_training`."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..contract.task import BoxTargets, EvalRequest
from ..host.manager import get_host
from ..data.bundled import resolve_data
from ..data.device_decode import DeviceDecoder, jpeg_decoder
from ..data.facts import data_facts
from ..data.pipeline import train_pipeline
from ..data.shards.manifest import Manifest
from ..evaluation.on_shards import evaluate_on_shards
from ..models.trained import load_trained
from ..runtime.console import plain
from ..runtime.devices import pick_device
from .batches import ShardSource, source_for
from .checkpoint import check_run_dir
from .config import TrainConfig
from .loop import train
from .plan import plan_run
from .reporting import TrainReporter


def run_training(config: TrainConfig, resume: str = "auto", console: Console | None = None) -> dict:
    """Train as ``config`` says; on rank 0, evaluate the best checkpoint on the test split with the
    ``center`` protocol (as ``vggtk eval --methods center`` would) and print a summary."""
    # Before the data is read, a run directory it cannot use is said; nothing is written there until the
    # data and the plan are good (the loop claims it), so a mistyped name leaves no empty run behind.
    run_dir = check_run_dir(config.run_dir)
    manifest = Manifest.load(resolve_data(config.data))
    for split in ("train", "val"):  # every epoch validates: a set without a val split is said before any work
        manifest.split(split)
    plan = plan_run(config, data_facts(manifest))
    train_pipe = train_pipeline(manifest, crop=plan.input_size, scale=plan.scale)
    reporter = TrainReporter(run_dir, console or Console(soft_wrap=True))
    with_boxes = isinstance(plan.head(), BoxTargets)
    decoder = _decoder(config, with_boxes, reporter)
    source = source_for(manifest, train_pipe, config.seed, config.workers, config.on_error, plan.preprocessing,
                        with_boxes, decoder)
    if decoder is not None and not isinstance(source, ShardSource):
        _notice(reporter, "these images are decoded once, into memory, before training")
    result = train(plan, source, run_dir, resume=None if resume == "none" else resume, on_event=reporter)
    if not reporter.is_main:
        return result
    if result["already_finished"] and reporter.tested is not None:  # run again: the test it had, not another
        result["tested"], result["test"] = reporter.tested["checkpoint"], reporter.tested["errors_pct"]
    elif "test" in manifest.splits:
        best = run_dir / "best"
        path = best if best.is_dir() else Path(result["checkpoint"])
        result["tested"] = path
        model = load_trained(path, pick_device(config.device), config.runtime, command="train")
        task = get_host().registry("heads").get(config.head).info.get("task", "classification")
        if task == "classification":
            centre = evaluate_on_shards([model], manifest, "test", ["center"], batch_size=256, workers=config.workers,
                                        on_error=config.on_error, progress=False)[0]
            result["test"] = {f"top{k}_err": v for k, v in centre.errors.items()}
        else:  # the task's own protocols, as `vggtk eval --task` runs them
            request = EvalRequest([model], [str(path)], manifest, "test", None, workers=config.workers,
                                  on_error=config.on_error, console=reporter.console)
            rows = get_host().registry("tasks").get(task).factory(request)["results"]
            result["test"] = {row["method"]: row[next(k for k in row if k.endswith("_pct"))] for row in rows}
        reporter.log_test(result)
    reporter.summary(result)
    return result


def _notice(reporter: TrainReporter, why: str) -> None:
    if reporter.is_main:
        reporter.console.print(plain(f"--decode device: {why}; the workers decode"), soft_wrap=True, highlight=False)


def _decoder(config: TrainConfig, with_boxes: bool, reporter: TrainReporter) -> DeviceDecoder | None:
    if config.decode != "device":
        return None
    if with_boxes:  # the boxes follow the decode's whole-pixel region, which the workers know
        _notice(reporter, f"the {config.head} head learns from boxes, which follow the workers' decode")
        return None
    decoder, why = jpeg_decoder(pick_device(config.device))
    if decoder is None:
        _notice(reporter, why)
    return decoder
