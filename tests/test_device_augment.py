"""Streamed training runs the pipeline's last ops that only mirror or shift colours on the training
device, a batch at once, after the workers' decode: the images are those the whole pipeline makes
sample by sample, to the last level."""

from pathlib import Path

import torch

from vgg_toolkit.data.pipeline import train_pipeline
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.runtime.distributed import DistEnv
from vgg_toolkit.train.batches import ShardSource

PHOTOS = Path(__file__).resolve().parents[1] / "shards" / "localisation"


def test_flip_and_colour_shift_on_the_device_equal_the_per_sample_pipeline(host):
    manifest = Manifest.load(PHOTOS / "manifest.json")
    pipeline = train_pipeline(manifest, crop=96, scale=112)
    split = ShardSource(manifest, pipeline, seed=3, workers=0, on_error="fail")
    assert [type(op).__name__ for op in split.device_ops] == ["RandomFlip", "ColorShift"]
    assert [type(op).__name__ for op in split.train_transform.steps] == ["Rescale", "RandomCrop"]
    whole = ShardSource(manifest, pipeline, seed=3, workers=0, on_error="fail")
    whole.train_transform, whole.device_ops = pipeline, []  # everything in the workers, sample by sample
    env, flipped, compared = DistEnv(), 0, 0
    for epoch in (0, 1):
        pairs = zip(split.train_batches(epoch, 0, env, 16, 16), whole.train_batches(epoch, 0, env, 16, 16))
        for i, (a, b) in enumerate(pairs):
            assert a.keys == b.keys
            assert torch.equal(split.finish(a, torch.device("cpu"), epoch), whole.finish(b, torch.device("cpu"), epoch))
            # the workers' images differ where the sample is mirrored or shifted: the device did that
            flipped += int((a.images != b.images).flatten(1).any(1).sum())
            compared += len(a.keys)
            if i == 2:
                break
    assert compared == 96 and flipped > 80  # nearly every image has a colour shift of some level


def test_with_boxes_everything_stays_in_the_workers(host):
    manifest = Manifest.load(PHOTOS / "manifest.json")
    source = ShardSource(manifest, train_pipeline(manifest, crop=96, scale=112), seed=0, workers=0,
                         on_error="fail", with_boxes=True)
    assert source.device_ops == [] and len(source.train_transform.steps) == 4
