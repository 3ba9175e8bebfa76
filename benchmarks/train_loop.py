"""The toolkit's training loop against a bare PyTorch loop, back to back in one process: the same
network (the demo's VGG-A sized for 32x32: width 0.25, FC 256, channels_last), data (the bundled
Fashion-MNIST training split, decoded once), batch size and threads.

- toolkit: ``run_training`` exactly as ``vggtk train`` runs it (the paper's per-sample augmentation:
  rescale to S ~ U[32, 40], random 32x32 crop, flip, colour shift; the non-finite guard; exact-resume
  and DDP bookkeeping), two epochs; images/s of the second epoch's training steps as its log reports
  them (``--epoch 1``: the first's; validation and the test split are not counted);
- bare: SGD with momentum and cross-entropy over the same uint8 tensor, a padded random crop and a
  flip per batch, normalised as the toolkit normalises.

    .venv/bin/python benchmarks/train_loop.py [--rounds 3] [--batch-size 128] [--epoch 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from vgg_toolkit import create_model
from vgg_toolkit.data.bundled import DEFAULT_DATA
from vgg_toolkit.data.facts import data_facts
from vgg_toolkit.data.loader import normalize_on_device, read_split
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.train.config import parse_config
from vgg_toolkit.train.plan import plan_run
from vgg_toolkit.train.run import run_training


def toolkit_rate(batch_size: int, epoch: int = 2) -> float:
    """Images/s of the ``epoch``-th epoch's training steps, as the log reports them (a running rate from
    the epoch's start). By default the second: the first also pays for a fresh run's first touches of
    the memory the decoded split and the new model take, which the bare loop, reusing one tensor, does
    not."""
    with tempfile.TemporaryDirectory() as run_dir:
        config = parse_config({"data": str(DEFAULT_DATA), "run_dir": run_dir, "epochs": epoch,
                               "batch_size": batch_size, "lr": 0.02, "log_every": 10})
        run_training(config, resume="none", console=Console(quiet=True))
        steps = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
        return [s for s in steps if s["event"] == "step" and s["epoch"] == epoch - 1][-1]["img_per_s"]


def bare_rate(batch_size: int, images: torch.Tensor, labels: torch.Tensor, mean) -> float:
    manifest = Manifest.load(DEFAULT_DATA)
    plan = plan_run(parse_config({"data": str(DEFAULT_DATA)}), data_facts(manifest))
    torch.manual_seed(0)
    model = create_model(plan.arch, num_classes=plan.num_outputs, **plan.model_options)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    crop, pad = plan.input_size, (plan.input_size + 4 - images.shape[-1]) // 2
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    steps = len(images) // batch_size
    start = time.perf_counter()
    for b in range(steps):
        index = order[b * batch_size:(b + 1) * batch_size]
        x = F.pad(normalize_on_device(images[index], mean), (pad,) * 4)
        top, left = torch.randint(0, x.shape[-1] - crop + 1, (2,)).tolist()
        x = x[..., top:top + crop, left:left + crop]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epoch", type=int, default=2, choices=(1, 2), help="the toolkit epoch measured")
    args = parser.parse_args()
    manifest = Manifest.load(DEFAULT_DATA)
    batches = list(read_split(manifest, "train", batch_size=1024))
    images, labels = torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches])
    print(f"{len(images):,} training images, batch {args.batch_size}, {torch.get_num_threads()} threads")
    # oneDNN builds its kernels for each conv shape on first use: warm up, so neither side pays for it.
    bare_rate(args.batch_size, images[:4 * args.batch_size], labels[:4 * args.batch_size], manifest.stats.mean_rgb_255)
    ratios = []
    for round_ in range(1, args.rounds + 1):
        ours = toolkit_rate(args.batch_size, args.epoch)
        bare = bare_rate(args.batch_size, images, labels, manifest.stats.mean_rgb_255)
        ratios.append(ours / bare)
        print(f"round {round_}: toolkit {ours:,.0f} images/s, bare loop {bare:,.0f} images/s, ratio {ours / bare:.3f}",
              flush=True)
    print(f"ratio toolkit / bare: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
