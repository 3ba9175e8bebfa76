"""A training run from shards: options -> TrainConfig, shards -> batch source, then the engine, then
the test split. The command line is a thin layer over :func:`run_training`."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from .batches import InMemorySource
from ..data.errors import SkipLog
from ..data.loader import make_loader, normalize_on_device
from ..data.shards.manifest import Manifest
from ..data.pipeline import eval_pipeline, recipe, train_pipeline
from ..runtime.distributed import DistEnv
from ..runtime.devices import pick_device
from .loop import TrainConfig, train
from ..errors import VggtkError
from ..evaluation.runner import paper_test_scales
from .reporting import TrainReporter

MODEL_OPTIONS = ("width", "fc_dim", "batch_norm", "init", "dropout")
IN_MEMORY_LIMIT = 2 << 30  # decoded bytes of the training split below which it is decoded once, up front


class ShardSource:
    """Streams shards through :func:`make_loader` every epoch: for data that does not fit in memory.
    Ranks read disjoint ranges of samples, so DDP sees the same samples per epoch as one process but
    grouped into different global batches (the in-memory source keeps the groups too)."""

    def __init__(self, data: Path, manifest: Manifest, train_pipe, val_pipe, seed: int, workers: int, on_error: str):
        self.data, self.manifest, self.seed, self.workers, self.on_error = data, manifest, seed, workers, on_error
        self.train_pipe, self.val_pipe = train_pipe, val_pipe
        self.num_classes = manifest.num_classes
        self.mean = manifest.stats.mean_rgb_255
        self._skipped = SkipLog()

    def split_layout(self, env: DistEnv) -> dict:
        # Samples are dealt to ranks x reader workers, so a started epoch continues only on the same grid.
        return {"world_size": env.world_size, "workers": max(1, self.workers)}

    def pop_skipped(self) -> tuple[int, str]:
        log, self._skipped = self._skipped, SkipLog()
        return log.total, (f"{log.summary()}; first: {log.examples[0]}" if log.total else "")

    def _train_loader(self, epoch: int, env: DistEnv, micro_batch: int, start: int = 0):
        return make_loader(self.data, "train", batch_size=micro_batch, augment=self.train_pipe, seed=self.seed,
                           epoch=epoch, rank=env.rank, world_size=env.world_size, num_workers=self.workers,
                           on_error=self.on_error, start_position=start)

    def num_batches(self, global_batch: int, env: DistEnv, micro_batch: int) -> int:
        accum = global_batch // (env.world_size * micro_batch)
        return len(self._train_loader(0, env, micro_batch)) // accum

    def train_batches(self, epoch, start, env, global_batch, micro_batch):
        accum = global_batch // (env.world_size * micro_batch)
        limit = (self.num_batches(global_batch, env, micro_batch) - start) * accum
        loader = self._train_loader(epoch, env, micro_batch, start * accum)
        for i, (images, labels) in enumerate(loader):
            if i >= limit:
                break
            yield images, labels
        self._skipped.merge(loader.skipped.counts, loader.skipped.examples)

    def val_batches(self, batch_size):
        loader = make_loader(self.data, "val", batch_size=batch_size, augment=self.val_pipe, rank=0, world_size=1,
                             num_workers=self.workers, on_error=self.on_error)
        yield from ((images, labels) for images, labels in loader)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize_on_device(images, self.mean)


def _decode_split(data: Path, split: str, workers: int, on_error: str):
    """(images, labels) of a whole split, and the sample keys."""
    loader = make_loader(data, split, batch_size=1024, augment="none", shuffle=False, drop_last=False,
                         rank=0, world_size=1, num_workers=workers, on_error=on_error)
    batches = list(loader)
    if loader.skipped.total:
        Console(stderr=True).print(f"{data} {split}: {loader.skipped.summary()}")
    keys = [key for batch in batches for key in batch.keys]
    return (torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches])), keys


def _fits_in_memory(manifest: Manifest) -> bool:
    side = manifest.uniform_side  # photos of many sizes are streamed
    return side is not None and manifest.samples("train") * manifest.channels * side**2 < IN_MEMORY_LIMIT


def _same_architecture(init_from: str, options: dict) -> bool:
    from .checkpoint import weights_file
    from ..host.manager import get_host
    from ..models.weights import read_arch

    arch = read_arch(weights_file(init_from))
    wanted = get_host().registry("architectures").get(options.get("arch", TrainConfig.arch)).name
    return arch is not None and arch["name"] == wanted


def build_config(options: dict, manifest: Manifest) -> TrainConfig:
    """TrainConfig from command-line/TOML options, with defaults sized to the data."""
    options = dict(options)
    r = recipe(manifest)
    small = r["crop"] < 64
    # Small images get a narrow net; and He init, since at that width neither the paper's N(0, 1e-2)
    # nor Glorot's init moves a plain (no BatchNorm) 11-layer net off chance level within the demo's epochs.
    model = {"in_chans": manifest.channels, "input_size": r["crop"],
             **({"width": 0.25, "fc_dim": 256, "init": "kaiming"} if small else {}),
             **options.pop("model", {})}
    for key in MODEL_OPTIONS:
        if key in options:
            model[key] = options.pop(key)
    scale = options.pop("scale", None)
    smin, smax = options.pop("scale_min", None), options.pop("scale_max", None)
    if (smin is None) != (smax is None):
        raise VggtkError("scale jittering needs both --scale-min and --scale-max")
    if scale is not None and smin is not None:
        raise VggtkError("give either --scale (fixed S) or --scale-min/--scale-max (jittered S), not both")
    if smin is not None:
        train_scale = [smin, smax]
    elif scale is not None:
        train_scale = [scale]
    elif model["input_size"] == r["crop"]:  # the data's recipe: jittered S, as in the paper's best nets
        train_scale = [r["smin"], r["smax"]]
    else:  # the paper's ratio of crop to S: 224 of 256
        train_scale = [round(model["input_size"] * 256 / 224)]
    if min(train_scale) < model["input_size"]:
        raise VggtkError(f"training scale {train_scale} is below the crop size {model['input_size']}")
    if options.get("init_from") and "lr" not in options and _same_architecture(options["init_from"], options):
        options["lr"] = 1e-3  # the paper's fine-tuning rate (S=384 from S=256, jittered from S=384)
    return TrainConfig.from_dict({"model": model, "train_scale": train_scale, "classes": manifest.classes,
                                 "mean_rgb": manifest.stats.mean_rgb_255 if manifest.stats else None, **options})


def run_training(options: dict, data: Path, run_dir: Path, resume: str = "auto", workers: int = 0,
                 on_error: str = "fail", console: Console | None = None) -> dict:
    manifest = Manifest.load(data)
    if manifest.stats is None:
        raise VggtkError(f"{manifest.path}: no colour statistics; rebuild the shards with `vggtk shards create`")
    config = build_config(options, manifest)
    crop, scales = config.model["input_size"], config.train_scale
    train_pipe = train_pipeline(manifest, crop=crop, smin=scales[0], smax=scales[-1], color_shift=True)
    # Validation at the paper's single test scale, the one `vggtk eval` takes by default.
    (q,) = paper_test_scales(scales[0] if len(scales) == 1 else tuple(scales))
    val_pipe = eval_pipeline(manifest, q=q, crop=crop)
    console = console or Console()
    if _fits_in_memory(manifest):
        train_split, keys = _decode_split(data, "train", workers, on_error)
        source = InMemorySource(train_split, _decode_split(data, "val", workers, on_error)[0],
                                manifest.num_classes, manifest.stats.mean_rgb_255, train_transform=train_pipe,
                                val_transform=val_pipe, seed=config.seed, keys=keys)
    else:
        source = ShardSource(data, manifest, train_pipe, val_pipe, config.seed, workers, on_error)
    reporter = TrainReporter(run_dir, console)
    result = train(config, source, run_dir, resume=None if resume == "none" else resume, on_event=reporter)
    test = None
    if reporter.is_main and "test" in manifest.splits:
        # The same code as `vggtk eval --methods center`, so the two report the same number.
        from ..evaluation.on_shards import evaluate_on_shards, load_trained

        best = run_dir / "best"
        model = load_trained(best if best.is_dir() else Path(result["checkpoint"]), pick_device(config.device),
                             config.conv_backend)
        centre = evaluate_on_shards([model], data, "test", ["center"], batch_size=256, workers=workers,
                                    on_error=on_error, progress=False)[0]
        test = {"top1_err": centre.errors[1], "top5_err": centre.errors.get(5, float("nan"))}
        result["test"] = test
    if reporter.is_main:
        reporter.summary(result, test)
    return result
