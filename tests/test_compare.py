"""``vggtk compare``: the table's figures against hand counts, accuracy from `vggtk eval`'s results, the
chart, the 3x3-stack arithmetic of the paper, and clean errors."""

import json

import pytest
import torch
from PIL import Image
from torch import nn

import vgg_toolkit as vt
from cli_runner import input_error, vggtk
from vgg_toolkit.plugins.compare.measure import Subject, activation_bytes, measure
from vgg_toolkit.plugins.compare.stack import receptive_field, stack_lines


def test_the_stack_arithmetic_is_the_papers():
    # Sec. 2.3: three 3x3 layers see 7x7 with 27C^2 weights; one 7x7 layer needs 49C^2, 81% more.
    assert receptive_field(3) == 7 and receptive_field(2) == 5
    text = "\n".join(stack_lines(512))
    assert f"27C^2 = {27 * 512 * 512:,}" in text and f"49C^2 = {49 * 512 * 512:,}" in text
    assert "81% more weights" in text and "39% more weights" in text  # 25/18 for two layers against 5x5


def _subject(model, size=8, chans=1):
    vt.set_model_info(model, vt.ModelInfo("hand", {"num_classes": 4}, size))
    return Subject("hand", model, size, chans)


def test_activation_memory_counts_what_the_backward_pass_keeps_per_image():
    # conv keeps its input (1x8x8), ReLU its output (4x8x8), the linear layer its input (4x8x8 flattened,
    # a view of the ReLU output: the same storage, counted once); the weights are not activations.
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4))
    assert activation_bytes(_subject(model), torch.device("cpu")) == (64 + 256) * 4


def test_throughput_is_measured_and_leaves_the_weights_as_they_were():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    m = measure(_subject(model), batch_size=4, repeats=2, device=torch.device("cpu"))
    assert m.parameters == 4 * 9 + 4 + 256 * 4 + 4 and m.weight_layers == 2
    assert m.gmacs * 1e9 == pytest.approx(4 * 64 * 9 + 256 * 4)
    assert m.forward_ips > 0 and m.train_ips > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def evaluated(trained, shards, tmp_path_factory):
    run, _ = trained
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    result = vggtk("eval", run / "best", "--data", shards, "--methods", "center,dense", "--out", out)
    assert result.exit_code == 0, result.output
    return run / "best", out


def test_compare_a_trained_net_with_an_architecture_table_chart_and_json(evaluated, tmp_path):
    best, results = evaluated
    chart, table = tmp_path / "chart.png", tmp_path / "table.json"
    result = vggtk("compare", best, "vgg-b", "--input-size", 32, "--in-chans", 1, "--num-classes", 3,
                   "--option", "width=0.25", "--option", "fc_dim=64", "--results", results, "--method", "dense",
                   "--chart", chart, "--out", table, "--batch-size", 4, "--repeats", 1)
    assert result.exit_code == 0, result.output
    rows = json.loads(table.read_text())["rows"]
    dense = next(r for r in json.loads(results.read_text())["results"] if r["method"] == "dense")
    assert rows[0]["top1_pct"] == pytest.approx(100 - dense["top1_err_pct"]) and rows[0]["method"] == "dense"
    assert rows[1]["top1_pct"] is None  # the untrained architecture has no results
    trained_net = vt.load_trained(best)
    assert rows[0]["parameters"] == sum(p.numel() for p in trained_net.parameters())
    assert rows[1]["arch"] == "vgg-b" and rows[1]["weight_layers"] == 13 and rows[1]["in_chans"] == 1
    assert all(r["forward_ips"] > 0 and r["train_ips"] > 0 and r["activation_mb"] > 0 for r in rows)
    assert "81% more weights" in result.output and f"{100 - dense['top1_err_pct']:.2f}" in result.output
    with Image.open(chart) as img:
        assert img.info.get("Software") == "vggtk" and img.size[0] > 400
    # the chart is ours now, so a second run may replace it
    assert vggtk("compare", best, "--results", results, "--chart", chart, "--no-timing").exit_code == 0


def test_compare_refuses_bad_input_with_one_line(evaluated, tmp_path):
    best, results = evaluated
    assert "vgg-z" in input_error(vggtk("compare", "vgg-z", "--no-timing"))
    assert "bogus" in input_error(vggtk("compare", "vgg-a", "--option", "bogus=1", "--input-size", 32,
                                        "--no-timing"))
    assert "KEY=VALUE" in input_error(vggtk("compare", "vgg-a", "--option", "width"))
    missing = tmp_path / "nope.json"
    assert str(missing) in input_error(vggtk("compare", best, "--results", missing, "--chart", tmp_path / "c.png",
                                             "--no-timing"))
    theirs = tmp_path / "theirs.png"
    theirs.write_bytes(b"not ours")
    assert "not replaced" in input_error(vggtk("compare", best, "--results", results, "--chart", theirs))
    assert theirs.read_bytes() == b"not ours"
    assert "multi-crop" in input_error(vggtk("compare", best, "--results", results, "--method", "multi-crop",
                                             "--chart", tmp_path / "c.png", "--no-timing"))


def test_results_are_a_rows_only_when_they_are_of_its_net(evaluated, tmp_path):
    """A checkpoint's results by its weights' content, wherever it lies; an architecture's only from a
    net built as the row builds it: the eval of a 32x32x1 quarter-width vgg-a is not vgg-a at 224x224x3."""
    best, results = evaluated
    import shutil

    moved = tmp_path / "elsewhere"
    shutil.copytree(best, moved)  # the same net under another path: its results still
    table = tmp_path / "t.json"
    same = vggtk("compare", moved, "--results", results, "--chart", tmp_path / "c.png", "--out", table, "--no-timing")
    assert same.exit_code == 0, same.output
    assert json.loads(table.read_text())["rows"][0]["top1_pct"] is not None
    other = vt.create_model("vgg-a", num_classes=3, in_chans=1, width=0.25, fc_dim=256, input_size=32)
    vt.set_model_info(other, vt.model_info(other).trained_on(["trouser", "sandal", "bag"], vt.TrainScale(32, 40),
                                                           [30.0] * 3))
    vt.save_weights(other, tmp_path / "o.safetensors")  # vgg-a as trained there, another net
    assert "no net of the comparison has results" in input_error(vggtk(
        "compare", tmp_path / "o.safetensors", "--results", results, "--chart", tmp_path / "c.png", "--no-timing"))
    assert "no net of the comparison has results" in input_error(vggtk(
        "compare", "vgg-a", "--results", results, "--chart", tmp_path / "c.png", "--no-timing"))
    built_alike = vggtk("compare", "vgg-a", "--input-size", 32, "--in-chans", 1, "--num-classes", 3, "--option",
                        "width=0.25", "--option", "fc_dim=256", "--results", results, "--chart", tmp_path / "c.png",
                        "--out", table, "--no-timing")
    assert built_alike.exit_code == 0, built_alike.output
    assert json.loads(table.read_text())["rows"][0]["top1_pct"] is not None
