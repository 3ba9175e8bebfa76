"""A small real training job that tests launch as a subprocess (alone, under torchrun, or to kill)."""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_training import tiny_run  # noqa: E402

from vgg_toolkit.train.loop import train  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--accum-steps", type=int, default=1)
parser.add_argument("--samples", type=int, default=256)
parser.add_argument("--dropout", type=float, default=0.5)
parser.add_argument("--checkpoint-every", type=int, default=0)
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--slow", type=float, default=0.0, help="seconds to sleep per step, so a test can kill mid-epoch")
args = parser.parse_args()

torch.set_num_threads(1)  # bit-exact comparisons need the same reduction order in every process
plan, source = tiny_run(args.samples, model={"dropout": args.dropout}, epochs=args.epochs, batch_size=args.batch_size,
                        accum_steps=args.accum_steps, lr=args.lr, log_every=1, checkpoint_every=args.checkpoint_every,
                        keep_last=100)


def on_event(event, state):
    if args.slow and event == "step":
        import time

        time.sleep(args.slow)
    if event in ("end", "resumed"):
        print(json.dumps({"event": event, **{k: v for k, v in state.items() if k != "history"}}), flush=True)


train(plan, source, args.run_dir, on_event=on_event)
