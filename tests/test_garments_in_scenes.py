"""The localisation benchmark's source: garments of log-uniform size anywhere on 128-pixel scenes, half with
a distractor of another class that never overlaps the main one; the geometry that lets the centre crop miss
objects the dense protocol sees."""

import math

import numpy as np
import pytest

from vgg_toolkit.data.sources.garments_in_scenes import GARMENT, SIDE, garments_in_scenes, layout

SHARDS = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "shards" / "fashion-mnist")


@pytest.fixture(scope="module")
def records():
    source = garments_in_scenes(SHARDS, train=400, val=0, test=0, seed=3)
    return [ref.load() for ref in source.refs]


def test_sizes_are_log_uniform_and_every_garment_fits():
    rng = np.random.default_rng(0)
    sides = []
    for _ in range(4000):
        (size, left, top), _ = layout(rng, False)
        assert GARMENT[0] <= size <= GARMENT[1] and 0 <= left <= SIDE - size and 0 <= top <= SIDE - size
        sides.append(math.log(size))
    sides = np.array(sides)
    low, high = math.log(GARMENT[0]), math.log(GARMENT[1])
    counts, _ = np.histogram(sides, bins=4, range=(low, high))
    assert counts.min() > 0.8 * len(sides) / 4  # each quarter of the log range about as likely
    assert abs(np.exp(np.median(sides)) - math.sqrt(GARMENT[0] * GARMENT[1])) < 4


def test_half_hold_a_distractor_of_another_class_that_never_overlaps(records):
    with_two = [r for r in records if len(r.boxes) == 2]
    assert 0.35 < len(with_two) / len(records) < 0.55  # half are asked for; a large garment may leave no room
    for r in with_two:
        (a, b), (la, lb) = r.boxes, r.box_labels
        assert la == r.label != lb
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]  # apart


def test_the_centre_crop_at_s_96_holds_about_a_third_of_the_objects(records):
    """At S = 96 the 64-pixel centre crop covers the middle two thirds of the 128-pixel side."""
    lo, hi = SIDE / 6, SIDE * 5 / 6
    held = 0
    for r in records:
        x1, y1, x2, y2 = r.boxes[0]
        inside = max(0.0, min(x2, hi) - max(x1, lo)) * max(0.0, min(y2, hi) - max(y1, lo))
        held += inside >= 0.9 * (x2 - x1) * (y2 - y1)
    assert 0.25 < held / len(records) < 0.45
