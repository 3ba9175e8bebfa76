"""The reader: every sample once per epoch across ranks x workers, per-epoch shuffles, exact resume."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from vgg_toolkit.data.loader import make_loader, normalize_on_device
from vgg_toolkit.data.shards.manifest import Manifest
from vgg_toolkit.data.shards.reader import iter_raw, resolve_source, shuffle_order
from vgg_toolkit.errors import VggtkError

SHARDS = Path(__file__).resolve().parents[1] / "shards"
FM = SHARDS / "fashion-mnist"


def all_keys(manifest: Manifest, split: str) -> list[str]:
    return [raw["__key__"] for p in manifest.shard_locations(split) for raw in iter_raw(str(p))]


def run(loader) -> list:
    return [(list(b.keys), b.images.clone(), b.labels.clone()) for b in loader]


def test_each_sample_exactly_once_across_two_ranks_and_two_workers():
    manifest = Manifest.load(FM)
    expected = all_keys(manifest, "val")
    seen = Counter()
    for rank in range(2):
        loader = make_loader(FM, "val", batch_size=64, augment="none", seed=5, epoch=1, rank=rank, world_size=2,
                             num_workers=2, shuffle=True, drop_last=False)
        for batch in loader:
            assert batch.images.dtype == torch.uint8 and batch.images.shape[1:] == (1, 28, 28)
            assert batch.labels.dtype == torch.int64
            seen.update(batch.keys)
    assert len(expected) == 2000
    assert set(seen) == set(expected) and max(seen.values()) == 1


def test_training_ranks_yield_the_same_number_of_full_batches():
    lengths, keys = [], []
    for rank in range(2):
        loader = make_loader(FM, "train", batch_size=100, seed=0, rank=rank, world_size=2, num_workers=0,
                             augment="none", shuffle_buffer=50)
        batches = list(loader)
        lengths.append(len(batches))
        assert len(batches) == len(loader)
        assert all(len(b) == 100 for b in batches)
        keys += [k for b in batches for k in b.keys]
    assert lengths[0] == lengths[1] == 60  # 6000 samples per rank, 3000 per (only) worker
    assert len(keys) == len(set(keys)) == 12000


def test_order_reshuffles_per_epoch_and_repeats_per_seed():
    def order(epoch, seed=0):
        return [k for b in make_loader(FM, "val", batch_size=500, augment="none", seed=seed, epoch=epoch,
                                       shuffle=True, shuffle_buffer=300) for k in b.keys]
    e0, e1 = order(0), order(1)
    assert e0 == order(0)
    assert e0 != e1 and sorted(e0) == sorted(e1)
    assert order(0, seed=1) != e0


def test_resume_continues_with_the_same_batches():
    kwargs = dict(batch_size=32, seed=3, epoch=2, num_workers=2, rank=1, world_size=2, augment="train",
                  shuffle=True)
    full = run(make_loader(FM, "val", **kwargs))
    first = make_loader(FM, "val", **kwargs)
    stopped = []
    for batch in first:
        stopped.append((list(batch.keys), batch.images.clone(), batch.labels.clone()))
        if len(stopped) == 7:
            break
    position = first.state_dict()
    assert position["batches"] == 7 and position["epoch"] == 2
    rest = run(make_loader(FM, "val", start_position=position, **kwargs))
    resumed = stopped + rest
    assert len(resumed) == len(full) == 30  # 1000 samples on this rank, 500 per worker: 15 + 15 batches
    for (ka, ia, la), (kb, ib, lb) in zip(full, resumed):
        assert ka == kb
        assert torch.equal(ia, ib) and torch.equal(la, lb)  # same crops, flips and colour shifts


def test_resume_refuses_a_different_world():
    position = {"epoch": 0, "batches": 3, "world_size": 2, "num_workers": 0, "batch_size": 64, "seed": 0}
    with pytest.raises(VggtkError, match="world_size"):
        make_loader(FM, "train", batch_size=64, start_position=position)


def test_augmentation_draws_follow_the_sample_not_the_rank():
    one = {k: img for b in make_loader(FM, "val", batch_size=250, augment="train", seed=9, epoch=4)
           for k, img in zip(b.keys, b.images)}
    split = {}
    for rank in range(2):
        for b in make_loader(FM, "val", batch_size=250, augment="train", seed=9, epoch=4, rank=rank, world_size=2,
                             num_workers=1):
            split.update(zip(b.keys, b.images))
    assert one.keys() == split.keys()
    assert all(torch.equal(one[k], split[k]) for k in one)
    other_epoch = {k: img for b in make_loader(FM, "val", batch_size=250, augment="train", seed=9, epoch=5)
                   for k, img in zip(b.keys, b.images)}
    differ = sum(not torch.equal(one[k], other_epoch[k]) for k in one)
    assert differ > 0.8 * len(one)


def test_fashion_mnist_recipe_makes_32x32_batches_and_normalises():
    train = make_loader(FM, "train", batch_size=64)
    images, labels = next(iter(train))
    assert images.shape == (64, 1, 32, 32) and images.dtype == torch.uint8
    val = make_loader(FM, "val", batch_size=64)
    v_images, _ = next(iter(val))
    assert v_images.shape == (64, 1, 32, 32)
    x = normalize_on_device(images, train.mean_rgb)
    assert x.dtype == torch.float32
    mean = Manifest.load(FM).stats.mean_rgb_255[0]
    assert torch.allclose(x, (images.float() - mean) / 255)
    rgb = make_loader(FM, "val", batch_size=8, channels=3)
    assert next(iter(rgb)).images.shape == (8, 3, 32, 32)


def test_localisation_batches_carry_boxes():
    loader = make_loader(SHARDS / "localisation", "train", batch_size=8, with_boxes=True,
                         augment=[("rescale", {"size": 160}), ("random_crop", {"size": 128}), "random_flip"])
    images, labels, boxes = next(iter(loader))
    assert images.shape == (8, 3, 128, 128)
    assert len(boxes) == 8
    for b in boxes:
        assert b.dtype == torch.float32 and b.shape[1] == 4
        assert (b >= 0).all() and (b <= 128).all()


def test_sources_braces_and_lists():
    refs, manifest = resolve_source(str(FM / "train-{000000..000003}.tar.gz"))
    assert len(refs) == 4 and sum(r.samples for r in refs) == 12000 and manifest is not None
    # Counted when no manifest lists them: WebDataset's reader, headers only.
    copied = [Path(r.path) for r in refs[:2]]
    assert [r.samples for r in resolve_source([str(p) for p in copied])[0]] == [3000, 3000]
    listed = make_loader([str(p) for p in Manifest.load(FM).shard_locations("val")], "val", batch_size=1000,
                         augment="none")
    assert sum(len(b) for b in listed) == 2000


def test_shuffle_order_is_a_permutation_with_bounded_lookahead():
    order = shuffle_order(1000, 16, seed=1)
    assert sorted(order.tolist()) == list(range(1000))
    assert all(order[i] < i + 16 for i in range(1000))  # never ahead of what a 16-slot buffer has read
    assert order.tolist() != list(range(1000))
