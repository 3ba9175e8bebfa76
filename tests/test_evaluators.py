"""The evaluator plugins (centre, dense, multi-crop, combined) on tiny VGG nets and real photographs."""

import math

import pytest
import torch
import torch.nn.functional as F

import vgg_toolkit as vt
from vgg_toolkit import (TrainScale, VggtkError, create_model, get_evaluator, grid_positions, model_info, rescale,
                         rescaled_size, set_model_info)
from vgg_toolkit.plugins.evaluators.protocols import (
    CenterCrop, Combined, Dense, MultiCrop, class_score_map, dense_scores,
)

pytest.importorskip("skimage.data")
from realdata import photo  # noqa: E402

VGG_NAMES = ["vgg-a", "vgg-a-lrn", "vgg-b", "vgg-c", "vgg-d", "vgg-e"]
CROP = 64  # FC6 then sees a 2x2 map, so the FC6-as-conv path really is a 2x2 convolution


def square(name: str, side: int) -> torch.Tensor:
    img = photo(name, side)
    h, w = img.shape[-2:]
    return img[:, (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]


def tiny(name: str = "vgg-a", seed: int = 0):
    """A tiny VGG in eval mode whose logits on a real photo spread over a few units.

    A randomly initialised net gives either near-uniform or saturated posteriors; rescaling FC8 (the
    last layer, so no other activation changes) makes differences between protocols visible.
    """
    torch.manual_seed(seed)
    model = create_model(name, num_classes=10, width=0.125, fc_dim=64, input_size=CROP, init="kaiming").eval()
    with torch.no_grad():
        logits = model(square("astronaut", CROP)[None])
        factor = 2.0 / logits.std().clamp_min(1e-12)
        model.classifier.fc8.weight.mul_(factor)
        model.classifier.fc8.bias.mul_(factor)
    return model


class Counter:
    """Counts forward calls and the rows and spatial sizes the model sees."""

    def __init__(self, model):
        self.calls, self.rows, self.sizes = 0, 0, set()
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        x = args[0]
        self.calls += 1
        self.rows += x.shape[0]
        self.sizes.add(tuple(x.shape[-2:]))

    def remove(self):
        self.handle.remove()


# --- registry ---------------------------------------------------------------------------------------
def test_the_four_protocols_are_registered_by_the_evaluators_plugin(host):
    registry = host.registry("evaluators")
    for name, cls in [("center", CenterCrop), ("dense", Dense), ("multicrop", MultiCrop), ("combined", Combined)]:
        entry = registry.get(name)
        assert entry.plugin == "evaluators" and entry.info["description"]
        assert isinstance(get_evaluator(name, scales=[CROP]), cls)
    assert registry.get("multi-crop").name == "multicrop"


# --- geometry ----------------------------------------------------------------------------------------
def test_rescale_makes_the_smallest_side_q_and_keeps_the_aspect_ratio():
    img = photo("chelsea", 300)  # 300 x 451
    assert tuple(img.shape[-2:]) == (300, 451)
    small = rescale(img[None], 64)
    assert tuple(small.shape[-2:]) == (64, 96)  # 451 * 64 / 300 = 96.2
    portrait = rescale(img.transpose(1, 2)[None], 64)
    assert tuple(portrait.shape[-2:]) == (96, 64)
    assert rescale(small, 64) is small  # already at Q: not resampled
    assert rescaled_size(20, 28, 64) == (64, 90)
    # with a crop, a longer width leaves an even margin, so the crop grid can be centred exactly
    assert rescaled_size(64, 97, 64) == (64, 97) and rescaled_size(64, 97, 64, crop=64) == (64, 98)
    assert rescaled_size(80, 121, 80, crop=64) == (80, 122) and rescaled_size(300, 451, 64, crop=64) == (64, 96)
    assert rescaled_size(97, 64, 64, crop=64) == (97, 64)  # only the width matters for horizontal flips


def test_grid_positions_span_edge_to_edge_and_are_mirror_symmetric():
    assert grid_positions(96, 64) == [0, 8, 16, 24, 32]
    for length in range(64, 140):
        pos = grid_positions(length, 64)
        assert len(pos) == 5 and pos[0] == 0 and pos[-1] == length - 64
        assert pos == sorted(pos)
        if (length - 64) % 2 == 0:
            assert pos == [length - 64 - p for p in reversed(pos)]
    with pytest.raises(VggtkError):
        grid_positions(60, 64)


# --- dense == centre crop at the training size, for each config -------------------------------------------
@pytest.mark.parametrize("name", VGG_NAMES)
def test_dense_at_training_size_equals_linear_classifier_forward(name):
    model = tiny(name)
    x = torch.stack([square(n, CROP) for n in ("astronaut", "chelsea", "coffee")])
    with torch.no_grad():
        linear = model(x)
    assert not model.fully_conv
    dense = dense_scores(model, x)
    assert linear.std() > 0.5  # differences between logits are large enough to notice
    torch.testing.assert_close(dense, linear, atol=1e-5, rtol=0)
    assert not model.fully_conv and not model.training  # the evaluator restored the Linear form

    # the protocols agree too: dense without flip and the centre crop, both at Q = S = crop size
    centre = CenterCrop(scales=[CROP])(model, x)
    torch.testing.assert_close(Dense(scales=[CROP], flip=False)(model, x), centre, atol=1e-6, rtol=0)
    torch.testing.assert_close(centre, linear.softmax(1), atol=1e-6, rtol=0)


def test_evaluators_restore_training_mode_and_classifier_form():
    model = tiny()
    model.train().to_fully_conv()
    x = square("coffee", 80)[None]
    for evaluator in (CenterCrop(scales=[CROP]), Dense(scales=[80]), MultiCrop(scales=[80])):
        first = evaluator(model, x)
        torch.testing.assert_close(evaluator(model, x), first)  # dropout was off: eval mode inside
        assert model.training and model.fully_conv


# --- dense on a larger image --------------------------------------------------------------------------------
def _score_map_by_hand(model, x):
    """FC6/7/8 applied as Linear layers to every 2x2 window of the last pool: the class-score map."""
    feats = model.features(x)  # (N, c, h, w)
    k = model.classifier.kernel
    h, w = feats.shape[-2] - k + 1, feats.shape[-1] - k + 1
    c = model.classifier
    rows = []
    for i in range(h):
        row = []
        for j in range(w):
            window = feats[:, :, i:i + k, j:j + k].flatten(1)
            row.append(c.fc8(torch.relu(c.fc7(torch.relu(c.fc6(window))))))
        rows.append(torch.stack(row, dim=-1))
    return torch.stack(rows, dim=-2)  # (N, classes, h, w)


def test_dense_on_a_larger_image_equals_the_mean_of_the_score_map_by_hand():
    model = tiny("vgg-b")
    x = photo("coffee", 96)[None][..., 8:136]  # 96 x 128: a 3x4 map after five pools, 2x3 class scores
    with torch.no_grad():
        by_hand = _score_map_by_hand(model, x)
        flipped_by_hand = _score_map_by_hand(model, x.flip(-1))
    score_map = class_score_map(model, x)
    assert score_map.shape == (1, 10, 2, 3)
    torch.testing.assert_close(score_map, by_hand, atol=1e-5, rtol=0)
    torch.testing.assert_close(dense_scores(model, x), by_hand.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    expected = 0.5 * (by_hand.mean(dim=(2, 3)).softmax(1) + flipped_by_hand.mean(dim=(2, 3)).softmax(1))
    got = Dense(scales=[96])(model, x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # the map really varies over the image, so averaging it is not a no-op
    assert (by_hand - by_hand.mean(dim=(2, 3), keepdim=True)).abs().max() > 1e-2


def test_dense_centres_its_windows_on_an_image_that_is_not_a_multiple_of_the_stride():
    """At Q = crop + 8 the one window of the score map is the centre crop, not the top-left one: the
    rescaled image is trimmed by 4 pixels on each side, as the centre crop is taken."""
    model = tiny()
    q = CROP + 8
    x = square("coffee", q)[None]
    centre = CenterCrop(scales=[q])(model, x)
    torch.testing.assert_close(Dense(scales=[q], flip=False)(model, x), centre, atol=1e-6, rtol=0)
    top_left = class_score_map(model, x[..., :CROP, :CROP]).mean(dim=(2, 3)).softmax(1)
    assert (top_left - centre).abs().max() > 1e-3  # where the window sits matters on this photo
    # A landscape image: trimmed to a multiple of 32 on the long side too, the same on both ends.
    wide = photo("coffee", q)[None]  # 72 x 108 -> 64 x 96, 4 and 6 pixels off each end
    torch.testing.assert_close(dense_scores(model, vt.center_trim(wide, 32)),
                               dense_scores(model, wide[..., 4:68, 6:102]), atol=0, rtol=0)


def test_dense_rescales_to_q_before_the_score_map():
    model = tiny()
    raw = photo("chelsea", 300)[None]
    torch.testing.assert_close(Dense(scales=[80])(model, raw), Dense(scales=[80])(model, rescale(raw, 80)))


def test_batching_never_changes_the_result():
    model = tiny()
    x = torch.stack([photo(n, 72)[:, :, :100] for n in ("chelsea", "coffee")])  # 72 x 100 each
    for cls in (Dense, MultiCrop):
        everything = cls(scales=[72], batch_size=256)(model, x)
        # 16 rows per forward: 8 views of the 2 images, with a short last group of 2 views
        torch.testing.assert_close(cls(scales=[72], batch_size=16)(model, x), everything, atol=1e-6, rtol=0)
        one_by_one = torch.cat([cls(scales=[72])(model, x[i:i + 1]) for i in range(2)])
        torch.testing.assert_close(one_by_one, everything, atol=1e-6, rtol=0)
    # fewer rows per forward than images: the batch itself is split
    torch.testing.assert_close(Dense(scales=[72, 96], batch_size=1)(model, x), Dense(scales=[72, 96])(model, x),
                               atol=1e-6, rtol=0)


# --- multi-crop -------------------------------------------------------------------------------------------------
def test_multicrop_runs_exactly_150_crops_over_3_scales_in_batches():
    model = tiny()
    evaluator = MultiCrop(scales=[64, 80, 96], batch_size=64)
    assert evaluator.views_per_image(model) == 150
    x = torch.stack([photo(n, 100)[:, :, :150] for n in ("chelsea", "coffee")])
    counter = Counter(model)
    try:
        evaluator(model, x[:1])
        assert counter.rows == 150 and counter.sizes == {(CROP, CROP)}
        counter.calls = counter.rows = 0
        evaluator(model, x)
    finally:
        counter.remove()
    assert counter.rows == 300
    assert counter.calls == 6  # 100 crops per scale in forwards of at most 64: two per scale


def test_multicrop_equals_the_mean_over_crops_cut_by_hand():
    model = tiny("vgg-c")
    x = photo("chelsea", 80)[None]  # 80 x 120
    crops = []
    for top in grid_positions(80, CROP):
        for left in grid_positions(120, CROP):
            crop = x[:, :, top:top + CROP, left:left + CROP]
            crops += [crop, crop.flip(-1)]
    assert len(crops) == 50
    with torch.no_grad():
        expected = model(torch.cat(crops)).softmax(1).mean(0, keepdim=True)
    torch.testing.assert_close(MultiCrop(scales=[80])(model, x), expected, atol=1e-6, rtol=0)


def test_combined_is_the_average_of_dense_and_multicrop():
    model = tiny()
    x = photo("coffee", 64)[None]
    options = dict(scales=[80])
    expected = 0.5 * (Dense(**options)(model, x) + MultiCrop(**options)(model, x))
    torch.testing.assert_close(Combined(**options)(model, x), expected)
    assert Combined(scales=[64, 96]).views_per_image(model) == 2 * 2 + 2 * 50


def test_multi_scale_is_the_mean_over_scales():
    model = tiny()
    x = photo("astronaut", 64)[None]
    per_scale = [Dense(scales=[q])(model, x) for q in (64, 96, 128)]
    torch.testing.assert_close(Dense(scales="64,96,128")(model, x), torch.stack(per_scale).mean(0))
    assert (per_scale[0] - per_scale[2]).abs().max() > 1e-4  # the scales do disagree


# --- flips ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: Dense(scales=[64, 80]),
    lambda: MultiCrop(scales=[64, 80]),
    lambda: CenterCrop(scales=[64, 80], flip=True),
    lambda: Combined(scales=[64, 80]),
], ids=["dense", "multicrop", "center+flip", "combined"])
def test_flip_averaging_is_symmetric(make):
    model = tiny()
    x = photo("chelsea", 66)[None, :, :64, :97]  # 97 - 64 is odd: the evaluators widen it to 98 (122 at Q=80)
    assert x.shape[-2:] == (64, 97)
    evaluator = make()
    torch.testing.assert_close(evaluator(model, x.flip(-1)), evaluator(model, x), atol=1e-6, rtol=0)
    evaluator.flip = False
    for inner in (getattr(evaluator, "dense", None), getattr(evaluator, "multicrop", None)):
        if inner is not None:
            inner.flip = False
    # without flip averaging the photo and its mirror image do get different posteriors
    assert (evaluator(model, x.flip(-1)) - evaluator(model, x)).abs().max() > 1e-4


def test_centre_crop_has_no_flip_by_default_as_in_the_paper():
    model = tiny()
    counter = Counter(model)
    try:
        CenterCrop(scales=[CROP])(model, photo("coffee", CROP)[None])
    finally:
        counter.remove()
    assert counter.rows == 1


# --- small images and scales -----------------------------------------------------------------------------------------
def test_images_smaller_than_the_crop_are_upscaled_to_q_never_padded():
    model = tiny()
    tiny_photo = photo("chelsea", 20)  # 20 x 30, far below the 64-pixel crop
    for cls in (CenterCrop, Dense, MultiCrop):
        evaluator = cls(scales=[CROP])
        counter = Counter(model)
        try:
            got = evaluator(model, tiny_photo)
        finally:
            counter.remove()
        assert got.shape == (10,) and math.isclose(got.sum().item(), 1.0, rel_tol=1e-5)
        torch.testing.assert_close(got, evaluator(model, rescale(tiny_photo[None], CROP))[0])
        if cls is Dense:
            assert counter.sizes == {(64, 96)}  # the whole upscaled image, not a padded one


def test_a_test_scale_below_the_crop_is_raised_to_the_crop_or_refused():
    model = tiny()
    x = photo("coffee", 100)[None]
    upscale = Dense(scales=[48, 64, 96])
    assert upscale.scales_for(model) == (64, 96)  # Q=48 becomes 64, evaluated once
    torch.testing.assert_close(upscale(model, x), Dense(scales=[64, 96])(model, x))
    strict = MultiCrop(scales=[48, 96], small="error")
    with pytest.raises(VggtkError, match="Q=48 is smaller than the 64-pixel crop"):
        strict(model, x)
    with pytest.raises(VggtkError, match="small-image policy"):
        Dense(small="pad")


def test_default_test_scales_come_from_the_training_scale():
    model = tiny()
    assert Dense().scales_for(model) == (CROP,)  # nothing known: S is taken to be the crop size
    assert Dense(train_scale=96).scales_for(model) == (96,)
    assert Dense(train_scale=96, multi_scale=True).scales_for(model) == (64, 96, 128)
    assert MultiCrop(train_scale=(64, 128)).scales_for(model) == (96,)
    assert MultiCrop(train_scale="[64;128]", multi_scale=True).views_per_image(model) == 150
    set_model_info(model, model_info(model).trained_on(None, TrainScale(64, 128), None))  # as a checkpoint records
    assert Combined(multi_scale=True).scales_for(model) == (64, 96, 128)
    assert Combined(scales=[80]).scales_for(model) == (80,)  # explicit scales win
    with pytest.raises(VggtkError):
        Dense(train_scale="big")


# --- inputs of mixed sizes ------------------------------------------------------------------------------------------
def test_images_of_different_sizes_are_batched_by_rescaled_size_and_keep_their_order():
    model = tiny()
    images = [photo("chelsea", 60), square("astronaut", 100), photo("chelsea", 80)]  # 60x90, 100x100, 80x120
    evaluator = Dense(scales=[64])
    counter = Counter(model)
    try:
        together = evaluator(model, images)
    finally:
        counter.remove()
    # both chelsea sizes become 64 x 96 and share one forward (with their flips); the square is the other
    assert counter.calls == 2 and counter.sizes == {(64, 96), (64, 64)}
    one_by_one = torch.stack([evaluator(model, img) for img in images])
    torch.testing.assert_close(together, one_by_one, atol=1e-6, rtol=0)
    assert (together[0] - together[1]).abs().max() > 1e-4


def test_models_that_cannot_switch_their_classifier_run_as_they_are():
    class GapNet(torch.nn.Module):  # a global-average-pool net: any input size, no to_fully_conv
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(F.relu(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    net = GapNet().eval()
    x = photo("coffee", 40)[None]
    posteriors = Dense(scales=[40], crop_size=32)(net, x)
    with torch.no_grad():
        expected = 0.5 * (net(x).softmax(1) + net(x.flip(-1)).softmax(1))
    torch.testing.assert_close(posteriors, expected)
    with pytest.raises(VggtkError, match="crop_size"):
        MultiCrop(scales=[40])(net, x)
    with pytest.raises(VggtkError, match="to_fully_conv"):
        class_score_map(net, x)
