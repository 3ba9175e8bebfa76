"""The evaluation runner: paper test scales, ensembles, metrics over a stream, table and JSON output."""

import json
import math

import pytest
import torch
from rich.console import Console

from vgg_toolkit import TrainScale, VggtkError, create_model, model_info, parse_test_scales, set_model_info
from vgg_toolkit.evaluation.report import print_results, results_table, write_json
from vgg_toolkit.evaluation.runner import check_same_classes, ensemble_posteriors, get_evaluator, run_evaluation
from vgg_toolkit.evaluation.metrics import topk_error
from vgg_toolkit.plugins.evaluators.protocols import Dense

pytest.importorskip("skimage.data")
from realdata import photo  # noqa: E402

NAMES = ("astronaut", "chelsea", "coffee")


def tiny(name: str = "vgg-a", seed: int = 0, num_classes: int = 10):
    """A tiny VGG in eval mode with FC8 scaled so its posteriors are neither uniform nor one-hot."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=num_classes, width=0.125, fc_dim=64, input_size=32, init="kaiming").eval()
    with torch.no_grad():
        logits = model(photo("astronaut", 32)[None])
        factor = 2.0 / logits.std().clamp_min(1e-12)
        model.classifier.fc8.weight.mul_(factor)
        model.classifier.fc8.bias.mul_(factor)
    return model


@pytest.fixture(scope="module")
def stream():
    """Two batches of real photos: a same-size NCHW batch and a list of mixed sizes."""
    batch = torch.stack([photo(n, 40)[:, :40, :40] for n in NAMES])
    mixed = [photo("chelsea", 48), photo("coffee", 40), photo("astronaut", 36)]
    return [(batch, torch.tensor([0, 3, 7])), (mixed, [1, 3, 9])]


def trained_as(model, classes=None, scale=None):
    """``model`` as a checkpoint loader gives it: its model info records its classes and training scale."""
    return set_model_info(model, model_info(model).trained_on(classes, scale, None))


# --- scales -------------------------------------------------------------------------------------------
def test_paper_test_scales_for_fixed_and_jittered_training_scales():
    assert TrainScale.parse(256).test_scales() == (256,)
    assert TrainScale.parse(384).test_scales(multi=True) == (352, 384, 416)
    assert TrainScale.parse((256, 512)).test_scales() == (384,)
    assert TrainScale.parse("[256;512]").test_scales(multi=True) == (256, 384, 512)
    assert TrainScale.parse("256-512") == TrainScale.parse([256, 512]) == TrainScale(256, 512)


def test_scale_specs_parse_and_format_or_fail_clearly():
    assert TrainScale.parse("256") == TrainScale(256, 256) and TrainScale.parse("256,512") == TrainScale(256, 512)
    assert not TrainScale.parse((384, 384)).jittered  # a range of one size is a fixed scale
    assert str(TrainScale(256, 512)) == "[256;512]" and str(TrainScale.parse(256)) == "256"
    assert TrainScale(32, 40).to_json() == [32, 40] and TrainScale.parse([36]).to_json() == [36]
    assert parse_test_scales("256, 384,512") == (256, 384, 512)
    for bad in ("512-256", "0", "a-b", (1, 2, 3), 99999999, True, 2.5):
        with pytest.raises(VggtkError):
            TrainScale.parse(bad)
    for bad in ("", "256,x", "-3", "99999999"):
        with pytest.raises(VggtkError):
            parse_test_scales(bad)


# --- ensembles ------------------------------------------------------------------------------------------
def test_an_ensemble_of_one_is_the_single_net(stream):
    model = tiny()
    evaluator = get_evaluator("dense", scales=[32, 48])
    result = run_evaluation([model], evaluator, stream, progress=False)
    expected = torch.cat([evaluator(model, stream[0][0]), evaluator(model, stream[1][0])])
    assert torch.equal(result.posteriors, expected)
    assert torch.equal(result.labels, torch.tensor([0, 3, 7, 1, 3, 9]))
    assert torch.equal(ensemble_posteriors([model], evaluator, stream[0][0]), evaluator(model, stream[0][0]))


def test_an_ensemble_averages_the_posteriors_of_its_nets(stream):
    d, e = tiny("vgg-d", seed=1), tiny("vgg-e", seed=2)
    evaluator = Dense(scales=[40, 48])
    both = run_evaluation([d, e], evaluator, stream, progress=False)
    alone = [run_evaluation(m, evaluator, stream, progress=False).posteriors for m in (d, e)]
    torch.testing.assert_close(both.posteriors, 0.5 * (alone[0] + alone[1]))
    assert (alone[0] - alone[1]).abs().max() > 1e-3  # the two nets disagree, so the mean is informative
    assert both.config == "vgg-d + vgg-e" and both.models == ["vgg-d", "vgg-e"]


def test_nets_with_different_class_lists_cannot_be_ensembled(stream):
    a, b = tiny(seed=1), tiny(seed=2)
    names = [f"class{i}" for i in range(10)]
    other = names[:4] + ["dog"] + names[5:]
    with pytest.raises(VggtkError, match="class 4 is 'class4' in one and 'dog' in the other"):
        run_evaluation([a, b], Dense(scales=[32]), stream, class_lists=[names, other], progress=False)
    trained_as(b, other)
    trained_as(a, names)
    with pytest.raises(VggtkError, match="different class lists"):
        check_same_classes([a, b], names=["d.ckpt", "e.ckpt"])
    with pytest.raises(VggtkError, match="has 10 classes, .* has 7"):
        check_same_classes([a, tiny(num_classes=7)])
    trained_as(b, names)
    assert check_same_classes([a, b]) == names


# --- the runner -------------------------------------------------------------------------------------------
def test_runner_metrics_match_the_posteriors_and_count_time(stream):
    model = tiny()
    result = run_evaluation(model, Dense(scales=[32]), stream, progress=False, model_names=["vgg-a.ckpt"])
    assert result.posteriors.shape == (6, 10) and result.num_images == 6
    torch.testing.assert_close(result.posteriors.sum(1), torch.ones(6))
    assert result.errors[1] == pytest.approx(100 * topk_error(result.posteriors, result.labels, 1))
    assert result.errors[5] == pytest.approx(100 * topk_error(result.posteriors, result.labels, 5))
    assert result.seconds > 0 and result.images_per_s > 0
    assert (result.config, result.train_scale, result.test_scales, result.method) == ("vgg-a.ckpt", "-", "32", "dense")


def test_runner_groups_mixed_sizes_for_evaluators_that_need_same_size_batches(stream):
    model = tiny()
    dense = Dense(scales=[32])
    seen = []

    def plain(model, images):  # a third-party evaluator: one same-size NCHW batch at a time
        assert isinstance(images, torch.Tensor) and images.ndim == 4
        seen.append(tuple(images.shape))
        return dense(model, images)

    result = run_evaluation(model, plain, stream, progress=False)
    reference = run_evaluation(model, dense, stream, progress=False)
    torch.testing.assert_close(result.posteriors, reference.posteriors, atol=1e-6, rtol=0)
    assert len(seen) == 4  # the NCHW batch, then three sizes in the mixed list
    assert result.method == "plain"


def test_runner_reports_the_scales_from_the_training_scale(stream):
    model = tiny()
    trained_as(model, scale=TrainScale(32, 64))
    result = run_evaluation(model, get_evaluator("combined", multi_scale=True), stream[:1], progress=False)
    assert (result.train_scale, result.test_scales) == ("[32;64]", "32,48,64")
    assert result.method.startswith("dense + multi-crop 5x5x2")


def test_runner_rejects_bad_batches():
    model = tiny()
    x = photo("coffee", 32)[None]
    with pytest.raises(VggtkError, match="1 images but 2 labels"):
        run_evaluation(model, Dense(), [(x, [0, 1])], progress=False)
    with pytest.raises(VggtkError, match="data is empty"):
        run_evaluation(model, Dense(), [], progress=False)
    with pytest.raises(VggtkError, match="label 12 is outside the 10 classes"):
        run_evaluation(model, Dense(), [(x, [12])], progress=False)


def test_bf16_autocast_stays_close_to_float32(stream):
    model = tiny()
    exact = run_evaluation(model, Dense(scales=[32]), stream[:1], progress=False, autocast=False)
    bf16 = run_evaluation(model, Dense(scales=[32]), stream[:1], progress=False, autocast=True)
    assert bf16.posteriors.dtype == torch.float32
    torch.testing.assert_close(bf16.posteriors, exact.posteriors, atol=3e-2, rtol=0)


# --- output ------------------------------------------------------------------------------------------------
def test_table_json_per_class_and_confusion_png(stream, tmp_path):
    model = tiny()
    classes = [f"c{i}" for i in range(10)]
    results = [run_evaluation(model, get_evaluator(name, scales=[32, 40]), stream, class_names=classes,
                              progress=False) for name in ("dense", "multicrop")]

    console = Console(record=True, width=160, color_system=None)
    print_results(results, console=console, title="Table 5 (tiny)")
    text = console.export_text()
    for word in ("config", "train S", "test Q", "method", "top-1 err", "top-5 err", "images/s", "32,40",
                 "multi-crop 5x5x2", f"{results[1].errors[5]:.2f}"):
        assert word in text
    assert results_table(results).row_count == 2

    path = write_json(results, tmp_path / "out" / "eval.json", per_class=True)
    data = json.loads(path.read_text())
    assert data["error_unit"] == "percent" and len(data["results"]) == 2
    row = data["results"][1]
    assert row["method"] == "multi-crop 5x5x2" and row["images"] == 6 and row["test_scales"] == "32,40"
    assert row["top1_err_pct"] == pytest.approx(results[1].errors[1], abs=1e-5)
    per_class = {c["class"]: c for c in row["per_class"]}
    assert set(per_class) == set(classes)
    assert per_class["c3"]["images"] == 2 and per_class["c5"]["top1_acc_pct"] is None  # no image of c5
    hits = results[1].posteriors.argmax(1) == results[1].labels
    correct_c3 = int(hits[results[1].labels == 3].sum())
    assert per_class["c3"]["top1_acc_pct"] == pytest.approx(100 * correct_c3 / 2)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["eval.json"]  # no temporary file left

    png = results[0].save_confusion_png(tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert math.isclose(float(results[0].confusion().sum()), 6)
