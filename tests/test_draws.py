"""The augmentations' counter-based draws: one sample alone and a whole batch get the same numbers, the
numbers are uniform, and each op of a pipeline has numbers of its own."""

import torch

import vgg_toolkit as vt
from vgg_toolkit.data.draws import seed_bases, uniforms_batch
from vgg_toolkit.data.pipeline import Pipeline
from vgg_toolkit.data.shards.reader import sample_seed


def test_a_batch_draws_exactly_what_each_sample_draws_alone():
    seeds = [sample_seed(7, epoch, f"train/{i:06d}") for epoch in range(3) for i in range(300)] + [0, 2**63 - 1]
    batch = uniforms_batch(seed_bases(torch.tensor(seeds)), "1:random_crop", 5)
    alone = torch.tensor([vt.uniforms(s, "1:random_crop", 5) for s in seeds], dtype=torch.float64)
    assert torch.equal(batch, alone)


def test_the_draws_are_uniform_and_streams_independent():
    seeds = torch.tensor([sample_seed(0, 0, f"k{i}") for i in range(20000)])
    u = uniforms_batch(seed_bases(seeds), "a", 2)
    v = uniforms_batch(seed_bases(seeds), "b", 1)[:, 0]
    assert (u >= 0).all() and (u < 1).all()
    counts = torch.histc(u[:, 0].float(), bins=10, min=0, max=1)
    assert ((counts - 2000).abs() < 200).all()  # ~4.5 standard deviations of a binomial count
    assert abs(torch.corrcoef(torch.stack([u[:, 0], u[:, 1], v]))[0, 1:]).max() < 0.03
    z = torch.tensor([vt.normals(row, 3) for row in uniforms_batch(seed_bases(seeds), "n", 4).tolist()])
    assert z.mean(0).abs().max() < 0.05 and (z.std(0) - 1).abs().max() < 0.05


def test_two_ops_of_one_kind_in_a_pipeline_draw_apart(host):
    flips = Pipeline([("random_flip", {"p": 0.5}), ("random_flip", {"p": 0.5})])
    first, second = flips.steps
    assert first.draw_stream != second.draw_stream
    geometry = vt.BatchGeometry(400, 1, 8, 8, range(400))
    first.batch(geometry)
    once = geometry.flipped.clone()
    second.batch(geometry)
    # Two independent coin flips: about half the images end up mirrored, not none of them.
    assert 0.35 < geometry.flipped.float().mean() < 0.65 and not torch.equal(once, torch.zeros_like(once))
